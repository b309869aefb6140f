//! One archive file analysed for a Run: the scan of [`crate::scan::scan_steps`] (motion,
//! tracking, zones and lines, objects from a detector when one is given) turned into a
//! [`FileResult`], each object with the JPEG of its best moment.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;

use super::store::{FileResult, ResultEvent, ResultObject};
use crate::detect::client::Detect;
use crate::rules::RuleEvent;
use crate::scan::{scan_steps, ScanError, ScanOptions};

/// How many frames a file has at `fps`, from ffprobe's duration (`None` when it cannot say:
/// a stream without a duration, or no ffprobe).
pub fn frames_total(ffprobe: &Path, file: &Path, fps: f32) -> Option<u64> {
    let output = Command::new(ffprobe)
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "default=noprint_wrappers=1:nokey=1",
        ])
        .arg(file)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let seconds: f64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .ok()?;
    (seconds.is_finite() && seconds > 0.0).then(|| (seconds * f64::from(fps)).ceil() as u64)
}

/// Analyses `options.decode.input` to its end. `progress` is called with the frames analysed
/// so far after each frame; `stop` is asked before each one. A file that cannot be analysed
/// (corrupt, an unknown codec) is a result with its error, not an `Err`: only a stop is.
pub fn analyse_file(
    options: &ScanOptions,
    detector: Option<Box<dyn Detect>>,
    stop: &dyn Fn() -> bool,
    mut progress: impl FnMut(u64),
) -> Result<FileResult, ScanError> {
    let mut result = FileResult::default();
    // Track id → index of its object in the result.
    let mut index_of: HashMap<u64, usize> = HashMap::new();
    let mut first_error = None;
    let outcome = scan_steps(options, detector, stop, |frame, step| {
        for track in step.started {
            index_of.insert(track.id, result.objects.len());
            result.objects.push(ResultObject {
                class: track.class.clone(),
                started_ms: track.first_ms,
                ended_ms: track.last_ms,
                best_score: track.best_score,
                best_box: [track.bbox.x0, track.bbox.y0, track.bbox.x1, track.bbox.y1],
                snapshot: None,
            });
        }
        for rule in step.rules {
            let (time_ms, track, kind) = match &rule {
                RuleEvent::ZoneEntered { time_ms, track, .. } => (*time_ms, *track, "zone_entered"),
                RuleEvent::ZoneLeft { time_ms, track, .. } => (*time_ms, *track, "zone_left"),
                RuleEvent::Loitered { time_ms, track, .. } => (*time_ms, *track, "loitered"),
                RuleEvent::LineCrossed { time_ms, track, .. } => (*time_ms, *track, "line_crossed"),
            };
            let mut event = ResultEvent {
                time_ms,
                kind: kind.to_string(),
                object: index_of.get(&track).copied(),
                zone: None,
                line: None,
                direction: None,
            };
            match rule {
                RuleEvent::ZoneEntered { zone, .. }
                | RuleEvent::ZoneLeft { zone, .. }
                | RuleEvent::Loitered { zone, .. } => event.zone = Some(zone),
                RuleEvent::LineCrossed {
                    line, direction, ..
                } => {
                    event.line = Some(line);
                    event.direction = Some(direction.as_str().to_string());
                }
            }
            result.events.push(event);
        }
        for (track, snapshot) in step.ended {
            let Some(&index) = index_of.get(&track.id) else {
                continue;
            };
            let object = &mut result.objects[index];
            object.ended_ms = track.last_ms;
            object.best_score = track.best_score;
            let b = track.best_bbox;
            object.best_box = [b.x0, b.y0, b.x1, b.y1];
            if let Some(snapshot) = snapshot {
                match crate::service::picture(&snapshot) {
                    Ok(jpeg) => {
                        object.snapshot =
                            Some(base64::engine::general_purpose::STANDARD.encode(jpeg))
                    }
                    Err(error) => {
                        first_error.get_or_insert(format!("snapshot of object {index}: {error}"));
                    }
                }
            }
        }
        progress(frame);
    });
    if let Some(error) = first_error {
        tracing::warn!("{}: {error}", options.decode.input);
    }
    match outcome {
        Ok(report) => {
            result.frames = report.frames;
            result.width = Some(report.width as u32);
            result.height = Some(report.height as u32);
            Ok(result)
        }
        Err(ScanError::Stopped) => Err(ScanError::Stopped),
        Err(error) => Ok(FileResult {
            error: Some(error.to_string()),
            ..FileResult::default()
        }),
    }
}

