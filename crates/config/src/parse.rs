//! Reading `flowers.toml` from a span-preserving TOML parse into one layer of configuration.
//!
//! The file is walked by hand over `toml_edit`'s document rather than deserialized with serde:
//! serde stops at the first mistake and loses where a value was written, while walking keeps
//! every key's and value's byte span, so each problem gets its line, and all problems in the
//! file are reported at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use domain::{
    ApiKeyDigest, ByteSize, JobSpec, MetricMode, ModelSpec, Name, ProbeSpec, PromotePolicy,
    ReplaceStrategy, ResourceRequest, RestartPolicy, RestartSpec, RouteSpec, ServiceSpec,
};
use toml_edit::{Item, TableLike, Value};

use crate::Problem;

mod video;

/// The longest grace period between SIGTERM and SIGKILL; longer would make a stuck Run hold
/// its device (and `flowers down`) hostage for too long.
const MAX_STOP_GRACE: Duration = Duration::from_secs(3600);
const DEFAULT_SERVICE_STOP_GRACE: Duration = Duration::from_secs(10);
/// Jobs get longer by default: it is their time to write a checkpoint.
const DEFAULT_JOB_STOP_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_JOB_RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// Smaller rotated log files would rotate on every few lines of a chatty service.
const MIN_LOG_SIZE: u64 = 4 * ByteSize::KIB;

const ROOT_KEYS: &[&str] = &[
    "server", "devices", "logs", "models", "services", "jobs", "video",
];
const SERVER_KEYS: &[&str] = &["gateway_listen", "api_listen", "data_dir", "access_log"];
const DEVICES_KEYS: &[&str] = &["cpu_slots"];
const LOGS_KEYS: &[&str] = &["max_size", "keep", "keep_runs"];
/// How long a request waits for a ready replica by default, and at most.
const DEFAULT_HOLD: Duration = Duration::from_secs(30);
const MAX_HOLD: Duration = Duration::from_secs(3600);
/// The largest request body a service's routes accept by default.
const DEFAULT_MAX_BODY: ByteSize = ByteSize(100 * ByteSize::MIB);

const SERVICE_KEYS: &[&str] = &[
    "command",
    "workdir",
    "env",
    "replicas",
    "devices",
    "vram",
    "stop_grace",
    "model",
    "routes",
    "hold",
    "max_body",
    "api_keys",
    "probe",
    "restart",
    "replace",
];
const JOB_KEYS: &[&str] = &[
    "command",
    "workdir",
    "env",
    "devices",
    "vram",
    "priority",
    "preemptible",
    "restart_limit",
    "restart_backoff",
    "stop_grace",
    "autostart",
    "model",
];
const ROUTE_KEYS: &[&str] = &["host", "path"];
const MODEL_KEYS: &[&str] = &["promote", "keep"];
const PROMOTE_KEYS: &[&str] = &["metric", "mode"];
const PROBE_KEYS: &[&str] = &[
    "path",
    "interval",
    "timeout",
    "start_timeout",
    "failure_threshold",
];
const RESTART_KEYS: &[&str] = &[
    "policy",
    "backoff",
    "backoff_max",
    "crash_loop_after",
    "healthy_after",
];

/// What the file set; `None` where it is silent, so that defaults show through.
#[derive(Debug, Default)]
pub(crate) struct FileLayer {
    pub gateway_listen: Option<SocketAddr>,
    pub api_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub access_log: Option<bool>,
    pub cpu_slots: Option<u32>,
    pub logs_max_size: Option<ByteSize>,
    pub logs_keep: Option<u32>,
    pub logs_keep_runs: Option<u32>,
    pub services: BTreeMap<Name, ServiceSpec>,
    pub jobs: BTreeMap<Name, JobSpec>,
    pub models: BTreeMap<Name, ModelSpec>,
    pub video: Option<domain::VideoConfig>,
}

/// Parses and validates `text`. `origin` names the file in problems; relative paths in it are
/// resolved against `base_dir`.
pub(crate) fn parse_file(text: &str, origin: &str, base_dir: &Path) -> (FileLayer, Vec<Problem>) {
    let mut walker = Walker {
        text,
        origin,
        base_dir,
        problems: Vec::new(),
    };
    let layer = match toml_edit::Document::parse(text) {
        Ok(document) => walker.root(document.as_table()),
        Err(error) => {
            walker.report(
                error.span(),
                "",
                format!("invalid TOML: {}", error.message()),
            );
            FileLayer::default()
        }
    };
    (layer, walker.problems)
}

