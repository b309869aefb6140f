//! The per-frame pipeline of one source, with no model: motion ([`crate::motion`]), tracking
//! ([`crate::track`], motion boxes as class `motion`) and rules ([`crate::rules`]), plus the
//! frame each object is best seen in, for its snapshot. Zones, lines and masks are given in
//! normalised coordinates and placed on the analysed frames' pixels here. [`crate::scan`] runs
//! it over a file, [`crate::live`] over a live stream.
//!
//! Motion runs on the frame halved each way (2×2 blocks averaged, docs/plans/video.md §3): the
//! averaging halves the spread of sensor noise (on the noisy still clip of the tests, from 10
//! to 5 gray levels, so 0.002% of pixels instead of 2% pass the threshold of 25), and it
//! quarters the cost. Its boxes are scaled back to the analysed frame's pixels.

use std::collections::HashMap;

use domain::{MotionSpec, NormPoint, StreamSpec};

use crate::detect::client::Detect;
use crate::geometry::{Line, NormalisedPolygon, Point, Polygon, PolygonError};
use crate::motion::{downscale_half, mask_of, MotionConfig, MotionDetector, MotionError};
use crate::rules::{CountLine, RuleEvent, Rules, Zone};
use crate::track::{BoxF, Detection, Track, TrackEvent, Tracker, TrackerConfig};

/// Objects a detector found are looked for again this often while nothing moves, so that one
/// standing still is not lost (a track ends after `lost_after_ms` unseen).
pub const RECHECK_MS: i64 = 1000;

/// Pictures kept for open objects, per stream; objects beyond get none (a frame is
/// width × height bytes: 230 KB at 640×360).
pub const MAX_KEPT_FRAMES: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    pub motion: MotionConfig,
    pub tracker: TrackerConfig,
    /// In normalised coordinates.
    pub zones: Vec<Zone>,
    /// In normalised coordinates.
    pub lines: Vec<CountLine>,
    /// Where motion is never seen (a timestamp, a tree in the wind).
    pub masks: Vec<NormalisedPolygon>,
}

impl PipelineOptions {
    /// A configured stream's zones, lines, masks and the service's motion settings. The config
    /// crate checked them; a mask that is still refused (a stored stream edited by hand) is an
    /// error.
    pub fn from_spec(
        spec: &StreamSpec,
        motion: MotionSpec,
    ) -> Result<PipelineOptions, PolygonError> {
        let point = |p: &NormPoint| Point::new(p[0], p[1]);
        let masks = spec
            .masks
            .iter()
            .map(|mask| NormalisedPolygon::new(mask.iter().map(point).collect()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PipelineOptions {
            motion: MotionConfig {
                threshold: motion.threshold,
                min_area: motion.min_area,
                alpha: motion.alpha,
                ..MotionConfig::default()
            },
            tracker: TrackerConfig::default(),
            zones: spec
                .zones
                .iter()
                .map(|(name, zone)| Zone {
                    name: name.to_string(),
                    polygon: Polygon {
                        points: zone.polygon.iter().map(point).collect(),
                    },
                    loiter_after_ms: zone.loiter_after.map(|d| d.as_millis() as i64),
                })
                .collect(),
            lines: spec
                .lines
                .iter()
                .map(|(name, line)| CountLine {
                    name: name.to_string(),
                    line: Line {
                        a: point(&line.from),
                        b: point(&line.to),
                    },
                })
                .collect(),
            masks,
        })
    }
}

/// The frame an object is best seen in: the analysed frame and the object's box on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub width: usize,
    pub height: usize,
    /// The luma plane, or with [`Snapshot::colour`] the whole YUV 4:2:0 frame.
    pub pixels: Vec<u8>,
    /// The frame had colour (a detector's frames do), so the picture has too.
    pub colour: bool,
    pub bbox: BoxF,
    pub time_ms: i64,
}

/// What one frame (or the end) changed.
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// Objects now followed.
    pub started: Vec<Track>,
    pub rules: Vec<RuleEvent>,
    /// Objects gone, with their best picture when one was kept.
    pub ended: Vec<(Track, Option<Snapshot>)>,
}

pub struct Pipeline {
    width: usize,
    height: usize,
    motion: StreamMotion,
    tracker: Tracker,
    rules: Rules,
    kept: HashMap<u64, Snapshot>,
    detector: Option<Box<dyn Detect>>,
    last_detection_ms: i64,
}

