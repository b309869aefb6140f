//! The built-in engines served as services: `command = ["flowers", "engine", …]` runs this
//! binary, `--import-model` gives the model its first version, and requests reach the engine
//! through the gateway. With the real default models.

use crate::support::*;

const EMBED: &str = r#"
[models.minilm]

[services.embed]
command = ["flowers", "engine", "embed"]
model = "minilm"
routes = [{ path = "/v1/embeddings" }]
[services.embed.probe]
interval = "100ms"
start_timeout = "60s"
"#;

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn vector(answer: &serde_json::Value, index: usize) -> Vec<f64> {
    answer["data"][index]["embedding"]
        .as_array()
        .expect("an embedding")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embed_engine_serves_its_imported_model_through_the_gateway() {
    let minilm = default_model("minilm");
    let import = format!("minilm={}", minilm.display());
    // `other` is not declared by the config: skipped, not imported.
    let skipped = format!("other={}", minilm.display());
    let mut server = TestServer::start_with_args(
        EMBED,
        &[],
        &["--import-model", &import, "--import-model", &skipped],
    )
    .await;
    let replica = server.ready_runs("embed", 1).await.remove(0);
    assert_eq!(replica.model_version, Some(1), "{replica:?}");
    let models = server.client.models().await.expect("models");
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["minilm"], "{}", server.log());
    assert!(server
        .log()
        .contains("skipped, the config declares no [models.other]"));

    let response = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/v1/embeddings",
            server.gateway_port
        ))
        .json(&serde_json::json!({
            "input": ["This is an example sentence", "Each sentence is converted"],
            "model": "minilm",
        }))
        .send()
        .await
        .expect("the gateway answers");
    // The engine says which version answered (the RAG service records it with its vectors).
    assert_eq!(
        response.headers()[api_types::MODEL_VERSION_HEADER],
        "1",
        "{:?}",
        response.headers()
    );
    let answer: serde_json::Value = response.json().await.expect("JSON");
    let (first, second) = (vector(&answer, 0), vector(&answer, 1));
    assert_eq!(first.len(), 384);
    // The model card's pair; the value comes from crates/engines/reference/minilm_numpy.py.
    let similarity = cosine(&first, &second);
    assert!((similarity - 0.4046).abs() < 1e-3, "cosine {similarity}");

    // A restart does not import again: still one version, still served.
    assert!(server.terminate().success());
    server.launch(&[]).await;
    server.ready_runs("embed", 1).await;
    let versions = server.client.model("minilm").await.expect("minilm");
    assert_eq!(versions.versions.len(), 1, "{versions:?}");
}

#[test]
fn import_model_arguments_are_checked_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    for (argument, expected) in [
        ("minilm", "expected NAME=PATH, got \"minilm\""),
        ("Mini=/tmp", "model name \"Mini\""),
        ("minilm=", "no path after minilm="),
        (
            "minilm=/no/such/model",
            "/no/such/model: no such file or directory",
        ),
    ] {
        let (code, _, stderr) = cli_in(
            dir.path(),
            "http://127.0.0.1:1",
            &["up", "--import-model", argument],
        );
        assert_eq!(code, 2, "{argument}: {stderr}");
        assert!(
            stderr.contains("--import-model") && stderr.contains(expected),
            "{argument}: {stderr}"
        );
    }
}

/// A Run that Flowers placed on a GPU, served by a binary built without the `cuda` feature:
/// the engine says so once on stderr and serves on the CPU instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_run_of_a_build_without_cuda_warns_and_serves_on_the_cpu() {
    if cfg!(feature = "cuda") {
        return;
    }
    let minilm = default_model("minilm");
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let port = free_port();
    let mut engine = std::process::Command::new(FLOWERS)
        .args(["engine", "embed", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--model")
        .arg(&minilm)
        .env(
            "CUDA_VISIBLE_DEVICES",
            "GPU-00000000-1111-2222-3333-444444444444",
        )
        .env("FLOWERS_DEVICE", "gpu0")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("flowers starts");
    let deadline = std::time::Instant::now() + DEADLINE;
    let answer = loop {
        let response = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/v1/embeddings"))
            .json(&serde_json::json!({ "input": ["a flower"] }))
            .send()
            .await;
        if let Ok(response) = response {
            break response.json::<serde_json::Value>().await.expect("JSON");
        }
        assert!(
            engine.try_wait().unwrap().is_none(),
            "the engine exited: {}",
            std::fs::read_to_string(&stderr).unwrap()
        );
        assert!(std::time::Instant::now() < deadline, "no answer in time");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    engine.kill().unwrap();
    engine.wait().unwrap();
    assert_eq!(vector(&answer, 0).len(), 384);
    let log = std::fs::read_to_string(&stderr).unwrap();
    let warning = "CUDA_VISIBLE_DEVICES=GPU-00000000-1111-2222-3333-444444444444 asks for the GPU \
                   gpu0 (GPU-00000000-1111-2222-3333-444444444444), but this flowers binary was \
                   built without CUDA";
    assert_eq!(log.matches(warning).count(), 1, "{log}");
    assert!(log.contains("WARN"), "{log}");
}