/// A table of the document being read, with where it is for messages.
struct Section<'d> {
    table: &'d dyn TableLike,
    /// Dotted path of the table, empty for the root.
    path: String,
    span: Option<Range<usize>>,
}

impl Section<'_> {
    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Where a problem with `key` is best pointed at: its value, else the key itself.
    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        let value_span = self.table.get(key).and_then(Item::span);
        value_span.or_else(|| self.key_span(key))
    }

    fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.table.key(key).and_then(|k| k.span())
    }

    fn has(&self, key: &str) -> bool {
        self.table.get(key).is_some()
    }
}

/// One element of a list of tables: its table (`None` when the element is not a table), its
/// span, and how it was written for the message when it is not a table.
type RouteEntry<'d> = (Option<&'d dyn TableLike>, Option<Range<usize>>, String);

struct Walker<'a> {
    text: &'a str,
    origin: &'a str,
    base_dir: &'a Path,
    problems: Vec<Problem>,
}

/// Whether a zero duration makes sense for a field (a zero grace period does; a zero probe
/// interval would spin).
#[derive(Clone, Copy, PartialEq)]
enum Zero {
    Allowed,
    Refused,
}

impl Walker<'_> {
    fn line_of(&self, span: Option<Range<usize>>) -> Option<usize> {
        let start = span?.start.min(self.text.len());
        let newlines = self.text.as_bytes()[..start]
            .iter()
            .filter(|&&byte| byte == b'\n')
            .count();
        Some(newlines + 1)
    }

    fn report(&mut self, span: Option<Range<usize>>, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            origin: self.origin.to_string(),
            line: self.line_of(span),
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// Reads `key` of `section` with `convert`; a refused value becomes a problem at the
    /// value's line, and `None` (as does an absent key).
    fn read<T>(
        &mut self,
        section: &Section,
        key: &str,
        convert: impl FnOnce(&Item) -> Result<T, String>,
    ) -> Option<T> {
        let item = section.table.get(key)?;
        match convert(item) {
            Ok(value) => Some(value),
            Err(message) => {
                self.report(section.span_of(key), &section.field(key), message);
                None
            }
        }
    }

    /// The sub-table `key` of `parent`, whether written as a `[header]`, inline or dotted.
    fn section<'d>(&mut self, parent: &Section<'d>, key: &str) -> Option<Section<'d>> {
        let item = parent.table.get(key)?;
        match item.as_table_like() {
            Some(table) => Some(Section {
                table,
                path: parent.field(key),
                span: item.span().or_else(|| parent.key_span(key)),
            }),
            None => {
                let message = format!("expected a table, got {}", got(item));
                self.report(parent.span_of(key), &parent.field(key), message);
                None
            }
        }
    }

    /// Refuses keys the schema does not know, suggesting the closest known one. Returns
    /// whether all keys were known.
    fn known_keys(&mut self, section: &Section, known: &[&str]) -> bool {
        let mut all_known = true;
        for (key, _) in section.table.iter() {
            if known.contains(&key) {
                continue;
            }
            all_known = false;
            let message = unknown_key_message(key, known);
            let span = section.key_span(key).or_else(|| section.span_of(key));
            self.report(span, &section.field(key), message);
        }
        all_known
    }

    fn root(&mut self, table: &toml_edit::Table) -> FileLayer {
        let root = Section {
            table,
            path: String::new(),
            span: None,
        };
        self.known_keys(&root, ROOT_KEYS);
        let mut layer = FileLayer::default();

        if let Some(server) = self.section(&root, "server") {
            self.known_keys(&server, SERVER_KEYS);
            layer.gateway_listen = self.read(&server, "gateway_listen", socket_address);
            layer.api_listen = self.read(&server, "api_listen", socket_address);
            let base_dir = self.base_dir;
            layer.data_dir = self.read(&server, "data_dir", |item| {
                non_empty_string(item, "a directory path").map(|text| resolve(base_dir, text))
            });
            layer.access_log = self.read(&server, "access_log", boolean);
        }

        if let Some(devices) = self.section(&root, "devices") {
            self.known_keys(&devices, DEVICES_KEYS);
            layer.cpu_slots = self
                .read(&devices, "cpu_slots", |item| integer(item, 0, 256))
                .map(|n| n as u32);
        }

        if let Some(logs) = self.section(&root, "logs") {
            self.known_keys(&logs, LOGS_KEYS);
            layer.logs_max_size = self.read(&logs, "max_size", |item| {
                let size = byte_size(item)?;
                if size.bytes() < MIN_LOG_SIZE {
                    return Err(format!(
                        "expected a size of at least 4KiB, got {}",
                        got(item)
                    ));
                }
                Ok(size)
            });
            layer.logs_keep = self
                .read(&logs, "keep", |item| integer(item, 1, 100))
                .map(|n| n as u32);
            layer.logs_keep_runs = self
                .read(&logs, "keep_runs", |item| integer(item, 1, 100_000))
                .map(|n| n as u32);
        }

        if let Some(models) = self.section(&root, "models") {
            for (key, _) in models.table.iter() {
                if let Some(spec) = self.model(&models, key) {
                    layer.models.insert(spec.name.clone(), spec);
                }
            }
        }

        // Key spans of every accepted name, to point a service/job collision at the later one.
        let mut service_spans = BTreeMap::new();
        if let Some(services) = self.section(&root, "services") {
            for (key, _) in services.table.iter() {
                if let Some(spec) = self.service(&services, key) {
                    service_spans.insert(spec.name.clone(), services.key_span(key));
                    layer.services.insert(spec.name.clone(), spec);
                }
            }
        }
        if let Some(jobs) = self.section(&root, "jobs") {
            for (key, _) in jobs.table.iter() {
                let Some(spec) = self.job(&jobs, key) else {
                    continue;
                };
                let job_span = jobs.key_span(key);
                if let Some(service_span) = service_spans.get(&spec.name) {
                    let job_is_later = match (service_span, &job_span) {
                        (Some(service), Some(job)) => job.start > service.start,
                        _ => true,
                    };
                    let (span, field, other) = if job_is_later {
                        (job_span, jobs.field(key), format!("services.{key}"))
                    } else {
                        (
                            service_span.clone(),
                            format!("services.{key}"),
                            jobs.field(key),
                        )
                    };
                    let message = format!(
                        "the name is already used by `{other}`; a service and a job may not \
                         share a name (they share run ids and logs)"
                    );
                    self.report(span, &field, message);
                    continue;
                }
                layer.jobs.insert(spec.name.clone(), spec);
            }
        }
        layer.video = self.video(&root);
        layer
    }

    /// The name of a service or job, from its key under `[services]` or `[jobs]`.
    fn entry_name(&mut self, parent: &Section, key: &str) -> Option<Name> {
        match Name::new(key) {
            Ok(name) => Some(name),
            Err(error) => {
                let span = parent.key_span(key).or_else(|| parent.span_of(key));
                self.report(span, &parent.field(key), error.to_string());
                None
            }
        }
    }

    fn service(&mut self, parent: &Section, key: &str) -> Option<ServiceSpec> {
        let name = self.entry_name(parent, key);
        let section = self.section(parent, key)?;
        self.known_keys(&section, SERVICE_KEYS);
        let command = self.command(&section);
        let workdir = self.workdir(&section);
        let env = self.env(&section);
        let replicas = self
            .read(&section, "replicas", |item| integer(item, 0, 64))
            .map_or(1, |n| n as u32);
        let resources = self.resources(&section);
        let stop_grace = self
            .read(&section, "stop_grace", |item| {
                duration(item, Zero::Allowed, Some(MAX_STOP_GRACE))
            })
            .unwrap_or(DEFAULT_SERVICE_STOP_GRACE);
        let model = self.read(&section, "model", model_name);
        let routes = self.routes(&section);
        let hold = self
            .read(&section, "hold", |item| {
                duration(item, Zero::Allowed, Some(MAX_HOLD))
            })
            .unwrap_or(DEFAULT_HOLD);
        let max_body = self
            .read(&section, "max_body", |item| {
                let size = byte_size(item)?;
                if size.bytes() == 0 {
                    return Err(format!("expected a size above zero, got {}", got(item)));
                }
                Ok(size)
            })
            .unwrap_or(DEFAULT_MAX_BODY);
        let api_keys = self.api_keys(&section);
        let probe = self.probe(&section);
        let restart = self.restart(&section);
        let replace = self
            .read(&section, "replace", replace_strategy)
            .unwrap_or_default();
        Some(ServiceSpec {
            name: name?,
            command: command?,
            workdir,
            env,
            replicas,
            resources,
            probe,
            restart,
            stop_grace,
            routes,
            hold,
            max_body,
            api_keys,
            model,
            replace,
        })
    }

    fn job(&mut self, parent: &Section, key: &str) -> Option<JobSpec> {
        let name = self.entry_name(parent, key);
        let section = self.section(parent, key)?;
        self.known_keys(&section, JOB_KEYS);
        let command = self.command(&section);
        let workdir = self.workdir(&section);
        let env = self.env(&section);
        let resources = self.resources(&section);
        let priority = self
            .read(&section, "priority", |item| integer(item, -1000, 1000))
            .map_or(0, |n| n as i32);
        let preemptible = self.read(&section, "preemptible", boolean).unwrap_or(false);
        let restart_limit = self
            .read(&section, "restart_limit", |item| integer(item, 0, 100))
            .map_or(0, |n| n as u32);
        let restart_backoff = self
            .read(&section, "restart_backoff", |item| {
                duration(item, Zero::Refused, None)
            })
            .unwrap_or(DEFAULT_JOB_RESTART_BACKOFF);
        let stop_grace = self
            .read(&section, "stop_grace", |item| {
                duration(item, Zero::Allowed, Some(MAX_STOP_GRACE))
            })
            .unwrap_or(DEFAULT_JOB_STOP_GRACE);
        let autostart = self.read(&section, "autostart", boolean).unwrap_or(false);
        let model = self.read(&section, "model", model_name);
        Some(JobSpec {
            name: name?,
            command: command?,
            workdir,
            env,
            resources,
            priority,
            preemptible,
            restart_limit,
            restart_backoff,
            stop_grace,
            autostart,
            model,
        })
    }

    fn model(&mut self, parent: &Section, key: &str) -> Option<ModelSpec> {
        let name = self.entry_name(parent, key);
        let section = self.section(parent, key)?;
        self.known_keys(&section, MODEL_KEYS);
        let promote = self.promote(&section).unwrap_or(PromotePolicy::Manual);
        let keep = self
            .read(&section, "keep", |item| integer(item, 1, 10_000))
            .map_or(ModelSpec::DEFAULT_KEEP, |n| n as u32);
        Some(ModelSpec {
            name: name?,
            promote,
            keep,
        })
    }

    /// `promote = "manual"` or `promote = { metric = "eval_loss", mode = "min" }`.
    fn promote(&mut self, parent: &Section) -> Option<PromotePolicy> {
        let item = parent.table.get("promote")?;
        if let Some(text) = item.as_str() {
            if text == "manual" {
                return Some(PromotePolicy::Manual);
            }
            let message = format!(
                "expected \"manual\" or a table like {{ metric = \"eval_loss\", mode = \"min\" }}, got {}",
                got(item)
            );
            self.report(parent.span_of("promote"), &parent.field("promote"), message);
            return None;
        }
        if item.as_table_like().is_none() {
            let message = format!(
                "expected \"manual\" or a table like {{ metric = \"eval_loss\", mode = \"min\" }}, got {}",
                got(item)
            );
            self.report(parent.span_of("promote"), &parent.field("promote"), message);
            return None;
        }
        let section = self.section(parent, "promote")?;
        self.known_keys(&section, PROMOTE_KEYS);
        let metric = self.read(&section, "metric", metric_name);
        let mode = self.read(&section, "mode", metric_mode);
        for (key, present) in [
            ("metric", section.has("metric")),
            ("mode", section.has("mode")),
        ] {
            if !present {
                let message = format!(
                    "missing `{key}`: automatic promotion needs a metric and a mode (\"min\" or \"max\")"
                );
                self.report(section.span.clone(), &section.field(key), message);
            }
        }
        Some(PromotePolicy::Metric {
            metric: metric?,
            mode: mode?,
        })
    }

    fn command(&mut self, section: &Section) -> Option<Vec<String>> {
        let field = section.field("command");
        let Some(item) = section.table.get("command") else {
            self.report(section.span.clone(), &field, "required");
            return None;
        };
        let array = match item.as_array() {
            Some(array) if !array.is_empty() => array,
            _ => {
                let got = if item.as_array().is_some() {
                    "an empty list".to_string()
                } else {
                    got(item)
                };
                let message = format!(
                    "expected a non-empty list of strings such as [\"python3\", \"app.py\"], \
                     got {got}"
                );
                self.report(section.span_of("command"), &field, message);
                return None;
            }
        };
        let mut command = Vec::with_capacity(array.len());
        let mut valid = true;
        for (index, value) in array.iter().enumerate() {
            match value.as_str() {
                Some(text) if !text.is_empty() => command.push(text.to_string()),
                _ => {
                    let message = format!("expected a non-empty string, got {}", got_value(value));
                    self.report(value.span(), &format!("{field}[{index}]"), message);
                    valid = false;
                }
            }
        }
        valid.then_some(command)
    }

    fn workdir(&mut self, section: &Section) -> Option<PathBuf> {
        let base_dir = self.base_dir;
        self.read(section, "workdir", |item| {
            let text = non_empty_string(item, "a directory path")?;
            let path = resolve(base_dir, text);
            match std::fs::metadata(&path) {
                Ok(metadata) if metadata.is_dir() => Ok(path),
                Ok(_) => Err(format!("{} is not a directory", path.display())),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    Err(format!("directory {} does not exist", path.display()))
                }
                Err(error) => Err(format!("cannot use {}: {error}", path.display())),
            }
        })
    }

    fn env(&mut self, parent: &Section) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let Some(section) = self.section(parent, "env") else {
            return env;
        };
        for (key, item) in section.table.iter() {
            let field = section.field(key);
            if let Err(message) = environment_variable_name(key) {
                let span = section.key_span(key).or_else(|| section.span_of(key));
                self.report(span, &field, message);
                continue;
            }
            match item.as_str() {
                Some(value) => {
                    env.insert(key.to_string(), value.to_string());
                }
                None => {
                    let message = format!("expected a string, got {}", got(item));
                    self.report(section.span_of(key), &field, message);
                }
            }
        }
        env
    }

    fn resources(&mut self, section: &Section) -> ResourceRequest {
        let devices = self
            .read(section, "devices", |item| integer(item, 0, 1))
            .map(|n| n as u32);
        let vram = self.read(section, "vram", |item| {
            let size = byte_size(item)?;
            if size.bytes() == 0 {
                return Err(format!("expected a size above zero, got {}", got(item)));
            }
            Ok(size)
        });
        // A devices value that was itself refused already has its problem; do not pile on.
        let devices_refused = section.has("devices") && devices.is_none();
        if vram.is_some() && devices != Some(1) && !devices_refused {
            self.report(
                section.span_of("vram"),
                &section.field("vram"),
                "needs devices = 1",
            );
        }
        ResourceRequest {
            devices: devices.unwrap_or(0),
            vram,
        }
    }

    fn routes(&mut self, section: &Section) -> Vec<RouteSpec> {
        let entries = self.table_list(
            section,
            "routes",
            |got| format!("expected a list of routes such as [{{ path = \"/web\" }}], got {got}"),
            |got| {
                format!(
                    "expected a route such as {{ host = \"web.lan\", path = \"/\" }}, got {got}"
                )
            },
        );
        let mut routes = Vec::with_capacity(entries.len());
        for route in entries {
            let all_known = self.known_keys(&route, ROUTE_KEYS);
            // `{ paht = "/" }` already has its problem; "needs a host or a path" would pile on.
            if all_known && !route.has("host") && !route.has("path") {
                self.report(
                    route.span.clone(),
                    &route.path,
                    "a route needs a host, a path or both",
                );
            }
            if !route.has("host") && !route.has("path") {
                continue;
            }
            let host = self.read(&route, "host", host_name);
            let path = self.read(&route, "path", url_path);
            if (route.has("host") && host.is_none()) || (route.has("path") && path.is_none()) {
                continue;
            }
            routes.push(RouteSpec {
                host,
                path_prefix: path.unwrap_or_else(|| "/".to_string()),
            });
        }
        routes
    }

    /// The tables of the list `key`, written inline (`key = [{ … }]`) or as `[[…key]]`, each
    /// a section named `key[INDEX]`. A value that is no list is reported with `not_list`, an
    /// element that is no table with `not_table` (each given how it was written).
    fn table_list<'d>(
        &mut self,
        section: &Section<'d>,
        key: &str,
        not_list: impl FnOnce(String) -> String,
        not_table: impl Fn(String) -> String,
    ) -> Vec<Section<'d>> {
        let Some(item) = section.table.get(key) else {
            return Vec::new();
        };
        let field = section.field(key);
        let entries: Vec<RouteEntry> = if let Some(array) = item.as_array() {
            array
                .iter()
                .map(|value| {
                    let table = value.as_inline_table().map(|t| t as &dyn TableLike);
                    (table, value.span(), got_value(value))
                })
                .collect()
        } else if let Some(tables) = item.as_array_of_tables() {
            tables
                .iter()
                .map(|table| (Some(table as &dyn TableLike), table.span(), String::new()))
                .collect()
        } else {
            self.report(section.span_of(key), &field, not_list(got(item)));
            return Vec::new();
        };
        let mut sections = Vec::with_capacity(entries.len());
        for (index, (table, span, got)) in entries.into_iter().enumerate() {
            let path = format!("{field}[{index}]");
            match table {
                Some(table) => sections.push(Section { table, path, span }),
                None => self.report(span, &path, not_table(got)),
            }
        }
        sections
    }

    /// `api_keys = ["sha256:…", …]`: digests only, so that the file never holds a key.
    fn api_keys(&mut self, section: &Section) -> Vec<ApiKeyDigest> {
        let Some(item) = section.table.get("api_keys") else {
            return Vec::new();
        };
        let field = section.field("api_keys");
        let Some(array) = item.as_array() else {
            let message = format!(
                "expected a list of key digests such as [\"sha256:…\"] (from `flowers gateway \
                 new-key`), got {}",
                got(item)
            );
            self.report(section.span_of("api_keys"), &field, message);
            return Vec::new();
        };
        let mut digests = Vec::with_capacity(array.len());
        for (index, value) in array.iter().enumerate() {
            let parsed = match value.as_str() {
                Some(text) => text
                    .parse::<ApiKeyDigest>()
                    .map_err(|error| error.to_string()),
                None => Err(format!(
                    "expected \"sha256:\" followed by 64 hex digits, got {}",
                    got_value(value)
                )),
            };
            match parsed {
                Ok(digest) => digests.push(digest),
                Err(message) => self.report(value.span(), &format!("{field}[{index}]"), message),
            }
        }
        digests
    }

    fn probe(&mut self, parent: &Section) -> ProbeSpec {
        let mut probe = ProbeSpec::default();
        let Some(section) = self.section(parent, "probe") else {
            return probe;
        };
        self.known_keys(&section, PROBE_KEYS);
        let positive = |item: &Item| duration(item, Zero::Refused, None);
        if let Some(path) = self.read(&section, "path", url_path) {
            probe.path = path;
        }
        if let Some(interval) = self.read(&section, "interval", positive) {
            probe.interval = interval;
        }
        if let Some(timeout) = self.read(&section, "timeout", positive) {
            probe.timeout = timeout;
        }
        if let Some(start_timeout) = self.read(&section, "start_timeout", positive) {
            probe.start_timeout = start_timeout;
        }
        if let Some(threshold) =
            self.read(&section, "failure_threshold", |item| integer(item, 1, 1000))
        {
            probe.failure_threshold = threshold as u32;
        }
        probe
    }

    fn restart(&mut self, parent: &Section) -> RestartSpec {
        let mut restart = RestartSpec::default();
        let Some(section) = self.section(parent, "restart") else {
            return restart;
        };
        self.known_keys(&section, RESTART_KEYS);
        let positive = |item: &Item| duration(item, Zero::Refused, None);
        if let Some(policy) = self.read(&section, "policy", restart_policy) {
            restart.policy = policy;
        }
        let backoff = self.read(&section, "backoff", positive);
        let backoff_max = self.read(&section, "backoff_max", positive);
        if let Some(backoff) = backoff {
            restart.backoff_initial = backoff;
        }
        if let Some(backoff_max) = backoff_max {
            restart.backoff_max = backoff_max;
        }
        let both_readable = (backoff.is_some() || !section.has("backoff"))
            && (backoff_max.is_some() || !section.has("backoff_max"));
        if both_readable && restart.backoff_max < restart.backoff_initial {
            let initial = humantime::format_duration(restart.backoff_initial);
            let max = humantime::format_duration(restart.backoff_max);
            // Point at the key the user wrote; when both are written, at the ceiling.
            let key = if section.has("backoff_max") {
                "backoff_max"
            } else {
                "backoff"
            };
            let message = format!("backoff_max ({max}) must be at least backoff ({initial})");
            self.report(section.span_of(key), &section.field(key), message);
        }
        if let Some(after) = self.read(&section, "crash_loop_after", |item| integer(item, 1, 1000))
        {
            restart.crash_loop_after = after as u32;
        }
        if let Some(healthy_after) = self.read(&section, "healthy_after", positive) {
            restart.healthy_after = healthy_after;
        }
        restart
    }
}

