//! Tests with the real all-MiniLM-L6-v2. The reference numbers come from an independent
//! float64 NumPy re-implementation, `crates/engines/reference/minilm_numpy.py`, run on the
//! same weights; its token ids and values are quoted where they are used.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use base64::Engine as _;

use super::*;

const MODEL_ENV: &str = "FLOWERS_TEST_MINILM";

/// Where scripts/setup installed the model, as scripts/model-paths (the one place that knows
/// each package's layout) prints it, so a bare `cargo test` finds it too.
fn installed_model_dir() -> Option<PathBuf> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/model-paths");
    let output = std::process::Command::new(script)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let path = String::from_utf8(output.stdout)
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("minilm=").map(PathBuf::from))?;
    path.join("config.json").is_file().then_some(path)
}

fn model_dir() -> PathBuf {
    match std::env::var_os(MODEL_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => installed_model_dir().unwrap_or_else(|| panic!(
            "{MODEL_ENV} is not set and scripts/model-paths finds no all-MiniLM-L6-v2: these tests \
             need the real model. Run scripts/setup, which installs it (scripts/test sets {MODEL_ENV})"
        )),
    }
}

fn minilm() -> Arc<Embedder> {
    static MODEL: OnceLock<Arc<Embedder>> = OnceLock::new();
    MODEL
        .get_or_init(|| Arc::new(Embedder::load(&model_dir()).expect("load all-MiniLM-L6-v2")))
        .clone()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

fn assert_close(what: &str, got: f32, want: f32, tolerance: f32) {
    assert!(
        (got - want).abs() <= tolerance,
        "{what}: got {got}, want {want} ± {tolerance}"
    );
}

#[test]
fn reads_the_sentence_transformers_settings() {
    let model = minilm();
    assert_eq!(model.dimension(), 384);
    assert_eq!(model.pooling(), Pooling::Mean);
    assert!(model.normalizes(), "modules.json lists Normalize");
    // sentence_bert_config.json, not tokenizer.json's 128.
    assert_eq!(model.max_seq_length(), 256);
}

#[test]
fn matches_the_numpy_reference() {
    let model = minilm();
    let vectors = model
        .embed(&[
            "This is an example sentence",
            "Each sentence is converted",
            "That is a happy person",
            "That is a happy dog",
            "That is a very happy person",
            "Today is a sunny day",
        ])
        .unwrap();
    for (got, want) in vectors[0]
        .iter()
        .zip([0.067657, 0.063496, 0.048713, 0.079305, 0.037448])
    {
        assert_close("first components of sentence 1", *got, want, 1e-4);
    }
    for vector in &vectors {
        assert_eq!(vector.len(), 384);
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert_close("norm", norm, 1.0, 1e-5);
    }
    eprintln!(
        "measured: first5 {:?}; cosines card {:.6}, dog {:.6}, very {:.6}, sunny {:.6}",
        &vectors[0][..5],
        cosine(&vectors[0], &vectors[1]),
        cosine(&vectors[2], &vectors[3]),
        cosine(&vectors[2], &vectors[4]),
        cosine(&vectors[2], &vectors[5])
    );
    // NumPy gives 0.404559: the model card's pair. (Issue 5's 0.755 is not what this model gives.)
    assert_close(
        "card pair",
        cosine(&vectors[0], &vectors[1]),
        0.404559,
        1e-4,
    );
    assert_close(
        "happy dog",
        cosine(&vectors[2], &vectors[3]),
        0.694577,
        1e-4,
    );
    assert_close(
        "very happy",
        cosine(&vectors[2], &vectors[4]),
        0.942915,
        1e-4,
    );
    assert_close(
        "sunny day",
        cosine(&vectors[2], &vectors[5]),
        0.256876,
        1e-4,
    );
}

#[test]
fn batches_give_the_same_vectors_as_one_by_one() {
    let texts = [
        "short",
        "a somewhat longer sentence, with punctuation and more words in it",
        "",
        "That is a happy person",
        "Each sentence is converted",
    ];
    let one_by_one: Vec<Vec<f32>> = texts
        .iter()
        .map(|text| minilm().embed(&[text]).unwrap().remove(0))
        .collect();
    let all_at_once = minilm().embed(&texts).unwrap();
    let in_pairs = Embedder::load_with(
        &model_dir(),
        EmbedderOptions {
            max_batch_size: 2,
            ..EmbedderOptions::default()
        },
    )
    .unwrap()
    .embed(&texts)
    .unwrap();
    for batched in [&all_at_once, &in_pairs] {
        assert_eq!(batched.len(), texts.len());
        for (index, (got, want)) in batched.iter().zip(&one_by_one).enumerate() {
            for (g, w) in got.iter().zip(want) {
                assert_close(&format!("text {index}"), *g, *w, 1e-5);
            }
        }
    }
}

#[test]
fn an_empty_string_is_the_pooled_cls_sep() {
    let (vector, tokens) = {
        let embedded = minilm().embed_counting(&[""]).unwrap();
        (embedded.vectors[0].clone(), embedded.tokens)
    };
    assert_eq!(tokens, 2, "[CLS] [SEP]");
    // NumPy, ids [101, 102].
    for (got, want) in vector
        .iter()
        .zip([-0.118838, 0.048299, -0.002548, -0.011011, 0.051951])
    {
        assert_close("empty string", *got, want, 1e-4);
    }
}

#[test]
fn long_texts_are_truncated_at_max_seq_length() {
    let long = "word ".repeat(1000);
    let longer = "word ".repeat(2000);
    let embedded = minilm().embed_counting(&[&long, &longer]).unwrap();
    assert_eq!(embedded.tokens, 2 * 256);
    assert_eq!(embedded.vectors[0], embedded.vectors[1]);
}

#[test]
fn no_texts_is_an_error() {
    let error = minilm().embed(&[]).unwrap_err();
    assert!(matches!(error, Error::EmptyInput), "{error}");
}

/// A copy of the model directory made of links, with some files replaced or left out.
fn model_variant(skip: &[&str], replace: &[(&str, &str)]) -> tempfile::TempDir {
    let source = model_dir();
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        if skip.contains(&file) {
            continue;
        }
        let target = dir.path().join(file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        match replace.iter().find(|(name, _)| *name == file) {
            Some((_, text)) => std::fs::write(&target, text).unwrap(),
            None => std::os::unix::fs::symlink(source.join(file), &target).unwrap(),
        }
    }
    dir
}

fn load_error(dir: &Path) -> Error {
    match Embedder::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(error) => error,
    }
}