impl Pipeline {
    pub fn new(
        width: usize,
        height: usize,
        options: &PipelineOptions,
    ) -> Result<Pipeline, MotionError> {
        let motion = StreamMotion::new(width, height, options.motion, &options.masks)?;
        let rules = Rules::new(
            options
                .zones
                .iter()
                .map(|z| to_pixels_zone(z, width, height))
                .collect(),
            options
                .lines
                .iter()
                .map(|l| to_pixels_line(l, width, height))
                .collect(),
        );
        Ok(Pipeline {
            width,
            height,
            motion,
            tracker: Tracker::new(options.tracker),
            rules,
            kept: HashMap::new(),
            detector: None,
            last_detection_ms: i64::MIN,
        })
    }

    /// Objects where motion is come from `detector` (when it answers) instead of being the
    /// motion itself; frames must then carry colour (YUV 4:2:0).
    pub fn with_detector(mut self, detector: Box<dyn Detect>) -> Pipeline {
        self.detector = Some(detector);
        self
    }

    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Objects followed now.
    pub fn open_objects(&self) -> usize {
        self.kept
            .len()
            .max(self.tracker.tracks().iter().filter(|t| t.hits >= 2).count())
    }

    /// One analysed frame at `time_ms`: its luma plane (`width × height` bytes), then with a
    /// detector its two chroma planes.
    pub fn push(&mut self, time_ms: i64, frame: &[u8]) -> Result<Step, MotionError> {
        let moving = self.motion.detect(time_ms, frame)?;
        let detections = match self.detected(time_ms, frame, &moving) {
            Some(objects) => objects,
            None => moving
                .into_iter()
                .map(|bbox| Detection {
                    bbox,
                    score: 1.0,
                    class: "motion".to_string(),
                })
                .collect(),
        };
        let events = self.tracker.update(time_ms, &detections);
        Ok(self.step(time_ms, events, Some(frame)))
    }

    /// What the detector sees where something moved, or where objects it found stand still
    /// (once a [`RECHECK_MS`]); `None` without a detector or an answer.
    fn detected(&mut self, time_ms: i64, frame: &[u8], moving: &[BoxF]) -> Option<Vec<Detection>> {
        let detector = self.detector.as_mut()?;
        let still: Vec<BoxF> = self
            .tracker
            .tracks()
            .iter()
            .filter(|t| t.class != "motion")
            .map(|t| t.bbox)
            .collect();
        let look_at: Vec<BoxF> = if !moving.is_empty() {
            moving.iter().chain(still.iter()).copied().collect()
        } else if !still.is_empty() && time_ms - self.last_detection_ms >= RECHECK_MS {
            still
        } else {
            return Some(Vec::new());
        };
        let found = detector.detect(frame, self.width, self.height, &look_at)?;
        self.last_detection_ms = time_ms;
        Some(found)
    }

    /// Ends every object (the source stopped or changed).
    pub fn finish(&mut self, time_ms: i64) -> Step {
        let events = self.tracker.finish();
        self.step(time_ms, events, None)
    }

    fn step(&mut self, time_ms: i64, events: Vec<TrackEvent>, luma: Option<&[u8]>) -> Step {
        let mut step = Step {
            rules: self.rules.apply(time_ms, &events),
            ..Step::default()
        };
        for event in events {
            match event {
                TrackEvent::Started(track) => {
                    self.keep(&track, time_ms, luma, true);
                    step.started.push(track);
                }
                TrackEvent::Moved(track) => {
                    // A more confident sighting now: this frame is its better picture.
                    self.keep(&track, time_ms, luma, track.best_ms == time_ms);
                }
                TrackEvent::Ended(track) => {
                    let snapshot = self.kept.remove(&track.id);
                    step.ended.push((track, snapshot));
                }
            }
        }
        step
    }

    fn keep(&mut self, track: &Track, time_ms: i64, luma: Option<&[u8]>, better: bool) {
        let Some(luma) = luma else { return };
        if !better || (!self.kept.contains_key(&track.id) && self.kept.len() >= MAX_KEPT_FRAMES) {
            return;
        }
        let colour_size =
            self.width * self.height + 2 * self.width.div_ceil(2) * self.height.div_ceil(2);
        let colour = luma.len() >= colour_size;
        let size = if colour {
            colour_size
        } else {
            self.width * self.height
        };
        self.kept.insert(
            track.id,
            Snapshot {
                width: self.width,
                height: self.height,
                pixels: luma[..size].to_vec(),
                colour,
                bbox: track.bbox,
                time_ms,
            },
        );
    }
}

/// A stream's motion stage: on the analysed frames halved each way (see
/// the module's notes), with the masks placed on them; boxes in the analysed frame's pixels.
#[derive(Debug, Clone)]
pub struct StreamMotion {
    detector: MotionDetector,
    width: usize,
    height: usize,
}