/// How a value was written, for the "got …" half of a message.
fn got(item: &Item) -> String {
    match item {
        Item::None => "nothing".to_string(),
        Item::Value(value) => got_value(value),
        Item::Table(_) => "a table".to_string(),
        Item::ArrayOfTables(_) => "an array of tables".to_string(),
    }
}

fn got_value(value: &Value) -> String {
    match value {
        Value::String(text) => format!("{:?}", text.value()),
        Value::Integer(number) => number.value().to_string(),
        Value::Float(number) => number.value().to_string(),
        Value::Boolean(flag) => flag.value().to_string(),
        Value::Datetime(time) => time.value().to_string(),
        Value::Array(_) => "a list".to_string(),
        Value::InlineTable(_) => "a table".to_string(),
    }
}

fn unknown_key_message(key: &str, known: &[&str]) -> String {
    let closest = known
        .iter()
        .map(|candidate| (strsim::jaro_winkler(key, candidate), candidate))
        .filter(|(similarity, _)| *similarity >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((_, candidate)) => format!("unknown key; did you mean `{candidate}`?"),
        None => {
            let list: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            format!("unknown key; expected one of {}", list.join(", "))
        }
    }
}

fn integer(item: &Item, low: i64, high: i64) -> Result<i64, String> {
    match item.as_integer() {
        Some(number) if (low..=high).contains(&number) => Ok(number),
        _ => Err(format!(
            "expected an integer {low}..={high}, got {}",
            got(item)
        )),
    }
}

