//! Zones and lines on the image: point-in-polygon and line crossings with a direction. Image
//! coordinates, y pointing down; the unit does not matter (the config's are normalised to
//! [0, 1], so they survive a change of resolution).

/// A point on the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

impl Point {
    pub fn new(x: f32, y: f32) -> Point {
        Point { x, y }
    }
}

/// (b − a) × (p − a): its sign says on which side of a→b the point p lies.
fn cross(a: Point, b: Point, p: Point) -> f32 {
    (b.x - a.x) * (p.y - a.y) - (b.y - a.y) * (p.x - a.x)
}

/// A zone: a polygon, its vertices in order (either way round), closed implicitly.
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    pub points: Vec<Point>,
}

impl Polygon {
    /// Whether `p` is inside, by the even-odd rule (a horizontal ray to the right crosses an
    /// odd number of edges). Points exactly on an edge may fall either way.
    pub fn contains(&self, p: Point) -> bool {
        let n = self.points.len();
        if n < 3 {
            return false;
        }
        let mut inside = false;
        let mut j = n - 1;
        for i in 0..n {
            let (a, b) = (self.points[i], self.points[j]);
            if (a.y > p.y) != (b.y > p.y) {
                let x_at = a.x + (p.y - a.y) * (b.x - a.x) / (b.y - a.y);
                if p.x < x_at {
                    inside = !inside;
                }
            }
            j = i;
        }
        inside
    }
}

/// A polygon in normalised coordinates (0 to 1 of the frame's width and height), checked when
/// made: at least three points, each within the frame. Masks are given this way, so they fit
/// any resolution the frames are analysed at.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalisedPolygon {
    points: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolygonError {
    #[error("a polygon needs at least 3 points; this one has {0}")]
    TooFewPoints(usize),
    #[error(
        "point {index} of the polygon, ({x}, {y}), is outside the frame: normalised \
         coordinates run from 0 to 1"
    )]
    OutsideFrame { index: usize, x: f32, y: f32 },
}

impl NormalisedPolygon {
    pub fn new(points: Vec<Point>) -> Result<NormalisedPolygon, PolygonError> {
        if points.len() < 3 {
            return Err(PolygonError::TooFewPoints(points.len()));
        }
        let unit = 0.0..=1.0;
        if let Some((index, p)) = points
            .iter()
            .enumerate()
            .find(|(_, p)| !unit.contains(&p.x) || !unit.contains(&p.y))
        {
            return Err(PolygonError::OutsideFrame {
                index,
                x: p.x,
                y: p.y,
            });
        }
        Ok(NormalisedPolygon { points })
    }

    pub fn points(&self) -> &[Point] {
        &self.points
    }

    /// The polygon on a frame of `width` × `height` pixels.
    pub fn to_pixels(&self, width: usize, height: usize) -> Polygon {
        Polygon {
            points: self
                .points
                .iter()
                .map(|p| Point::new(p.x * width as f32, p.y * height as f32))
                .collect(),
        }
    }
}

/// Which side of a line, as seen walking from its `a` to its `b` on the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

/// How a line was crossed, as seen walking from its `a` to its `b` on the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    LeftToRight,
    RightToLeft,
}

impl Direction {
    /// As events name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::LeftToRight => "left_to_right",
            Direction::RightToLeft => "right_to_left",
        }
    }
}

/// A counting line: the segment from `a` to `b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    pub a: Point,
    pub b: Point,
}

impl Line {
    /// The side `p` is on, `None` exactly on the line (or its extension). With y pointing
    /// down, the walker's left is where the cross product is negative.
    pub fn side(&self, p: Point) -> Option<Side> {
        let c = cross(self.a, self.b, p);
        if c < 0.0 {
            Some(Side::Left)
        } else if c > 0.0 {
            Some(Side::Right)
        } else {
            None
        }
    }

