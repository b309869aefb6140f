//! Loading whole configurations: every kind of mistake with its exact message and line, the
//! layering order, path resolution, and a full example.

use std::path::Path;
use std::time::Duration;

use domain::{ProbeSpec, ReplaceStrategy, ResourceRequest, RestartPolicy, RestartSpec, RouteSpec};

use super::*;

fn user_environment() -> Environment {
    let mut vars = BTreeMap::new();
    vars.insert("HOME".to_string(), "/home/ada".to_string());
    vars.insert("PATH".to_string(), "/usr/bin".to_string());
    Environment {
        vars,
        is_root: false,
    }
}

fn with_vars(pairs: &[(&str, &str)]) -> Environment {
    let mut env = user_environment();
    for (name, value) in pairs {
        env.vars.insert(name.to_string(), value.to_string());
    }
    env
}

fn load(text: &str) -> Result<Config, ConfigError> {
    load_str(
        text,
        Path::new("flowers.toml"),
        &user_environment(),
        &Overrides::default(),
    )
}

fn problems(text: &str) -> Vec<String> {
    match load(text) {
        Ok(config) => panic!("loaded, expected problems: {config:#?}"),
        Err(error) => error.problems.iter().map(Problem::to_string).collect(),
    }
}

/// The one problem `text` has; fails the test if it has none or several.
fn problem(text: &str) -> String {
    let mut found = problems(text);
    assert_eq!(found.len(), 1, "expected exactly one problem: {found:#?}");
    found.remove(0)
}

fn name(text: &str) -> Name {
    Name::new(text).unwrap()
}

#[test]
fn syntax_error_has_its_line() {
    let found = problem("[server]\napi_listen = \"127.0.0.1:1\"\nkeep = = 3\n");
    assert!(
        found.starts_with("flowers.toml:3: invalid TOML: "),
        "{found}"
    );
}

#[test]
fn duplicate_key_is_a_syntax_error_at_the_second() {
    let found = problem("[devices]\ncpu_slots = 1\ncpu_slots = 2\n");
    assert!(
        found.starts_with("flowers.toml:3: invalid TOML: "),
        "{found}"
    );
}

#[test]
fn unknown_key_suggests_the_closest_known_key() {
    let text = "[services.web]\ncommand = [\"app\"]\nreplica = 2\n";
    assert_eq!(
        problem(text),
        "flowers.toml:3: services.web.replica: unknown key; did you mean `replicas`?"
    );
    assert_eq!(
        problem("[service.web]\ncommand = [\"app\"]\n"),
        "flowers.toml:1: service: unknown key; did you mean `services`?"
    );
    // In an implicit table the command is missing too; both are reported.
    assert_eq!(
        problems("[services.web.restart]\nbackof = \"2s\"\n"),
        vec![
            "flowers.toml:1: services.web.command: required",
            "flowers.toml:2: services.web.restart.backof: unknown key; did you mean `backoff`?",
        ]
    );
}

#[test]
fn unknown_key_far_from_any_lists_the_known_ones() {
    assert_eq!(
        problem("[logs]\nzzz = 1\n"),
        "flowers.toml:2: logs.zzz: unknown key; expected one of `max_size`, `keep`, `keep_runs`"
    );
}

#[test]
fn wrong_type_says_what_was_expected_and_got() {
    let text = "\n\n\n\n\n\n[services.web]\ncommand = [\"app\"]\nreplicas = \"two\"\n";
    assert_eq!(
        problem(text),
        "flowers.toml:9: services.web.replicas: expected an integer 0..=64, got \"two\""
    );
    assert_eq!(
        problem("[jobs.train]\ncommand = [\"t\"]\npreemptible = \"yes\"\n"),
        "flowers.toml:3: jobs.train.preemptible: expected true or false, got \"yes\""
    );
    assert_eq!(
        problem("server = 3\n"),
        "flowers.toml:1: server: expected a table, got 3"
    );
    assert_eq!(
        problem("[server]\napi_listen = \"localhost\"\n"),
        "flowers.toml:2: server.api_listen: expected an address such as \"127.0.0.1:7070\" or \
         \"[::]:8080\", got \"localhost\""
    );
}

#[test]
fn out_of_range_integers_are_refused() {
    assert_eq!(
        problem("[services.web]\ncommand = [\"app\"]\nreplicas = 65\n"),
        "flowers.toml:3: services.web.replicas: expected an integer 0..=64, got 65"
    );
    assert_eq!(
        problem("[devices]\ncpu_slots = 300\n"),
        "flowers.toml:2: devices.cpu_slots: expected an integer 0..=256, got 300"
    );
    assert_eq!(
        problem("[logs]\nkeep = 0\n"),
        "flowers.toml:2: logs.keep: expected an integer 1..=100, got 0"
    );
    assert_eq!(
        problem("[logs]\nkeep_runs = 0\n"),
        "flowers.toml:2: logs.keep_runs: expected an integer 1..=100000, got 0"
    );
    assert_eq!(
        problem("[jobs.t]\ncommand = [\"t\"]\npriority = -1001\n"),
        "flowers.toml:3: jobs.t.priority: expected an integer -1000..=1000, got -1001"
    );
    assert_eq!(
        problem("[services.web]\ncommand = [\"app\"]\ndevices = 2\n"),
        "flowers.toml:3: services.web.devices: expected an integer 0..=1, got 2"
    );
}

#[test]
fn missing_command_points_at_the_table() {
    assert_eq!(
        problem("[server]\n\n\n[services.web]\nreplicas = 1\n"),
        "flowers.toml:4: services.web.command: required"
    );
    assert_eq!(
        problem("[jobs]\ntrain = { priority = 1 }\n"),
        "flowers.toml:2: jobs.train.command: required"
    );
}

#[test]
fn malformed_command_is_refused_element_by_element() {
    assert_eq!(
        problem("[services.web]\ncommand = []\n"),
        "flowers.toml:2: services.web.command: expected a non-empty list of strings such as \
         [\"python3\", \"app.py\"], got an empty list"
    );
    assert_eq!(
        problem("[services.web]\ncommand = \"python3 app.py\"\n"),
        "flowers.toml:2: services.web.command: expected a non-empty list of strings such as \
         [\"python3\", \"app.py\"], got \"python3 app.py\""
    );
    assert_eq!(
        problem("[services.web]\ncommand = [\n  \"python3\",\n  \"\",\n]\n"),
        "flowers.toml:4: services.web.command[1]: expected a non-empty string, got \"\""
    );
}