fn boolean(item: &Item) -> Result<bool, String> {
    item.as_bool()
        .ok_or_else(|| format!("expected true or false, got {}", got(item)))
}

fn non_empty_string<'i>(item: &'i Item, what: &str) -> Result<&'i str, String> {
    match item.as_str() {
        Some(text) if !text.trim().is_empty() => Ok(text),
        _ => Err(format!("expected {what}, got {}", got(item))),
    }
}

fn socket_address(item: &Item) -> Result<SocketAddr, String> {
    item.as_str()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| {
            format!(
                "expected an address such as \"127.0.0.1:7070\" or \"[::]:8080\", got {}",
                got(item)
            )
        })
}

fn byte_size(item: &Item) -> Result<ByteSize, String> {
    let parsed = match item {
        Item::Value(Value::String(text)) => text.value().parse::<ByteSize>().ok(),
        Item::Value(Value::Integer(number)) => u64::try_from(*number.value()).ok().map(ByteSize),
        _ => None,
    };
    parsed.ok_or_else(|| {
        format!(
            "expected a size such as \"512MiB\", \"6GiB\" or \"8GB\", got {}",
            got(item)
        )
    })
}

fn duration(item: &Item, zero: Zero, max: Option<Duration>) -> Result<Duration, String> {
    let parsed = item
        .as_str()
        .and_then(|text| humantime::parse_duration(text.trim()).ok())
        .ok_or_else(|| {
            format!(
                "expected a duration such as \"500ms\", \"2s\" or \"1m\", got {}",
                got(item)
            )
        })?;
    if zero == Zero::Refused && parsed.is_zero() {
        return Err(format!("expected a duration above zero, got {}", got(item)));
    }
    if let Some(max) = max.filter(|max| parsed > *max) {
        return Err(format!(
            "expected a duration of at most {}, got {}",
            humantime::format_duration(max),
            got(item)
        ));
    }
    Ok(parsed)
}

