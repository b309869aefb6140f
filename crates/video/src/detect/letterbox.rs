//! Letterboxing, as Ultralytics prepares an image: scaled by r = min(S/w, S/h) so it fits the
//! model's input whole, centred, the rest gray 114; RGB scaled to [0, 1], planes in CHW order.
//! Boxes the model finds map back to the image by the inverse, clamped to its edges.

use crate::track::BoxF;

/// The gray of the padding, as Ultralytics uses.
pub const PAD_GRAY: u8 = 114;

/// Where an image of one size lands in an input of another.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    /// The scaled image's size in the input.
    pub width: usize,
    pub height: usize,
    /// Columns of padding on the left, rows on top.
    pub pad_x: usize,
    pub pad_y: usize,
    pub source_width: usize,
    pub source_height: usize,
    pub input_width: usize,
    pub input_height: usize,
}

impl Letterbox {
    /// Sizes must be at least 1.
    pub fn new(
        source_width: usize,
        source_height: usize,
        input_width: usize,
        input_height: usize,
    ) -> Letterbox {
        let scale = (input_width as f32 / source_width as f32)
            .min(input_height as f32 / source_height as f32);
        let width = ((source_width as f32 * scale).round() as usize).clamp(1, input_width);
        let height = ((source_height as f32 * scale).round() as usize).clamp(1, input_height);
        Letterbox {
            scale,
            width,
            height,
            // Ultralytics rounds (S − w·r)/2 − 0.1: the odd column goes right and below.
            pad_x: (input_width - width) / 2,
            pad_y: (input_height - height) / 2,
            source_width,
            source_height,
            input_width,
            input_height,
        }
    }

    /// Writes the letterboxed `rgb` (RGB24, `source_width` × `source_height`) into `input`, three
    /// planes of `input_width` × `input_height` f32 in [0, 1]. Resampling is bilinear with pixel
    /// centres aligned (OpenCV's `INTER_LINEAR`, which Ultralytics uses).
    pub fn fill(&self, rgb: &[u8], input: &mut [f32]) {
        let plane = self.input_width * self.input_height;
        debug_assert_eq!(rgb.len(), self.source_width * self.source_height * 3);
        debug_assert_eq!(input.len(), plane * 3);
        input.fill(f32::from(PAD_GRAY) / 255.0);
        let columns = taps(self.source_width, self.width);
        let rows = taps(self.source_height, self.height);
        let stride = self.source_width * 3;
        for (y, &(y0, y1, fy)) in rows.iter().enumerate() {
            let (top, bottom) = (&rgb[y0 * stride..][..stride], &rgb[y1 * stride..][..stride]);
            let at = (self.pad_y + y) * self.input_width + self.pad_x;
            for (x, &(x0, x1, fx)) in columns.iter().enumerate() {
                for channel in 0..3 {
                    let value = |row: &[u8], column: usize| f32::from(row[column * 3 + channel]);
                    let upper = value(top, x0) * (1.0 - fx) + value(top, x1) * fx;
                    let lower = value(bottom, x0) * (1.0 - fx) + value(bottom, x1) * fx;
                    input[channel * plane + at + x] = (upper * (1.0 - fy) + lower * fy) / 255.0;
                }
            }
        }
    }

    /// A box in the input's pixels as a box on the source image, clamped to it.
    pub fn to_source(&self, bbox: BoxF) -> BoxF {
        let (w, h) = (self.source_width as f32, self.source_height as f32);
        let x = |value: f32| ((value - self.pad_x as f32) / self.scale).clamp(0.0, w);
        let y = |value: f32| ((value - self.pad_y as f32) / self.scale).clamp(0.0, h);
        BoxF::new(x(bbox.x0), y(bbox.y0), x(bbox.x1), y(bbox.y1))
    }
}