#[test]
fn vram_needs_a_device() {
    let text = "[services.web]\ncommand = [\"app\"]\n\n\n\n\n\n\nvram = \"2GiB\"\n";
    assert_eq!(
        problem(text),
        "flowers.toml:9: services.web.vram: needs devices = 1"
    );
    assert_eq!(
        problem("[jobs.t]\ncommand = [\"t\"]\ndevices = 0\nvram = \"2GiB\"\n"),
        "flowers.toml:4: jobs.t.vram: needs devices = 1"
    );
    // A refused devices value is reported once, not again through vram.
    assert_eq!(
        problems("[jobs.t]\ncommand = [\"t\"]\ndevices = \"one\"\nvram = \"2GiB\"\n").len(),
        1
    );
}

#[test]
fn bad_durations_are_refused() {
    assert_eq!(
        problem("[services.web]\ncommand = [\"app\"]\nstop_grace = \"ten\"\n"),
        "flowers.toml:3: services.web.stop_grace: expected a duration such as \"500ms\", \"2s\" \
         or \"1m\", got \"ten\""
    );
    assert_eq!(
        problem("[services.web]\ncommand = [\"app\"]\nreplace = \"recreate\"\n"),
        "flowers.toml:3: services.web.replace: expected \"surge\" (blue/green) or \"stop-first\", \
         got \"recreate\""
    );
    assert_eq!(
        problem("[services.web]\ncommand = [\"app\"]\nstop_grace = 10\n"),
        "flowers.toml:3: services.web.stop_grace: expected a duration such as \"500ms\", \"2s\" \
         or \"1m\", got 10"
    );
    assert_eq!(
        problem("[services.web]\ncommand = [\"app\"]\nstop_grace = \"2h\"\n"),
        "flowers.toml:3: services.web.stop_grace: expected a duration of at most 1h, got \"2h\""
    );
    assert_eq!(
        problem("[services.web]\ncommand = [\"app\"]\n[services.web.probe]\ninterval = \"0s\"\n"),
        "flowers.toml:4: services.web.probe.interval: expected a duration above zero, got \"0s\""
    );
}

#[test]
fn backoff_ceiling_below_the_first_delay_is_refused() {
    assert_eq!(
        problem("[services.web]\ncommand = [\"app\"]\nrestart = { backoff = \"2m\" }\n"),
        "flowers.toml:3: services.web.restart.backoff: backoff_max (1m) must be at least \
         backoff (2m)"
    );
}

#[test]
fn bad_sizes_are_refused() {
    assert_eq!(
        problem("[jobs.t]\ncommand = [\"t\"]\ndevices = 1\nvram = \"lots\"\n"),
        "flowers.toml:4: jobs.t.vram: expected a size such as \"512MiB\", \"6GiB\" or \"8GB\", \
         got \"lots\""
    );
    assert_eq!(
        problem("[logs]\nmax_size = \"1KiB\"\n"),
        "flowers.toml:2: logs.max_size: expected a size of at least 4KiB, got \"1KiB\""
    );
}

#[test]
fn bad_names_are_refused_where_written() {
    assert_eq!(
        problem("[services.Web_1]\ncommand = [\"app\"]\n"),
        "flowers.toml:1: services.Web_1: expected a name of lowercase letters, digits and '-', \
         starting with a letter, at most 48 characters; got \"Web_1\""
    );
    let found = problem("[jobs.t]\ncommand = [\"t\"]\nmodel = \"My Model\"\n");
    assert!(
        found.starts_with("flowers.toml:3: jobs.t.model: expected a name of lowercase"),
        "{found}"
    );
}

#[test]
fn bad_routes_are_refused() {
    let head = "[services.web]\ncommand = [\"app\"]\n";
    assert_eq!(
        problem(&format!("{head}routes = [{{ path = \"web\" }}]\n")),
        "flowers.toml:3: services.web.routes[0].path: expected a path starting with \"/\" such \
         as \"/web\", got \"web\""
    );
    assert_eq!(
        problem(&format!(
            "{head}routes = [\n  {{ path = \"/\" }},\n  {{ host = \"a b\" }},\n]\n"
        )),
        "flowers.toml:5: services.web.routes[1].host: expected a host name such as \"web.lan\" \
         (letters, digits, '-' and '.'), got \"a b\""
    );
    assert_eq!(
        problem(&format!("{head}routes = [{{}}]\n")),
        "flowers.toml:3: services.web.routes[0]: a route needs a host, a path or both"
    );
    assert_eq!(
        problem(&format!("{head}routes = [{{ paht = \"/\" }}]\n")),
        "flowers.toml:3: services.web.routes[0].paht: unknown key; did you mean `path`?"
    );
    assert_eq!(
        problem(&format!("{head}routes = [\"/web\"]\n")),
        "flowers.toml:3: services.web.routes[0]: expected a route such as { host = \"web.lan\", \
         path = \"/\" }, got \"/web\""
    );
    assert_eq!(
        problem(&format!("{head}[[services.web.routes]]\npath = \"x\"\n")),
        "flowers.toml:4: services.web.routes[0].path: expected a path starting with \"/\" such \
         as \"/web\", got \"x\""
    );
}

#[test]
fn env_keys_flowers_sets_are_refused() {
    let head = "[services.web]\ncommand = [\"app\"]\n";
    assert_eq!(
        problem(&format!("{head}env = {{ FLOWERS_PORT = \"1\" }}\n")),
        "flowers.toml:3: services.web.env.FLOWERS_PORT: FLOWERS_* variables are set by Flowers \
         for each Run"
    );
    assert_eq!(
        problem(&format!(
            "{head}[services.web.env]\nOK = \"1\"\nCUDA_VISIBLE_DEVICES = \"0\"\n"
        )),
        "flowers.toml:5: services.web.env.CUDA_VISIBLE_DEVICES: CUDA_VISIBLE_DEVICES is set by \
         Flowers to the device a Run is placed on"
    );
    assert_eq!(
        problem(&format!("{head}env = {{ \"1X\" = \"1\" }}\n")),
        "flowers.toml:3: services.web.env.1X: expected an environment variable name \
         ([A-Za-z_][A-Za-z0-9_]*), got \"1X\""
    );
    assert_eq!(
        problem(&format!("{head}env = {{ N = 1 }}\n")),
        "flowers.toml:3: services.web.env.N: expected a string, got 1"
    );
}