fn model_name(item: &Item) -> Result<Name, String> {
    let text = item
        .as_str()
        .ok_or_else(|| format!("expected a model name, got {}", got(item)))?;
    Name::new(text).map_err(|error| error.to_string())
}

/// A metric's name as a job reports it: letters, digits, `_`, `.`, `-` and `/`.
fn metric_name(item: &Item) -> Result<String, String> {
    let text = non_empty_string(item, "a metric name")?;
    let valid = text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'));
    if !valid {
        return Err(format!(
            "expected a metric name (at most 64 letters, digits, '_', '.', '-', '/'), got {}",
            got(item)
        ));
    }
    Ok(text.to_string())
}

fn metric_mode(item: &Item) -> Result<MetricMode, String> {
    match item.as_str() {
        Some("min") => Ok(MetricMode::Min),
        Some("max") => Ok(MetricMode::Max),
        _ => Err(format!(
            "expected \"min\" (lower is better) or \"max\" (higher is better), got {}",
            got(item)
        )),
    }
}

fn restart_policy(item: &Item) -> Result<RestartPolicy, String> {
    match item.as_str() {
        Some("always") => Ok(RestartPolicy::Always),
        Some("on-failure") => Ok(RestartPolicy::OnFailure),
        Some("never") => Ok(RestartPolicy::Never),
        _ => Err(format!(
            "expected \"always\", \"on-failure\" or \"never\", got {}",
            got(item)
        )),
    }
}