impl StreamMotion {
    /// Motion for analysed frames of `width` × `height`.
    pub fn new(
        width: usize,
        height: usize,
        config: MotionConfig,
        masks: &[NormalisedPolygon],
    ) -> Result<StreamMotion, MotionError> {
        let (half_width, half_height) = (width / 2, height / 2);
        let mut detector = MotionDetector::new(half_width, half_height, config)?;
        if !masks.is_empty() {
            let polygons: Vec<Polygon> = masks
                .iter()
                .map(|m| m.to_pixels(half_width, half_height))
                .collect();
            detector.set_mask(mask_of(&polygons, half_width, half_height))?;
        }
        Ok(StreamMotion {
            detector,
            width,
            height,
        })
    }

    /// Whether a frame at `time_ms` would only teach the background.
    pub fn calibrating(&self, time_ms: i64) -> bool {
        self.detector.calibrating(time_ms)
    }

    /// The moving regions of a frame's luma plane (its first `width × height` bytes), shown
    /// at `time_ms`, largest first.
    pub fn detect(&mut self, time_ms: i64, luma: &[u8]) -> Result<Vec<BoxF>, MotionError> {
        let pixels = self.width * self.height;
        if luma.len() < pixels {
            return Err(MotionError::FrameSize {
                width: self.width,
                height: self.height,
                expected: pixels,
                got: luma.len(),
            });
        }
        let (_, _, half) = downscale_half(self.width, self.height, &luma[..pixels]);
        Ok(self
            .detector
            .detect(time_ms, &half)?
            .iter()
            .map(|b| {
                BoxF::new(
                    2.0 * b.x0 as f32,
                    2.0 * b.y0 as f32,
                    2.0 * b.x1 as f32,
                    2.0 * b.y1 as f32,
                )
            })
            .collect())
    }
}

fn to_pixels(p: Point, width: usize, height: usize) -> Point {
    Point::new(p.x * width as f32, p.y * height as f32)
}

fn to_pixels_zone(zone: &Zone, width: usize, height: usize) -> Zone {
    Zone {
        polygon: Polygon {
            points: zone
                .polygon
                .points
                .iter()
                .map(|&p| to_pixels(p, width, height))
                .collect(),
        },
        ..zone.clone()
    }
}

fn to_pixels_line(line: &CountLine, width: usize, height: usize) -> CountLine {
    CountLine {
        name: line.name.clone(),
        line: Line {
            a: to_pixels(line.line.a, width, height),
            b: to_pixels(line.line.b, width, height),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A square that appears, moves right and leaves: one object started, one ended with the
    /// picture of the frame it was confirmed in, and a crossing of the line in between.
    #[test]
    fn an_object_is_started_crossed_and_ended_with_its_picture() {
        let (w, h) = (64usize, 32usize);
        let options = PipelineOptions {
            motion: MotionConfig::default(),
            lines: vec![CountLine {
                name: "mid".to_string(),
                line: Line {
                    a: Point::new(0.5, 1.0),
                    b: Point::new(0.5, 0.0),
                },
            }],
            ..PipelineOptions::default()
        };
        let mut pipeline = Pipeline::new(w, h, &options).unwrap();
        let frame_with_square = |x: usize| {
            let mut frame = vec![0u8; w * h];
            for y in 10..20 {
                for xx in x..x + 10 {
                    frame[y * w + xx] = 255;
                }
            }
            frame
        };
        let mut started = 0;
        let mut crossings = 0;
        let mut ended = Vec::new();
        let mut t = 0;
        // A still background first, for the motion stage to learn.
        for _ in 0..30 {
            let step = pipeline.push(t, &vec![0u8; w * h]).unwrap();
            assert!(step.started.is_empty());
            t += 200;
        }
        for x in (4..52).step_by(4) {
            let step = pipeline.push(t, &frame_with_square(x)).unwrap();
            started += step.started.len();
            crossings += step.rules.len();
            ended.extend(step.ended);
            t += 200;
        }
        ended.extend(pipeline.finish(t).ended);
        assert_eq!(started, 1);
        assert_eq!(crossings, 1);
        assert_eq!(ended.len(), 1);
        let snapshot = ended[0].1.as_ref().expect("its picture was kept");
        assert_eq!((snapshot.width, snapshot.height), (w, h));
        let (cx, cy) = snapshot.bbox.centre();
        assert!(!snapshot.colour);
        assert_eq!(snapshot.pixels[cy as usize * w + cx as usize], 255);
    }
}