#[test]
fn a_job_may_not_take_a_service_name() {
    let text = "[services.web]\ncommand = [\"app\"]\n\n[jobs.web]\ncommand = [\"t\"]\n";
    assert_eq!(
        problem(text),
        "flowers.toml:4: jobs.web: the name is already used by `services.web`; a service and a \
         job may not share a name (they share run ids and logs)"
    );
    // The problem points at whichever was written second.
    let text = "[jobs.web]\ncommand = [\"t\"]\n\n[services.web]\ncommand = [\"app\"]\n";
    assert!(problem(text)
        .starts_with("flowers.toml:4: services.web: the name is already used by `jobs.web`"));
}

#[test]
fn workdir_must_exist_and_be_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "").unwrap();
    let origin = dir.path().join("flowers.toml");
    let load_here = |text: &str| {
        load_str(text, &origin, &user_environment(), &Overrides::default())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        load_here("[services.web]\ncommand = [\"app\"]\nworkdir = \"missing\"\n"),
        format!(
            "{}:3: services.web.workdir: directory {} does not exist",
            origin.display(),
            dir.path().join("missing").display()
        )
    );
    assert_eq!(
        load_here("[jobs.t]\ncommand = [\"t\"]\nworkdir = \"file\"\n"),
        format!(
            "{}:3: jobs.t.workdir: {} is not a directory",
            origin.display(),
            dir.path().join("file").display()
        )
    );
}

#[test]
fn relative_paths_are_taken_from_the_config_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("app")).unwrap();
    let origin = dir.path().join("flowers.toml");
    let text = "[server]\ndata_dir = \"state\"\n\
                [services.web]\ncommand = [\"app\"]\nworkdir = \"./app\"\n\
                [jobs.t]\ncommand = [\"t\"]\nworkdir = \".\"\n";
    let config = load_str(text, &origin, &user_environment(), &Overrides::default()).unwrap();
    assert_eq!(config.server.data_dir, dir.path().join("state"));
    assert_eq!(
        config.services[&name("web")].workdir,
        Some(dir.path().join("app"))
    );
    assert_eq!(
        config.jobs[&name("t")].workdir,
        Some(dir.path().to_path_buf())
    );

    // Absolute paths are kept as written.
    let config = load("[server]\ndata_dir = \"/srv/flowers\"\n").unwrap();
    assert_eq!(config.server.data_dir, PathBuf::from("/srv/flowers"));
}

#[test]
fn load_file_reads_and_resolves_against_the_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowers.toml");
    std::fs::write(&path, "[server]\ndata_dir = \"state\"\n").unwrap();
    let config = load_file(&path, &user_environment(), &Overrides::default()).unwrap();
    assert_eq!(config.server.data_dir, dir.path().join("state"));
    assert_eq!(config.source, ConfigSource::File(path.clone()));

    let missing = dir.path().join("nope.toml");
    let error = load_file(&missing, &user_environment(), &Overrides::default()).unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with(&format!(
            "{}: cannot read the config file: ",
            missing.display()
        )),
        "{text}"
    );
}

#[test]
fn all_problems_are_reported_together() {
    let text = "[server]\napi_listen = \"nope\"\n\
                [services.web]\nreplicas = -1\nvram = \"1GiB\"\n\
                [jobs.t]\ncommand = [\"t\"]\nautostart = 1\n";
    let found = problems(text);
    assert_eq!(
        found
            .iter()
            .map(|p| p.split(": ").nth(1).unwrap())
            .collect::<Vec<_>>(),
        vec![
            "server.api_listen",
            "services.web.command",
            "services.web.replicas",
            "services.web.vram",
            "jobs.t.autostart",
        ],
        "{found:#?}"
    );
}

#[test]
fn environment_overrides_the_file() {
    let text = "[server]\napi_listen = \"127.0.0.1:1\"\ngateway_listen = \"0.0.0.0:2\"\n\
                data_dir = \"/from/file\"\n[devices]\ncpu_slots = 1\n";
    let env = with_vars(&[
        ("FLOWERS_API_LISTEN", "127.0.0.1:3"),
        ("FLOWERS_GATEWAY_LISTEN", "[::]:4"),
        ("FLOWERS_DATA_DIR", "/from/env"),
        ("FLOWERS_CPU_SLOTS", "5"),
    ]);
    let config = load_str(text, Path::new("flowers.toml"), &env, &Overrides::default()).unwrap();
    assert_eq!(config.server.api_listen, "127.0.0.1:3".parse().unwrap());
    assert_eq!(config.server.gateway_listen, "[::]:4".parse().unwrap());
    assert_eq!(config.server.data_dir, PathBuf::from("/from/env"));
    assert_eq!(config.devices.cpu_slots, Some(5));
}

#[test]
fn bad_environment_values_name_the_variable() {
    let env = with_vars(&[
        ("FLOWERS_API_LISTEN", "localhost"),
        ("FLOWERS_CPU_SLOTS", "two"),
        ("FLOWERS_DATA_DIR", "relative/dir"),
    ]);
    let error = load_str("", Path::new("flowers.toml"), &env, &Overrides::default()).unwrap_err();
    let found: Vec<String> = error.problems.iter().map(Problem::to_string).collect();
    assert_eq!(
        found,
        vec![
            "environment: FLOWERS_API_LISTEN: expected an address such as \"127.0.0.1:7070\" or \
             \"[::]:8080\", got \"localhost\"",
            "environment: FLOWERS_DATA_DIR: expected an absolute directory path, got \
             \"relative/dir\"",
            "environment: FLOWERS_CPU_SLOTS: expected an integer 0..=256, got \"two\"",
        ]
    );
    assert_eq!(error.problems[0].origin, "environment");
    assert_eq!(error.problems[0].line, None);
}