fn replace_strategy(item: &Item) -> Result<ReplaceStrategy, String> {
    match item.as_str() {
        Some("surge") => Ok(ReplaceStrategy::Surge),
        Some("stop-first") => Ok(ReplaceStrategy::StopFirst),
        _ => Err(format!(
            "expected \"surge\" (blue/green) or \"stop-first\", got {}",
            got(item)
        )),
    }
}

/// A path prefix on the gateway or a probe path: absolute, and nothing a URL would split off.
fn url_path(item: &Item) -> Result<String, String> {
    let refuse = || {
        format!(
            "expected a path starting with \"/\" such as \"/web\", got {}",
            got(item)
        )
    };
    let text = item.as_str().ok_or_else(refuse)?;
    let clean = text.starts_with('/')
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#');
    if clean {
        Ok(text.to_string())
    } else {
        Err(refuse())
    }
}

/// A DNS host name as clients send it in `Host:`, kept lowercase since host names compare
/// without case.
fn host_name(item: &Item) -> Result<String, String> {
    let refuse = || {
        format!(
            "expected a host name such as \"web.lan\" (letters, digits, '-' and '.'), got {}",
            got(item)
        )
    };
    let text = item.as_str().ok_or_else(refuse)?;
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if (1..=253).contains(&text.len()) && text.split('.').all(label_ok) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(refuse())
    }
}

