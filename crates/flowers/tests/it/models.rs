//! Models and versions through the control API and the CLI: importing files (a manifest, a
//! digest that only content decides, byte-identical copies), listing and showing, promotion by
//! a metric policy or by hand, rollback, retention, services moved to the promoted version,
//! every bad input refused with its place and nothing changed, and a `kill -9` in the middle of
//! registering a version that leaves no half version behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use client::{ModelDetail, RegisteredInfo, RunInfo};
use reqwest::Method;

use crate::api::error_message;
use crate::support::*;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// `dir/src`: `weights.bin` (a few hundred KiB) and `sub/config.json`.
fn source(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    let weights: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("weights.bin"), weights).unwrap();
    std::fs::write(src.join("sub/config.json"), br#"{"layers": 2}"#).unwrap();
    src
}

fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

async fn register(
    server: &TestServer,
    model: &str,
    path: &Path,
    pairs: &[(&str, f64)],
) -> RegisteredInfo {
    server
        .client
        .register_version(model, path.to_str().unwrap(), &metrics(pairs), None)
        .await
        .unwrap_or_else(|e| panic!("registering {}: {e}", path.display()))
}

async fn detail(server: &TestServer, model: &str) -> ModelDetail {
    server.client.model(model).await.expect("the model")
}

async fn version_numbers(server: &TestServer, model: &str) -> Vec<(u32, String)> {
    detail(server, model)
        .await
        .versions
        .into_iter()
        .map(|v| (v.version, v.state))
        .collect()
}

