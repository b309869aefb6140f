//! The three output layouts of YOLO exports (docs/plans/video.md §4), told apart by the output's
//! shape and the number of classes, and decoded into candidate boxes in the model's input pixels:
//!
//! - YOLOv5 `[B, N, 5+nc]`: cx, cy, w, h, objectness, class scores; a box's score is objectness
//!   × its best class score (N = 25200 at 640).
//! - YOLOv8/v11 `[B, 4+nc, N]`: transposed, no objectness (N = 8400 at 640).
//! - End-to-end (`nms=True` exports, YOLOv10) `[B, K, 6]`: x0, y0, x1, y1, score, class, already
//!   through NMS.

use std::fmt;
use std::str::FromStr;

use crate::track::BoxF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    V5,
    /// YOLOv8 and YOLO11, which share it.
    V8,
    EndToEnd,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::V5 => "v5",
            Layout::V8 => "v8",
            Layout::EndToEnd => "e2e",
        })
    }
}

impl FromStr for Layout {
    type Err = String;

    /// `v5`, `v8` (or `v11`), `e2e`.
    fn from_str(text: &str) -> Result<Layout, String> {
        match text {
            "v5" => Ok(Layout::V5),
            "v8" | "v11" => Ok(Layout::V8),
            "e2e" => Ok(Layout::EndToEnd),
            other => Err(format!(
                "layout \"{other}\" is not one of v5, v8 (or v11), e2e"
            )),
        }
    }
}

impl Layout {
    /// The shape it expects, for error messages.
    fn pattern(self, classes: Option<usize>) -> String {
        match (self, classes) {
            (Layout::V5, Some(nc)) => format!("v5 [B, N, {}]", 5 + nc),
            (Layout::V5, None) => "v5 [B, N, 5+nc]".into(),
            (Layout::V8, Some(nc)) => format!("v8 [B, {}, N]", 4 + nc),
            (Layout::V8, None) => "v8 [B, 4+nc, N]".into(),
            (Layout::EndToEnd, _) => "e2e [B, K, 6]".into(),
        }
    }

    /// The class count this layout reads from `[B, rows, columns]` (a dynamic dimension is
    /// `None`), if the shape fits it and agrees with `classes` where that is known. For the
    /// end-to-end layout the count is `classes` itself: its rows carry class numbers, not scores.
    fn fit(
        self,
        rows: Option<usize>,
        columns: Option<usize>,
        classes: Option<usize>,
    ) -> Option<Option<usize>> {
        let agrees = |nc: usize| classes.is_none_or(|classes| classes == nc);
        match self {
            Layout::V8 => {
                let channels = rows?;
                let nc = channels.checked_sub(4).filter(|&nc| nc > 0)?;
                (columns.is_none_or(|n| n > channels) && agrees(nc)).then_some(Some(nc))
            }
            Layout::V5 => {
                let channels = columns?;
                let nc = channels.checked_sub(5).filter(|&nc| nc > 0)?;
                (rows.is_none_or(|n| n > channels) && agrees(nc)).then_some(Some(nc))
            }
            Layout::EndToEnd => (columns == Some(6)).then_some(classes),
        }
    }

    /// The boxes a v5 or v8 head proposes for this input size (strides 8, 16, 32), if it has
    /// a grid.
    fn grid_candidates(self, input: (usize, usize)) -> Option<usize> {
        let cells: usize = [8, 16, 32]
            .iter()
            .map(|&stride| input.0.div_ceil(stride) * input.1.div_ceil(stride))
            .sum();
        match self {
            Layout::V5 => Some(3 * cells),
            Layout::V8 => Some(cells),
            Layout::EndToEnd => None,
        }
    }
}

/// How to read a model's output: its layout and the classes it scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputFormat {
    pub layout: Layout,
    /// Known for v5 and v8 (the shape says it); for end-to-end only from the names.
    pub classes: Option<usize>,
}

