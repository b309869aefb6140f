//! Tracking: one object across frames is one track, with a start, an end and its best moment,
//! not one event per frame. ByteTrack's idea without its Kalman filter (docs/plans/video.md §5):
//! tracks move on at their last velocity; confident detections are matched to tracks first,
//! greedily by IoU, then weak ones to the tracks left, and only confident ones start tracks; a
//! track counts once it was seen `confirm_hits` times, and ends when unseen for `lost_after_ms`.

/// A box on the image: x0 ≤ x1, y0 ≤ y1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxF {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

impl BoxF {
    pub fn new(x0: f32, y0: f32, x1: f32, y1: f32) -> BoxF {
        BoxF { x0, y0, x1, y1 }
    }

    fn area(&self) -> f32 {
        (self.x1 - self.x0).max(0.0) * (self.y1 - self.y0).max(0.0)
    }

    /// Intersection over union, 0 when apart.
    pub fn iou(&self, other: &BoxF) -> f32 {
        let w = (self.x1.min(other.x1) - self.x0.max(other.x0)).max(0.0);
        let h = (self.y1.min(other.y1) - self.y0.max(other.y0)).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }

    pub fn centre(&self) -> (f32, f32) {
        ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)
    }

    fn shifted(&self, dx: f32, dy: f32) -> BoxF {
        BoxF::new(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)
    }
}

/// What a frame's detector (or the motion stage, as class `motion`) found.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub bbox: BoxF,
    pub score: f32,
    pub class: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerConfig {
    /// Detections at least this confident are matched first and may start tracks.
    pub high_score: f32,
    /// The least IoU between a track's predicted box and a detection for them to match.
    pub match_iou: f32,
    /// Frames a track must be seen in before it counts (and is reported).
    pub confirm_hits: u32,
    /// A track unseen this long has ended.
    pub lost_after_ms: i64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            high_score: 0.5,
            match_iou: 0.3,
            confirm_hits: 2,
            lost_after_ms: 5_000,
        }
    }
}

/// One object as followed so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub id: u64,
    pub class: String,
    /// Where it was last seen.
    pub bbox: BoxF,
    /// Where it was seen before that (for line crossings), if it was.
    pub previous: Option<BoxF>,
    pub first_ms: i64,
    pub last_ms: i64,
    pub hits: u32,
    /// Its most confident detection: the moment its snapshot should show.
    pub best_score: f32,
    pub best_bbox: BoxF,
    pub best_ms: i64,
    /// Pixels per millisecond, from its last two sightings.
    velocity: (f32, f32),
}

impl Track {
    pub fn confirmed(&self, config: &TrackerConfig) -> bool {
        self.hits >= config.confirm_hits
    }

    fn predicted(&self, time_ms: i64) -> BoxF {
        let dt = (time_ms - self.last_ms) as f32;
        self.bbox
            .shifted(self.velocity.0 * dt, self.velocity.1 * dt)
    }

    fn see(&mut self, time_ms: i64, detection: &Detection) {
        let dt = (time_ms - self.last_ms).max(1) as f32;
        let ((x0, y0), (x1, y1)) = (self.bbox.centre(), detection.bbox.centre());
        self.velocity = ((x1 - x0) / dt, (y1 - y0) / dt);
        self.previous = Some(self.bbox);
        self.bbox = detection.bbox;
        self.last_ms = time_ms;
        self.hits += 1;
        if detection.score > self.best_score {
            self.best_score = detection.score;
            self.best_bbox = detection.bbox;
            self.best_ms = time_ms;
        }
    }
}

/// What an update changed.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackEvent {
    /// A track was confirmed: an object is there.
    Started(Track),
    /// A confirmed track was seen again (its `previous` box is where it was before).
    Moved(Track),
    /// A confirmed track was not seen for `lost_after_ms`.
    Ended(Track),
}

/// The tracks of one stream.
#[derive(Debug, Clone)]
pub struct Tracker {
    config: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Tracker {
        Tracker {
            config,
            tracks: Vec::new(),
            next_id: 1,
        }
    }

    /// The tracks alive now, confirmed or not.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// Takes one frame's detections at `time_ms` (not before the last frame's time).
    pub fn update(&mut self, time_ms: i64, detections: &[Detection]) -> Vec<TrackEvent> {
        let mut events = Vec::new();
        let mut matched_tracks = vec![false; self.tracks.len()];
        let mut matched_detections = vec![false; detections.len()];
        let (high, low): (Vec<usize>, Vec<usize>) =
            (0..detections.len()).partition(|&d| detections[d].score >= self.config.high_score);
        for group in [high, low] {
            // Every candidate pair above the IoU floor, best first: greedy one-to-one.
            let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
            for &d in &group {
                for (t, track) in self.tracks.iter().enumerate() {
                    if matched_tracks[t] || track.class != detections[d].class {
                        continue;
                    }
                    let iou = track.predicted(time_ms).iou(&detections[d].bbox);
                    if iou >= self.config.match_iou {
                        pairs.push((iou, t, d));
                    }
                }
            }
            pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
            for (_, t, d) in pairs {
                if matched_tracks[t] || matched_detections[d] {
                    continue;
                }
                matched_tracks[t] = true;
                matched_detections[d] = true;
                let track = &mut self.tracks[t];
                let was_confirmed = track.confirmed(&self.config);
                track.see(time_ms, &detections[d]);
                if !was_confirmed && track.confirmed(&self.config) {
                    events.push(TrackEvent::Started(track.clone()));
                } else if was_confirmed {
                    events.push(TrackEvent::Moved(track.clone()));
                }
            }
        }
        // Tracks unseen too long end (reported when they had counted).
        let config = self.config;
        let mut kept = Vec::with_capacity(self.tracks.len());
        for track in self.tracks.drain(..) {
            if time_ms - track.last_ms > config.lost_after_ms {
                if track.confirmed(&config) {
                    events.push(TrackEvent::Ended(track));
                }
            } else {
                kept.push(track);
            }
        }
        self.tracks = kept;
        // Confident detections no track took start tracks of their own.
        for (d, detection) in detections.iter().enumerate() {
            if matched_detections[d] || detection.score < self.config.high_score {
                continue;
            }
            let track = Track {
                id: self.next_id,
                class: detection.class.clone(),
                bbox: detection.bbox,
                previous: None,
                first_ms: time_ms,
                last_ms: time_ms,
                hits: 1,
                best_score: detection.score,
                best_bbox: detection.bbox,
                best_ms: time_ms,
                velocity: (0.0, 0.0),
            };
            self.next_id += 1;
            if track.confirmed(&self.config) {
                events.push(TrackEvent::Started(track.clone()));
            }
            self.tracks.push(track);
        }
        events
    }