#[test]
fn a_missing_file_is_named() {
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "1_Pooling/config.json",
    ] {
        let dir = model_variant(&[file], &[]);
        let error = load_error(dir.path());
        assert!(
            matches!(&error, Error::MissingFile { file: named, .. } if *named == file),
            "{file}: {error}"
        );
        assert!(error.to_string().contains(file), "{error}");
    }
}

#[test]
fn a_model_that_is_not_bert_is_refused() {
    let dir = model_variant(&[], &[("config.json", r#"{"model_type": "llama"}"#)]);
    let error = load_error(dir.path());
    assert!(matches!(error, Error::NotBert { .. }), "{error}");
    assert!(error.to_string().contains("\"llama\""), "{error}");
    assert!(error.to_string().contains("BERT"), "{error}");
}

#[test]
fn broken_files_say_which_and_why() {
    let dir = model_variant(&[], &[("model.safetensors", "not safetensors")]);
    let error = load_error(dir.path());
    assert!(matches!(error, Error::InvalidFile { .. }), "{error}");
    assert!(error.to_string().contains("model.safetensors"), "{error}");

    let dir = model_variant(&[], &[("tokenizer.json", "{}")]);
    let error = load_error(dir.path());
    assert!(error.to_string().contains("tokenizer.json"), "{error}");

    let both = r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#;
    let dir = model_variant(&[], &[("1_Pooling/config.json", both)]);
    let error = load_error(dir.path());
    assert!(error.to_string().contains("exactly one"), "{error}");
}

#[test]
fn pooling_and_normalisation_follow_the_directory() {
    let texts = ["That is a happy person", "Each sentence is converted here"];
    let plain = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                    {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#;
    let mode = |name: &str| format!(r#"{{"pooling_mode_{name}": true}}"#);
    let load = |pooling: &str| {
        let dir = model_variant(
            &[],
            &[("modules.json", plain), ("1_Pooling/config.json", pooling)],
        );
        Embedder::load(dir.path()).unwrap()
    };
    let mean = load(&mode("mean_tokens"));
    assert!(!mean.normalizes());
    let mean_vectors = mean.embed(&texts).unwrap();
    // Without Normalize the vectors are the same directions, not unit length.
    for (raw, unit) in mean_vectors.iter().zip(minilm().embed(&texts).unwrap()) {
        let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() > 1e-2, "norm {norm}");
        for (r, u) in raw.iter().zip(&unit) {
            assert_close("direction", r / norm, *u, 1e-5);
        }
    }
    let max = load(&mode("max_tokens"));
    assert_eq!(max.pooling(), Pooling::Max);
    // The maximum over the real tokens is never below their mean, padding included in the batch.
    for (maxed, meaned) in max.embed(&texts).unwrap().iter().zip(&mean_vectors) {
        assert!(maxed.iter().zip(meaned).all(|(m, a)| m >= &(a - 1e-5)));
    }
    let cls = load(&mode("cls_token"));
    assert_eq!(cls.pooling(), Pooling::Cls);
    let cls_vectors = cls.embed(&texts).unwrap();
    // [CLS] of a text does not depend on the padding its batch-mate brings.
    let alone = cls.embed(&texts[..1]).unwrap();
    for (g, w) in cls_vectors[0].iter().zip(&alone[0]) {
        assert_close("cls", *g, *w, 1e-5);
    }
    assert!(cosine(&cls_vectors[0], &mean_vectors[0]) < 0.999);
}

mod http {
    use super::*;

    async fn serve(limits: HttpLimits) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = router_with_limits(minilm(), limits);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}/v1/embeddings")
    }

    async fn post(url: &str, body: String) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    fn assert_error(answer: &(u16, serde_json::Value), status: u16, code: &str, says: &str) {
        assert_eq!(answer.0, status, "{}", answer.1);
        assert_eq!(answer.1["code"], code, "{}", answer.1);
        let message = answer.1["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    }

    #[tokio::test]
    async fn answers_like_openai() {
        let url = serve(HttpLimits::default()).await;
        let (status, body) = post(
            &url,
            r#"{"input": ["This is an example sentence", "Each sentence is converted"],
                "model": "minilm", "encoding_format": "float", "user": "ignored"}"#
                .into(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["object"], "list");
        assert_eq!(body["model"], "minilm");
        // [101, 2023, 2003, 2019, 2742, 6251, 102] and [101, 2169, 6251, 2003, 4991, 102].
        assert_eq!(body["usage"]["prompt_tokens"], 13);
        assert_eq!(body["usage"]["total_tokens"], 13);
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        let expected = minilm()
            .embed(&["This is an example sentence", "Each sentence is converted"])
            .unwrap();
        for (index, item) in data.iter().enumerate() {
            assert_eq!(item["object"], "embedding");
            assert_eq!(item["index"], index);
            let got: Vec<f32> = serde_json::from_value(item["embedding"].clone()).unwrap();
            assert_eq!(got, expected[index]);
        }

        // base64, as the official clients ask by default: the same floats, little-endian.
        let (status, body) = post(
            &url,
            r#"{"input": ["This is an example sentence"], "encoding_format": "base64"}"#.into(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let text = body["data"][0]["embedding"]
            .as_str()
            .expect("a base64 string");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(decoded, expected[0]);

        let (status, body) = post(&url, r#"{"input": "That is a happy person"}"#.into()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"].as_array().unwrap().len(), 1);
        assert_eq!(body["usage"]["prompt_tokens"], 7);
    }

    #[tokio::test]
    async fn refuses_bad_requests_with_a_reason() {
        let url = serve(HttpLimits::default()).await;
        let int8 = r#"{"input": "x", "model": "m", "encoding_format": "int8"}"#;
        assert_error(
            &post(&url, int8.into()).await,
            400,
            "bad_request",
            "encoding_format \"int8\" is not supported",
        );
        assert_error(
            &post(&url, "{not json".into()).await,
            400,
            "bad_request",
            "input",
        );
        assert_error(
            &post(&url, r#"{"model": "m"}"#.into()).await,
            400,
            "bad_request",
            "input",
        );
        let empty = r#"{"input": [], "model": "m"}"#;
        assert_error(&post(&url, empty.into()).await, 400, "bad_request", "empty");
        let tokens = r#"{"input": [[101, 102]], "model": "m"}"#;
        assert_error(
            &post(&url, tokens.into()).await,
            400,
            "bad_request",
            "input[0]",
        );
        let dimensions = r#"{"input": "x", "dimensions": 128}"#;
        assert_error(
            &post(&url, dimensions.into()).await,
            400,
            "bad_request",
            "384",
        );
    }

    #[tokio::test]
    async fn refuses_oversized_requests_with_413() {
        let url = serve(HttpLimits {
            max_body_bytes: 1024,
            max_inputs: 3,
        })
        .await;
        let huge = format!(r#"{{"input": "{}", "model": "m"}}"#, "a".repeat(2000));
        assert_error(&post(&url, huge).await, 413, "too_large", "1024 bytes");
        let many = r#"{"input": ["a", "b", "c", "d"], "model": "m"}"#;
        assert_error(
            &post(&url, many.into()).await,
            413,
            "too_large",
            "at most 3",
        );
    }
}
