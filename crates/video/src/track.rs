//! Tracking: one object across frames is one track, with a start, an end and its best moment,
//! not one event per frame. ByteTrack's idea without its Kalman filter (docs/plans/video.md §5):
//! tracks move on at their last velocity; confident detections are matched to tracks first,
//! greedily by IoU, then weak ones to the tracks left, and only confident ones start tracks; a
//! track counts once it was seen `confirm_hits` times, and ends when unseen for `lost_after_ms`.
//!
//! IoU alone loses small fast objects at a low analysis rate: a 40 px square moving 500 px/s,
//! seen 5 times a second, jumps 2.5 of its sizes between frames, so its boxes never overlap.
//! So a detection IoU left unmatched may still join a track whose predicted centre is near
//! enough, the distance counted in the track's box sizes: `match_distance` of them for a track
//! with a velocity, `young_match_distance` for a track seen once, whose next position is
//! unknown. Each detection joins at most one track and each track takes at most one detection.

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
    /// When IoU matches nothing: the farthest a detection's centre may be from a track's
    /// predicted centre, in the track's box sizes (the larger of its width and height).
    pub match_distance: f32,
    /// The same for a track seen only once, which has no velocity yet: it may have moved
    /// anywhere within its speed, so the radius is larger.
    pub young_match_distance: f32,
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
            match_distance: 1.0,
            young_match_distance: 3.0,
            confirm_hits: 2,
            lost_after_ms: 5_000,
        }
    }
}

impl TrackerConfig {
    /// Refuses settings that would make matching meaningless, naming the field.
    pub fn validate(&self) -> Result<(), TrackerError> {
        let unit = |field: &'static str, value: f32| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(TrackerError {
                    field,
                    value: value.to_string(),
                    expected: "it must be from 0 to 1",
                })
            }
        };
        let distance = |field: &'static str, value: f32| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(TrackerError {
                    field,
                    value: value.to_string(),
                    expected: "it must be a number of box sizes, 0 or more",
                })
            }
        };
        unit("high_score", self.high_score)?;
        unit("match_iou", self.match_iou)?;
        distance("match_distance", self.match_distance)?;
        distance("young_match_distance", self.young_match_distance)?;
        if self.confirm_hits == 0 {
            return Err(TrackerError {
                field: "confirm_hits",
                value: "0".to_string(),
                expected: "a track must be seen at least once",
            });
        }
        if self.lost_after_ms < 0 {
            return Err(TrackerError {
                field: "lost_after_ms",
                value: self.lost_after_ms.to_string(),
                expected: "it must be 0 or more",
            });
        }
        Ok(())
    }
}

/// A tracker setting out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tracker {field} is {value}; {expected}")]
pub struct TrackerError {
    pub field: &'static str,
    pub value: String,
    pub expected: &'static str,
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