/// What is in `DATA_DIR/models/MODEL`, sorted (staging directories included).
fn entries(server: &TestServer, model: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(server.data_dir().join("models").join(model))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The CLI against `server`, its arguments split at spaces.
fn cli(server: &TestServer, line: &str) -> (i32, String, String) {
    server.cli(&line.split(' ').collect::<Vec<_>>())
}

async fn post(server: &TestServer, path: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(
            Method::POST,
            format!("http://127.0.0.1:{}{path}", server.api_port),
        )
        .body(body.to_string())
        .send()
        .await
        .expect("the control API answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_copy_files_with_a_manifest_and_a_digest_of_their_content() {
    let server = TestServer::start("").await;
    let src = source(server.dir.path());

    // A relative path is taken from the CLI's directory; the model is created by the import.
    let (code, out, err) = cli(
        &server,
        "models import src --model m --metric eval_loss=0.5 --json",
    );
    assert_eq!(code, 0, "{err}");
    let first: RegisteredInfo = serde_json::from_str(&out).unwrap();
    let one = &first.version;
    let dir = server.data_dir().join("models/m/1");
    assert_eq!((one.model.as_str(), one.version), ("m", 1));
    assert_eq!((one.state.as_str(), one.files), ("ready", 2));
    assert_eq!(one.size_bytes, 300_000 + 13);
    assert_eq!(one.metrics, metrics(&[("eval_loss", 0.5)]));
    assert_eq!((one.run.as_ref(), one.job.as_ref()), (None, None));
    assert_eq!(one.source, src.display().to_string());
    assert_eq!(one.path, dir.display().to_string());
    assert!(one.digest.starts_with("sha256:"), "{}", one.digest);
    assert!(!first.promoted);
    assert_eq!(
        first.note,
        "not promoted: promotion of m is manual (`flowers models promote m 1`)"
    );
    for file in ["weights.bin", "sub/config.json"] {
        assert_eq!(
            std::fs::read(dir.join(file)).unwrap(),
            std::fs::read(src.join(file)).unwrap(),
            "{file}"
        );
    }
    let manifest = json(&std::fs::read_to_string(dir.join("manifest.json")).unwrap());
    assert_eq!(manifest["model"], "m");
    assert_eq!(manifest["version"], 1);
    assert_eq!(manifest["digest"], one.digest.as_str());
    assert_eq!(manifest["metrics"]["eval_loss"], 0.5);
    assert!(manifest["run"].is_null());
    let files: Vec<(&str, u64)> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap(), f["bytes"].as_u64().unwrap()))
        .collect();
    assert_eq!(files, [("sub/config.json", 13), ("weights.bin", 300_000)]);

    // A single file is a version of one file.
    let (code, out, err) = cli(&server, "models import src/weights.bin --model m");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("imported m:2 (1 file(s), "),
        "unexpected output:\n{out}"
    );
    let two = server.data_dir().join("models/m/2");
    assert_eq!(
        std::fs::read(two.join("weights.bin")).unwrap(),
        std::fs::read(src.join("weights.bin")).unwrap()
    );
    assert!(two.join("manifest.json").is_file());

    // The same content from another place digests the same; other content does not.
    let copy = server.dir.path().join("copy");
    std::fs::create_dir_all(copy.join("sub")).unwrap();
    for file in ["weights.bin", "sub/config.json"] {
        std::fs::copy(src.join(file), copy.join(file)).unwrap();
    }
    let three = register(&server, "m", &copy, &[]).await.version;
    assert_eq!(three.version, 3);
    assert_eq!(three.digest, one.digest);
    let shown = detail(&server, "m").await;
    assert_ne!(shown.versions[1].digest, one.digest);

    // Listing and showing, for machines and for people.
    let (code, out, err) = cli(&server, "models --json");
    assert_eq!(code, 0, "{err}");
    let listed = json(&out);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let model = &listed[0];
    assert_eq!(model["name"], "m");
    assert_eq!(model["versions"], 3);
    assert!(model["promoted"].is_null());
    assert_eq!(model["serving"], serde_json::json!([]));
    assert_eq!(model["keep"], 5);
    assert_eq!(
        model["promote"],
        serde_json::json!({ "policy": "manual", "metric": null, "mode": null })
    );
    let (code, out, err) = cli(&server, "models");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["MODEL", "PROMOTED", "SERVING", "VERSIONS", "POLICY"],
        "{out}"
    );
    assert_eq!(
        lines[1],
        ["m", "-", "-", "3", "manual", "(keep", "5)"],
        "{out}"
    );

    let (code, out, err) = cli(&server, "models show m --json");
    assert_eq!(code, 0, "{err}");
    let shown: ModelDetail = serde_json::from_str(&out).unwrap();
    let numbers: Vec<u32> = shown.versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, [3, 2, 1], "newest first");
    assert!(shown.promotions.is_empty());

    // Manual promotion: only by hand.
    let (code, out, err) = cli(&server, "models promote m 2");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "promoted m:2 (promoted by user)\n");
    let (code, out, err) = cli(&server, "models show m");
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("model m: promoted 2, serving -, promotion manual, keep 5")
    );
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["VERSION", "STATE", "METRICS", "CREATED", "SOURCE"],
        "{out}"
    );
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(2)
        .take(3)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..3], ["3", "ready", "-"], "{out}");
    assert_eq!(rows[1][..3], ["2*", "ready", "-"], "{out}");
    assert_eq!(rows[2][..3], ["1", "ready", "eval_loss=0.5"], "{out}");
    assert_eq!(rows[2][4], src.display().to_string(), "{out}");
    assert!(out.contains("\nPROMOTIONS (newest first)\n"), "{out}");
    assert!(out.ends_with(" 2: promoted by user\n"), "{out}");
}