/// Reads the layout from the output `shape` (−1 for a dynamic dimension), with `classes` from
/// the names where known; `forced` skips the guess but still checks the shape. When the shape
/// fits two layouts, the one whose box count matches its grid at `input` (width, height) wins;
/// failing that, a fixed row count that is no grid means end-to-end.
pub fn infer_format(
    shape: &[i64],
    classes: Option<usize>,
    forced: Option<Layout>,
    input: (usize, usize),
) -> Result<OutputFormat, String> {
    let known = |dim: i64| usize::try_from(dim).ok().filter(|&dim| dim > 0);
    let classes_note = classes.map_or(String::new(), |nc| format!(" with the names' {nc} classes"));
    let all = [Layout::V8, Layout::V5, Layout::EndToEnd];
    let patterns = |layouts: &[Layout]| {
        layouts
            .iter()
            .map(|layout| layout.pattern(classes))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let shape_text = format!("{shape:?}");
    if shape.len() != 3 {
        return Err(format!(
            "output shape {shape_text} has {} dimensions; a YOLO output has 3: {}",
            shape.len(),
            patterns(&all)
        ));
    }
    let (rows, columns) = (known(shape[1]), known(shape[2]));
    if let Some(layout) = forced {
        return match layout.fit(rows, columns, classes) {
            Some(classes) => Ok(OutputFormat { layout, classes }),
            None => Err(format!(
                "output shape {shape_text} is not the {} layout asked for{classes_note}",
                layout.pattern(classes)
            )),
        };
    }
    let fits: Vec<OutputFormat> = all
        .iter()
        .filter_map(|&layout| {
            layout
                .fit(rows, columns, classes)
                .map(|classes| OutputFormat { layout, classes })
        })
        .collect();
    if fits.len() == 1 {
        return Ok(fits[0]);
    }
    if fits.is_empty() {
        return Err(format!(
            "output shape {shape_text} fits no YOLO layout{classes_note}: {}",
            patterns(&all)
        ));
    }
    let count = |format: &OutputFormat| match format.layout {
        Layout::V8 => columns,
        Layout::V5 | Layout::EndToEnd => rows,
    };
    let on_grid: Vec<&OutputFormat> = fits
        .iter()
        .filter(|format| {
            count(format).is_some() && format.layout.grid_candidates(input) == count(format)
        })
        .collect();
    if on_grid.len() == 1 {
        return Ok(*on_grid[0]);
    }
    let end_to_end = fits.iter().find(|format| format.layout == Layout::EndToEnd);
    if let (true, Some(format), Some(_)) = (on_grid.is_empty(), end_to_end, rows) {
        return Ok(*format);
    }
    Err(format!(
        "output shape {shape_text} fits more than one layout ({}); say which with the layout option",
        patterns(&fits.iter().map(|format| format.layout).collect::<Vec<_>>())
    ))
}

/// A box the model proposed, in its input's pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub class: usize,
    pub score: f32,
    pub bbox: BoxF,
}

fn centred(cx: f32, cy: f32, w: f32, h: f32) -> BoxF {
    BoxF::new(cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0)
}

/// The index and value of the largest score (the first of equals).
fn best(scores: impl Iterator<Item = f32>) -> Option<(usize, f32)> {
    scores
        .enumerate()
        .fold(None, |best, (class, score)| match best {
            Some((_, top)) if top >= score => best,
            _ => Some((class, score)),
        })
}