    /// How far `detection` is from where this track should be now, in its box sizes, when
    /// within the gate for its age; `None` beyond it.
    fn distance_within_gate(
        &self,
        time_ms: i64,
        detection: &BoxF,
        config: &TrackerConfig,
    ) -> Option<f32> {
        let size = (self.bbox.x1 - self.bbox.x0).max(self.bbox.y1 - self.bbox.y0);
        if size <= 0.0 {
            return None;
        }
        let ((px, py), (dx, dy)) = (self.predicted(time_ms).centre(), detection.centre());
        let distance = (px - dx).hypot(py - dy) / size;
        let gate = if self.hits < 2 {
            config.young_match_distance
        } else {
            config.match_distance
        };
        (distance <= gate).then_some(distance)
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
        let config = self.config;
        for group in [high, low] {
            // Greedy one-to-one: pairs above the IoU floor, best first; then, for what IoU
            // left, pairs within the distance gate, nearest (in box sizes) first.
            let by_iou = self.candidates(
                &group,
                detections,
                &matched_tracks,
                &matched_detections,
                |track, d| {
                    let iou = track.predicted(time_ms).iou(&d.bbox);
                    (iou >= config.match_iou).then_some(-iou)
                },
            );
            self.take(
                time_ms,
                detections,
                by_iou,
                &mut matched_tracks,
                &mut matched_detections,
                &mut events,
            );
            let by_distance = self.candidates(
                &group,
                detections,
                &matched_tracks,
                &matched_detections,
                |track, d| track.distance_within_gate(time_ms, &d.bbox, &config),
            );
            self.take(
                time_ms,
                detections,
                by_distance,
                &mut matched_tracks,
                &mut matched_detections,
                &mut events,
            );
        }
        // Tracks unseen too long end (reported when they had counted).
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

    /// The (track, detection) pairs of the same class, neither matched yet, that `cost`
    /// admits, cheapest first (ties by track, then detection, so the order is stable).
    fn candidates(
        &self,
        group: &[usize],
        detections: &[Detection],
        matched_tracks: &[bool],
        matched_detections: &[bool],
        cost: impl Fn(&Track, &Detection) -> Option<f32>,
    ) -> Vec<(usize, usize)> {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for &d in group {
            if matched_detections[d] {
                continue;
            }
            for (t, track) in self.tracks.iter().enumerate() {
                if matched_tracks[t] || track.class != detections[d].class {
                    continue;
                }
                if let Some(cost) = cost(track, &detections[d]) {
                    pairs.push((cost, t, d));
                }
            }
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        pairs.into_iter().map(|(_, t, d)| (t, d)).collect()
    }

    /// Matches the (track, detection) pairs in order, each track and detection once: greedy
    /// one-to-one, so a detection never feeds two tracks.
    fn take(
        &mut self,
        time_ms: i64,
        detections: &[Detection],
        pairs: Vec<(usize, usize)>,
        matched_tracks: &mut [bool],
        matched_detections: &mut [bool],
        events: &mut Vec<TrackEvent>,
    ) {
        for (t, d) in pairs {
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

    /// A 40 px square centred at (x, 80).
    fn square(x: f32) -> Detection {
        Detection {
            bbox: BoxF::new(x - 20.0, 60.0, x + 20.0, 100.0),
            score: 1.0,
            class: "motion".to_string(),
        }
    }

    #[test]
    fn a_small_fast_object_seen_5_times_a_second_stays_one_track() {
        // 500 px/s at 5 fps: 100 px, 2.5 sizes, a frame; no two boxes overlap.
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut all = Vec::new();
        for frame in 0..6 {
            all.extend(tracker.update(frame * 200, &[square(20.0 + frame as f32 * 100.0)]));
        }
        assert_eq!(
            kinds(&all),
            vec![
                ("started", 1),
                ("moved", 1),
                ("moved", 1),
                ("moved", 1),
                ("moved", 1)
            ]
        );
        // With IoU alone it is a new track every frame, none ever confirmed.
        let mut iou_only = Tracker::new(TrackerConfig {
            match_distance: 0.0,
            young_match_distance: 0.0,
            ..TrackerConfig::default()
        });
        for frame in 0..6 {
            assert!(iou_only
                .update(frame * 200, &[square(20.0 + frame as f32 * 100.0)])
                .is_empty());
        }
        assert_eq!(iou_only.tracks().len(), 6);
    }

    #[test]
    fn a_track_with_a_velocity_has_a_tighter_gate_than_a_young_one() {
        // Young (seen once): 2.5 sizes away is within 3.
        let mut tracker = Tracker::new(TrackerConfig::default());
        tracker.update(0, &[square(100.0)]);
        assert_eq!(
            kinds(&tracker.update(200, &[square(200.0)])),
            vec![("started", 1)]
        );
        // Now it moves 100 px a frame; a detection 1.5 sizes (60 px) from where it should be
        // (300) is beyond the gate of 1 size: a new track, not a jump of the old one.
        assert!(tracker.update(400, &[square(360.0 + 0.5)]).is_empty());
        let ids: Vec<u64> = tracker.tracks().iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![1, 2]);
        // But one 0.75 sizes (30 px) from its prediction continues it.
        let mut tracker = Tracker::new(TrackerConfig::default());
        tracker.update(0, &[square(100.0)]);
        tracker.update(200, &[square(200.0)]);
        assert_eq!(
            kinds(&tracker.update(400, &[square(330.0)])),
            vec![("moved", 1)]
        );
        // Young tracks too have a limit: 4 sizes away is another object.
        let mut tracker = Tracker::new(TrackerConfig::default());
        tracker.update(0, &[square(100.0)]);
        assert!(tracker.update(200, &[square(260.0)]).is_empty());
        assert_eq!(tracker.tracks().len(), 2);
    }

    #[test]
    fn iou_is_matched_before_distance_and_a_detection_feeds_one_track_only() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        // Two young tracks, 200 px apart; one detection halfway: within both gates (2.5
        // sizes), it joins only one (the lower id on a tie) and the other stays unseen.
        tracker.update(0, &[square(100.0), square(300.0)]);
        let events = tracker.update(200, &[square(200.0)]);
        assert_eq!(kinds(&events), vec![("started", 1)]);
        let hits: Vec<(u64, u32)> = tracker.tracks().iter().map(|t| (t.id, t.hits)).collect();
        assert_eq!(hits, vec![(1, 2), (2, 1)]);
        // IoU comes first: a detection overlapping a small track (IoU 0.6) joins it, though
        // in box sizes it is nearer the centre of a big track (0.05 of 200 px against 0.25 of
        // 40 px) whose box it hardly overlaps (IoU 0.04).
        let mut tracker = Tracker::new(TrackerConfig::default());
        let big = Detection {
            bbox: BoxF::new(20.0, -20.0, 220.0, 180.0),
            ..square(0.0)
        };
        tracker.update(0, &[square(100.0), big]);
        tracker.update(200, &[square(110.0)]);
        let hits: Vec<(u64, u32)> = tracker.tracks().iter().map(|t| (t.id, t.hits)).collect();
        assert_eq!(hits, vec![(1, 2), (2, 1)]);
    }

    #[test]
    fn tracker_settings_out_of_range_are_refused_by_name() {
        assert_eq!(TrackerConfig::default().validate(), Ok(()));
        for (config, field) in [
            (
                TrackerConfig {
                    match_iou: 1.5,
                    ..TrackerConfig::default()
                },
                "match_iou",
            ),
            (
                TrackerConfig {
                    high_score: f32::NAN,
                    ..TrackerConfig::default()
                },
                "high_score",
            ),
            (
                TrackerConfig {
                    match_distance: -1.0,
                    ..TrackerConfig::default()
                },
                "match_distance",
            ),
            (
                TrackerConfig {
                    young_match_distance: f32::INFINITY,
                    ..TrackerConfig::default()
                },
                "young_match_distance",
            ),
            (
                TrackerConfig {
                    confirm_hits: 0,
                    ..TrackerConfig::default()
                },
                "confirm_hits",
            ),
            (
                TrackerConfig {
                    lost_after_ms: -5,
                    ..TrackerConfig::default()
                },
                "lost_after_ms",
            ),
        ] {
            let error = config.validate().unwrap_err();
            assert_eq!(error.field, field);
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("tracker {field} is ")),
                "{error}"
            );
        }
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
