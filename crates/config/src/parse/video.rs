//! The `[video]` table: streams with their zones, lines and masks, motion settings and
//! retention (docs/plans/video.md). Read by the same walker as the rest of the file, so every
//! problem has its line and all are reported at once.

use std::path::Path;
use std::time::Duration;

use domain::{
    HwAccel, LineSpec, MotionSpec, Name, NormPoint, RetentionSpec, RtspTransport, StreamSpec,
    VideoConfig, ZoneSpec, MAX_VIDEO_FPS,
};
use toml_edit::{Item, Value};

use super::{byte_size, duration, got, integer, resolve, Section, Walker, Zero};

const VIDEO_KEYS: &[&str] = &["streams", "motion", "retention"];
const STREAM_KEYS: &[&str] = &[
    "url",
    "fps",
    "width",
    "hwaccel",
    "rtsp_transport",
    "objects",
    "min_score",
    "masks",
    "zones",
    "lines",
];
const ZONE_KEYS: &[&str] = &["polygon", "loiter_after"];
const LINE_KEYS: &[&str] = &["from", "to"];
const MOTION_KEYS: &[&str] = &["threshold", "min_area", "alpha"];
const RETENTION_KEYS: &[&str] = &["max_age", "max_size"];
/// The most vertices a zone or mask polygon may have; more is surely a mistake.
const MAX_POLYGON_POINTS: usize = 256;
/// URL schemes ffmpeg is asked to read; anything else is refused before it is tried.
const SCHEMES: &[&str] = &["rtsp", "rtsps", "http", "https"];

