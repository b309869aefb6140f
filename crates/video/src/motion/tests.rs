use proptest::prelude::*;

use super::*;

const W: usize = 40;
const H: usize = 30;

/// A dark frame with bright rectangles (x0, y0, x1, y1), end exclusive.
fn frame(rects: &[(usize, usize, usize, usize)]) -> Vec<u8> {
    let mut f = vec![20u8; W * H];
    for &(x0, y0, x1, y1) in rects {
        for y in y0..y1 {
            for x in x0..x1 {
                f[y * W + x] = 200;
            }
        }
    }
    f
}

/// A detector with no calibration: the first frame only starts the background.
fn detector() -> MotionDetector {
    MotionDetector::new(
        W,
        H,
        MotionConfig {
            calibration_ms: 0,
            ..MotionConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn a_still_scene_has_no_motion_and_the_first_frame_only_starts_the_background() {
    let mut d = detector();
    assert_eq!(d.detect(0, &frame(&[(5, 5, 9, 9)])).unwrap(), vec![]);
    for _ in 0..3 {
        assert_eq!(d.detect(0, &frame(&[(5, 5, 9, 9)])).unwrap(), vec![]);
    }
}

#[test]
fn a_square_that_appears_is_one_box_grown_by_the_dilation() {
    let mut d = detector();
    d.detect(0, &frame(&[])).unwrap();
    let boxes = d.detect(0, &frame(&[(10, 5, 20, 15)])).unwrap();
    assert_eq!(
        boxes,
        vec![MotionBox {
            x0: 9,
            y0: 4,
            x1: 21,
            y1: 16,
            area: 144
        }]
    );
}

#[test]
fn two_squares_apart_are_two_boxes_largest_first_and_small_specks_are_dropped() {
    let mut d = detector();
    d.detect(0, &frame(&[])).unwrap();
    // A 1-pixel speck dilates to 9 pixels, under min_area 16.
    let boxes = d
        .detect(
            0,
            &frame(&[(2, 2, 6, 6), (20, 10, 30, 20), (35, 25, 36, 26)]),
        )
        .unwrap();
    let bounds: Vec<(usize, usize, usize, usize)> =
        boxes.iter().map(|b| (b.x0, b.y0, b.x1, b.y1)).collect();
    assert_eq!(bounds, vec![(19, 9, 31, 21), (1, 1, 7, 7)]);
}

#[test]
fn masked_pixels_never_move() {
    let mut d = detector();
    let mut mask = vec![false; W * H];
    for y in 0..H {
        for x in 0..W / 2 {
            mask[y * W + x] = true;
        }
    }
    d.set_mask(mask).unwrap();
    d.detect(0, &frame(&[])).unwrap();
    let boxes = d
        .detect(0, &frame(&[(2, 2, 8, 8), (25, 2, 31, 8)]))
        .unwrap();
    assert_eq!(boxes.len(), 1, "{boxes:?}");
    assert_eq!((boxes[0].x0, boxes[0].x1), (24, 32));
    assert_eq!(
        d.set_mask(vec![false; 3]),
        Err(MotionError::MaskSize {
            expected: W * H,
            got: 3
        })
    );
}

#[test]
fn a_mask_covers_the_pixels_whose_centre_is_inside_a_polygon() {
    use crate::geometry::{Point, Polygon};
    let rect = |x0: f32, y0: f32, x1: f32, y1: f32| Polygon {
        points: vec![
            Point::new(x0, y0),
            Point::new(x1, y0),
            Point::new(x1, y1),
            Point::new(x0, y1),
        ],
    };
    // On a 4×2 frame: x up to 1.2 covers the first column's centre (0.5) only; a second
    // polygon covers the last column's second row.
    let mask = mask_of(&[rect(0.0, 0.0, 1.2, 2.0), rect(3.4, 1.4, 4.0, 2.0)], 4, 2);
    assert_eq!(
        mask,
        vec![true, false, false, false, true, false, false, true]
    );
    assert_eq!(mask_of(&[], 3, 1), vec![false; 3]);
}

#[test]
fn a_scene_change_relearns_the_background_instead_of_reporting_motion() {
    let mut d = detector();
    d.detect(0, &frame(&[])).unwrap();
    let lit = vec![220u8; W * H];
    assert_eq!(d.detect(0, &lit).unwrap(), vec![]);
    // The new scene is the background now: a square on it is motion again, the rest not.
    let mut square = lit.clone();
    for y in 10..20 {
        for x in 10..20 {
            square[y * W + x] = 40;
        }
    }
    let boxes = d.detect(0, &square).unwrap();
    assert_eq!(boxes.len(), 1, "{boxes:?}");
    assert_eq!((boxes[0].x0, boxes[0].y0), (9, 9));
}

#[test]
fn an_object_that_stays_fades_into_the_background() {
    let mut d = detector();
    d.detect(0, &frame(&[])).unwrap();
    let parked = frame(&[(10, 10, 20, 20)]);
    let mut frames_with_motion = 0;
    for _ in 0..200 {
        if !d.detect(0, &parked).unwrap().is_empty() {
            frames_with_motion += 1;
        }
    }
    // With alpha 0.05 (13/256) a difference of 180 falls under 25 after about 40 frames.
    assert!(
        (30..60).contains(&frames_with_motion),
        "{frames_with_motion}"
    );
}

#[test]
fn calibration_learns_what_the_first_second_shows_and_reports_nothing_meanwhile() {
    // 25 frames a second. The square is there in the first frame and moves off at once,
    // 10 pixels on, where it stays: the first frame's background has it in the wrong place.
    let (first, settled) = (frame(&[(5, 5, 11, 11)]), frame(&[(15, 5, 21, 11)]));
    let mut d = MotionDetector::new(W, H, MotionConfig::default()).unwrap();
    assert!(d.calibrating(0));
    assert_eq!(d.detect(0, &first).unwrap(), vec![]);
    for k in 1..25 {
        assert!(d.calibrating(k * 40));
        assert_eq!(d.detect(k * 40, &settled).unwrap(), vec![], "frame {k}");
    }
    // Calibrated at 1 s: no ghost where it was, and nothing where it stays.
    assert!(!d.calibrating(1000));
    for k in 25..50 {
        assert_eq!(d.detect(k * 40, &settled).unwrap(), vec![], "frame {k}");
    }
    // Motion is reported again after it.
    assert_eq!(
        d.detect(2000, &frame(&[(15, 5, 21, 11), (30, 20, 36, 26)]))
            .unwrap()
            .len(),
        1
    );

    // Without calibration both places are motion, for a while: where it was (its ghost)
    // and where it is now.
    let mut d = detector();
    d.detect(0, &first).unwrap();
    let boxes = d.detect(1000, &settled).unwrap();
    assert_eq!(boxes.len(), 2, "{boxes:?}");
}

#[test]
fn a_scene_change_starts_calibration_again() {
    let mut d = MotionDetector::new(W, H, MotionConfig::default()).unwrap();
    d.detect(0, &frame(&[])).unwrap();
    d.detect(1000, &frame(&[])).unwrap();
    assert!(!d.calibrating(1000));
    // The lights go on at 2 s: a second of calibration from there.
    assert_eq!(d.detect(2000, &vec![220u8; W * H]).unwrap(), vec![]);
    assert!(d.calibrating(2999) && !d.calibrating(3000));
    let mut square = vec![220u8; W * H];
    for y in 10..20 {
        for x in 10..20 {
            square[y * W + x] = 40;
        }
    }
    assert_eq!(d.detect(2500, &square).unwrap(), vec![]);
}

#[test]
fn bad_frames_and_settings_are_clear_errors() {
    let mut d = detector();
    assert_eq!(
        d.detect(0, &[0u8; 10]),
        Err(MotionError::FrameSize {
            width: W,
            height: H,
            expected: W * H,
            got: 10
        })
    );
    assert_eq!(
        MotionDetector::new(0, 5, MotionConfig::default()).unwrap_err(),
        MotionError::EmptyFrame {
            width: 0,
            height: 5
        }
    );
    for (config, field) in [
        (
            MotionConfig {
                alpha: 0.0,
                ..MotionConfig::default()
            },
            "alpha",
        ),
        (
            MotionConfig {
                alpha: f32::NAN,
                ..MotionConfig::default()
            },
            "alpha",
        ),
        (
            MotionConfig {
                calibration_alpha: 0.0,
                ..MotionConfig::default()
            },
            "calibration_alpha",
        ),
        (
            MotionConfig {
                lightning: 1.5,
                ..MotionConfig::default()
            },
            "lightning",
        ),
    ] {
        match MotionDetector::new(W, H, config) {
            Err(MotionError::Config { field: named, .. }) => assert_eq!(named, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn halving_averages_two_by_two_blocks() {
    let frame = [10u8, 20, 30, 40, 50, 50, 30, 40, 255, 255, 0, 0];
    // 4×3: the odd last row is dropped.
    assert_eq!(downscale_half(4, 3, &frame), (2, 1, vec![33, 35]));
}

/// Components by flood fill, the obvious way, to check the union-find against.
fn flood_fill_boxes(image: &[bool], width: usize, height: usize) -> Vec<MotionBox> {
    let mut seen = vec![false; image.len()];
    let mut boxes = Vec::new();
    for start in 0..image.len() {
        if !image[start] || seen[start] {
            continue;
        }
        let mut b = MotionBox {
            x0: usize::MAX,
            y0: usize::MAX,
            x1: 0,
            y1: 0,
            area: 0,
        };
        let mut stack = vec![start];
        seen[start] = true;
        while let Some(i) = stack.pop() {
            let (x, y) = (i % width, i / width);
            b.x0 = b.x0.min(x);
            b.y0 = b.y0.min(y);
            b.x1 = b.x1.max(x + 1);
            b.y1 = b.y1.max(y + 1);
            b.area += 1;
            let mut neighbours = Vec::with_capacity(4);
            if x > 0 {
                neighbours.push(i - 1);
            }
            if x + 1 < width {
                neighbours.push(i + 1);
            }
            if y > 0 {
                neighbours.push(i - width);
            }
            if y + 1 < height {
                neighbours.push(i + width);
            }
            for j in neighbours {
                if image[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        boxes.push(b);
    }
    boxes
}

fn sorted(boxes: Vec<MotionBox>) -> Vec<(usize, usize, usize, usize, u32)> {
    let mut out: Vec<_> = boxes
        .into_iter()
        .map(|b| (b.x0, b.y0, b.x1, b.y1, b.area))
        .collect();
    out.sort_unstable();
    out
}

fn images() -> impl Strategy<Value = (usize, usize, Vec<bool>)> {
    (1usize..24, 1usize..24).prop_flat_map(|(w, h)| {
        (
            Just(w),
            Just(h),
            proptest::collection::vec(any::<bool>(), w * h),
        )
    })
}

proptest! {
    #[test]
    fn components_match_a_flood_fill((width, height, pixels) in images()) {
        prop_assert_eq!(
            sorted(components(&pixels, width, height)),
            sorted(flood_fill_boxes(&pixels, width, height))
        );
    }

    #[test]
    fn dilation_sets_exactly_the_pixels_next_to_a_set_one((width, height, pixels) in images()) {
        let dilated = dilate(&pixels, width, height);
        for y in 0..height {
            for x in 0..width {
                let near = (y.saturating_sub(1)..=(y + 1).min(height - 1)).any(|ny| {
                    (x.saturating_sub(1)..=(x + 1).min(width - 1))
                        .any(|nx| pixels[ny * width + nx])
                });
                prop_assert_eq!(dilated[y * width + x], near);
            }
        }
    }
}
