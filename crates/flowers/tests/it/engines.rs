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
