//! The `[video]` table: streams with their zones, lines and masks, motion settings and
//! retention (docs/plans/video.md). Read by the same walker as the rest of the file, so every
//! problem has its line and all are reported at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use domain::{
    HwAccel, LineSpec, MotionSpec, MqttSpec, Name, NormPoint, RetentionSpec, RtspTransport,
    StreamSpec, VideoConfig, WebhookSpec, ZoneSpec, DEFAULT_MQTT_CLIENT_ID, DEFAULT_MQTT_PORT,
    DEFAULT_MQTT_PREFIX, MAX_VIDEO_FPS, VIDEO_EVENT_KINDS,
};
use toml_edit::{Item, Value};

use super::{byte_size, duration, got, integer, resolve, Section, Walker, Zero};

const VIDEO_KEYS: &[&str] = &["streams", "motion", "retention", "mqtt", "webhooks"];
const MQTT_KEYS: &[&str] = &["url", "prefix", "username", "password", "client_id"];
const WEBHOOK_KEYS: &[&str] = &["url", "kinds", "streams", "headers"];
/// Headers every webhook request carries, set by Flowers and so not configurable.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "x-flowers-event-id",
    "x-flowers-event-kind",
];
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
        if let Some(mqtt) = self.section(&video, "mqtt") {
            config.mqtt = self.mqtt(&mqtt);
        }
        config.webhooks = self.webhooks(&video);
        Some(config)
    }

    /// `[video.mqtt]`.
    fn mqtt(&mut self, section: &Section) -> Option<MqttSpec> {
        self.known_keys(section, MQTT_KEYS);
        if !section.has("url") {
            self.report(
                section.span.clone(),
                &section.field("url"),
                "missing; give the broker as mqtt://HOST[:PORT]",
            );
        }
        let address = self.read(section, "url", mqtt_url);
        let prefix = self.read(section, "prefix", topic_prefix);
        let client_id = self.read(section, "client_id", |item| {
            match item.as_str().map(str::trim) {
                Some(id) if !id.is_empty() && id.len() <= 256 => Ok(id.to_string()),
                _ => Err(format!(
                    "expected a client id of 1 to 256 characters, got {}",
                    got(item)
                )),
            }
        });
        let username = self.read(section, "username", |item| text(item, "a user name"));
        let password = self.read(section, "password", |item| text(item, "a password"));
        if password.is_some() && !section.has("username") {
            self.report(
                section.span_of("password"),
                &section.field("password"),
                "a password needs a username",
            );
        }
        let (host, port) = address?;
        Some(MqttSpec {
            host,
            port,
            prefix: prefix.unwrap_or_else(|| DEFAULT_MQTT_PREFIX.to_string()),
            username,
            password,
            client_id: client_id.unwrap_or_else(|| DEFAULT_MQTT_CLIENT_ID.to_string()),
        })
    }

    /// `[[video.webhooks]]`, or `webhooks = [{ url = … }]` inline.
    fn webhooks(&mut self, video: &Section) -> Vec<WebhookSpec> {
        let hooks = self.table_list(
            video,
            "webhooks",
            |got| {
                format!(
                    "expected [[video.webhooks]] tables such as url = \"http://host/hook\", got {got}"
                )
            },
            |got| format!("expected a table such as {{ url = \"http://host/hook\" }}, got {got}"),
        );
        hooks.iter().filter_map(|hook| self.webhook(hook)).collect()
    }

    fn webhook(&mut self, hook: &Section) -> Option<WebhookSpec> {
        self.known_keys(hook, WEBHOOK_KEYS);
        if !hook.has("url") {
            self.report(
                hook.span.clone(),
                &hook.field("url"),
                "missing; give the http:// URL events are POSTed to",
            );
        }
        let url = self.read(hook, "url", webhook_url);
        let kinds = self.read(hook, "kinds", event_kinds);
        let streams = self.read(hook, "streams", stream_names);
        let mut headers = BTreeMap::new();
        let mut headers_ok = true;
        if let Some(section) = self.section(hook, "headers") {
            for (key, item) in section.table.iter() {
                let checked = header_name(key).and_then(|()| header_value(item));
                match checked {
                    Ok(value) => {
                        headers.insert(key.to_string(), value);
                    }
                    Err(message) => {
                        headers_ok = false;
                        self.report(section.span_of(key), &section.field(key), message);
                    }
                }
            }
        }
        if (hook.has("kinds") && kinds.is_none())
            || (hook.has("streams") && streams.is_none())
            || !headers_ok
        {
            return None;
        }
        Some(WebhookSpec {
            url: url?,
            kinds: kinds.unwrap_or_default(),
            streams: streams.unwrap_or_default(),
            headers,
        })
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

/// `mqtt://HOST[:PORT]`, as host and port. TLS (`mqtts://`) is refused: this build has none.
fn mqtt_url(item: &Item) -> Result<(String, u16), String> {
    let text = item.as_str().map(str::trim).ok_or_else(|| {
        format!(
            "expected a broker URL mqtt://HOST[:PORT], got {}",
            got(item)
        )
    })?;
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!(
            "expected a broker URL mqtt://HOST[:PORT], got {text:?}"
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "mqtt" => {}
        "mqtts" | "ssl" | "tls" | "wss" => {
            return Err(format!(
                "{text:?} needs TLS, which this build of Flowers has no support for; use \
                 mqtt:// (on a trusted network, or through a TLS tunnel)"
            ))
        }
        other => {
            return Err(format!(
                "the scheme {other:?} is not MQTT; give the broker as mqtt://HOST[:PORT]"
            ))
        }
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) || authority.chars().any(char::is_whitespace) {
        return Err(format!(
            "{text:?} is not mqtt://HOST[:PORT]: no path, user or spaces (give username and \
             password as keys)"
        ));
    }
    let (host, port) = match authority.strip_prefix('[') {
        // [::1]:1883
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, port)) => (host, Some(port.strip_prefix(':').unwrap_or(port))),
            None => return Err(format!("{text:?} opens a [ it does not close")),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(format!("{text:?} names no host"));
    }
    let port = match port {
        None => DEFAULT_MQTT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{text:?}: the port {port:?} is not 1..=65535"))?,
    };
    Ok((host.to_string(), port))
}

