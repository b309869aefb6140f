//! One file analysed end to end, with no model: decoded ([`crate::decode`]) and run through
//! the pipeline ([`crate::pipeline`]: motion, tracking, zones and lines) frame by frame, each
//! frame at its time in the file.

use thiserror::Error;

use crate::decode::{DecodeError, DecodeOptions, Decoder};
use crate::detect::client::Detect;
use crate::motion::MotionError;
use crate::pipeline::{Pipeline, PipelineOptions, Step};
use crate::rules::RuleEvent;
use crate::track::TrackerError;

#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub decode: DecodeOptions,
    /// Motion, tracking, zones, lines and masks.
    pub pipeline: PipelineOptions,
}

impl ScanOptions {
    /// `input` at the default rate and width, with no zones and no lines.
    pub fn new(input: impl Into<String>) -> ScanOptions {
        ScanOptions {
            decode: DecodeOptions::new(input),
            pipeline: PipelineOptions::default(),
        }
    }
}

/// A rule event, with the analysed frame it happened at.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanEvent {
    /// 0-based index of the analysed frame.
    pub frame: u64,
    pub event: RuleEvent,
}

#[derive(Debug, Error)]
pub enum ScanError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The frames did not fit the motion stage (a size it refuses).
    #[error("{input}: motion analysis: {error}")]
    Motion { input: String, error: MotionError },
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    /// Stopped before the end, as asked.
    #[error("stopped before the end")]
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanReport {
    /// Analysed frames.
    pub frames: u64,
    /// Tracks confirmed (objects seen), whether or not a rule fired for them.
    pub tracks: u64,
    pub width: usize,
    pub height: usize,
}

/// Analyses `options.decode.input` to its end, handing each event to `on_event` as it happens.
/// Frame k is at k / fps seconds (exact for constant-rate files, see [`DecodeOptions::fps`]).
pub fn scan(
    options: &ScanOptions,
    mut on_event: impl FnMut(ScanEvent),
) -> Result<ScanReport, ScanError> {
    scan_steps(options, None, &|| false, |frame, step| {
        for event in step.rules {
            on_event(ScanEvent { frame, event });
        }
    })
}