/// The candidates scoring over `conf` in one image's output, `[rows, columns]` of it.
pub fn decode(
    layout: Layout,
    output: &[f32],
    rows: usize,
    columns: usize,
    conf: f32,
) -> Vec<Candidate> {
    debug_assert_eq!(output.len(), rows * columns);
    let mut candidates = Vec::new();
    match layout {
        Layout::V8 => {
            // rows = 4 + nc channels, columns = anchors: channel c of anchor i is at c·N + i.
            let anchors = columns;
            let at = |channel: usize, anchor: usize| output[channel * anchors + anchor];
            for anchor in 0..anchors {
                let scores = (4..rows).map(|channel| at(channel, anchor));
                let Some((class, score)) = best(scores) else {
                    continue;
                };
                if score > conf {
                    let bbox = centred(at(0, anchor), at(1, anchor), at(2, anchor), at(3, anchor));
                    candidates.push(Candidate { class, score, bbox });
                }
            }
        }
        Layout::V5 => {
            for row in output.chunks_exact(columns) {
                // Objectness bounds the score: most rows stop here.
                let objectness = row[4];
                if objectness <= conf {
                    continue;
                }
                let Some((class, class_score)) = best(row[5..].iter().copied()) else {
                    continue;
                };
                let score = objectness * class_score;
                if score > conf {
                    let bbox = centred(row[0], row[1], row[2], row[3]);
                    candidates.push(Candidate { class, score, bbox });
                }
            }
        }
        Layout::EndToEnd => {
            for row in output.chunks_exact(columns) {
                let (score, class) = (row[4], row[5]);
                if score > conf && class.is_finite() && class >= 0.0 {
                    let bbox = BoxF::new(row[0], row[1], row[2], row[3]);
                    let class = class.round() as usize;
                    candidates.push(Candidate { class, score, bbox });
                }
            }
        }
    }
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: (usize, usize) = (640, 640);

    fn format(layout: Layout, classes: Option<usize>) -> OutputFormat {
        OutputFormat { layout, classes }
    }

    #[test]
    fn reads_the_layout_from_the_shape() {
        let cases: [(&[i64], Option<usize>, OutputFormat); 9] = [
            (&[1, 84, 8400], None, format(Layout::V8, Some(80))),
            (&[1, 7, 8400], Some(3), format(Layout::V8, Some(3))),
            (&[-1, 6, -1], None, format(Layout::V8, Some(2))),
            (&[1, 25200, 85], None, format(Layout::V5, Some(80))),
            (&[1, 25200, 8], Some(3), format(Layout::V5, Some(3))),
            // One class in v5 is six columns, as end-to-end: the grid tells them apart.
            (&[1, 25200, 6], None, format(Layout::V5, Some(1))),
            (&[1, 300, 6], None, format(Layout::EndToEnd, None)),
            (&[1, 300, 6], Some(80), format(Layout::EndToEnd, Some(80))),
            (&[-1, 300, 6], Some(1), format(Layout::EndToEnd, Some(1))),
        ];
        for (shape, classes, expected) in cases {
            assert_eq!(
                infer_format(shape, classes, None, S),
                Ok(expected),
                "{shape:?} {classes:?}"
            );
        }
    }

    #[test]
    fn refuses_shapes_that_fit_no_layout_naming_the_shape() {
        let cases: [(&[i64], Option<usize>, &str); 5] = [
            (&[1, 10], None, "output shape [1, 10] has 2 dimensions"),
            (&[1, 7, 8400], Some(5), "output shape [1, 7, 8400] fits no YOLO layout with the names' 5 classes: v8 [B, 9, N], v5 [B, N, 10], e2e [B, K, 6]"),
            (&[1, 4, 8400], None, "fits no YOLO layout"),
            (&[1, 8400, 5], None, "fits no YOLO layout"),
            (&[1, -1, 6], None, "fits more than one layout (v5 [B, N, 5+nc], e2e [B, K, 6]); say which"),
        ];
        for (shape, classes, message) in cases {
            let error = infer_format(shape, classes, None, S).unwrap_err();
            assert!(error.contains(message), "{shape:?}: {error}");
        }
    }

    #[test]
    fn a_forced_layout_is_checked_against_the_shape() {
        assert_eq!(
            infer_format(&[1, 25200, 6], None, Some(Layout::EndToEnd), S),
            Ok(format(Layout::EndToEnd, None))
        );
        assert_eq!(
            infer_format(&[1, 300, 6], Some(1), Some(Layout::V5), S),
            Ok(format(Layout::V5, Some(1)))
        );
        let error = infer_format(&[1, 7, 8400], None, Some(Layout::V5), S).unwrap_err();
        assert_eq!(
            error,
            "output shape [1, 7, 8400] is not the v5 [B, N, 5+nc] layout asked for"
        );
        assert_eq!("v11".parse(), Ok(Layout::V8));
        assert!("yolo".parse::<Layout>().unwrap_err().contains("\"yolo\""));
    }

    #[test]
    fn decodes_v8_best_class_over_the_threshold() {
        // 2 classes, 3 anchors: channel-major.
        #[rustfmt::skip]
        let output = [
            10.0, 50.0, 0.0, // cx
            20.0, 60.0, 0.0, // cy
            4.0, 10.0, 0.0,  // w
            8.0, 20.0, 0.0,  // h
            0.3, 0.1, 0.0,   // class 0
            0.2, 0.9, 0.25,  // class 1
        ];
        let candidates = decode(Layout::V8, &output, 6, 3, 0.25);
        assert_eq!(
            candidates,
            [
                Candidate {
                    class: 0,
                    score: 0.3,
                    bbox: BoxF::new(8.0, 16.0, 12.0, 24.0)
                },
                Candidate {
                    class: 1,
                    score: 0.9,
                    bbox: BoxF::new(45.0, 50.0, 55.0, 70.0)
                },
            ]
        );
    }

    #[test]
    fn decodes_v5_as_objectness_times_class() {
        #[rustfmt::skip]
        let output = [
            10.0, 20.0, 4.0, 8.0, 0.5, 0.2, 0.8,  // 0.5 × 0.8 = 0.4, class 1
            10.0, 20.0, 4.0, 8.0, 0.9, 0.25, 0.1, // 0.225: under
            10.0, 20.0, 4.0, 8.0, 0.2, 1.0, 1.0,  // objectness alone is under
        ];
        let candidates = decode(Layout::V5, &output, 3, 7, 0.25);
        assert_eq!(candidates.len(), 1);
        assert_eq!(candidates[0].class, 1);
        assert!((candidates[0].score - 0.4).abs() < 1e-6);
        assert_eq!(candidates[0].bbox, BoxF::new(8.0, 16.0, 12.0, 24.0));
    }

    #[test]
    fn decodes_end_to_end_rows_as_corners() {
        #[rustfmt::skip]
        let output = [
            1.0, 2.0, 3.0, 4.0, 0.9, 2.0,
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            1.0, 2.0, 3.0, 4.0, 0.8, f32::NAN,
        ];
        let candidates = decode(Layout::EndToEnd, &output, 3, 6, 0.25);
        assert_eq!(
            candidates,
            [Candidate {
                class: 2,
                score: 0.9,
                bbox: BoxF::new(1.0, 2.0, 3.0, 4.0)
            }]
        );
    }
}