impl Walker<'_> {
    pub(super) fn video(&mut self, root: &Section) -> Option<VideoConfig> {
        let video = self.section(root, "video")?;
        self.known_keys(&video, VIDEO_KEYS);
        let mut config = VideoConfig::default();
        if let Some(streams) = self.section(&video, "streams") {
            for (key, _) in streams.table.iter() {
                if let Some((name, spec)) = self.stream(&streams, key) {
                    config.streams.insert(name, spec);
                }
            }
        }
        if let Some(motion) = self.section(&video, "motion") {
            self.known_keys(&motion, MOTION_KEYS);
            let defaults = MotionSpec::default();
            config.motion = MotionSpec {
                threshold: self
                    .read(&motion, "threshold", |item| integer(item, 1, 255))
                    .map_or(defaults.threshold, |n| n as u8),
                min_area: self
                    .read(&motion, "min_area", |item| integer(item, 1, 1_000_000))
                    .map_or(defaults.min_area, |n| n as u32),
                alpha: self
                    .read(&motion, "alpha", |item| fraction(item, false))
                    .unwrap_or(defaults.alpha),
            };
        }
        if let Some(retention) = self.section(&video, "retention") {
            self.known_keys(&retention, RETENTION_KEYS);
            let defaults = RetentionSpec::default();
            config.retention = RetentionSpec {
                max_age: self
                    .read(&retention, "max_age", |item| {
                        duration(item, Zero::Refused, None)
                    })
                    .unwrap_or(defaults.max_age),
                max_size: self
                    .read(&retention, "max_size", |item| {
                        let size = byte_size(item)?;
                        if size.bytes() < 1024 * 1024 {
                            return Err(format!(
                                "expected a size of at least 1MiB, got {}",
                                got(item)
                            ));
                        }
                        Ok(size)
                    })
                    .unwrap_or(defaults.max_size),
            };
        }
        Some(config)
    }

    /// One `[video.streams.NAME]`.
    pub(super) fn stream(&mut self, parent: &Section, key: &str) -> Option<(Name, StreamSpec)> {
        let name = self.entry_name(parent, key);
        let section = self.section(parent, key)?;
        self.known_keys(&section, STREAM_KEYS);
        let base_dir = self.base_dir;
        let url = self.read(&section, "url", |item| source_url(item, base_dir));
        if !section.has("url") {
            self.report(
                section.span.clone(),
                &section.field("url"),
                "missing; give an rtsp://, rtsps://, http:// or https:// URL or a file path",
            );
        }
        let mut spec = StreamSpec::new(url.clone().unwrap_or_default());
        if let Some(fps) = self.read(&section, "fps", fps) {
            spec.fps = fps;
        }
        if let Some(width) = self.read(&section, "width", |item| integer(item, 16, 7680)) {
            spec.width = width as u32;
        }
        if let Some(hwaccel) = self.read(&section, "hwaccel", hwaccel) {
            spec.hwaccel = hwaccel;
        }
        if let Some(transport) = self.read(&section, "rtsp_transport", rtsp_transport) {
            spec.rtsp_transport = transport;
        }
        if let Some(objects) = self.read(&section, "objects", class_names) {
            spec.objects = objects;
        }
        if let Some(score) = self.read(&section, "min_score", |item| fraction(item, true)) {
            spec.min_score = score;
        }
        if let Some(masks) = self.read(&section, "masks", |item| {
            let list = item
                .as_array()
                .ok_or_else(|| format!("expected a list of polygons, got {}", got(item)))?;
            list.iter()
                .enumerate()
                .map(|(i, value)| polygon(value).map_err(|e| format!("polygon {}: {e}", i + 1)))
                .collect::<Result<Vec<_>, _>>()
        }) {
            spec.masks = masks;
        }
        if let Some(zones) = self.section(&section, "zones") {
            for (zone_key, _) in zones.table.iter() {
                if let Some((zone_name, zone)) = self.zone(&zones, zone_key) {
                    spec.zones.insert(zone_name, zone);
                }
            }
        }
        if let Some(lines) = self.section(&section, "lines") {
            for (line_key, _) in lines.table.iter() {
                let line_name = self.entry_name(&lines, line_key);
                let Some(line) = self.section(&lines, line_key) else {
                    continue;
                };
                self.known_keys(&line, LINE_KEYS);
                let from = self.required_point(&line, "from");
                let to = self.required_point(&line, "to");
                let (Some(line_name), Some(from), Some(to)) = (line_name, from, to) else {
                    continue;
                };
                if from == to {
                    self.report(
                        line.span_of("to"),
                        &line.field("to"),
                        "a line needs two different points; `to` equals `from`",
                    );
                    continue;
                }
                spec.lines.insert(line_name, LineSpec { from, to });
            }
        }
        let names_in_both: Vec<String> = spec
            .zones
            .keys()
            .filter(|zone| spec.lines.contains_key(*zone))
            .map(|zone| zone.to_string())
            .collect();
        for both in names_in_both {
            self.report(
                section.span.clone(),
                &section.field(&format!("lines.{both}")),
                format!(
                    "`{both}` names both a zone and a line; events name them, so give them \
                     different names"
                ),
            );
        }
        url?;
        Some((name?, spec))
    }

    fn zone(&mut self, parent: &Section, key: &str) -> Option<(Name, ZoneSpec)> {
        let name = self.entry_name(parent, key);
        let section = self.section(parent, key)?;
        self.known_keys(&section, ZONE_KEYS);
        let polygon = self.read(&section, "polygon", |item| match item {
            Item::Value(value) => polygon(value),
            _ => Err(format!(
                "expected a list of [x, y] points, got {}",
                got(item)
            )),
        });
        if !section.has("polygon") {
            self.report(
                section.span.clone(),
                &section.field("polygon"),
                "missing; give at least three [x, y] points in [0, 1]",
            );
        }
        let loiter_after = self.read(&section, "loiter_after", |item| {
            duration(item, Zero::Refused, Some(Duration::from_secs(24 * 3600)))
        });
        Some((
            name?,
            ZoneSpec {
                polygon: polygon?,
                loiter_after,
            },
        ))
    }

    fn required_point(&mut self, section: &Section, key: &str) -> Option<NormPoint> {
        if !section.has(key) {
            self.report(
                section.span.clone(),
                &section.field(key),
                "missing; give a point [x, y] with each in [0, 1]",
            );
            return None;
        }
        self.read(section, key, |item| match item {
            Item::Value(value) => point(value),
            _ => Err(format!("expected a point [x, y], got {}", got(item))),
        })
    }
}

/// A file path or a URL of a scheme ffmpeg is asked to read. A relative path is taken from the
/// config file's directory.
fn source_url(item: &Item, base_dir: &Path) -> Result<String, String> {
    let text = item
        .as_str()
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .ok_or_else(|| {
            format!(
                "expected an rtsp://, rtsps://, http:// or https:// URL or a file path, got {}",
                got(item)
            )
        })?;
    match text.split_once("://") {
        Some((scheme, rest)) => {
            let scheme = scheme.to_ascii_lowercase();
            if !SCHEMES.contains(&scheme.as_str()) {
                return Err(format!(
                    "the scheme {scheme:?} is not read; use rtsp, rtsps, http or https, or a \
                     file path"
                ));
            }
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = host.rsplit('@').next().unwrap_or("");
            if host.is_empty() {
                return Err(format!("{text:?} names no host"));
            }
            if text.chars().any(char::is_whitespace) {
                return Err(format!(
                    "{text:?} contains white space; percent-encode it (%20)"
                ));
            }
            Ok(text.to_string())
        }
        None => Ok(resolve(base_dir, text).to_string_lossy().into_owned()),
    }
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Float(f) => Some(*f.value()),
        Value::Integer(i) => Some(*i.value() as f64),
        _ => None,
    }
}