    /// Whether an object moving from `from` to `to` (two consecutive anchors) crossed the
    /// segment, and which way: the two points lie strictly on opposite sides, and the step
    /// passes between `a` and `b`, not beside the segment on its extension. A step that only
    /// reaches the line is no crossing: a tracker compares against the last side it saw off
    /// the line.
    pub fn crossing(&self, from: Point, to: Point) -> Option<Direction> {
        let direction = match (self.side(from)?, self.side(to)?) {
            (Side::Left, Side::Right) => Direction::LeftToRight,
            (Side::Right, Side::Left) => Direction::RightToLeft,
            _ => return None,
        };
        // a and b must lie on opposite sides of the step (or one on it).
        let (ca, cb) = (cross(from, to, self.a), cross(from, to, self.b));
        (ca * cb <= 0.0 && (ca != 0.0 || cb != 0.0)).then_some(direction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(x: f32, y: f32) -> Point {
        Point::new(x, y)
    }

    /// x = 330 on a 640×360 image, drawn from the bottom to the top: walking up, the left is
    /// the image's left.
    fn upward_line() -> Line {
        Line {
            a: p(330.0, 360.0),
            b: p(330.0, 0.0),
        }
    }

    #[test]
    fn sides_are_the_walkers_left_and_right_with_y_down() {
        let line = upward_line();
        assert_eq!(line.side(p(100.0, 50.0)), Some(Side::Left));
        assert_eq!(line.side(p(500.0, 50.0)), Some(Side::Right));
        assert_eq!(line.side(p(330.0, 50.0)), None);
        // Drawn the other way, the sides swap.
        let downward = Line {
            a: line.b,
            b: line.a,
        };
        assert_eq!(downward.side(p(100.0, 50.0)), Some(Side::Right));
    }

    #[test]
    fn crossings_have_a_direction() {
        let line = upward_line();
        assert_eq!(
            line.crossing(p(300.0, 100.0), p(360.0, 110.0)),
            Some(Direction::LeftToRight)
        );
        assert_eq!(
            line.crossing(p(360.0, 110.0), p(300.0, 100.0)),
            Some(Direction::RightToLeft)
        );
        assert_eq!(Direction::LeftToRight.as_str(), "left_to_right");
    }

    #[test]
    fn steps_beside_the_segment_on_one_side_or_onto_it_are_no_crossing() {
        let line = Line {
            a: p(330.0, 100.0),
            b: p(330.0, 200.0),
        };
        // Crosses x = 330 above the segment's end: its extension, not the segment.
        assert_eq!(line.crossing(p(300.0, 50.0), p(360.0, 50.0)), None);
        // Stays on one side.
        assert_eq!(line.crossing(p(300.0, 150.0), p(320.0, 160.0)), None);
        // Reaches the line and stops there; leaves it again.
        assert_eq!(line.crossing(p(300.0, 150.0), p(330.0, 150.0)), None);
        assert_eq!(line.crossing(p(330.0, 150.0), p(360.0, 150.0)), None);
        // Through an end point exactly: counted.
        assert_eq!(
            line.crossing(p(300.0, 100.0), p(360.0, 100.0)),
            Some(Direction::RightToLeft)
        );
    }

    #[test]
    fn a_normalised_polygon_has_three_points_in_the_frame_and_scales_to_pixels() {
        let square =
            NormalisedPolygon::new(vec![p(0.0, 0.0), p(1.0, 0.0), p(1.0, 0.5), p(0.0, 0.5)])
                .unwrap();
        assert_eq!(square.points().len(), 4);
        assert_eq!(
            square.to_pixels(640, 360).points,
            vec![p(0.0, 0.0), p(640.0, 0.0), p(640.0, 180.0), p(0.0, 180.0)]
        );
        let error = NormalisedPolygon::new(vec![p(0.0, 0.0), p(1.0, 1.0)]).unwrap_err();
        assert_eq!(error, PolygonError::TooFewPoints(2));
        assert_eq!(
            error.to_string(),
            "a polygon needs at least 3 points; this one has 2"
        );
        let error =
            NormalisedPolygon::new(vec![p(0.0, 0.0), p(1.0, 0.0), p(1.2, 0.5)]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "point 2 of the polygon, (1.2, 0.5), is outside the frame: normalised coordinates \
             run from 0 to 1"
        );
        for bad in [p(-0.1, 0.5), p(0.5, f32::NAN), p(f32::INFINITY, 0.0)] {
            let error = NormalisedPolygon::new(vec![p(0.0, 0.0), bad, p(1.0, 1.0)]).unwrap_err();
            assert!(
                matches!(error, PolygonError::OutsideFrame { index: 1, .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn points_are_inside_a_zone_by_the_even_odd_rule() {
        // An L-shaped zone: the notch at the top right is outside.
        let zone = Polygon {
            points: vec![
                p(0.0, 0.0),
                p(0.5, 0.0),
                p(0.5, 0.5),
                p(1.0, 0.5),
                p(1.0, 1.0),
                p(0.0, 1.0),
            ],
        };
        assert!(zone.contains(p(0.25, 0.25)));
        assert!(zone.contains(p(0.75, 0.75)));
        assert!(!zone.contains(p(0.75, 0.25)));
        assert!(!zone.contains(p(1.5, 0.75)));
        assert!(!zone.contains(p(0.25, -0.1)));
        // The same zone listed the other way round.
        let reversed = Polygon {
            points: zone.points.iter().rev().copied().collect(),
        };
        assert!(reversed.contains(p(0.75, 0.75)) && !reversed.contains(p(0.75, 0.25)));
        // Fewer than three points enclose nothing.
        let degenerate = Polygon {
            points: vec![p(0.0, 0.0), p(1.0, 1.0)],
        };
        assert!(!degenerate.contains(p(0.5, 0.5)));
    }
}
