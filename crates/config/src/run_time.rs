//! Services and jobs added at run time (`PUT /v1/services/NAME`, `flowers deploy`,
//! `flowers train`): the request's body is a JSON object with the keys of a
//! `[services.NAME]` or `[jobs.NAME]` table, checked by the very code that reads the file, so
//! the same defaults and limits apply and every problem names its field.

use std::path::Path;

use domain::{JobSpec, Name, ServiceSpec, StreamSpec};
use serde_json::Value as Json;
use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, Value};

use crate::{parse, ConfigError, Problem};

/// Where problems of a run-time spec are said to be.
const ORIGIN: &str = "request body";

/// A service from the JSON form of its `[services.NAME]` table. `workdir`, when given, must be
/// absolute: there is no file for a relative one to be relative to.
pub fn service_from_json(name: &str, body: &Json) -> Result<ServiceSpec, ConfigError> {
    let (mut services, _) = parse_one("services", name, body)?;
    Ok(services
        .pop()
        .expect("a table that parsed without problems is one service"))
}

/// A job from the JSON form of its `[jobs.NAME]` table; see [`service_from_json`].
pub fn job_from_json(name: &str, body: &Json) -> Result<JobSpec, ConfigError> {
    let (_, mut jobs) = parse_one("jobs", name, body)?;
    Ok(jobs
        .pop()
        .expect("a table that parsed without problems is one job"))
}

fn problem(field: &str, message: String) -> Problem {
    Problem {
        origin: ORIGIN.to_string(),
        line: None,
        field: field.to_string(),
        message,
    }
}

/// A stream from the JSON form of its `[video.streams.NAME]` table (`PUT
/// /video/v1/streams/NAME`). A file `url` must be absolute.
pub fn video_stream_from_json(name: &str, body: &Json) -> Result<StreamSpec, ConfigError> {
    let mut document = DocumentMut::new();
    let mut streams = Table::new();
    streams.set_implicit(true);
    streams.insert(
        name,
        Item::Table(table_from_json(
            "video.streams",
            name,
            body,
            |object| match object.get("url").and_then(Json::as_str) {
                Some(url) if !url.contains("://") && !url.trim().is_empty() => {
                    absolute_path("url", url)
                }
                _ => None,
            },
        )?),
    );
    let mut video = Table::new();
    video.set_implicit(true);
    video.insert("streams", Item::Table(streams));
    document.insert("video", Item::Table(video));
    let mut layer = parse_document(&document, &format!("video.streams.{name}"))?;
    let mut video = layer.video.take().unwrap_or_default();
    Ok(video
        .streams
        .pop_first()
        .expect("a table that parsed without problems is one stream")
        .1)
}

/// A problem unless `path` is absolute: there is no file for a relative one to be relative to.
fn absolute_path(field: &str, path: &str) -> Option<Problem> {
    (!Path::new(path).is_absolute()).then(|| {
        problem(
            field,
            format!("expected an absolute path on the machine Flowers runs on, got {path:?}"),
        )
    })
}