/// [`scan`] with everything each frame changed ([`Step`]: objects started, rule events,
/// objects ended with their pictures), objects found by `detector` where motion is (the
/// frames then carry colour), and a way to stop early: `stop` is asked before each frame and
/// ends the scan with [`ScanError::Stopped`]. `on_step` gets the analysed frame's index (the
/// end's step gets the frame count).
pub fn scan_steps(
    options: &ScanOptions,
    detector: Option<Box<dyn Detect>>,
    stop: &dyn Fn() -> bool,
    mut on_step: impl FnMut(u64, Step),
) -> Result<ScanReport, ScanError> {
    options.pipeline.tracker.validate()?;
    let mut decode = options.decode.clone();
    decode.colour = detector.is_some();
    let mut detector = detector;
    let mut decoder = Decoder::start(&decode)?;
    let mut frame = Vec::new();
    let mut pipeline: Option<Pipeline> = None;
    let mut frames = 0u64;
    let mut tracks = 0u64;
    let motion_error = |error| ScanError::Motion {
        input: options.decode.input.clone(),
        error,
    };
    let time_of = |k: u64| (k as f64 * 1000.0 / f64::from(options.decode.fps)).round() as i64;
    while decoder.next_frame(&mut frame)? {
        if stop() {
            return Err(ScanError::Stopped);
        }
        let pipeline = match &mut pipeline {
            Some(pipeline) => pipeline,
            None => {
                let header = *decoder.header().expect("a frame was read");
                let mut new = Pipeline::new(header.width, header.height, &options.pipeline)
                    .map_err(&motion_error)?;
                if let Some(detector) = detector.take() {
                    new = new.with_detector(detector);
                }
                pipeline.insert(new)
            }
        };
        // Gray frames, or YUV 4:2:0 whose first plane is luma: the pipeline takes either.
        let step = pipeline
            .push(time_of(frames), &frame)
            .map_err(&motion_error)?;
        tracks += step.started.len() as u64;
        on_step(frames, step);
        frames += 1;
    }
    let (width, height) = match &mut pipeline {
        Some(pipeline) => {
            on_step(frames, pipeline.finish(time_of(frames)));
            pipeline.size()
        }
        None => (0, 0),
    };
    Ok(ScanReport {
        frames,
        tracks,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Direction;
    use crate::geometry::{Line, NormalisedPolygon, Point, Polygon};
    use crate::motion::MotionConfig;
    use crate::pipeline::StreamMotion;
    use crate::rules::{CountLine, Zone};
    use crate::test_clips::crossing as crossing_clip;
    use crate::track::BoxF;

    /// The line x = 330 of 640, drawn bottom to top: walking up it, the left is the image's
    /// left.
    fn x330() -> CountLine {
        CountLine {
            name: "x330".to_string(),
            line: Line {
                a: Point::new(0.515625, 1.0),
                b: Point::new(0.515625, 0.0),
            },
        }
    }

    /// The line crossings of a scan: direction and analysed frame.
    fn crossings(events: &[ScanEvent]) -> Vec<(Direction, u64)> {
        events
            .iter()
            .filter_map(|e| match &e.event {
                RuleEvent::LineCrossed { direction, .. } => Some((*direction, e.frame)),
                _ => None,
            })
            .collect()
    }

    /// A zone over the whole frame: any object seen enters it.
    fn everywhere() -> Zone {
        Zone {
            name: "everywhere".to_string(),
            polygon: Polygon {
                points: vec![
                    Point::new(0.0, 0.0),
                    Point::new(1.0, 0.0),
                    Point::new(1.0, 1.0),
                    Point::new(0.0, 1.0),
                ],
            },
            loiter_after_ms: None,
        }
    }

    #[test]
    fn an_object_in_the_first_frame_while_the_camera_settles_leaves_no_ghost() {
        // A 40 px square, there from the first frame and still, at gray 200; for the first
        // 0.2 s it shows brighter (240), as a camera's exposure settles.
        let dir = tempfile::tempdir().unwrap();
        let clip = crate::test_clips::make(
            &dir.path().join("settle.mp4"),
            "color=c=black:s=640x360:r=25:d=5[bg];color=c=0xC8C8C8:s=40x40:r=25:d=5[a];\
             color=c=0xF0F0F0:s=40x40:r=25:d=5[b];\
             [bg][a]overlay=x=300:y=160:shortest=1[t1];\
             [t1][b]overlay=x=300:y=160:enable='lt(t,0.2)':shortest=1,format=yuv420p",
            &["-c:v", "libx264", "-preset", "veryfast", "-g", "25"],
        );
        let mut options = ScanOptions::new(clip);
        options.pipeline.zones = vec![everywhere()];
        let mut events = Vec::new();
        let report = scan(&options, |event| events.push(event)).unwrap();
        assert_eq!(report.frames, 25);
        assert_eq!((report.tracks, events), (0, vec![]));
        // Without calibration the first frame's brighter square lingers in the background:
        // its ghost is motion, tracked, in the zone.
        options.pipeline.motion.calibration_ms = 0;
        let mut events = Vec::new();
        let report = scan(&options, |event| events.push(event)).unwrap();
        assert_eq!(report.tracks, 1, "{events:?}");
        assert!(
            matches!(events[0].event, RuleEvent::ZoneEntered { .. }),
            "{events:?}"
        );
    }

    #[test]
    fn the_crossing_clip_crosses_the_line_exactly_twice_once_each_way() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = ScanOptions::new(crossing_clip(dir.path()));
        // 25 analysed frames a second: the squares move 20 px a frame, so their motion boxes
        // overlap from frame to frame.
        options.decode.fps = 25.0;
        options.pipeline.lines = vec![x330()];
        let mut events = Vec::new();
        let report = scan(&options, |event| events.push(event)).unwrap();
        assert_eq!((report.width, report.height), (640, 360));
        assert_eq!(report.frames, 125);
        let crossed = crossings(&events);
        assert_eq!(crossed.len(), 2, "{events:?}");
        assert_eq!(crossed[0].0, Direction::LeftToRight);
        assert_eq!(crossed[1].0, Direction::RightToLeft);
        // The top square's centre passes 330 at t = 1.62 s (frame 40.5 of 25 fps); the
        // bottom one's at t = 2.58 s (frame 64.5).
        assert!((40..=42).contains(&crossed[0].1), "{crossed:?}");
        assert!((64..=66).contains(&crossed[1].1), "{crossed:?}");
    }

    #[test]
    fn at_the_default_5_fps_the_crossing_clip_crosses_where_the_plan_computes() {
        // The squares jump 100 px, 2.5 of their sizes, between analysed frames: their boxes
        // never overlap, and the tracker's distance gate keeps each one track.
        let dir = tempfile::tempdir().unwrap();
        let mut options = ScanOptions::new(crossing_clip(dir.path()));
        options.pipeline.lines = vec![x330()];
        let mut events = Vec::new();
        let report = scan(&options, |event| events.push(event)).unwrap();
        assert_eq!(report.frames, 25);
        // The top square's centre is at 319.5 in frame 8 and 419.5 in frame 9; the bottom
        // one's at 419.5 in frame 12 and 317.5 in frame 13 (docs/plans/video.md §8).
        assert_eq!(
            crossings(&events),
            vec![(Direction::LeftToRight, 9), (Direction::RightToLeft, 13)],
            "{events:?}"
        );
    }

    #[test]
    fn a_mask_over_the_top_half_leaves_the_bottom_square_s_crossing_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = ScanOptions::new(crossing_clip(dir.path()));
        options.pipeline.lines = vec![x330()];
        options.pipeline.masks = vec![NormalisedPolygon::new(vec![
            Point::new(0.0, 0.0),
            Point::new(1.0, 0.0),
            Point::new(1.0, 0.5),
            Point::new(0.0, 0.5),
        ])
        .unwrap()];
        let mut events = Vec::new();
        let report = scan(&options, |event| events.push(event)).unwrap();
        assert_eq!(report.tracks, 1);
        assert_eq!(
            crossings(&events),
            vec![(Direction::RightToLeft, 13)],
            "{events:?}"
        );
    }

    /// One white 40 px square on black, 640×360 at 25 fps for `seconds`, its top at y = 160
    /// and its left edge at `x` (an ffmpeg expression of t), shown from 1 s (after
    /// calibration).
    fn one_square_clip(dir: &std::path::Path, name: &str, x: &str, seconds: u32) -> String {
        crate::test_clips::make(
            &dir.join(name),
            &format!(
                "color=c=black:s=640x360:r=25:d={seconds}[bg];\
                 color=c=white:s=40x40:r=25:d={seconds}[a];\
                 [bg][a]overlay=x='{x}':y=160:enable='gte(t,1)':shortest=1,format=yuv420p"
            ),
            &["-c:v", "libx264", "-preset", "veryfast", "-g", "25"],
        )
    }

    /// A zone from x0 to x1 (normalised), y 0.3 to 0.7: the squares' row.
    fn band(x0: f32, x1: f32, loiter_after_ms: Option<i64>) -> Zone {
        Zone {
            name: "band".to_string(),
            polygon: Polygon {
                points: vec![
                    Point::new(x0, 0.3),
                    Point::new(x1, 0.3),
                    Point::new(x1, 0.7),
                    Point::new(x0, 0.7),
                ],
            },
            loiter_after_ms,
        }
    }

    /// Each event's kind and analysed frame.
    fn kinds(events: &[ScanEvent]) -> Vec<(&'static str, u64)> {
        events
            .iter()
            .map(|e| match &e.event {
                RuleEvent::ZoneEntered { .. } => ("entered", e.frame),
                RuleEvent::ZoneLeft { .. } => ("left", e.frame),
                RuleEvent::Loitered { .. } => ("loitered", e.frame),
                RuleEvent::LineCrossed { .. } => ("crossed", e.frame),
            })
            .collect()
    }

    #[test]
    fn a_still_noisy_picture_has_no_tracks_and_no_events_after_calibration() {
        // testsrc's first frame held for 5 s, with fresh noise (strength 20) on every frame.
        let dir = tempfile::tempdir().unwrap();
        let clip = crate::test_clips::make(
            &dir.path().join("noise.mp4"),
            "testsrc=size=640x360:rate=25:duration=1,trim=end_frame=1,\
             loop=loop=124:size=1:start=0,setpts=N/25/TB,noise=alls=20:allf=t,format=yuv420p",
            &["-c:v", "libx264", "-preset", "veryfast", "-g", "25"],
        );
        let mut options = ScanOptions::new(clip);
        options.pipeline.zones = vec![everywhere()];
        options.pipeline.lines = vec![x330()];
        let mut events = Vec::new();
        let report = scan(&options, |event| events.push(event)).unwrap();
        assert_eq!(report.frames, 25);
        assert_eq!((report.tracks, events), (0, vec![]));
    }

    #[test]
    fn a_square_through_a_zone_enters_it_once_and_leaves_it_once() {
        // 200 px/s from the left edge: its centre is at 20 + 200 (t − 1), inside the zone
        // (x 192 to 384) from t = 1.86 s to 2.82 s.
        let dir = tempfile::tempdir().unwrap();
        let mut options = ScanOptions::new(one_square_clip(dir.path(), "zone.mp4", "200*(t-1)", 5));
        options.pipeline.zones = vec![band(0.3, 0.6, None)];
        let mut events = Vec::new();
        let report = scan(&options, |event| events.push(event)).unwrap();
        assert_eq!(report.tracks, 1, "{events:?}");
        // Two sightings inside (frames 10 and 11) enter it; two outside (15, 16) leave it.
        assert_eq!(kinds(&events), vec![("entered", 11), ("left", 16)]);
    }

    #[test]
    fn a_square_that_stops_in_a_zone_for_3_s_loiters_once() {
        // In at 200 px/s from 1 s, still at x = 200 (centre 220) from 2 s to 5 s, then on.
        let dir = tempfile::tempdir().unwrap();
        let clip = one_square_clip(
            dir.path(),
            "loiter.mp4",
            "if(lt(t,2),200*(t-1),if(lt(t,5),200,200+200*(t-5)))",
            7,
        );
        let mut options = ScanOptions::new(clip);
        options.pipeline.zones = vec![band(0.25, 0.45, Some(2_000))];
        let mut events = Vec::new();
        let report = scan(&options, |event| events.push(event)).unwrap();
        let loitered = kinds(&events)
            .into_iter()
            .filter(|(kind, _)| *kind == "loitered")
            .count();
        // Entered at frame 10 (2 s), loitered 2 s later. When it moves on, the ghost it
        // leaves where it stood (the background learnt it for 3 s) holds its track in the
        // zone until the clip ends, and the square goes on as a second track: motion alone
        // cannot tell an object from the place it left. The ghost never loiters twice.
        assert_eq!(loitered, 1, "{report:?} {events:?}");
        assert_eq!(kinds(&events)[..2], [("entered", 10), ("loitered", 20)]);
    }

    const VTEST_ENV: &str = "FLOWERS_TEST_VTEST";

    /// Where scripts/setup extracted vtest.avi, as scripts/footage-paths (the one place that
    /// knows) prints it, so a bare `cargo test` finds it too.
    fn installed_vtest() -> Option<std::path::PathBuf> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/footage-paths");
        let output = std::process::Command::new(script)
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let path = String::from_utf8(output.stdout)
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("vtest=").map(std::path::PathBuf::from))?;
        path.is_file().then_some(path)
    }

    fn vtest() -> std::path::PathBuf {
        match std::env::var_os(VTEST_ENV) {
            Some(path) if !path.is_empty() => std::path::PathBuf::from(path),
            _ => installed_vtest().unwrap_or_else(|| {
                panic!(
                    "{VTEST_ENV} is not set and scripts/footage-paths finds no vtest.avi: this \
                     test needs the real footage. Run scripts/setup, which extracts it \
                     (scripts/test sets {VTEST_ENV})"
                )
            }),
        }
    }

    /// OpenCV's vtest.avi (768×576, 10 fps, 795 frames of pedestrians on a plaza) analysed as
    /// a stream would be: 5 fps, 640 wide (640×480). Measured here with the default settings:
    /// after the calibration second, motion in 393 of 393 frames, 11.8 boxes a frame (most
    /// are fragments: 10×8 px in the median); each frame's largest box 60 to 220 px tall
    /// (median 122; one walker is about 110 px tall at this size) and up to 314 px wide where
    /// walkers side by side merge (95% of frames at most 232).
    #[test]
    fn vtest_pedestrians_are_motion_in_nearly_every_frame_in_person_sized_boxes() {
        let options = DecodeOptions::new(vtest().to_string_lossy());
        let mut decoder = Decoder::start(&options).unwrap();
        let mut frame = Vec::new();
        let mut motion: Option<StreamMotion> = None;
        let mut analysed = 0usize;
        // Each analysed frame's largest box, if it had motion.
        let mut largest: Vec<BoxF> = Vec::new();
        let mut time_ms = 0;
        while decoder.next_frame(&mut frame).unwrap() {
            let header = *decoder.header().unwrap();
            let motion = motion.get_or_insert_with(|| {
                StreamMotion::new(header.width, header.height, MotionConfig::default(), &[])
                    .unwrap()
            });
            let calibrating = motion.calibrating(time_ms);
            let boxes = motion.detect(time_ms, &frame).unwrap();
            time_ms += 200;
            if calibrating {
                assert!(boxes.is_empty());
                continue;
            }
            analysed += 1;
            largest.extend(boxes.first());
        }
        let header = *decoder.header().unwrap();
        assert_eq!((header.width, header.height), (640, 480));
        // 79.5 s at 5 fps, less the calibration second.
        assert_eq!(analysed, 393);
        assert!(
            largest.len() * 10 >= analysed * 9,
            "motion in {} of {analysed} frames",
            largest.len()
        );
        let person_sized = largest
            .iter()
            .filter(|b| (50.0..=250.0).contains(&(b.y1 - b.y0)) && b.x1 - b.x0 <= 250.0)
            .count();
        assert!(
            person_sized * 10 >= largest.len() * 9,
            "{person_sized} of {} largest boxes are 50 to 250 px tall and at most 250 wide",
            largest.len()
        );
        let mut heights: Vec<f32> = largest.iter().map(|b| b.y1 - b.y0).collect();
        heights.sort_by(f32::total_cmp);
        let median = heights[heights.len() / 2];
        assert!((90.0..=160.0).contains(&median), "median height {median}");
    }
}