/// The ready replicas of `web` once they all serve `version`.
async fn serving(server: &TestServer, version: u32) -> Vec<RunInfo> {
    server
        .eventually(&format!("web to serve only version {version}"), || async {
            let service = server.client.service("web").await.ok()?;
            let all_on_it = !service.runs.is_empty()
                && service
                    .runs
                    .iter()
                    .all(|r| r.state == "ready" && r.model_version == Some(version));
            all_on_it.then_some(service.runs)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_policy_promotes_only_better_versions_and_rollback_returns_to_the_previous() {
    let server = TestServer::start(&format!(
        "[models.m]\npromote = {{ metric = \"eval_loss\", mode = \"min\" }}\n{}",
        service("web", "model = \"m\"")
    ))
    .await;
    let src = source(server.dir.path());
    let waiting = server
        .eventually("web to wait for a version", || async {
            let web = server.client.service("web").await.ok()?;
            web.reason.filter(|r| r.contains("no promoted version"))
        })
        .await;
    assert!(
        waiting.starts_with("model m has no promoted version yet"),
        "{waiting}"
    );

    let first = register(&server, "m", &src, &[("eval_loss", 0.5)]).await;
    assert!(first.promoted);
    assert_eq!(first.note, "eval_loss 0.5; nothing was promoted");
    let replica = serving(&server, 1).await.remove(0);
    let env = get_json(replica.port.unwrap(), "/env").await.unwrap();
    assert_eq!(env["FLOWERS_MODEL"], "m");
    assert_eq!(env["FLOWERS_MODEL_VERSION"], "1");
    assert_eq!(env["FLOWERS_MODEL_PATH"], first.version.path.as_str());

    let worse = register(&server, "m", &src, &[("eval_loss", 0.6)]).await;
    assert!(!worse.promoted);
    assert_eq!(
        worse.note,
        "not promoted: eval_loss 0.6 does not beat 0.5 of version 1 (min)"
    );
    let missing = register(&server, "m", &src, &[("accuracy", 0.9)]).await;
    assert!(!missing.promoted);
    assert_eq!(
        missing.note,
        "not promoted: it has no eval_loss metric, which the promotion policy compares"
    );
    let (code, out, err) = cli(
        &server,
        "models import src --model m --metric eval_loss=0.4",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.ends_with("\npromoted: eval_loss 0.4 < 0.5 of version 1\n"),
        "unexpected output:\n{out}"
    );

    let replica = serving(&server, 4).await.remove(0);
    let env = get_json(replica.port.unwrap(), "/env").await.unwrap();
    assert_eq!(env["FLOWERS_MODEL_VERSION"], "4");
    let (code, out, err) = cli(&server, "ps");
    assert_eq!(code, 0, "{err}");
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header[..5],
        ["NAME", "KIND", "STATE", "READY", "VERSION"],
        "{out}"
    );
    let row = out.lines().find(|l| l.starts_with("web ")).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..5],
        ["web", "service", "running", "1/1", "4"],
        "{out}"
    );
    assert!(row.contains(", v4)"), "{out}");
    let (code, out, err) = cli(&server, "ps --json");
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["services"][0]["runs"][0]["model_version"], 4);
    let model = server.client.models().await.unwrap().remove(0);
    assert_eq!((model.promoted, model.serving), (Some(4), vec![4]));
    assert_eq!(model.versions, 4);

    let (code, out, err) = cli(&server, "models rollback m --json");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out)["message"],
        "promoted m:1 (rolled back from version 4)"
    );
    serving(&server, 1).await;
    let promotions: Vec<(u32, Option<u32>, String)> = detail(&server, "m")
        .await
        .promotions
        .into_iter()
        .map(|p| (p.version, p.previous, p.reason))
        .collect();
    assert_eq!(
        promotions,
        [
            (1, Some(4), "rolled back from version 4".to_string()),
            (4, Some(1), "eval_loss 0.4 < 0.5 of version 1".to_string()),
            (1, None, "eval_loss 0.5; nothing was promoted".to_string()),
        ]
    );
    let states = version_numbers(&server, "m").await;
    assert!(
        states.iter().all(|(_, state)| state == "ready"),
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_the_promoted_and_the_one_before_it() {
    let server = TestServer::start("[models.m]\nkeep = 2\n").await;
    let src = source(server.dir.path());
    register(&server, "m", &src, &[]).await;
    server.client.promote("m", 1).await.unwrap();
    register(&server, "m", &src, &[]).await;
    server.client.promote("m", 2).await.unwrap();
    for _ in 3..=5 {
        register(&server, "m", &src, &[]).await;
    }
    let ready = |v: u32| (v, "ready".to_string());
    assert_eq!(
        version_numbers(&server, "m").await,
        [
            ready(5),
            ready(4),
            (3, "deleted".to_string()),
            ready(2),
            ready(1)
        ]
    );
    let shown = detail(&server, "m").await;
    assert_eq!(
        shown.versions[2].reason.as_deref(),
        Some("retention: keep = 2")
    );
    assert_eq!(shown.model.versions, 4);
    assert_eq!(entries(&server, "m"), ["1", "2", "4", "5"]);

    // A deleted version cannot come back.
    let message = error_message(
        post(&server, "/v1/models/m/promote", r#"{"version": 3}"#).await,
        400,
        "bad_request",
    )
    .await;
    assert_eq!(
        message,
        "version 3 of m was deleted (retention: keep = 2); its files are gone"
    );
    let (code, out, err) = cli(&server, "models promote m 3");
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        err,
        "error: version 3 of m was deleted (retention: keep = 2); its files are gone\n"
    );
    assert_eq!(detail(&server, "m").await.model.promoted, Some(2));
    assert_eq!(entries(&server, "m"), ["1", "2", "4", "5"]);
}

/// Posts a registration body and checks the error; returns its message.
async fn refused(server: &TestServer, model: &str, body: &str, status: u16, code: &str) -> String {
    let response = post(server, &format!("/v1/models/{model}/versions"), body).await;
    error_message(response, status, code).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_what_and_where_and_changes_nothing() {
    let config = format!(
        "[models.m]\n{web}\n\
         [jobs.train]\ncommand = [\"python3\", \"-u\", \"{WORKLOAD}\"]\n\
         env = {{ WORKLOAD_NO_SERVER = \"1\" }}\n\
         [jobs.once]\ncommand = [\"python3\", \"-u\", \"{WORKLOAD}\"]\n\
         env = {{ WORKLOAD_NO_SERVER = \"1\", WORKLOAD_EXIT_AFTER = \"0\", WORKLOAD_EXIT_CODE = \"0\" }}\n",
        web = service("web", "")
    );
    let server = TestServer::start(&config).await;
    let src = source(server.dir.path());
    register(&server, "m", &src, &[]).await;
    let before = detail(&server, "m").await;
    let web = server.ready_runs("web", 1).await.remove(0).id;
    let once = server.client.start_job("once").await.unwrap().run.unwrap();
    server
        .eventually(&format!("{once} to end"), || async {
            let run = server.client.run(&once).await.ok()?;
            run.ended_ms.map(|_| ())
        })
        .await;

    let empty = server.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let with_manifest = server.dir.path().join("with-manifest");
    std::fs::create_dir(&with_manifest).unwrap();
    std::fs::write(with_manifest.join("manifest.json"), "{}").unwrap();
    let with_link = server.dir.path().join("with-link");
    std::fs::create_dir(&with_link).unwrap();
    std::os::unix::fs::symlink(src.join("weights.bin"), with_link.join("weights.bin")).unwrap();
    let missing = server.dir.path().join("nope");
    let src_text = src.display().to_string();
    let with_src = |rest: &str| format!(r#"{{"path": "{src_text}"{rest}}}"#);

    let exact: Vec<(String, u16, &str, String)> = vec![
        (
            String::new(),
            400,
            "bad_request",
            r#"request body: expected JSON like {"path": "/absolute/path"}, got nothing"#.into(),
        ),
        (
            "{}".into(),
            400,
            "bad_request",
            "request body: missing field `path` at line 1 column 2".into(),
        ),
        (
            r#"{"path": ""}"#.into(),
            400,
            "bad_request",
            r#"path: expected the absolute path of a file or directory on this machine, got """#
                .into(),
        ),
        (
            r#"{"path": "relative/dir"}"#.into(),
            400,
            "bad_request",
            "relative/dir: the path must be absolute".into(),
        ),
        (
            format!(r#"{{"path": "{}"}}"#, missing.display()),
            400,
            "bad_request",
            format!("{}: no such file or directory", missing.display()),
        ),
        (
            format!(r#"{{"path": "{}"}}"#, empty.display()),
            400,
            "bad_request",
            format!("{}: the directory has no files", empty.display()),
        ),
        (
            format!(r#"{{"path": "{}"}}"#, with_link.display()),
            400,
            "bad_request",
            format!(
                "{}: symbolic links and special files cannot be part of a version",
                with_link.join("weights.bin").display()
            ),
        ),
        (
            with_src(r#", "run": "nope-1""#),
            404,
            "not_found",
            r#"no run is named "nope-1""#.into(),
        ),
        (
            with_src(&format!(r#", "run": "{once}""#)),
            409,
            "conflict",
            format!("run {once} has already ended"),
        ),
        (
            with_src(&format!(r#", "run": "{web}""#)),
            400,
            "bad_request",
            format!(
                "run {web} belongs to service web; only jobs register versions \
                 (import files with `flowers models import`)"
            ),
        ),
    ];
    for (body, status, code, message) in &exact {
        assert_eq!(
            &refused(&server, "m", body, *status, code).await,
            message,
            "{body}"
        );
    }
    let starting: Vec<(String, &str)> = vec![
        ("{".into(), "request body: EOF while parsing an object"),
        (
            format!("{} x", with_src("")),
            "request body: trailing characters",
        ),
        (
            with_src(r#", "metrics": {"eval_loss": 1e999}"#),
            "request body: metrics.eval_loss: number out of range",
        ),
        (
            with_src(r#", "metrics": {"eval_loss": "low"}"#),
            r#"request body: metrics.eval_loss: invalid type: string "low", expected f64"#,
        ),
        (
            with_src(r#", "metrics": {"eval_loss": null}"#),
            "request body: metrics.eval_loss: invalid type: null, expected f64",
        ),
        (
            with_src(r#", "metric": {}"#),
            "request body: metric: unknown field `metric`, expected one of `path`, `metrics`, `run`",
        ),
    ];
    for (body, start) in &starting {
        let message = refused(&server, "m", body, 400, "bad_request").await;
        assert!(message.starts_with(start), "{body}: {message}");
    }
    let message = refused(
        &server,
        "m",
        &format!(r#"{{"path": "{}"}}"#, with_manifest.display()),
        400,
        "bad_request",
    )
    .await;
    assert!(
        message.starts_with(&format!(
            "{}: manifest.json at the top is reserved",
            with_manifest.display()
        )),
        "{message}"
    );
    assert_eq!(
        refused(&server, "Bad_Name", &with_src(""), 400, "bad_request").await,
        "\"Bad_Name\" is not a valid model name: lowercase letters, digits and '-', starting with a letter"
    );

    // Promotions and rollbacks that cannot be.
    let promote_errors = [
        (
            "/v1/models/nope/promote",
            r#"{"version": 1}"#,
            404,
            "not_found",
            r#"no model is named "nope""#,
        ),
        (
            "/v1/models/m/promote",
            r#"{"version": 9}"#,
            404,
            "not_found",
            "model m has no version 9",
        ),
        (
            "/v1/models/m/promote",
            "{}",
            400,
            "bad_request",
            "request body: missing field `version` at line 1 column 2",
        ),
        (
            "/v1/models/m/rollback",
            "",
            400,
            "bad_request",
            "model m has no earlier promoted version to roll back to",
        ),
        (
            "/v1/models/nope/rollback",
            "",
            404,
            "not_found",
            r#"no model is named "nope""#,
        ),
    ];
    for (path, body, status, code, message) in promote_errors {
        let response = post(&server, path, body).await;
        assert_eq!(
            error_message(response, status, code).await,
            message,
            "{path} {body}"
        );
    }
    let message = error_message(
        post(&server, "/v1/models/m/promote", r#"{"version": -1}"#).await,
        400,
        "bad_request",
    )
    .await;
    assert!(
        message.starts_with("request body: version: invalid value"),
        "{message}"
    );
    let response = reqwest::get(format!(
        "http://127.0.0.1:{}/v1/models/nope",
        server.api_port
    ))
    .await
    .unwrap();
    assert_eq!(
        error_message(response, 404, "not_found").await,
        r#"no model is named "nope""#
    );

    // The CLI says what is wrong with its own arguments before asking Flowers anything.
    for (metric, says) in [
        (
            "eval_loss",
            "expected KEY=VALUE (e.g. eval_loss=0.31), got \"eval_loss\"",
        ),
        ("eval_loss=low", "eval_loss: expected a number, got \"low\""),
        (
            "eval_loss=inf",
            "eval_loss: expected a finite number, got \"inf\"",
        ),
    ] {
        let (code, out, err) = server.cli(&[
            "models", "import", "src", "--model", "m", "--metric", metric,
        ]);
        assert_eq!(code, 2, "{metric}: {out}");
        assert!(
            err.starts_with(&format!(
                "error: invalid value '{metric}' for '--metric <KEY=VALUE>': {says}"
            )),
            "{metric}: {err}"
        );
    }
    let (code, _out, err) = cli(
        &server,
        "models import src --model m --metric a=1 --metric a=2",
    );
    assert_eq!(
        (code, err.as_str()),
        (1, "error: --metric a is given more than once\n")
    );
    let (code, _out, err) = cli(&server, "models import nope --model m");
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!("error: {}: no such file or directory\n", missing.display())
    );
    let (code, _out, err) = cli(&server, "models show nope");
    assert_eq!(
        (code, err.as_str()),
        (1, "error: no model is named \"nope\"\n")
    );

    // Nothing changed: the same versions, no files left from the refused ones, no new model.
    assert_eq!(detail(&server, "m").await, before);
    assert_eq!(entries(&server, "m"), ["1"]);
    let models: Vec<String> = server
        .client
        .models()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(models, ["m"]);

    // A live job's Run registers its checkpoint.
    let train = server.client.start_job("train").await.unwrap().run.unwrap();
    let registered = server
        .client
        .register_version(
            "m",
            &src_text,
            &metrics(&[("eval_loss", 0.3)]),
            Some(&train),
        )
        .await
        .unwrap();
    let version = registered.version;
    assert_eq!(version.version, 2);
    assert_eq!(version.run.as_deref(), Some(train.as_str()));
    assert_eq!(version.job.as_deref(), Some("train"));
    assert_eq!(version.source, format!("run {train}"));
    let manifest =
        json(&std::fs::read_to_string(Path::new(&version.path).join("manifest.json")).unwrap());
    assert_eq!(manifest["run"], train.as_str());
}

/// A file of `bytes` that differs from its siblings (so nothing is deduplicated anywhere).
fn big_file(path: &Path, seed: u8, bytes: usize) {
    let mut data = vec![seed; bytes];
    for (i, byte) in data.iter_mut().enumerate().step_by(4096) {
        *byte = (i / 4096) as u8 ^ seed;
    }
    std::fs::write(path, data).unwrap();
}

fn staging_dirs(root: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with(".staging") {
            out.push(path.clone());
        }
        if path.is_dir() {
            staging_dirs(&path, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_registering_a_big_version_leaves_no_half_version() {
    let mut server = TestServer::start("").await;
    let src = source(server.dir.path());
    register(&server, "m", &src, &[]).await;
    let big = server.dir.path().join("big");
    std::fs::create_dir(&big).unwrap();
    // 256 MiB: copying, digesting and syncing it takes far longer than a poll (about a
    // second on an idle two-core machine).
    for i in 0..64u8 {
        big_file(&big.join(format!("shard-{i:02}.bin")), i, 4 << 20);
    }

    let client = server.client.clone();
    let big_text = big.display().to_string();
    let registering = tokio::spawn(async move {
        client
            .register_version("m", &big_text, &BTreeMap::new(), None)
            .await
    });
    let models = server.data_dir().join("models");
    let staging = server
        .eventually("the big version to be half copied", || async {
            let mut found = Vec::new();
            staging_dirs(&models, &mut found);
            let dir = found.into_iter().next()?;
            let copied = std::fs::read_dir(&dir).ok()?.count();
            (copied > 0).then_some(dir)
        })
        .await;
    server.kill9();
    let answer = registering.await.unwrap();
    assert!(
        answer.is_err(),
        "the registration finished before Flowers was killed; make the version bigger: {answer:?}"
    );
    assert!(staging.exists(), "a kill -9 cleans up nothing by itself");

    server.launch(&[]).await;
    let shown = detail(&server, "m").await;
    let numbers: Vec<(u32, &str)> = shown
        .versions
        .iter()
        .map(|v| (v.version, v.state.as_str()))
        .collect();
    assert_eq!(numbers, [(1, "ready")]);
    let mut left = Vec::new();
    staging_dirs(&models, &mut left);
    assert!(left.is_empty(), "staging left behind: {left:?}");
    assert_eq!(entries(&server, "m"), ["1"]);

    // The number the lost version would have had is free, and the next version is whole.
    let next = register(&server, "m", &src, &[]).await.version;
    assert_eq!(next.version, 2);
    assert_eq!(next.digest, shown.versions[0].digest);
    assert_eq!(entries(&server, "m"), ["1", "2"]);
}