/// The TOML table of one `[SECTION.NAME]` from its JSON form; `check` adds what only a request
/// can get wrong.
fn table_from_json(
    section: &str,
    name: &str,
    body: &Json,
    check: impl FnOnce(&serde_json::Map<String, Json>) -> Option<Problem>,
) -> Result<Table, ConfigError> {
    let mut problems = Vec::new();
    if let Err(error) = Name::new(name) {
        problems.push(problem("name", error.to_string()));
    }
    let Some(object) = body.as_object() else {
        problems.push(problem(
            "",
            format!(
                "expected a JSON object with the keys of a [{section}.NAME] table, got {}",
                kind(body)
            ),
        ));
        return Err(ConfigError { problems });
    };
    problems.extend(check(object));
    let mut table = Table::new();
    for (key, value) in object {
        match to_toml(value) {
            Ok(value) => {
                table.insert(key, Item::Value(value));
            }
            Err(message) => problems.push(problem(key, message)),
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    Ok(table)
}

fn parse_one(
    section: &str,
    name: &str,
    body: &Json,
) -> Result<(Vec<ServiceSpec>, Vec<JobSpec>), ConfigError> {
    let table = table_from_json(section, name, body, |object| {
        let workdir = object.get("workdir").and_then(Json::as_str)?;
        absolute_path("workdir", workdir)
    })?;
    let mut owners = Table::new();
    owners.set_implicit(true);
    owners.insert(name, Item::Table(table));
    let mut document = DocumentMut::new();
    document.insert(section, Item::Table(owners));
    let mut layer = parse_document(&document, &format!("{section}.{name}"))?;
    Ok((
        std::mem::take(&mut layer.services).into_values().collect(),
        std::mem::take(&mut layer.jobs).into_values().collect(),
    ))
}

/// Parses a document made from JSON; problems name fields under `prefix` as the JSON does.
fn parse_document(document: &DocumentMut, prefix: &str) -> Result<parse::FileLayer, ConfigError> {
    let (layer, found) = parse::parse_file(&document.to_string(), ORIGIN, Path::new("/"));
    if !found.is_empty() {
        let problems = found
            .into_iter()
            .map(|mut problem| {
                // Lines of the TOML made from the JSON mean nothing to the caller; fields are
                // named as the JSON names them.
                problem.line = None;
                problem.field = match problem.field.strip_prefix(prefix) {
                    Some(rest) => rest.trim_start_matches('.').to_string(),
                    None => problem.field,
                };
                problem
            })
            .collect();
        return Err(ConfigError { problems });
    }
    Ok(layer)
}

fn kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn to_toml(value: &Json) -> Result<Value, String> {
    Ok(match value {
        Json::Null => {
            return Err("null is not a value here; leave the key out to get its default".into())
        }
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) if n.is_f64() => Value::from(f),
            _ => return Err(format!("{n} is out of range")),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => {
            let mut array = Array::new();
            for item in items {
                array.push(to_toml(item)?);
            }
            Value::Array(array)
        }
        Json::Object(map) => {
            let mut inline = InlineTable::new();
            for (key, item) in map {
                inline.insert(key, to_toml(item).map_err(|e| format!("{key}: {e}"))?);
            }
            Value::InlineTable(inline)
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problems(result: Result<impl std::fmt::Debug, ConfigError>) -> Vec<String> {
        result
            .unwrap_err()
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_service_gets_the_files_defaults() {
        let spec = service_from_json(
            "web",
            &json!({
                "command": ["python3", "/srv/app.py"],
                "workdir": "/",
                "routes": [{"path": "/web"}],
                "devices": 1,
                "vram": "2GiB",
                "model": "digits",
                "probe": {"interval": "250ms"},
                "env": {"A": "1"}
            }),
        )
        .unwrap();
        assert_eq!(spec.name.as_str(), "web");
        assert_eq!(spec.command, ["python3", "/srv/app.py"]);
        assert_eq!(spec.routes[0].path_prefix, "/web");
        assert_eq!(spec.resources.vram, Some(domain::ByteSize::gib(2)));
        assert_eq!(spec.model.as_ref().map(Name::as_str), Some("digits"));
        assert_eq!(spec.probe.interval, std::time::Duration::from_millis(250));
        assert_eq!(spec.probe.path, "/healthz");
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.env["A"], "1");
    }

    #[test]
    fn a_job_gets_the_files_defaults() {
        let spec = job_from_json(
            "train",
            &json!({"command": ["python3", "/srv/train.py"], "autostart": true, "preemptible": true}),
        )
        .unwrap();
        assert!(spec.autostart && spec.preemptible);
        assert_eq!(spec.stop_grace, std::time::Duration::from_secs(30));
    }

    #[test]
    fn mistakes_name_their_field_in_the_body() {
        let found = problems(service_from_json(
            "web",
            &json!({"command": [], "replicas": "two", "vram": "2GB", "colour": "red",
                    "probe": {"interval": "soon"}}),
        ));
        let text = found.join("\n");
        for expected in [
            "request body: command: ",
            "request body: replicas: expected an integer",
            "request body: vram: ",
            "request body: colour: unknown key",
            "request body: probe.interval: ",
        ] {
            assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        }
        assert!(!text.contains("services.web"), "{text}");
    }

    #[test]
    fn what_json_has_and_toml_does_not_is_refused() {
        assert_eq!(
            problems(job_from_json("train", &json!({"command": ["x"], "workdir": null}))),
            ["request body: workdir: null is not a value here; leave the key out to get its default"]
        );
        assert_eq!(
            problems(job_from_json("train", &json!(["x"]))),
            ["request body: expected a JSON object with the keys of a [jobs.NAME] table, got an array"]
        );
        assert_eq!(
            problems(job_from_json("train", &json!({"command": ["x"], "workdir": "srv"}))),
            ["request body: workdir: expected an absolute path on the machine Flowers runs on, got \"srv\""]
        );
        let bad_name = problems(job_from_json("Train Me", &json!({"command": ["x"]})));
        assert!(
            bad_name[0].starts_with("request body: name: "),
            "{bad_name:?}"
        );
        let huge = problems(job_from_json(
            "t",
            &json!({"command": ["x"], "priority": u64::MAX}),
        ));
        assert_eq!(
            huge,
            ["request body: priority: 18446744073709551615 is out of range"]
        );
    }
}
