//! JPEG snapshots of what a stream saw (docs/plans/video.md §6), encoded with `jpeg-encoder`:
//! the whole frame, or a crop around an object's box with some context kept around it. The live
//! pipeline has the luma plane at the analysed size, so a gray picture is the common case; an
//! RGB24 frame gives a colour one. Encoding is pure: the caller decides where the bytes go
//! ([`crate::db::VideoDb`] keeps them).

use jpeg_encoder::{ColorType, Encoder};
use thiserror::Error;

use crate::track::BoxF;

/// The quality snapshots are encoded at unless the caller says otherwise: small files with no
/// visible blocks on faces and number plates at the analysed size.
pub const DEFAULT_QUALITY: u8 = 80;

/// The context kept around a box on each side, as a fraction of the box's width and height.
pub const DEFAULT_MARGIN: f32 = 0.25;

/// The smallest crop side when the frame is at least that large: a distant person is a few
/// pixels wide, and a picture of them alone says nothing.
pub const MIN_CROP_SIDE: usize = 64;

/// The largest frame side a baseline JPEG can describe (its sizes are 16-bit).
const MAX_SIDE: usize = u16::MAX as usize;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("{layout} frame of {width}×{height} pixels has {expected} bytes, got {got}")]
    BufferSize {
        layout: &'static str,
        width: usize,
        height: usize,
        expected: usize,
        got: usize,
    },
    #[error("a snapshot frame side must be 1 to {MAX_SIDE} pixels, got {width}×{height}")]
    FrameSize { width: usize, height: usize },
    #[error("JPEG quality must be 1 to 100, got {0}")]
    Quality(u8),
    #[error("crop margin must be a finite fraction ≥ 0, got {0}")]
    Margin(f32),
    #[error("crop box ({x0}, {y0})–({x1}, {y1}) is not finite")]
    Box { x0: f32, y0: f32, x1: f32, y1: f32 },
    #[error(
        "crop region {width}×{height} at ({x}, {y}) does not lie within the \
         {frame_width}×{frame_height} frame"
    )]
    Region {
        x: usize,
        y: usize,
        width: usize,
        height: usize,
        frame_width: usize,
        frame_height: usize,
    },
    #[error("JPEG encoding failed: {0}")]
    Encode(String),
}

/// How a frame's pixels are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One byte per pixel: the luma plane.
    Gray,
    /// Three bytes per pixel, red, green, blue (ffmpeg's `rgb24`).
    Rgb24,
}

impl Layout {
    fn bytes_per_pixel(self) -> usize {
        match self {
            Layout::Gray => 1,
            Layout::Rgb24 => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Layout::Gray => "a gray",
            Layout::Rgb24 => "an RGB24",
        }
    }
}

/// A frame checked to hold exactly `width × height` pixels of its layout, rows top to bottom
/// with no padding.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pixels: &'a [u8],
    width: usize,
    height: usize,
    layout: Layout,
}

impl<'a> Frame<'a> {
    pub fn gray(pixels: &'a [u8], width: usize, height: usize) -> Result<Frame<'a>, SnapshotError> {
        Frame::new(pixels, width, height, Layout::Gray)
    }

    pub fn rgb24(
        pixels: &'a [u8],
        width: usize,
        height: usize,
    ) -> Result<Frame<'a>, SnapshotError> {
        Frame::new(pixels, width, height, Layout::Rgb24)
    }

