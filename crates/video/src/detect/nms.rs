//! Greedy per-class non-maximum suppression, as Ultralytics does it: the most confident box
//! first, then each next one kept unless a kept box of its class overlaps it by more than the
//! IoU threshold, until `max_det` are kept. Boxes of different classes never suppress each
//! other (a person on a bicycle is both).

use super::layout::Candidate;

/// The kept candidates, most confident first.
pub fn nms(mut candidates: Vec<Candidate>, iou: f32, max_det: usize) -> Vec<Candidate> {
    sort_by_score(&mut candidates);
    let mut kept: Vec<Candidate> = Vec::new();
    for candidate in candidates {
        if kept.len() >= max_det {
            break;
        }
        let overlapped = kept
            .iter()
            .any(|other| other.class == candidate.class && other.bbox.iou(&candidate.bbox) > iou);
        if !overlapped {
            kept.push(candidate);
        }
    }
    kept
}

/// Most confident first; equal scores keep their order.
pub fn sort_by_score(candidates: &mut [Candidate]) {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::track::BoxF;

    fn candidate(class: usize, score: f32, x0: f32, y0: f32, x1: f32, y1: f32) -> Candidate {
        Candidate {
            class,
            score,
            bbox: BoxF::new(x0, y0, x1, y1),
        }
    }

    #[test]
    fn keeps_the_best_of_overlapping_boxes_of_one_class() {
        let person_a = candidate(0, 0.9, 150.0, 200.0, 250.0, 400.0);
        let person_b = candidate(0, 0.8, 155.0, 200.0, 255.0, 400.0); // IoU 0.905
        let bicycle = candidate(1, 0.7, 150.0, 200.0, 250.0, 400.0); // same box, other class
        let apart = candidate(0, 0.5, 300.0, 200.0, 400.0, 400.0);
        let kept = nms(vec![person_b, apart, bicycle, person_a], 0.7, 300);
        assert_eq!(kept, [person_a, bicycle, apart]);
    }

    #[test]
    fn overlap_at_or_under_the_threshold_is_kept() {
        // IoU exactly 0.5: 100×100 boxes sharing two thirds of their width.
        let first = candidate(0, 0.9, 0.0, 0.0, 100.0, 100.0);
        let second = candidate(0, 0.8, 100.0 / 3.0, 0.0, 100.0 + 100.0 / 3.0, 100.0);
        assert!((first.bbox.iou(&second.bbox) - 0.5).abs() < 1e-5);
        assert_eq!(nms(vec![first, second], 0.6, 300).len(), 2);
        assert_eq!(nms(vec![first, second], 0.4, 300), [first]);
    }

    #[test]
    fn stops_at_max_det_keeping_the_most_confident() {
        let boxes: Vec<Candidate> = (0..10)
            .map(|i| {
                candidate(
                    0,
                    i as f32 / 10.0,
                    i as f32 * 20.0,
                    0.0,
                    i as f32 * 20.0 + 10.0,
                    10.0,
                )
            })
            .collect();
        let kept = nms(boxes, 0.7, 3);
        let scores: Vec<f32> = kept.iter().map(|c| c.score).collect();
        assert_eq!(scores, [0.9, 0.8, 0.7]);
    }

    fn any_candidate() -> impl Strategy<Value = Candidate> {
        (
            0usize..3,
            0.0f32..1.0,
            0.0f32..100.0,
            0.0f32..100.0,
            1.0f32..60.0,
            1.0f32..60.0,
        )
            .prop_map(|(class, score, x, y, w, h)| candidate(class, score, x, y, x + w, y + h))
    }

    proptest! {
        /// NMS never keeps two boxes of one class that overlap by more than the threshold, and
        /// every box it drops is overlapped by a kept, more confident one of its class.
        #[test]
        fn never_keeps_two_same_class_boxes_over_the_iou(
            candidates in prop::collection::vec(any_candidate(), 0..60),
            iou in 0.1f32..0.9,
        ) {
            let kept = nms(candidates.clone(), iou, usize::MAX);
            for (i, a) in kept.iter().enumerate() {
                for b in &kept[i + 1..] {
                    prop_assert!(a.class != b.class || a.bbox.iou(&b.bbox) <= iou, "{a:?} {b:?}");
                }
            }
            for dropped in candidates.iter().filter(|c| !kept.contains(c)) {
                prop_assert!(kept.iter().any(|k| k.class == dropped.class
                    && k.score >= dropped.score && k.bbox.iou(&dropped.bbox) > iou));
            }
            prop_assert!(kept.windows(2).all(|pair| pair[0].score >= pair[1].score));
        }
    }
}