#[test]
fn overrides_beat_environment_and_file() {
    let text = "[server]\napi_listen = \"127.0.0.1:1\"\ndata_dir = \"/from/file\"\n\
                [devices]\ncpu_slots = 1\n";
    let env = with_vars(&[
        ("FLOWERS_API_LISTEN", "127.0.0.1:3"),
        ("FLOWERS_DATA_DIR", "/from/env"),
        ("FLOWERS_CPU_SLOTS", "5"),
    ]);
    let overrides = Overrides {
        api_listen: Some("127.0.0.1:9".parse().unwrap()),
        gateway_listen: Some("0.0.0.0:10".parse().unwrap()),
        data_dir: Some(PathBuf::from("/from/flag")),
        cpu_slots: Some(0),
    };
    let config = load_str(text, Path::new("flowers.toml"), &env, &overrides).unwrap();
    assert_eq!(config.server.api_listen, "127.0.0.1:9".parse().unwrap());
    assert_eq!(config.server.gateway_listen, "0.0.0.0:10".parse().unwrap());
    assert_eq!(config.server.data_dir, PathBuf::from("/from/flag"));
    assert_eq!(config.devices.cpu_slots, Some(0));

    let too_many = Overrides {
        cpu_slots: Some(300),
        ..Overrides::default()
    };
    let error = load_str("", Path::new("flowers.toml"), &env, &too_many).unwrap_err();
    assert_eq!(
        error.to_string(),
        "command line: --cpu-slots: expected an integer 0..=256, got 300"
    );
}

#[test]
fn defaults_fill_what_no_layer_sets() {
    let config = load("").unwrap();
    assert_eq!(
        config.server.gateway_listen,
        "0.0.0.0:8080".parse().unwrap()
    );
    assert_eq!(config.server.api_listen, "127.0.0.1:7070".parse().unwrap());
    assert_eq!(
        config.server.data_dir,
        PathBuf::from("/home/ada/.local/share/flowers")
    );
    assert_eq!(config.devices.cpu_slots, None);
    assert_eq!(config.logs, LogsConfig::default());
    assert_eq!(config.logs.max_size, ByteSize::mib(10));
    assert_eq!(config.logs.keep, 3);
    assert_eq!(config.logs.keep_runs, 20);
    assert!(config.services.is_empty() && config.jobs.is_empty());
    assert_eq!(
        config.source,
        ConfigSource::File(PathBuf::from("flowers.toml"))
    );
}

