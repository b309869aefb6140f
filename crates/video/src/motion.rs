//! Motion detection on gray frames, with no model: the first stage of every stream, so it works
//! out of the box. Per frame (see docs/plans/video.md §3; the steps follow Frigate's):
//! 1. the background is a running average (8.8 fixed point) of past frames;
//! 2. a pixel moved when it differs from the background by more than `threshold`;
//! 3. masked pixels never move;
//! 4. one 3×3 dilation joins the fragments of one moving object;
//! 5. 4-connected components become boxes, those of at least `min_area` pixels kept;
//! 6. when more than `lightning` of the frame moved at once (lights switched, the camera
//!    adjusted), the background is learnt anew from this frame and nothing is reported.
//!
//! The first `calibration_ms` of a stream, and of the scene after a lightning frame, are
//! calibration: the background follows the frames fast (`calibration_alpha`) and nothing is
//! reported, so what the camera shows while it settles (exposure, a decoder's first grey
//! frames, an object that moved off in the first instants) is learnt instead of becoming a
//! ghost that lingers as motion. Its reach is in frames: 1 s at 5 fps is 4 updates after the
//! first frame, which take a difference of up to about 60 gray levels under the default
//! threshold (0.8⁴ × 60 < 25); at 25 fps, 24 updates take any difference under it.

use thiserror::Error;

use crate::geometry::{Point, Polygon};

/// How motion is told from noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionConfig {
    /// Gray levels (0–255) a pixel must differ from the background by.
    pub threshold: u8,
    /// Pixels (after dilation) a box must have.
    pub min_area: u32,
    /// How fast the background follows the frames: each frame weighs this much (0–1].
    pub alpha: f32,
    /// The share of the frame (0–1] beyond which a change is a scene change, not motion.
    pub lightning: f32,
    /// How long, from the first frame and from a scene change, the background is only learnt.
    pub calibration_ms: u32,
    /// How fast the background follows the frames while calibrating (0–1].
    pub calibration_alpha: f32,
}