/// Refuses names a service may not set: malformed ones, and those Flowers itself sets for
/// every Run (a user value would silently break port or device assignment).
fn environment_variable_name(key: &str) -> Result<(), String> {
    let well_formed = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !well_formed {
        return Err(format!(
            "expected an environment variable name ([A-Za-z_][A-Za-z0-9_]*), got {key:?}"
        ));
    }
    if key.starts_with("FLOWERS_") {
        return Err("FLOWERS_* variables are set by Flowers for each Run".to_string());
    }
    if key == "CUDA_VISIBLE_DEVICES" {
        return Err(
            "CUDA_VISIBLE_DEVICES is set by Flowers to the device a Run is placed on".to_string(),
        );
    }
    Ok(())
}

/// `path` against `base_dir` when relative, with `.` components dropped so that `workdir = "."`
/// reads as the config file's directory itself. `..` is kept: removing it lexically would be
/// wrong across symbolic links.
pub(crate) fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let resolved: PathBuf = base_dir
        .join(path)
        .components()
        .filter(|component| *component != Component::CurDir)
        .collect();
    if resolved.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        resolved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_joins_relative_paths_and_drops_current_dir() {
        let base = Path::new("/etc/flowers");
        assert_eq!(resolve(base, "."), PathBuf::from("/etc/flowers"));
        assert_eq!(resolve(base, "./app/."), PathBuf::from("/etc/flowers/app"));
        assert_eq!(resolve(base, "../x"), PathBuf::from("/etc/flowers/../x"));
        assert_eq!(resolve(base, "/abs"), PathBuf::from("/abs"));
        assert_eq!(resolve(Path::new(""), "."), PathBuf::from("."));
        assert_eq!(resolve(Path::new(""), "data"), PathBuf::from("data"));
    }

    #[test]
    fn host_names_follow_dns_rules() {
        let host = |text: &str| host_name(&toml_edit::value(text));
        assert_eq!(host("Web.LAN").unwrap(), "web.lan");
        assert_eq!(host("jarvis").unwrap(), "jarvis");
        for bad in [
            "",
            "a b",
            "-a.lan",
            "a-.lan",
            "a..lan",
            "web.lan:8080",
            "*.lan",
        ] {
            assert!(host(bad).is_err(), "{bad:?} accepted");
        }
        assert!(host(&"a".repeat(64)).is_err());
    }

    #[test]
    fn suggestions_only_for_close_keys() {
        assert_eq!(
            unknown_key_message("healthy", RESTART_KEYS),
            "unknown key; did you mean `healthy_after`?"
        );
        assert!(unknown_key_message("gpus", SERVICE_KEYS).contains("expected one of"));
    }

    #[test]
    fn line_of_counts_from_one() {
        let walker = Walker {
            text: "a\nb\nc",
            origin: "f",
            base_dir: Path::new(""),
            problems: Vec::new(),
        };
        assert_eq!(walker.line_of(Some(0..1)), Some(1));
        assert_eq!(walker.line_of(Some(2..3)), Some(2));
        assert_eq!(walker.line_of(Some(99..100)), Some(3));
        assert_eq!(walker.line_of(None), None);
    }
}