#[test]
fn default_data_dir_follows_root_then_xdg_then_home() {
    let data_dir = |env: &Environment| {
        load_str("", Path::new("flowers.toml"), env, &Overrides::default())
            .map(|config| config.server.data_dir)
    };
    let mut root = with_vars(&[("XDG_DATA_HOME", "/xdg")]);
    root.is_root = true;
    assert_eq!(data_dir(&root).unwrap(), PathBuf::from("/var/lib/flowers"));
    assert_eq!(
        data_dir(&with_vars(&[("XDG_DATA_HOME", "/xdg")])).unwrap(),
        PathBuf::from("/xdg/flowers")
    );
    // A relative XDG_DATA_HOME is invalid by the XDG spec and ignored.
    assert_eq!(
        data_dir(&with_vars(&[("XDG_DATA_HOME", "xdg")])).unwrap(),
        PathBuf::from("/home/ada/.local/share/flowers")
    );
    let bare = Environment::default();
    let error = data_dir(&bare).unwrap_err();
    assert_eq!(error.problems[0].field, "HOME");
    // An explicit data_dir needs no HOME.
    let config = load_str(
        "[server]\ndata_dir = \"/srv\"\n",
        Path::new("flowers.toml"),
        &bare,
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(config.server.data_dir, PathBuf::from("/srv"));
}

#[test]
fn embedded_default_loads_cleanly() {
    let config = embedded(&user_environment(), &Overrides::default()).unwrap();
    assert_eq!(config.source, ConfigSource::Embedded);
    assert_eq!(config.server.api_listen, "127.0.0.1:7070".parse().unwrap());
    // The built-in engines, run by this binary on the default models.
    let embed = &config.services[&Name::new("embed").unwrap()];
    assert_eq!(embed.command, ["flowers", "engine", "embed"]);
    assert_eq!(embed.model.as_ref().map(Name::as_str), Some("minilm"));
    assert!(config.models.contains_key(&Name::new("minilm").unwrap()));
    let chat = &config.services[&Name::new("chat").unwrap()];
    assert_eq!(chat.command, ["flowers", "engine", "chat"]);
    assert_eq!(chat.model.as_ref().map(Name::as_str), Some("smollm2"));
    assert!(config.models.contains_key(&Name::new("smollm2").unwrap()));
    let rag = &config.services[&Name::new("rag").unwrap()];
    assert_eq!(rag.command, ["flowers", "engine", "rag"]);
    assert_eq!(rag.routes[0].path_prefix, "/rag");
    let video = &config.services[&Name::new("video").unwrap()];
    assert_eq!(video.command, ["flowers", "engine", "video"]);
    assert_eq!(video.replace, ReplaceStrategy::StopFirst);
    assert!(config.video.streams.is_empty());
    // Archives: a preemptible job on one device (a CPU slot or a share of a GPU), run on demand.
    let archives = &config.jobs[&Name::new("video-analyze").unwrap()];
    assert_eq!(archives.command, ["flowers", "engine", "video-analyze"]);
    assert!(archives.preemptible && !archives.autostart);
    assert!(archives.priority < 0);
    // The environment still applies to it.
    let env = with_vars(&[("FLOWERS_CPU_SLOTS", "2")]);
    let config = embedded(&env, &Overrides::default()).unwrap();
    assert_eq!(config.devices.cpu_slots, Some(2));
}

/// Every key in the schema, and the specs it must become.
const FULL_EXAMPLE: &str = r#"
[server]
gateway_listen = "0.0.0.0:80"
api_listen = "127.0.0.1:7000"
data_dir = "/srv/flowers"
access_log = false

[devices]
cpu_slots = 2

[logs]
max_size = "1MiB"
keep = 5
keep_runs = 7

[services.chat]
command = ["python3", "chat.py", "--port-from-env"]
workdir = "."
env = { MODEL_DIR = "/models", LOG_LEVEL = "info" }
replicas = 2
devices = 1
vram = "2GiB"
stop_grace = "15s"
hold = "5s"
max_body = "1MiB"
api_keys = ["sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"]
model = "m"
replace = "stop-first"
routes = [{ path = "/v1" }, { host = "Chat.LAN", path = "/" }, { host = "api.lan" }]

[services.chat.probe]
path = "/ready"
interval = "500ms"
timeout = "250ms"
start_timeout = "2m"
failure_threshold = 4

[services.chat.restart]
policy = "on-failure"
backoff = "2s"
backoff_max = "30s"
crash_loop_after = 7
healthy_after = "90s"

[services.static]
command = ["python3", "-m", "http.server"]

[jobs.train]
command = ["python3", "train.py"]
workdir = "."
env = { EPOCHS = "3" }
devices = 1
vram = "4GiB"
priority = -5
preemptible = true
restart_limit = 3
restart_backoff = "5s"
stop_grace = "2m"
autostart = true
model = "m"

[jobs.report]
command = ["python3", "report.py"]
"#;

#[test]
fn full_example_loads_into_the_expected_specs() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("flowers.toml");
    let config = load_str(
        FULL_EXAMPLE,
        &origin,
        &user_environment(),
        &Overrides::default(),
    )
    .unwrap();

    assert_eq!(
        config.server,
        ServerConfig {
            gateway_listen: "0.0.0.0:80".parse().unwrap(),
            api_listen: "127.0.0.1:7000".parse().unwrap(),
            data_dir: PathBuf::from("/srv/flowers"),
            access_log: false,
        }
    );
    assert_eq!(config.devices.cpu_slots, Some(2));
    assert_eq!(
        config.logs,
        LogsConfig {
            max_size: ByteSize::mib(1),
            keep: 5,
            keep_runs: 7
        }
    );

    let chat = ServiceSpec {
        name: name("chat"),
        command: vec!["python3".into(), "chat.py".into(), "--port-from-env".into()],
        workdir: Some(dir.path().to_path_buf()),
        env: [("LOG_LEVEL", "info"), ("MODEL_DIR", "/models")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        replicas: 2,
        resources: ResourceRequest {
            devices: 1,
            vram: Some(ByteSize::gib(2)),
        },
        probe: ProbeSpec {
            path: "/ready".into(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(250),
            start_timeout: Duration::from_secs(120),
            failure_threshold: 4,
        },
        restart: RestartSpec {
            policy: RestartPolicy::OnFailure,
            backoff_initial: Duration::from_secs(2),
            backoff_max: Duration::from_secs(30),
            crash_loop_after: 7,
            healthy_after: Duration::from_secs(90),
        },
        stop_grace: Duration::from_secs(15),
        hold: Duration::from_secs(5),
        max_body: ByteSize::mib(1),
        api_keys: vec![
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                .parse()
                .unwrap(),
        ],
        routes: vec![
            RouteSpec {
                host: None,
                path_prefix: "/v1".into(),
            },
            RouteSpec {
                host: Some("chat.lan".into()),
                path_prefix: "/".into(),
            },
            RouteSpec {
                host: Some("api.lan".into()),
                path_prefix: "/".into(),
            },
        ],
        model: Some(name("m")),
        replace: ReplaceStrategy::StopFirst,
    };
    assert_eq!(config.services[&name("chat")], chat);

    let static_site = &config.services[&name("static")];
    assert_eq!(static_site.replicas, 1);
    assert_eq!(static_site.resources, ResourceRequest::default());
    assert_eq!(static_site.probe, ProbeSpec::default());
    assert_eq!(static_site.restart, RestartSpec::default());
    assert_eq!(static_site.stop_grace, Duration::from_secs(10));
    assert_eq!(static_site.replace, ReplaceStrategy::Surge);
    assert_eq!(static_site.workdir, None);
    assert!(static_site.routes.is_empty() && static_site.env.is_empty());

    let train = JobSpec {
        name: name("train"),
        command: vec!["python3".into(), "train.py".into()],
        workdir: Some(dir.path().to_path_buf()),
        env: [("EPOCHS".to_string(), "3".to_string())]
            .into_iter()
            .collect(),
        resources: ResourceRequest {
            devices: 1,
            vram: Some(ByteSize::gib(4)),
        },
        priority: -5,
        preemptible: true,
        restart_limit: 3,
        restart_backoff: Duration::from_secs(5),
        stop_grace: Duration::from_secs(120),
        autostart: true,
        model: Some(name("m")),
    };
    assert_eq!(config.jobs[&name("train")], train);

    let report = &config.jobs[&name("report")];
    assert_eq!(report.resources.devices, 0);
    assert_eq!(report.priority, 0);
    assert!(!report.preemptible && !report.autostart);
    assert_eq!(report.restart_limit, 0);
    assert_eq!(report.restart_backoff, Duration::from_secs(1));
    assert_eq!(report.stop_grace, Duration::from_secs(30));
}

#[test]
fn the_embedded_default_documents_every_key() {
    // The embedded default is the reference users copy from; a key missing there is
    // undocumented. Compare with the full example, which uses every key.
    let documented = |key: &str| {
        EMBEDDED_DEFAULT.lines().any(|line| {
            line.trim_start_matches(['#', ' '])
                .starts_with(&format!("{key} ="))
        })
    };
    for line in FULL_EXAMPLE.lines() {
        if let Some((key, _)) = line.split_once(" = ") {
            assert!(
                documented(key.trim()),
                "{key} is not documented in default.toml"
            );
        }
    }
}

/// A stand-in for fuzzing (cargo fuzz needs a nightly toolchain this project does not have):
/// any edit of a valid file, however mangled, gives a config or problems that point inside the
/// file, and never a panic.
mod mangled_input {
    use super::*;

    const VALID: &str = r#"[server]
api_listen = "127.0.0.1:7070"
[devices]
cpu_slots = 2
[logs]
max_size = "10MiB"
[services.web]
command = ["python3", "app.py"]
replicas = 2
devices = 1
vram = "2GiB"
routes = [{ path = "/web" }]
[services.web.probe]
path = "/healthz"
interval = "2s"
[services.web.restart]
policy = "on-failure"
[jobs.train]
command = ["python3", "train.py"]
priority = 3
"#;

    fn check(text: &str) {
        if let Err(error) = load(text) {
            assert!(!error.problems.is_empty());
            let lines = text.lines().count().max(1);
            for problem in &error.problems {
                assert_eq!(problem.origin, "flowers.toml");
                if let Some(line) = problem.line {
                    assert!(
                        line >= 1 && line <= lines + 1,
                        "{problem} in a {lines}-line file"
                    );
                }
                assert!(!problem.message.is_empty());
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn edits_of_a_valid_file(position in 0usize..VALID.len(), cut in 0usize..40, insert in "\\PC{0,12}") {
            let mut text = VALID.to_string();
            let start = (0..=position).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            let end = (start + cut).min(text.len());
            let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
            text.replace_range(start..end, &insert);
            check(&text);
        }

        #[test]
        fn arbitrary_text(text in "\\PC{0,200}") {
            check(&text);
        }
    }
}

#[test]
fn hold_and_max_body_are_checked() {
    assert_eq!(
        problem("[services.web]\ncommand = [\"app\"]\nmax_body = \"0\"\n"),
        "flowers.toml:3: services.web.max_body: expected a size above zero, got \"0\""
    );
    assert_eq!(
        problem("[services.web]\ncommand = [\"app\"]\nhold = \"2h\"\n"),
        "flowers.toml:3: services.web.hold: expected a duration of at most 1h, got \"2h\""
    );
    let config = load("[services.web]\ncommand = [\"app\"]\n").unwrap();
    let web = &config.services[&name("web")];
    assert_eq!(web.hold, Duration::from_secs(30));
    assert_eq!(web.max_body, ByteSize::mib(100));
}

#[test]
fn api_keys_must_be_sha256_digests() {
    let head = "[services.web]\ncommand = [\"app\"]\n";
    let digest = format!("sha256:{}", "ab".repeat(32));
    let config = load(&format!("{head}api_keys = [\"{digest}\"]\n")).unwrap();
    assert_eq!(
        config.services[&name("web")].api_keys[0].to_string(),
        digest
    );
    assert!(load(head).unwrap().services[&name("web")]
        .api_keys
        .is_empty());
    assert!(
        load(&format!("{head}api_keys = []\n")).unwrap().services[&name("web")]
            .api_keys
            .is_empty()
    );

    // A key pasted instead of its digest is the likely mistake; it must not be accepted.
    assert_eq!(
        problem(&format!("{head}api_keys = [\n  \"{digest}\",\n  \"my-secret\",\n]\n")),
        "flowers.toml:5: services.web.api_keys[1]: expected \"sha256:\" followed by 64 hex \
         digits (the SHA-256 of the key, as `flowers gateway new-key` prints it), got \"my-secret\""
    );
    assert_eq!(
        problem(&format!("{head}api_keys = [42]\n")),
        "flowers.toml:3: services.web.api_keys[0]: expected \"sha256:\" followed by 64 hex \
         digits, got 42"
    );
    assert_eq!(
        problem(&format!("{head}api_keys = \"{digest}\"\n")),
        format!(
            "flowers.toml:3: services.web.api_keys: expected a list of key digests such as \
             [\"sha256:…\"] (from `flowers gateway new-key`), got \"{digest}\""
        )
    );
}

#[test]
fn access_log_is_on_unless_turned_off() {
    assert!(load("").unwrap().server.access_log);
    assert!(
        !load("[server]\naccess_log = false\n")
            .unwrap()
            .server
            .access_log
    );
    assert_eq!(
        problem("[server]\naccess_log = \"no\"\n"),
        "flowers.toml:2: server.access_log: expected true or false, got \"no\""
    );
}

#[test]
fn models_are_declared_or_implied_by_who_names_them() {
    let config = load(
        "[models.digits]\npromote = { metric = \"accuracy\", mode = \"max\" }\nkeep = 3\n\
         [models.plain]\n\
         [services.web]\ncommand = [\"x\"]\nmodel = \"digits\"\n\
         [jobs.train]\ncommand = [\"y\"]\nmodel = \"other\"\n",
    )
    .unwrap();
    let digits = &config.models[&name("digits")];
    assert_eq!(
        digits.promote,
        domain::PromotePolicy::Metric {
            metric: "accuracy".into(),
            mode: domain::MetricMode::Max
        }
    );
    assert_eq!(digits.keep, 3);
    assert_eq!(
        config.models[&name("plain")],
        ModelSpec::implied(name("plain"))
    );
    // Named by the job only: implied, manual.
    assert_eq!(
        config.models[&name("other")],
        ModelSpec::implied(name("other"))
    );
    assert_eq!(config.models.len(), 3);
}

#[test]
fn promote_policy_mistakes_are_explained() {
    assert_eq!(
        problem("[models.m]\npromote = \"auto\"\n"),
        "flowers.toml:2: models.m.promote: expected \"manual\" or a table like \
         { metric = \"eval_loss\", mode = \"min\" }, got \"auto\""
    );
    assert_eq!(
        problem("[models.m]\npromote = { metric = \"loss\", mode = \"lowest\" }\n"),
        "flowers.toml:2: models.m.promote.mode: expected \"min\" (lower is better) or \"max\" \
         (higher is better), got \"lowest\""
    );
    assert_eq!(
        problem("[models.m]\npromote = { metric = \"loss\" }\n"),
        "flowers.toml:2: models.m.promote.mode: missing `mode`: automatic promotion needs a \
         metric and a mode (\"min\" or \"max\")"
    );
    assert_eq!(
        problem("[models.m]\npromote = { metric = \"a b\", mode = \"min\" }\n"),
        "flowers.toml:2: models.m.promote.metric: expected a metric name (at most 64 letters, \
         digits, '_', '.', '-', '/'), got \"a b\""
    );
    assert_eq!(
        problem("[models.m]\nkeep = 0\n"),
        "flowers.toml:2: models.m.keep: expected an integer 1..=10000, got 0"
    );
    assert_eq!(
        problem("[models.m]\nkepe = 2\n"),
        "flowers.toml:2: models.m.kepe: unknown key; did you mean `keep`?"
    );
    assert_eq!(
        problem("[models.Big]\n"),
        problems("[services.Big]\ncommand = [\"x\"]\n")[0].replace("services.Big", "models.Big")
    );
}

#[test]
fn a_video_stream_with_zones_lines_and_masks_loads() {
    let config = load(
        r#"
[video.streams.front]
url = "rtsp://user:pw@192.168.1.20:554/stream2"
fps = 2.5
width = 1280
rtsp_transport = "udp"
objects = ["person", "car"]
min_score = 0.4
masks = [[[0.0, 0.0], [1.0, 0.0], [1.0, 0.08], [0.0, 0.08]]]
[video.streams.front.zones.driveway]
polygon = [[0.1, 0.5], [0.9, 0.5], [0.9, 1], [0.1, 1]]
loiter_after = "30s"
[video.streams.front.lines.gate]
from = [0.5, 0.0]
to = [0.5, 1.0]

[video.streams.archive]
url = "recordings/cam1.mp4"

[video.motion]
threshold = 30
[video.retention]
max_age = "7d"
max_size = "2GiB"
"#,
    )
    .unwrap();
    let front = &config.video.streams[&name("front")];
    assert_eq!(front.url, "rtsp://user:pw@192.168.1.20:554/stream2");
    assert_eq!((front.fps, front.width), (2.5, 1280));
    assert_eq!(front.rtsp_transport, domain::RtspTransport::Udp);
    assert_eq!(front.objects, ["person", "car"]);
    assert_eq!(front.min_score, 0.4);
    assert_eq!(front.masks[0].len(), 4);
    let zone = &front.zones[&name("driveway")];
    assert_eq!(zone.polygon[2], [0.9, 1.0]);
    assert_eq!(zone.loiter_after, Some(Duration::from_secs(30)));
    assert_eq!(front.lines[&name("gate")].to, [0.5, 1.0]);
    // A relative file is taken from the config file's directory, as workdirs are.
    let archive = &config.video.streams[&name("archive")];
    assert_eq!(archive.url, "recordings/cam1.mp4");
    assert_eq!((archive.fps, archive.width), (5.0, 640));
    assert!(!archive.is_live());
    assert_eq!(config.video.motion.threshold, 30);
    assert_eq!(config.video.motion.alpha, 0.05);
    assert_eq!(
        config.video.retention.max_age,
        Duration::from_secs(7 * 86400)
    );
    assert_eq!(config.video.retention.max_size, ByteSize::gib(2));
    // No [video] table: no streams, default motion and retention.
    assert_eq!(load("").unwrap().video, domain::VideoConfig::default());
}

#[test]
fn bad_video_values_are_refused_where_written() {
    let found = problems(
        r#"[video.streams.front]
url = "ftp://cam/1"
fps = 0
width = 8000
hwaccel = "nvdec"
min_score = 1.5
masks = [[[0.0, 0.0], [1.0, 0.0]]]
[video.streams.front.zones.door]
polygon = [[0.1, 0.1], [0.2, 0.2], [1.2, 0.3]]
[video.streams.front.lines.gate]
from = [0.5, 0.0]
[video.streams.Back]
url = "http:///nohost"
[video.streams.side]
fps = 5
[video.streams.flat.zones.z]
polygon = [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]
[video.motion]
alpha = 0
treshold = 3
"#,
    );
    let expected = [
        "flowers.toml:2: video.streams.front.url: the scheme \"ftp\" is not read; use rtsp, rtsps, http or https, or a file path",
        "flowers.toml:3: video.streams.front.fps: expected frames per second above 0 and at most 30, got 0",
        "flowers.toml:4: video.streams.front.width: expected an integer 16..=7680, got 8000",
        "flowers.toml:5: video.streams.front.hwaccel: expected \"auto\", \"cuda\" or \"none\", got \"nvdec\"",
        "flowers.toml:6: video.streams.front.min_score: expected a number from 0 and at most 1, got 1.5",
        "flowers.toml:7: video.streams.front.masks: polygon 1: a polygon needs 3 to 256 points, got 2",
        "flowers.toml:9: video.streams.front.zones.door.polygon: point 3: [1.2, 0.3] is outside the frame: coordinates are fractions of its width and height, each in [0, 1]",
        "flowers.toml:10: video.streams.front.lines.gate.to: missing; give a point [x, y] with each in [0, 1]",
        "flowers.toml:12: video.streams.Back: expected a name of lowercase letters, digits and '-', starting with a letter, at most 48 characters; got \"Back\"",
        "flowers.toml:13: video.streams.Back.url: \"http:///nohost\" names no host",
        "flowers.toml:14: video.streams.side.url: missing; give an rtsp://, rtsps://, http:// or https:// URL or a file path",
        "flowers.toml:16: video.streams.flat.url: missing; give an rtsp://, rtsps://, http:// or https:// URL or a file path",
        "flowers.toml:17: video.streams.flat.zones.z.polygon: the polygon encloses no area (its points are on one line)",
        "flowers.toml:19: video.motion.alpha: expected a number above 0 and at most 1, got 0",
        "flowers.toml:20: video.motion.treshold: unknown key; did you mean `threshold`?",
    ];
    let mut sorted = found.clone();
    sorted.sort();
    let mut wanted: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    wanted.sort();
    assert_eq!(sorted, wanted, "{found:#?}");
}

#[test]
fn a_video_stream_from_json_gets_the_files_defaults_and_checks() {
    let spec = video_stream_from_json(
        "yard",
        &serde_json::json!({"url": "/srv/yard.mp4", "lines": {"gate": {"from": [0, 0], "to": [1, 1]}}}),
    )
    .unwrap();
    assert_eq!(spec.url, "/srv/yard.mp4");
    assert_eq!(spec.fps, 5.0);
    assert_eq!(spec.lines[&name("gate")].to, [1.0, 1.0]);
    let messages = |result: Result<domain::StreamSpec, ConfigError>| -> Vec<String> {
        result
            .unwrap_err()
            .problems
            .iter()
            .map(Problem::to_string)
            .collect()
    };
    assert_eq!(
        messages(video_stream_from_json("yard", &serde_json::json!({"url": "yard.mp4"}))),
        ["request body: url: expected an absolute path on the machine Flowers runs on, got \"yard.mp4\""]
    );
    assert_eq!(
        messages(video_stream_from_json(
            "yard",
            &serde_json::json!({"url": "rtsp://cam/1", "fps": 99, "zones": {"z": {"polygon": [[0, 0]]}}})
        )),
        [
            "request body: fps: expected frames per second above 0 and at most 30, got 99",
            "request body: zones.z.polygon: a polygon needs 3 to 256 points, got 1"
        ]
    );
    assert_eq!(
        messages(video_stream_from_json("Yard", &serde_json::json!([]))),
        [
            "request body: name: expected a name of lowercase letters, digits and '-', starting with a letter, at most 48 characters; got \"Yard\"",
            "request body: expected a JSON object with the keys of a [video.streams.NAME] table, got an array"
        ]
    );
}

#[test]
fn video_mqtt_and_webhooks_load_with_their_defaults() {
    let config = load(
        r#"
[video.mqtt]
url = "mqtt://broker.lan"

[[video.webhooks]]
url = "http://10.0.0.9:8080/hooks/video"
kinds = ["line_crossed", "loitered"]
streams = ["front"]
headers = { Authorization = "Bearer abc", X-Site = "north" }

[[video.webhooks]]
url = "http://alarm.lan/in"
"#,
    )
    .unwrap();
    let mqtt = config.video.mqtt.unwrap();
    assert_eq!((mqtt.host.as_str(), mqtt.port), ("broker.lan", 1883));
    assert_eq!(mqtt.prefix, "flowers/video");
    assert_eq!(mqtt.client_id, "flowers-video");
    assert_eq!((mqtt.username, mqtt.password), (None, None));
    let [first, second] = &config.video.webhooks[..] else {
        panic!("two webhooks: {:?}", config.video.webhooks);
    };
    assert_eq!(first.url, "http://10.0.0.9:8080/hooks/video");
    assert_eq!(first.kinds, ["line_crossed", "loitered"]);
    assert_eq!(first.streams, ["front"]);
    assert_eq!(first.headers["Authorization"], "Bearer abc");
    assert_eq!(first.headers["X-Site"], "north");
    assert_eq!(second, &domain::WebhookSpec::new("http://alarm.lan/in"));

    let config = load(
        r#"
[video.mqtt]
url = "mqtt://[::1]:1884/"
prefix = "site/cams"
username = "flowers"
password = "secret"
client_id = "cams-1"
[video]
webhooks = [{ url = "http://hook.lan" }]
"#,
    )
    .unwrap();
    let mqtt = config.video.mqtt.unwrap();
    assert_eq!((mqtt.host.as_str(), mqtt.port), ("::1", 1884));
    assert_eq!(mqtt.prefix, "site/cams");
    assert_eq!(mqtt.username.as_deref(), Some("flowers"));
    assert_eq!(mqtt.password.as_deref(), Some("secret"));
    assert_eq!(mqtt.client_id, "cams-1");
    assert_eq!(config.video.webhooks[0].url, "http://hook.lan");
}

#[test]
fn bad_video_mqtt_and_webhook_values_are_refused_where_written() {
    let found = problems(
        r#"[video.mqtt]
url = "mqtts://broker.lan:8883"
prefix = "flowers/#"
password = "x"
client = "a"

[[video.webhooks]]
url = "https://hooks.example.com/in"
kinds = ["line_crossed", "crossed"]
streams = ["Front"]
headers = { "Content-Type" = "text/plain", "bad header" = "x", X-Ok = 3 }

[[video.webhooks]]
kinds = ["loitered"]

[[video.webhooks]]
url = "ftp://files.lan/in"
[[video.webhooks]]
url = "http://:80/in"
[[video.webhooks]]
url = "http://hook.lan:99999/in"
"#,
    );
    let expected = [
        "flowers.toml:2: video.mqtt.url: \"mqtts://broker.lan:8883\" needs TLS, which this build of Flowers has no support for; use mqtt:// (on a trusted network, or through a TLS tunnel)",
        "flowers.toml:3: video.mqtt.prefix: expected a topic prefix such as \"flowers/video\" (no +, #, leading $ or empty level), got \"flowers/#\"",
        "flowers.toml:4: video.mqtt.password: a password needs a username",
        "flowers.toml:5: video.mqtt.client: unknown key; did you mean `client_id`?",
        "flowers.toml:8: video.webhooks[0].url: \"https://hooks.example.com/in\": https is not available, this build's HTTP client has no TLS; use http:// (on a trusted network, or to a proxy that adds TLS)",
        "flowers.toml:9: video.webhooks[0].kinds: unknown event kind \"crossed\"; expected one of object_started, object_ended, zone_entered, zone_left, line_crossed, loitered, stream_offline, stream_online",
        "flowers.toml:10: video.webhooks[0].streams: expected a name of lowercase letters, digits and '-', starting with a letter, at most 48 characters; got \"Front\"",
        "flowers.toml:11: video.webhooks[0].headers.Content-Type: Content-Type is set by Flowers on every request",
        "flowers.toml:11: video.webhooks[0].headers.bad header: \"bad header\" is not a header name (letters, digits and !#$%&'*+-.^_`|~)",
        "flowers.toml:11: video.webhooks[0].headers.X-Ok: expected a header value string, got 3",
        "flowers.toml:13: video.webhooks[1].url: missing; give the http:// URL events are POSTed to",
        "flowers.toml:17: video.webhooks[2].url: the scheme \"ftp\" is not http; give an http:// URL",
        "flowers.toml:19: video.webhooks[3].url: \"http://:80/in\" names no host",
        "flowers.toml:21: video.webhooks[4].url: \"http://hook.lan:99999/in\": the port \"99999\" is not 1..=65535",
    ];
    let mut sorted = found.clone();
    sorted.sort();
    let mut wanted: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    wanted.sort();
    assert_eq!(sorted, wanted, "{found:#?}");

    for (url, message) in [
        (
            "\"broker.lan\"",
            "expected a broker URL mqtt://HOST[:PORT], got \"broker.lan\"",
        ),
        (
            "\"http://broker.lan\"",
            "the scheme \"http\" is not MQTT; give the broker as mqtt://HOST[:PORT]",
        ),
        (
            "\"mqtt://broker.lan:0\"",
            "\"mqtt://broker.lan:0\": the port \"0\" is not 1..=65535",
        ),
        (
            "\"mqtt://u:p@broker.lan\"",
            "\"mqtt://u:p@broker.lan\" is not mqtt://HOST[:PORT]: no path, user or spaces (give username and password as keys)",
        ),
        ("\"mqtt://:1883\"", "\"mqtt://:1883\" names no host"),
        ("1883", "expected a broker URL mqtt://HOST[:PORT], got 1883"),
    ] {
        assert_eq!(
            problems(&format!("[video.mqtt]\nurl = {url}\n")),
            [format!("flowers.toml:2: video.mqtt.url: {message}")]
        );
    }
    assert_eq!(
        problems("[video.mqtt]\nprefix = \"x\"\n"),
        ["flowers.toml:1: video.mqtt.url: missing; give the broker as mqtt://HOST[:PORT]"]
    );
    assert_eq!(
        problems("[video]\nwebhooks = \"http://hook.lan\"\n"),
        ["flowers.toml:2: video.webhooks: expected [[video.webhooks]] tables such as url = \"http://host/hook\", got \"http://hook.lan\""]
    );
    assert_eq!(
        problems("[video]\nwebhooks = [\"http://hook.lan\"]\n"),
        ["flowers.toml:2: video.webhooks[0]: expected a table such as { url = \"http://host/hook\" }, got \"http://hook.lan\""]
    );
}