fn fps(item: &Item) -> Result<f32, String> {
    match item.as_value().and_then(number) {
        Some(fps) if fps > 0.0 && fps <= f64::from(MAX_VIDEO_FPS) => Ok(fps as f32),
        _ => Err(format!(
            "expected frames per second above 0 and at most {MAX_VIDEO_FPS}, got {}",
            got(item)
        )),
    }
}

/// A number in [0, 1]; with `zero` false, above 0.
fn fraction(item: &Item, zero: bool) -> Result<f32, String> {
    match item.as_value().and_then(number) {
        Some(x) if x <= 1.0 && (x > 0.0 || (zero && x == 0.0)) => Ok(x as f32),
        _ => Err(format!(
            "expected a number {} 0 and at most 1, got {}",
            if zero { "from" } else { "above" },
            got(item)
        )),
    }
}

fn hwaccel(item: &Item) -> Result<HwAccel, String> {
    match item.as_str() {
        Some("auto") => Ok(HwAccel::Auto),
        Some("cuda") => Ok(HwAccel::Cuda),
        Some("none") => Ok(HwAccel::None),
        _ => Err(format!(
            "expected \"auto\", \"cuda\" or \"none\", got {}",
            got(item)
        )),
    }
}

fn rtsp_transport(item: &Item) -> Result<RtspTransport, String> {
    match item.as_str() {
        Some("tcp") => Ok(RtspTransport::Tcp),
        Some("udp") => Ok(RtspTransport::Udp),
        _ => Err(format!("expected \"tcp\" or \"udp\", got {}", got(item))),
    }
}

fn class_names(item: &Item) -> Result<Vec<String>, String> {
    let list = item
        .as_array()
        .ok_or_else(|| format!("expected a list of class names, got {}", got(item)))?;
    list.iter()
        .map(|value| match value.as_str().map(str::trim) {
            Some(name) if !name.is_empty() => Ok(name.to_string()),
            _ => Err(format!(
                "expected a list of class names, got {} in it",
                got_of(value)
            )),
        })
        .collect()
}

fn got_of(value: &Value) -> String {
    got(&Item::Value(value.clone()))
}

fn point(value: &Value) -> Result<NormPoint, String> {
    let coordinates: Option<Vec<f64>> = value
        .as_array()
        .map(|array| array.iter().map(number).collect::<Option<Vec<f64>>>())
        .unwrap_or(None);
    match coordinates.as_deref() {
        Some(&[x, y]) if (0.0..=1.0).contains(&x) && (0.0..=1.0).contains(&y) => {
            Ok([x as f32, y as f32])
        }
        Some(&[x, y]) => Err(format!(
            "[{x}, {y}] is outside the frame: coordinates are fractions of its width and \
             height, each in [0, 1]"
        )),
        _ => Err(format!("expected a point [x, y], got {}", got_of(value))),
    }
}

fn polygon(value: &Value) -> Result<Vec<NormPoint>, String> {
    let points = value
        .as_array()
        .ok_or_else(|| format!("expected a list of [x, y] points, got {}", got_of(value)))?;
    if points.len() < 3 || points.len() > MAX_POLYGON_POINTS {
        return Err(format!(
            "a polygon needs 3 to {MAX_POLYGON_POINTS} points, got {}",
            points.len()
        ));
    }
    let points = points
        .iter()
        .enumerate()
        .map(|(i, p)| point(p).map_err(|e| format!("point {}: {e}", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    // Twice the signed area; a polygon with none (all points on a line) encloses nothing.
    let area2: f32 = points
        .iter()
        .zip(points.iter().cycle().skip(1))
        .map(|(a, b)| a[0] * b[1] - b[0] * a[1])
        .sum();
    if area2.abs() < 1e-9 {
        return Err("the polygon encloses no area (its points are on one line)".to_string());
    }
    Ok(points)
}