/// The snapshots of a posted result, decoded: object index → JPEG bytes.
pub fn decode_snapshots(result: &FileResult) -> Result<HashMap<usize, Vec<u8>>, String> {
    let mut snapshots = HashMap::new();
    for (index, object) in result.objects.iter().enumerate() {
        let Some(text) = &object.snapshot else {
            continue;
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|error| format!("objects[{index}].snapshot: not base64: {error}"))?;
        if !(bytes.starts_with(&[0xFF, 0xD8]) && bytes.ends_with(&[0xFF, 0xD9])) {
            return Err(format!(
                "objects[{index}].snapshot: {} bytes that are not a JPEG",
                bytes.len()
            ));
        }
        snapshots.insert(index, bytes);
    }
    Ok(snapshots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{Line, Point};
    use crate::rules::CountLine;
    use crate::test_clips::crossing as crossing_clip;

    #[test]
    fn a_file_gives_its_crossings_objects_and_pictures_and_a_corrupt_one_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = ScanOptions::new(crossing_clip(dir.path()));
        options.pipeline.lines = vec![CountLine {
            name: "x330".to_string(),
            line: Line {
                a: Point::new(0.515625, 1.0),
                b: Point::new(0.515625, 0.0),
            },
        }];
        let mut seen = 0;
        let result = analyse_file(&options, None, &|| false, |frame| seen = frame).unwrap();
        assert_eq!(result.error, None);
        assert_eq!(result.frames, 25);
        assert_eq!(seen, 25, "the end's step counts the frames");
        let crossings: Vec<(i64, &str)> = result
            .events
            .iter()
            .filter(|e| e.kind == "line_crossed")
            .map(|e| (e.time_ms, e.direction.as_deref().unwrap()))
            .collect();
        assert_eq!(
            crossings,
            [(1800, "left_to_right"), (2600, "right_to_left")]
        );
        assert!(result.events.iter().all(|e| e.object.is_some()));
        assert_eq!(result.objects.len(), 2, "{:?}", result.objects);
        let pictures = decode_snapshots(&result).unwrap();
        assert_eq!(pictures.len(), 2);
        assert!(result.objects.iter().all(|o| o.ended_ms > o.started_ms));

        let corrupt = dir.path().join("corrupt.mp4");
        std::fs::write(&corrupt, b"not a video at all").unwrap();
        let result = analyse_file(
            &ScanOptions::new(corrupt.to_string_lossy()),
            None,
            &|| false,
            |_| {},
        )
        .unwrap();
        let error = result.error.unwrap();
        assert!(error.contains("corrupt.mp4"), "{error}");

        let stopped = analyse_file(&options, None, &|| true, |_| {});
        assert!(matches!(stopped, Err(ScanError::Stopped)));
    }

    #[test]
    fn frames_total_comes_from_the_duration() {
        let dir = tempfile::tempdir().unwrap();
        let clip = crossing_clip(dir.path());
        assert_eq!(
            frames_total(Path::new("ffprobe"), Path::new(&clip), 5.0),
            Some(25)
        );
        assert_eq!(
            frames_total(Path::new("ffprobe"), &dir.path().join("missing.mp4"), 5.0),
            None
        );
    }

    #[test]
    fn posted_snapshots_must_be_base64_jpegs() {
        let mut result = FileResult::default();
        result.objects.push(ResultObject {
            class: "motion".to_string(),
            started_ms: 0,
            ended_ms: 1,
            best_score: 1.0,
            best_box: [0.0; 4],
            snapshot: Some("%%%".to_string()),
        });
        assert!(decode_snapshots(&result)
            .unwrap_err()
            .contains("objects[0].snapshot: not base64"));
        result.objects[0].snapshot =
            Some(base64::engine::general_purpose::STANDARD.encode(b"GIF89a"));
        assert!(decode_snapshots(&result)
            .unwrap_err()
            .contains("not a JPEG"));
    }
}