    pub fn new(
        pixels: &'a [u8],
        width: usize,
        height: usize,
        layout: Layout,
    ) -> Result<Frame<'a>, SnapshotError> {
        if !(1..=MAX_SIDE).contains(&width) || !(1..=MAX_SIDE).contains(&height) {
            return Err(SnapshotError::FrameSize { width, height });
        }
        let expected = width * height * layout.bytes_per_pixel();
        if pixels.len() != expected {
            return Err(SnapshotError::BufferSize {
                layout: layout.name(),
                width,
                height,
                expected,
                got: pixels.len(),
            });
        }
        Ok(Frame {
            pixels,
            width,
            height,
            layout,
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }
}

/// A rectangle of whole pixels: columns `x..x + width`, rows `y..y + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// The region to picture for an object whose box is `bbox` (in the frame's pixels) on a frame
/// of `width × height`: the box grown by `margin` of its size on every side, at least
/// [`MIN_CROP_SIDE`] each way where the frame allows, then moved (not shrunk) to lie within the
/// frame, so that an object at an edge keeps its context on the inner side. A box partly or
/// wholly outside the frame gives the nearest region inside it.
pub fn crop_around(
    bbox: &BoxF,
    margin: f32,
    width: usize,
    height: usize,
) -> Result<Rect, SnapshotError> {
    if !margin.is_finite() || margin < 0.0 {
        return Err(SnapshotError::Margin(margin));
    }
    if ![bbox.x0, bbox.y0, bbox.x1, bbox.y1]
        .iter()
        .all(|v| v.is_finite())
    {
        return Err(SnapshotError::Box {
            x0: bbox.x0,
            y0: bbox.y0,
            x1: bbox.x1,
            y1: bbox.y1,
        });
    }
    if width == 0 || height == 0 {
        return Err(SnapshotError::FrameSize { width, height });
    }
    let (x, crop_width) = crop_axis(bbox.x0, bbox.x1, margin, width);
    let (y, crop_height) = crop_axis(bbox.y0, bbox.y1, margin, height);
    Ok(Rect {
        x,
        y,
        width: crop_width,
        height: crop_height,
    })
}

/// One axis of [`crop_around`]: the start and length of the span on a side of `extent` pixels.
fn crop_axis(a: f32, b: f32, margin: f32, extent: usize) -> (usize, usize) {
    let (low, high) = (f64::from(a.min(b)), f64::from(a.max(b)));
    let grow = (high - low) * f64::from(margin);
    let (mut start, mut end) = (low - grow, high + grow);
    let least = MIN_CROP_SIDE.min(extent) as f64;
    if end - start < least {
        let centre = (start + end) / 2.0;
        start = centre - least / 2.0;
        end = start + least;
    }
    // Whole pixels covering the span; `as` saturates, so a box far outside stays finite.
    let extent = extent as i64;
    let length = ((end.ceil() as i64).saturating_sub(start.floor() as i64)).clamp(1, extent);
    let start = (start.floor() as i64).clamp(0, extent - length);
    (start as usize, length as usize)
}

/// Encodes `region` of the frame (the whole frame when `None`) as a baseline JPEG: gray frames
/// give one-component pictures, RGB24 frames colour ones.
pub fn encode(
    frame: &Frame<'_>,
    region: Option<Rect>,
    quality: u8,
) -> Result<Vec<u8>, SnapshotError> {
    if !(1..=100).contains(&quality) {
        return Err(SnapshotError::Quality(quality));
    }
    let region = region.unwrap_or(Rect {
        x: 0,
        y: 0,
        width: frame.width,
        height: frame.height,
    });
    let fits = region.width > 0
        && region.height > 0
        && region
            .x
            .checked_add(region.width)
            .is_some_and(|end| end <= frame.width)
        && region
            .y
            .checked_add(region.height)
            .is_some_and(|end| end <= frame.height);
    if !fits {
        return Err(SnapshotError::Region {
            x: region.x,
            y: region.y,
            width: region.width,
            height: region.height,
            frame_width: frame.width,
            frame_height: frame.height,
        });
    }
    let bytes_per_pixel = frame.layout.bytes_per_pixel();
    let whole = region.width == frame.width && region.height == frame.height;
    let cropped;
    let pixels = if whole {
        frame.pixels
    } else {
        let row_bytes = region.width * bytes_per_pixel;
        let mut copy = Vec::with_capacity(row_bytes * region.height);
        for row in region.y..region.y + region.height {
            let start = (row * frame.width + region.x) * bytes_per_pixel;
            copy.extend_from_slice(&frame.pixels[start..start + row_bytes]);
        }
        cropped = copy;
        &cropped
    };
    let color = match frame.layout {
        Layout::Gray => ColorType::Luma,
        Layout::Rgb24 => ColorType::Rgb,
    };
    // A typical snapshot is tens of kilobytes; a tenth of the raw size avoids most regrowth.
    let mut jpeg = Vec::with_capacity(pixels.len() / 10 + 1024);
    // Both sides are at most MAX_SIDE (checked by Frame::new), so they fit in u16.
    Encoder::new(&mut jpeg, quality)
        .encode(pixels, region.width as u16, region.height as u16, color)
        .map_err(|error| SnapshotError::Encode(error.to_string()))?;
    Ok(jpeg)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The size and component count in a JPEG's SOF0 segment, or why it has none: enough to
    /// show that the encoder wrote a whole, well-formed baseline picture of the expected size.
    pub(crate) fn jpeg_header(jpeg: &[u8]) -> Result<(usize, usize, u8), String> {
        if !jpeg.starts_with(&[0xFF, 0xD8]) {
            return Err("no SOI marker at the start".into());
        }
        if !jpeg.ends_with(&[0xFF, 0xD9]) {
            return Err("no EOI marker at the end".into());
        }
        let mut at = 2;
        while at + 4 <= jpeg.len() {
            if jpeg[at] != 0xFF {
                return Err(format!(
                    "byte {at}: expected a marker, got {:#04x}",
                    jpeg[at]
                ));
            }
            let marker = jpeg[at + 1];
            let length = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
            if marker == 0xC0 {
                let segment = jpeg
                    .get(at + 4..at + 2 + length)
                    .filter(|s| s.len() >= 6)
                    .ok_or("SOF0 segment is cut short")?;
                let height = usize::from(u16::from_be_bytes([segment[1], segment[2]]));
                let width = usize::from(u16::from_be_bytes([segment[3], segment[4]]));
                return Ok((width, height, segment[5]));
            }
            if marker == 0xDA {
                return Err("the scan starts before any SOF0 segment".into());
            }
            at += 2 + length;
        }
        Err("no SOF0 segment".into())
    }

    /// A gradient, so the encoder has something other than a flat field to compress.
    fn gray_frame(width: usize, height: usize) -> Vec<u8> {
        (0..width * height)
            .map(|i| ((i % width) * 255 / width) as u8 ^ ((i / width) as u8))
            .collect()
    }

    #[test]
    fn a_gray_frame_encodes_to_a_one_component_jpeg_of_its_size() {
        let pixels = gray_frame(320, 180);
        let frame = Frame::gray(&pixels, 320, 180).unwrap();
        let jpeg = encode(&frame, None, DEFAULT_QUALITY).unwrap();
        assert_eq!(jpeg_header(&jpeg), Ok((320, 180, 1)));
        assert!(jpeg.len() < pixels.len(), "{} bytes", jpeg.len());
    }

    #[test]
    fn an_rgb_frame_encodes_to_a_colour_jpeg() {
        let pixels: Vec<u8> = (0..97 * 41 * 3).map(|i| (i * 7) as u8).collect();
        let frame = Frame::rgb24(&pixels, 97, 41).unwrap();
        let jpeg = encode(&frame, None, 90).unwrap();
        assert_eq!(jpeg_header(&jpeg), Ok((97, 41, 3)));
    }

    #[test]
    fn a_crop_encodes_only_its_region() {
        let pixels = gray_frame(640, 360);
        let frame = Frame::gray(&pixels, 640, 360).unwrap();
        let region = crop_around(&BoxF::new(300.0, 100.0, 380.0, 260.0), 0.25, 640, 360).unwrap();
        assert_eq!(
            region,
            Rect {
                x: 280,
                y: 60,
                width: 120,
                height: 240
            }
        );
        let jpeg = encode(&frame, Some(region), DEFAULT_QUALITY).unwrap();
        assert_eq!(jpeg_header(&jpeg), Ok((120, 240, 1)));
        // An RGB crop copies three bytes a pixel from the right rows.
        let rgb: Vec<u8> = (0..640 * 360 * 3).map(|i| (i % 251) as u8).collect();
        let frame = Frame::rgb24(&rgb, 640, 360).unwrap();
        let jpeg = encode(&frame, Some(region), DEFAULT_QUALITY).unwrap();
        assert_eq!(jpeg_header(&jpeg), Ok((120, 240, 3)));
    }

    #[test]
    fn crops_are_clamped_to_the_frame_and_at_least_the_minimum_side() {
        let rect = |x, y, width, height| Rect {
            x,
            y,
            width,
            height,
        };
        // A small box in the top-left corner: 64×64, moved inside rather than cut.
        assert_eq!(
            crop_around(&BoxF::new(0.0, 0.0, 10.0, 10.0), 0.25, 640, 360).unwrap(),
            rect(0, 0, 64, 64)
        );
        // The same at the bottom-right corner.
        assert_eq!(
            crop_around(&BoxF::new(630.0, 350.0, 640.0, 360.0), 0.25, 640, 360).unwrap(),
            rect(576, 296, 64, 64)
        );
        // A box wider than the frame once grown: the whole width, no more.
        assert_eq!(
            crop_around(&BoxF::new(-50.0, 100.0, 700.0, 200.0), 0.25, 640, 360).unwrap(),
            rect(0, 75, 640, 150)
        );
        // A frame smaller than the minimum: all of it.
        assert_eq!(
            crop_around(&BoxF::new(5.0, 5.0, 10.0, 10.0), 0.25, 40, 30).unwrap(),
            rect(0, 0, 40, 30)
        );
        // A box wholly outside the frame: the nearest region inside it.
        assert_eq!(
            crop_around(&BoxF::new(900.0, -400.0, 950.0, -380.0), 0.0, 640, 360).unwrap(),
            rect(576, 0, 64, 64)
        );
        // Corners given the wrong way round mean the same box.
        assert_eq!(
            crop_around(&BoxF::new(380.0, 260.0, 300.0, 100.0), 0.25, 640, 360).unwrap(),
            rect(280, 60, 120, 240)
        );
    }

    #[test]
    fn a_buffer_of_the_wrong_length_is_refused_with_both_lengths() {
        let err = Frame::gray(&[0; 99], 10, 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a gray frame of 10×10 pixels has 100 bytes, got 99"
        );
        let err = Frame::rgb24(&[0; 100], 10, 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "an RGB24 frame of 10×10 pixels has 300 bytes, got 100"
        );
        let err = Frame::gray(&[], 0, 10).unwrap_err();
        assert!(
            matches!(err, SnapshotError::FrameSize { width: 0, .. }),
            "{err}"
        );
        let err = Frame::gray(&[0; 70_000], 70_000, 1).unwrap_err();
        assert!(err.to_string().contains("70000×1"), "{err}");
    }

    #[test]
    fn bad_quality_margin_box_and_region_are_refused() {
        let pixels = gray_frame(100, 100);
        let frame = Frame::gray(&pixels, 100, 100).unwrap();
        for quality in [0, 101] {
            let err = encode(&frame, None, quality).unwrap_err();
            assert!(
                err.to_string().contains("quality must be 1 to 100"),
                "{err}"
            );
        }
        let outside = Rect {
            x: 50,
            y: 0,
            width: 51,
            height: 10,
        };
        let err = encode(&frame, Some(outside), DEFAULT_QUALITY).unwrap_err();
        assert_eq!(
            err.to_string(),
            "crop region 51×10 at (50, 0) does not lie within the 100×100 frame"
        );
        let empty = Rect {
            x: 0,
            y: 0,
            width: 0,
            height: 10,
        };
        assert!(encode(&frame, Some(empty), DEFAULT_QUALITY).is_err());
        let err = crop_around(&BoxF::new(f32::NAN, 0.0, 1.0, 1.0), 0.25, 100, 100).unwrap_err();
        assert!(err.to_string().contains("not finite"), "{err}");
        let err = crop_around(&BoxF::new(0.0, 0.0, 1.0, 1.0), -0.5, 100, 100).unwrap_err();
        assert!(err.to_string().contains("margin"), "{err}");
    }

    #[test]
    fn the_header_parser_rejects_what_is_not_a_whole_jpeg() {
        let pixels = gray_frame(64, 64);
        let jpeg = encode(&Frame::gray(&pixels, 64, 64).unwrap(), None, 50).unwrap();
        assert!(jpeg_header(&jpeg[..jpeg.len() - 1]).is_err());
        assert!(jpeg_header(&jpeg[1..]).is_err());
        assert!(jpeg_header(&[0xFF, 0xD8, 0xFF, 0xD9]).is_err());
    }

    proptest! {
        #[test]
        fn a_crop_always_lies_within_the_frame_and_holds_the_visible_box(
            x0 in -200.0f32..900.0, y0 in -200.0f32..600.0,
            w in 0.0f32..700.0, h in 0.0f32..500.0,
            margin in 0.0f32..1.0,
            width in 1usize..800, height in 1usize..500,
        ) {
            let bbox = BoxF::new(x0, y0, x0 + w, y0 + h);
            let rect = crop_around(&bbox, margin, width, height).unwrap();
            prop_assert!(rect.x + rect.width <= width && rect.y + rect.height <= height);
            prop_assert!(rect.width >= MIN_CROP_SIDE.min(width));
            prop_assert!(rect.height >= MIN_CROP_SIDE.min(height));
            // The part of the box inside the frame is inside the crop.
            let (vx0, vx1) = (x0.max(0.0), (x0 + w).min(width as f32));
            let (vy0, vy1) = (y0.max(0.0), (y0 + h).min(height as f32));
            if vx0 < vx1 && vy0 < vy1 {
                prop_assert!(rect.x as f32 <= vx0.floor() && vx1.ceil() <= (rect.x + rect.width) as f32);
                prop_assert!(rect.y as f32 <= vy0.floor() && vy1.ceil() <= (rect.y + rect.height) as f32);
            }
        }
    }
}