impl Default for MotionConfig {
    fn default() -> Self {
        MotionConfig {
            threshold: 25,
            min_area: 16,
            alpha: 0.05,
            lightning: 0.8,
            calibration_ms: 1000,
            calibration_alpha: 0.2,
        }
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum MotionError {
    #[error("a frame of {width}×{height} has no pixels")]
    EmptyFrame { width: usize, height: usize },
    #[error("the frame has {got} bytes; a {width}×{height} gray frame has {expected}")]
    FrameSize {
        width: usize,
        height: usize,
        expected: usize,
        got: usize,
    },
    #[error("the mask has {got} pixels; the frame has {expected}")]
    MaskSize { expected: usize, got: usize },
    #[error("{field} is {value}; {expected}")]
    Config {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// A moving region: pixel bounds, end exclusive, and how many pixels moved in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MotionBox {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
    pub area: u32,
}

/// One stream's motion state: its background and mask.
#[derive(Debug, Clone)]
pub struct MotionDetector {
    config: MotionConfig,
    width: usize,
    height: usize,
    /// 8.8 fixed point; empty until the first frame.
    background: Vec<u16>,
    /// true: never reported as moving.
    mask: Vec<bool>,
    /// The background weight in 8.8 fixed point (alpha × 256, at least 1).
    alpha: u32,
    /// `calibration_alpha` the same way.
    calibration_alpha: u32,
    /// Frames before this time (ms) only teach the background.
    calibrating_until: i64,
}

impl MotionDetector {
    pub fn new(
        width: usize,
        height: usize,
        config: MotionConfig,
    ) -> Result<MotionDetector, MotionError> {
        if width == 0 || height == 0 {
            return Err(MotionError::EmptyFrame { width, height });
        }
        for (field, alpha) in [
            ("alpha", config.alpha),
            ("calibration_alpha", config.calibration_alpha),
        ] {
            if !(alpha > 0.0 && alpha <= 1.0) {
                return Err(MotionError::Config {
                    field,
                    value: alpha.to_string(),
                    expected: "it must be above 0 and at most 1",
                });
            }
        }
        if !(config.lightning > 0.0 && config.lightning <= 1.0) {
            return Err(MotionError::Config {
                field: "lightning",
                value: config.lightning.to_string(),
                expected: "it must be above 0 and at most 1",
            });
        }
        Ok(MotionDetector {
            config,
            width,
            height,
            background: Vec::new(),
            mask: vec![false; width * height],
            alpha: fixed_point(config.alpha),
            calibration_alpha: fixed_point(config.calibration_alpha),
            calibrating_until: i64::MIN,
        })
    }

    /// Pixels that never count as moving (row-major, `true` = masked).
    pub fn set_mask(&mut self, mask: Vec<bool>) -> Result<(), MotionError> {
        if mask.len() != self.width * self.height {
            return Err(MotionError::MaskSize {
                expected: self.width * self.height,
                got: mask.len(),
            });
        }
        self.mask = mask;
        Ok(())
    }

    /// Whether a frame at `time_ms` would only teach the background (see the module's notes);
    /// true before the first frame.
    pub fn calibrating(&self, time_ms: i64) -> bool {
        self.background.is_empty() || time_ms < self.calibrating_until
    }

    /// The moving regions of `frame` (row-major gray, one byte a pixel), shown at `time_ms`
    /// (not before the last frame's), largest first, then top to bottom; none while
    /// calibrating.
    pub fn detect(&mut self, time_ms: i64, frame: &[u8]) -> Result<Vec<MotionBox>, MotionError> {
        let pixels = self.width * self.height;
        if frame.len() != pixels {
            return Err(MotionError::FrameSize {
                width: self.width,
                height: self.height,
                expected: pixels,
                got: frame.len(),
            });
        }
        if self.background.is_empty() {
            self.learn(time_ms, frame);
            return Ok(Vec::new());
        }
        if self.calibrating(time_ms) {
            self.follow(frame, self.calibration_alpha);
            return Ok(Vec::new());
        }
        let threshold = u16::from(self.config.threshold);
        let mut moved = vec![false; pixels];
        let mut count = 0usize;
        for (i, (&pixel, &background)) in frame.iter().zip(&self.background).enumerate() {
            let background = (background + 128) >> 8;
            if !self.mask[i] && u16::from(pixel).abs_diff(background) > threshold {
                moved[i] = true;
                count += 1;
            }
        }
        if count as f32 > self.config.lightning * pixels as f32 {
            self.learn(time_ms, frame);
            return Ok(Vec::new());
        }
        self.follow(frame, self.alpha);
        let dilated = dilate(&moved, self.width, self.height);
        let mut boxes: Vec<MotionBox> = components(&dilated, self.width, self.height)
            .into_iter()
            .filter(|b| b.area >= self.config.min_area)
            .collect();
        boxes.sort_by(|a, b| b.area.cmp(&a.area).then((a.y0, a.x0).cmp(&(b.y0, b.x0))));
        Ok(boxes)
    }

    /// Starts the background anew from `frame`, and calibration with it.
    fn learn(&mut self, time_ms: i64, frame: &[u8]) {
        self.background = frame.iter().map(|&p| u16::from(p) << 8).collect();
        self.calibrating_until = time_ms.saturating_add(i64::from(self.config.calibration_ms));
    }

    /// Moves the background towards `frame` by `alpha` (8.8 fixed point).
    fn follow(&mut self, frame: &[u8], alpha: u32) {
        for (background, &pixel) in self.background.iter_mut().zip(frame) {
            let target = u32::from(pixel) << 8;
            let current = u32::from(*background);
            // current + alpha × (target − current), in 8.8 fixed point.
            let next = (current * (256 - alpha) + target * alpha) >> 8;
            *background = next as u16;
        }
    }
}

/// The mask of these polygons (in pixels) for [`MotionDetector::set_mask`]: a pixel is masked
/// when its centre is inside one of them.
pub fn mask_of(polygons: &[Polygon], width: usize, height: usize) -> Vec<bool> {
    let mut mask = vec![false; width * height];
    for y in 0..height {
        for x in 0..width {
            let centre = Point::new(x as f32 + 0.5, y as f32 + 0.5);
            mask[y * width + x] = polygons.iter().any(|polygon| polygon.contains(centre));
        }
    }
    mask
}

/// A weight in (0, 1] as 8.8 fixed point, at least 1.
fn fixed_point(alpha: f32) -> u32 {
    ((alpha * 256.0).round() as u32).clamp(1, 256)
}

/// Halves a gray frame in each direction by averaging 2×2 blocks (an odd last row or column
/// is dropped), as motion runs on at most 640-wide frames.
pub fn downscale_half(width: usize, height: usize, frame: &[u8]) -> (usize, usize, Vec<u8>) {
    let (w, h) = (width / 2, height / 2);
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        let (top, bottom) = (&frame[2 * y * width..], &frame[(2 * y + 1) * width..]);
        for x in 0..w {
            let sum = u16::from(top[2 * x])
                + u16::from(top[2 * x + 1])
                + u16::from(bottom[2 * x])
                + u16::from(bottom[2 * x + 1]);
            out.push(((sum + 2) / 4) as u8);
        }
    }
    (w, h, out)
}

/// A 3×3 dilation: a pixel is set when it or any of its 8 neighbours is.
fn dilate(image: &[bool], width: usize, height: usize) -> Vec<bool> {
    let mut out = vec![false; image.len()];
    for y in 0..height {
        for x in 0..width {
            if !image[y * width + x] {
                continue;
            }
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    out[ny * width + nx] = true;
                }
            }
        }
    }
    out
}

/// The 4-connected components of the set pixels, as boxes, by two-pass union-find.
fn components(image: &[bool], width: usize, height: usize) -> Vec<MotionBox> {
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    const NONE: usize = usize::MAX;
    let mut label = vec![NONE; image.len()];
    let mut parent: Vec<usize> = Vec::new();
    for y in 0..height {
        for x in 0..width {
            let i = y * width + x;
            if !image[i] {
                continue;
            }
            let left = if x > 0 { label[i - 1] } else { NONE };
            let up = if y > 0 { label[i - width] } else { NONE };
            label[i] = match (left, up) {
                (NONE, NONE) => {
                    parent.push(parent.len());
                    parent.len() - 1
                }
                (l, NONE) | (NONE, l) => l,
                (l, u) => {
                    let (a, b) = (find(&mut parent, l), find(&mut parent, u));
                    parent[a.max(b)] = a.min(b);
                    a.min(b)
                }
            };
        }
    }
    let mut boxes: Vec<Option<MotionBox>> = vec![None; parent.len()];
    for y in 0..height {
        for x in 0..width {
            let l = label[y * width + x];
            if l == NONE {
                continue;
            }
            let root = find(&mut parent, l);
            let b = boxes[root].get_or_insert(MotionBox {
                x0: x,
                y0: y,
                x1: x + 1,
                y1: y + 1,
                area: 0,
            });
            b.x0 = b.x0.min(x);
            b.y0 = b.y0.min(y);
            b.x1 = b.x1.max(x + 1);
            b.y1 = b.y1.max(y + 1);
            b.area += 1;
        }
    }
    boxes.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests;