/// For each of `scaled` output positions, the two source positions it blends and the weight of
/// the second.
fn taps(source: usize, scaled: usize) -> Vec<(usize, usize, f32)> {
    let ratio = source as f32 / scaled as f32;
    (0..scaled)
        .map(|i| {
            let at = ((i as f32 + 0.5) * ratio - 0.5).max(0.0);
            let first = (at.floor() as usize).min(source - 1);
            let second = (first + 1).min(source - 1);
            let weight = if second == first {
                0.0
            } else {
                at - first as f32
            };
            (first, second, weight)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn gray() -> f32 {
        f32::from(PAD_GRAY) / 255.0
    }

    #[test]
    fn a_wide_image_is_padded_above_and_below() {
        let letterbox = Letterbox::new(1280, 720, 640, 640);
        assert_eq!(letterbox.scale, 0.5);
        assert_eq!((letterbox.width, letterbox.height), (640, 360));
        assert_eq!((letterbox.pad_x, letterbox.pad_y), (0, 140));
        let tall = Letterbox::new(300, 600, 640, 640);
        assert_eq!(
            (tall.width, tall.height, tall.pad_x, tall.pad_y),
            (320, 640, 160, 0)
        );
        // An odd leftover column goes to the right.
        let odd = Letterbox::new(3, 4, 8, 8);
        assert_eq!((odd.width, odd.pad_x), (6, 1));
    }

    #[test]
    fn fill_copies_an_image_of_the_input_width_and_pads_with_gray() {
        // A 4×2 image into 4×4: no resampling, one row of padding above and below.
        let rgb: Vec<u8> = (0..4 * 2 * 3).map(|i| (i * 10) as u8).collect();
        let letterbox = Letterbox::new(4, 2, 4, 4);
        assert_eq!((letterbox.scale, letterbox.pad_y), (1.0, 1));
        let mut input = vec![0.0; 3 * 16];
        letterbox.fill(&rgb, &mut input);
        for channel in 0..3 {
            let plane = &input[channel * 16..][..16];
            assert!(plane[..4].iter().chain(&plane[12..]).all(|&v| v == gray()));
            for y in 0..2 {
                for x in 0..4 {
                    let expected = f32::from(rgb[(y * 4 + x) * 3 + channel]) / 255.0;
                    assert_eq!(plane[(1 + y) * 4 + x], expected, "c{channel} x{x} y{y}");
                }
            }
        }
    }

    #[test]
    fn fill_blends_neighbours_when_halving() {
        // 4×1 gray levels 0, 100, 200, 250 halved to 2×1 (in a 2×2 input): each output pixel
        // is the mean of its two sources, as OpenCV's linear resize gives.
        let rgb: Vec<u8> = [0u8, 100, 200, 250]
            .iter()
            .flat_map(|&v| [v, v, v])
            .collect();
        let letterbox = Letterbox::new(4, 1, 2, 2);
        assert_eq!(
            (letterbox.width, letterbox.height, letterbox.pad_y),
            (2, 1, 0)
        );
        let mut input = vec![0.0; 3 * 4];
        letterbox.fill(&rgb, &mut input);
        assert_eq!(&input[..4], &[50.0 / 255.0, 225.0 / 255.0, gray(), gray()]);
    }

    #[test]
    fn boxes_map_back_and_are_clamped() {
        let letterbox = Letterbox::new(1280, 720, 640, 640);
        let inside = letterbox.to_source(BoxF::new(150.0, 200.0, 250.0, 400.0));
        assert_eq!(inside, BoxF::new(300.0, 120.0, 500.0, 520.0));
        let over = letterbox.to_source(BoxF::new(590.0, 460.0, 650.0, 520.0));
        assert_eq!(over, BoxF::new(1180.0, 640.0, 1280.0, 720.0));
        let padding = letterbox.to_source(BoxF::new(480.0, 30.0, 520.0, 90.0));
        assert_eq!((padding.y0, padding.y1), (0.0, 0.0));
    }

    proptest! {
        /// Mapping back inverts letterboxing: a box on the image, placed into the input as
        /// the image was, comes back where it was.
        #[test]
        fn mapping_back_inverts_letterboxing(
            width in 1usize..4000, height in 1usize..4000,
            input_width in 32usize..1280, input_height in 32usize..1280,
            corners in prop::array::uniform4(0.0f32..1.0),
        ) {
            let letterbox = Letterbox::new(width, height, input_width, input_height);
            let (w, h) = (width as f32, height as f32);
            let source = BoxF::new(
                corners[0].min(corners[1]) * w, corners[2].min(corners[3]) * h,
                corners[0].max(corners[1]) * w, corners[2].max(corners[3]) * h,
            );
            let into = |x: f32, pad: usize| x * letterbox.scale + pad as f32;
            let input = BoxF::new(
                into(source.x0, letterbox.pad_x), into(source.y0, letterbox.pad_y),
                into(source.x1, letterbox.pad_x), into(source.y1, letterbox.pad_y),
            );
            let back = letterbox.to_source(input);
            let tolerance = 1e-3 * w.max(h).max(1.0);
            for (a, b) in [(back.x0, source.x0), (back.y0, source.y0), (back.x1, source.x1), (back.y1, source.y1)] {
                prop_assert!((a - b).abs() <= tolerance, "{back:?} vs {source:?}");
            }
            // And nothing maps outside the image, wherever it was in the input.
            let anywhere = letterbox.to_source(BoxF::new(-50.0, -50.0, 5000.0, 5000.0));
            prop_assert_eq!(anywhere, BoxF::new(0.0, 0.0, w, h));
        }

        /// The scaled image always fits the input, centred to within a pixel.
        #[test]
        fn the_scaled_image_fits_centred(
            width in 1usize..4000, height in 1usize..4000,
            input_width in 1usize..1280, input_height in 1usize..1280,
        ) {
            let l = Letterbox::new(width, height, input_width, input_height);
            prop_assert!(l.pad_x + l.width <= input_width && l.pad_y + l.height <= input_height);
            let right = input_width - l.width - l.pad_x;
            let below = input_height - l.height - l.pad_y;
            prop_assert!(right - l.pad_x <= 1 && below - l.pad_y <= 1);
            // One side fills the input (to within rounding).
            prop_assert!(l.width.abs_diff(input_width) <= 1 || l.height.abs_diff(input_height) <= 1);
        }
    }
}