    /// Ends every confirmed track now (the stream stopped).
    pub fn finish(&mut self) -> Vec<TrackEvent> {
        let config = self.config;
        self.tracks
            .drain(..)
            .filter(|track| track.confirmed(&config))
            .map(TrackEvent::Ended)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(x: f32, score: f32) -> Detection {
        Detection {
            bbox: BoxF::new(x, 100.0, x + 40.0, 200.0),
            score,
            class: "person".to_string(),
        }
    }

    fn kinds(events: &[TrackEvent]) -> Vec<(&'static str, u64)> {
        events
            .iter()
            .map(|e| match e {
                TrackEvent::Started(t) => ("started", t.id),
                TrackEvent::Moved(t) => ("moved", t.id),
                TrackEvent::Ended(t) => ("ended", t.id),
            })
            .collect()
    }

    #[test]
    fn iou_of_boxes() {
        let a = BoxF::new(0.0, 0.0, 10.0, 10.0);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&BoxF::new(20.0, 20.0, 30.0, 30.0)), 0.0);
        // Half overlapping: 50 / 150.
        assert!((a.iou(&BoxF::new(5.0, 0.0, 15.0, 10.0)) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn a_walking_person_is_one_track_from_start_to_end() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut all = Vec::new();
        // 10 frames at 200 ms, 20 px a frame.
        for frame in 0..10 {
            all.extend(tracker.update(frame * 200, &[person(frame as f32 * 20.0, 0.8)]));
        }
        assert_eq!(kinds(&all)[0], ("started", 1));
        assert!(kinds(&all)[1..].iter().all(|k| *k == ("moved", 1)));
        assert_eq!(all.len(), 9);
        // Unseen for more than 5 s: ended, once.
        assert!(tracker.update(1_800 + 5_000, &[]).is_empty());
        let ended = tracker.update(1_800 + 5_001, &[]);
        assert_eq!(kinds(&ended), vec![("ended", 1)]);
        let TrackEvent::Ended(track) = &ended[0] else {
            unreachable!()
        };
        assert_eq!((track.first_ms, track.last_ms, track.hits), (0, 1_800, 10));
        assert!(tracker.tracks().is_empty());
    }

    #[test]
    fn a_missed_frame_does_not_break_a_track_it_moves_on_at_its_velocity() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        tracker.update(0, &[person(0.0, 0.9)]);
        tracker.update(200, &[person(20.0, 0.9)]);
        // Not seen at 400; at 600 it is 60 px on, which overlaps its last box by nothing
        // but its predicted one (40 px on) by IoU 1/3.
        tracker.update(400, &[]);
        let events = tracker.update(600, &[person(80.0, 0.9)]);
        assert_eq!(kinds(&events), vec![("moved", 1)]);
        let TrackEvent::Moved(track) = &events[0] else {
            unreachable!()
        };
        assert_eq!(track.previous, Some(person(20.0, 0.9).bbox));
    }

    #[test]
    fn the_best_moment_is_the_most_confident_detection() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        for (frame, score) in [0.6, 0.9, 0.7].into_iter().enumerate() {
            tracker.update(frame as i64 * 100, &[person(100.0 + frame as f32, score)]);
        }
        let events = tracker.finish();
        let TrackEvent::Ended(track) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((track.best_score, track.best_ms), (0.9, 100));
        assert_eq!(track.best_bbox, person(101.0, 0.9).bbox);
    }

    #[test]
    fn two_people_apart_are_two_tracks_and_classes_never_mix() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let car = Detection {
            class: "car".to_string(),
            ..person(0.0, 0.9)
        };
        for frame in 0..3 {
            tracker.update(
                frame * 100,
                &[person(0.0, 0.9), person(300.0, 0.9), car.clone()],
            );
        }
        let mut ids: Vec<(String, u64)> = tracker
            .tracks()
            .iter()
            .map(|t| (t.class.clone(), t.id))
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            vec![
                ("car".to_string(), 3),
                ("person".to_string(), 1),
                ("person".to_string(), 2)
            ]
        );
    }

    #[test]
    fn weak_detections_continue_tracks_but_never_start_them() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        assert!(tracker.update(0, &[person(0.0, 0.2)]).is_empty());
        assert!(tracker.tracks().is_empty());
        tracker.update(100, &[person(0.0, 0.9)]);
        let events = tracker.update(200, &[person(2.0, 0.2)]);
        assert_eq!(kinds(&events), vec![("started", 1)]);
    }

    #[test]
    fn a_one_frame_flicker_never_counts() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        assert!(tracker.update(0, &[person(0.0, 0.9)]).is_empty());
        assert!(tracker.update(10_000, &[]).is_empty());
        assert!(tracker.tracks().is_empty());
        assert!(tracker.finish().is_empty());
    }
}