/// A topic prefix: levels separated by `/`, with no wildcard and no empty level.
fn topic_prefix(item: &Item) -> Result<String, String> {
    let text = item.as_str().map(str::trim).unwrap_or("");
    let valid = !text.is_empty()
        && !text.starts_with('$')
        && !text.contains(['+', '#', '\0'])
        && text.split('/').all(|level| !level.is_empty());
    if !valid {
        return Err(format!(
            "expected a topic prefix such as \"flowers/video\" (no +, #, leading $ or empty \
             level), got {}",
            got(item)
        ));
    }
    Ok(text.to_string())
}

fn text(item: &Item, what: &str) -> Result<String, String> {
    match item.as_str() {
        Some(text) if !text.is_empty() => Ok(text.to_string()),
        _ => Err(format!("expected {what}, got {}", got(item))),
    }
}

/// An `http://` URL with a host. https is refused: this build's HTTP client has no TLS.
fn webhook_url(item: &Item) -> Result<String, String> {
    let text = item
        .as_str()
        .map(str::trim)
        .ok_or_else(|| format!("expected an http:// URL, got {}", got(item)))?;
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!("expected an http:// URL, got {text:?}"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" => {}
        "https" => {
            return Err(format!(
                "{text:?}: https is not available, this build's HTTP client has no TLS; use \
                 http:// (on a trusted network, or to a proxy that adds TLS)"
            ))
        }
        other => {
            return Err(format!(
                "the scheme {other:?} is not http; give an http:// URL"
            ))
        }
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("{text:?} names no host"));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{text:?} contains white space; percent-encode it (%20)"
        ));
    }
    if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']')) {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{text:?}: the port {port:?} is not 1..=65535"));
        }
    }
    Ok(text.to_string())
}

fn event_kinds(item: &Item) -> Result<Vec<String>, String> {
    let list = item
        .as_array()
        .ok_or_else(|| format!("expected a list of event kinds, got {}", got(item)))?;
    list.iter()
        .map(|value| match value.as_str() {
            Some(kind) if VIDEO_EVENT_KINDS.contains(&kind) => Ok(kind.to_string()),
            _ => Err(format!(
                "unknown event kind {}; expected one of {}",
                got_of(value),
                VIDEO_EVENT_KINDS.join(", ")
            )),
        })
        .collect()
}

fn stream_names(item: &Item) -> Result<Vec<String>, String> {
    let list = item
        .as_array()
        .ok_or_else(|| format!("expected a list of stream names, got {}", got(item)))?;
    list.iter()
        .map(|value| {
            let name = value.as_str().ok_or_else(|| {
                format!(
                    "expected a list of stream names, got {} in it",
                    got_of(value)
                )
            })?;
            Name::new(name)
                .map(|name| name.as_str().to_string())
                .map_err(|error| error.to_string())
        })
        .collect()
}

/// A header name (an RFC 9110 token) that Flowers does not set itself.
fn header_name(name: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!(
            "{name:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~)"
        ));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("{name} is set by Flowers on every request"));
    }
    Ok(())
}

fn header_value(item: &Item) -> Result<String, String> {
    let text = item
        .as_str()
        .ok_or_else(|| format!("expected a header value string, got {}", got(item)))?;
    if text.chars().any(|c| c.is_control() && c != '\t') || !text.is_ascii() {
        return Err("a header value must be printable ASCII, with no line break".to_string());
    }
    Ok(text.to_string())
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
