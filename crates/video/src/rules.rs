//! Rules: what tracks do to zones and lines, as events (docs/plans/video.md §5). A track's
//! anchor is the bottom centre of its box (where a person stands, where a car touches the road),
//! or the centre for motion boxes (class `motion`), which have no ground contact.
//! - **Zones** are entered and left with inertia: a change of inside/outside counts once it has
//!   held for `ZONE_INERTIA` sightings, so a box jittering on the edge is not a stream of
//!   events. A track that ends inside a zone leaves it.
//! - **Loitering**: once per track and zone, when it has stayed inside `loiter_after_ms`.
//! - **Lines**: crossed when the anchor moves from one side to the other through the segment;
//!   the last anchor off the line is remembered, so stopping on the line and going on counts
//!   once.

use std::collections::HashMap;

use crate::geometry::{Direction, Line, Point, Polygon};
use crate::track::{Track, TrackEvent};

/// Sightings a zone change must hold for.
pub const ZONE_INERTIA: u32 = 2;

#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub name: String,
    pub polygon: Polygon,
    /// Report `Loitered` once a track has stayed this long; `None`: never.
    pub loiter_after_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CountLine {
    pub name: String,
    pub line: Line,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RuleEvent {
    ZoneEntered {
        track: u64,
        zone: String,
        time_ms: i64,
    },
    ZoneLeft {
        track: u64,
        zone: String,
        time_ms: i64,
    },
    Loitered {
        track: u64,
        zone: String,
        time_ms: i64,
    },
    LineCrossed {
        track: u64,
        line: String,
        direction: Direction,
        time_ms: i64,
    },
}

/// Where a track's anchor is.
pub fn anchor(track: &Track) -> Point {
    let b = track.bbox;
    if track.class == "motion" {
        Point::new((b.x0 + b.x1) / 2.0, (b.y0 + b.y1) / 2.0)
    } else {
        Point::new((b.x0 + b.x1) / 2.0, b.y1)
    }
}

#[derive(Debug, Clone, Default)]
struct ZoneState {
    inside: bool,
    /// Sightings in a row that disagree with `inside`.
    contrary: u32,
    entered_ms: i64,
    loitered: bool,
}

#[derive(Debug, Clone)]
struct TrackState {
    zones: Vec<ZoneState>,
    /// Per line, the last anchor seen off it.
    off_line: Vec<Option<Point>>,
}

/// The zones and lines of one stream, and what each live track has done to them.
#[derive(Debug, Clone)]
pub struct Rules {
    zones: Vec<Zone>,
    lines: Vec<CountLine>,
    tracks: HashMap<u64, TrackState>,
}

impl Rules {
    pub fn new(zones: Vec<Zone>, lines: Vec<CountLine>) -> Rules {
        Rules {
            zones,
            lines,
            tracks: HashMap::new(),
        }
    }

    /// Applies a frame's track events at `time_ms`.
    pub fn apply(&mut self, time_ms: i64, events: &[TrackEvent]) -> Vec<RuleEvent> {
        let mut out = Vec::new();
        for event in events {
            match event {
                TrackEvent::Started(track) => {
                    let p = anchor(track);
                    let state = TrackState {
                        zones: self
                            .zones
                            .iter()
                            .map(|zone| ZoneState {
                                inside: zone.polygon.contains(p),
                                entered_ms: time_ms,
                                ..ZoneState::default()
                            })
                            .collect(),
                        off_line: self
                            .lines
                            .iter()
                            .map(|line| line.line.side(p).map(|_| p))
                            .collect(),
                    };
                    for (zone, zone_state) in self.zones.iter().zip(&state.zones) {
                        if zone_state.inside {
                            out.push(RuleEvent::ZoneEntered {
                                track: track.id,
                                zone: zone.name.clone(),
                                time_ms,
                            });
                        }
                    }
                    self.tracks.insert(track.id, state);
                    self.loiter(track.id, time_ms, &mut out);
                }
                TrackEvent::Moved(track) => {
                    let Some(state) = self.tracks.get_mut(&track.id) else {
                        continue;
                    };
                    let p = anchor(track);
                    for (line, last) in self.lines.iter().zip(state.off_line.iter_mut()) {
                        if line.line.side(p).is_none() {
                            continue;
                        }
                        if let Some(from) = *last {
                            if let Some(direction) = line.line.crossing(from, p) {
                                out.push(RuleEvent::LineCrossed {
                                    track: track.id,
                                    line: line.name.clone(),
                                    direction,
                                    time_ms,
                                });
                            }
                        }
                        *last = Some(p);
                    }
                    for (zone, zone_state) in self.zones.iter().zip(state.zones.iter_mut()) {
                        if zone.polygon.contains(p) == zone_state.inside {
                            zone_state.contrary = 0;
                            continue;
                        }
                        zone_state.contrary += 1;
                        if zone_state.contrary < ZONE_INERTIA {
                            continue;
                        }
                        zone_state.inside = !zone_state.inside;
                        zone_state.contrary = 0;
                        let (track_id, name) = (track.id, zone.name.clone());
                        out.push(if zone_state.inside {
                            zone_state.entered_ms = time_ms;
                            zone_state.loitered = false;
                            RuleEvent::ZoneEntered {
                                track: track_id,
                                zone: name,
                                time_ms,
                            }
                        } else {
                            RuleEvent::ZoneLeft {
                                track: track_id,
                                zone: name,
                                time_ms,
                            }
                        });
                    }
                    self.loiter(track.id, time_ms, &mut out);
                }
                TrackEvent::Ended(track) => {
                    let Some(state) = self.tracks.remove(&track.id) else {
                        continue;
                    };
                    for (zone, zone_state) in self.zones.iter().zip(&state.zones) {
                        if zone_state.inside {
                            out.push(RuleEvent::ZoneLeft {
                                track: track.id,
                                zone: zone.name.clone(),
                                time_ms,
                            });
                        }
                    }
                }
            }
        }
        out
    }

    fn loiter(&mut self, track: u64, time_ms: i64, out: &mut Vec<RuleEvent>) {
        let Some(state) = self.tracks.get_mut(&track) else {
            return;
        };
        for (zone, zone_state) in self.zones.iter().zip(state.zones.iter_mut()) {
            let Some(after) = zone.loiter_after_ms else {
                continue;
            };
            if zone_state.inside && !zone_state.loitered && time_ms - zone_state.entered_ms >= after
            {
                zone_state.loitered = true;
                out.push(RuleEvent::Loitered {
                    track,
                    zone: zone.name.clone(),
                    time_ms,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::{BoxF, Detection, Tracker, TrackerConfig};

    fn p(x: f32, y: f32) -> Point {
        Point::new(x, y)
    }

    /// A person whose feet are at (x, 200).
    fn person_at(x: f32) -> Detection {
        Detection {
            bbox: BoxF::new(x - 20.0, 100.0, x + 20.0, 200.0),
            score: 0.9,
            class: "person".to_string(),
        }
    }

    /// Feeds the tracker one person per frame at these x, 100 ms apart, then ends the stream;
    /// returns the rule events.
    fn walk(rules: &mut Rules, xs: &[f32]) -> Vec<RuleEvent> {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        for (i, &x) in xs.iter().enumerate() {
            let time = i as i64 * 100;
            let events = tracker.update(time, &[person_at(x)]);
            out.extend(rules.apply(time, &events));
        }
        let end = tracker.finish();
        out.extend(rules.apply(xs.len() as i64 * 100, &end));
        out
    }

    fn door() -> CountLine {
        CountLine {
            name: "door".to_string(),
            // Drawn bottom to top: walking up, the left is the image's left.
            line: Line {
                a: p(100.0, 300.0),
                b: p(100.0, 0.0),
            },
        }
    }

    #[test]
    fn a_line_is_crossed_once_each_way_even_when_someone_stops_on_it() {
        let mut rules = Rules::new(vec![], vec![door()]);
        let events = walk(
            &mut rules,
            &[
                60.0, 70.0, 80.0, 90.0, 100.0, 100.0, 110.0, 120.0, 110.0, 100.0, 90.0,
            ],
        );
        let crossed: Vec<(Direction, i64)> = events
            .iter()
            .filter_map(|e| match e {
                RuleEvent::LineCrossed {
                    direction, time_ms, ..
                } => Some((*direction, *time_ms)),
                _ => None,
            })
            .collect();
        // Stopped on the line at 400 and 500 ms, over it at 600; back on it at 900, over at 1000.
        assert_eq!(
            crossed,
            vec![
                (Direction::LeftToRight, 600),
                (Direction::RightToLeft, 1000)
            ]
        );
    }

    /// Each event's kind and time.
    fn summary(events: &[RuleEvent]) -> Vec<(&'static str, i64)> {
        events
            .iter()
            .map(|e| match e {
                RuleEvent::ZoneEntered { time_ms, .. } => ("entered", *time_ms),
                RuleEvent::Loitered { time_ms, .. } => ("loitered", *time_ms),
                RuleEvent::ZoneLeft { time_ms, .. } => ("left", *time_ms),
                RuleEvent::LineCrossed { time_ms, .. } => ("crossed", *time_ms),
            })
            .collect()
    }

    fn square_zone(loiter_after_ms: Option<i64>) -> Zone {
        Zone {
            name: "porch".to_string(),
            polygon: Polygon {
                points: vec![
                    p(50.0, 150.0),
                    p(150.0, 150.0),
                    p(150.0, 250.0),
                    p(50.0, 250.0),
                ],
            },
            loiter_after_ms,
        }
    }

    #[test]
    fn a_zone_is_entered_and_left_once_despite_jitter_on_its_edge() {
        let mut rules = Rules::new(vec![square_zone(None)], vec![]);
        // The zone's left edge is x = 50. In (two sightings: entered at 400), one sighting out
        // at 500 (jitter: no event), in again, then out for two sightings (left at 1000).
        let events = walk(
            &mut rules,
            &[
                40.0, 44.0, 48.0, 52.0, 56.0, 49.0, 54.0, 58.0, 52.0, 48.0, 44.0,
            ],
        );
        assert_eq!(summary(&events), vec![("entered", 400), ("left", 1000)]);
    }

    #[test]
    fn staying_in_a_zone_is_loitering_once_and_an_end_inside_leaves_it() {
        let mut rules = Rules::new(vec![square_zone(Some(300))], vec![]);
        let events = walk(&mut rules, &[100.0; 8]);
        // Confirmed (so entered) at its second sighting, 100 ms; 300 ms later it loiters.
        assert_eq!(
            summary(&events),
            vec![("entered", 100), ("loitered", 400), ("left", 800)]
        );
    }

    #[test]
    fn motion_boxes_anchor_at_their_centre_objects_at_their_feet() {
        let mut track = Tracker::new(TrackerConfig {
            confirm_hits: 1,
            ..TrackerConfig::default()
        })
        .update(
            0,
            &[Detection {
                class: "motion".to_string(),
                ..person_at(100.0)
            }],
        );
        let TrackEvent::Started(motion) = track.remove(0) else {
            panic!()
        };
        assert_eq!(anchor(&motion), p(100.0, 150.0));
        let mut person = motion.clone();
        person.class = "person".to_string();
        assert_eq!(anchor(&person), p(100.0, 200.0));
    }
}
