//! Shared by the integration tests: the real all-MiniLM-L6-v2 as an [`rag::Embed`], a
//! stand-in embedder for tests where vectors do not matter, and servers on loopback.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use futures::future::BoxFuture;

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

pub fn model_dir() -> PathBuf {
    match std::env::var_os(MODEL_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => installed_model_dir().unwrap_or_else(|| {
            panic!(
                "{MODEL_ENV} is not set and scripts/model-paths finds no all-MiniLM-L6-v2: these \
                 tests need the real model. Run scripts/setup, which installs it (scripts/test \
                 sets {MODEL_ENV})"
            )
        }),
    }
}

/// The real all-MiniLM-L6-v2, in-process, as the library's embedder.
pub struct MiniLm(Arc<engines::embed::Embedder>);

impl MiniLm {
    /// Loaded once per test binary.
    pub fn shared() -> Arc<MiniLm> {
        static MODEL: OnceLock<Arc<MiniLm>> = OnceLock::new();
        MODEL
            .get_or_init(|| {
                let embedder =
                    engines::embed::Embedder::load(&model_dir()).expect("load all-MiniLM-L6-v2");
                Arc::new(MiniLm(Arc::new(embedder)))
            })
            .clone()
    }
}

impl MiniLm {
    pub fn embedder(&self) -> Arc<engines::embed::Embedder> {
        self.0.clone()
    }
}

impl rag::Embed for MiniLm {
    fn model(&self) -> &str {
        self.0.name()
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, rag::Result<Vec<Vec<f32>>>> {
        let embedder = self.0.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                embedder
                    .embed(&texts)
                    .map_err(|error| rag::Error::Embed(error.to_string()))
            })
            .await
            .map_err(|error| rag::Error::Embed(error.to_string()))?
        })
    }
}

/// STAND-IN embedder (not a model): a hashed bag of words in 64 dimensions. For tests where
/// what the vectors mean does not matter (crash safety).
pub struct StandInEmbedder;

impl rag::Embed for StandInEmbedder {
    fn model(&self) -> &str {
        "stand-in-bag-of-words"
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, rag::Result<Vec<Vec<f32>>>> {
        Box::pin(async move {
            Ok(texts
                .iter()
                .map(|text| {
                    let mut vector = vec![0.0; 64];
                    for word in text.split_whitespace() {
                        let mut hasher = DefaultHasher::new();
                        word.to_lowercase().hash(&mut hasher);
                        vector[(hasher.finish() % 64) as usize] += 1.0;
                    }
                    vector
                })
                .collect())
        })
    }
}

/// Serves `router` on a free loopback port; returns its base URL.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{address}")
}
