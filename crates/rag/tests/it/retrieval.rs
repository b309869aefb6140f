//! Retrieval with the real all-MiniLM-L6-v2: what dense vectors add to BM25, and the HTTP
//! embeddings client against the real embedding engine.

use std::sync::Arc;

use rag::{Embed, Filters, Library, LibraryOptions, Mode, OpenAiEmbeddings, SearchRequest};

use crate::common::{serve, MiniLm};

fn request(query: &str, mode: Mode) -> SearchRequest {
    SearchRequest {
        collection: "docs".into(),
        query: query.into(),
        k: 5,
        mode,
        filters: Filters::default(),
    }
}

#[tokio::test]
async fn dense_search_finds_a_paraphrase_that_bm25_misses_and_hybrid_keeps_both() {
    let dir = tempfile::tempdir().unwrap();
    let library = Library::open(dir.path(), LibraryOptions::default()).unwrap();
    let embed = MiniLm::shared();
    library.create_collection("docs").await.unwrap();
    let documents = [
        (
            "pets.md",
            "# Cats\n\nFelines sleep for sixteen hours every day, mostly in the sun.",
        ),
        (
            "cars.md",
            "# Engines\n\nChange the motor oil every ten thousand kilometres.",
        ),
        (
            "garden.md",
            "# Tomatoes\n\nWater tomato plants deeply twice a week in summer.",
        ),
    ];
    for (name, text) in documents {
        library
            .ingest_bytes("docs", name, text.as_bytes().to_vec(), embed.as_ref())
            .await
            .unwrap();
    }
    let query = "how long do kittens nap";
    let bm25 = library
        .search(&request(query, Mode::Bm25), Some(embed.as_ref()))
        .await
        .unwrap();
    assert!(
        bm25.is_empty(),
        "no word in common, yet BM25 found {bm25:?}"
    );
    let dense = library
        .search(&request(query, Mode::Dense), Some(embed.as_ref()))
        .await
        .unwrap();
    assert_eq!(dense[0].document, "pets.md", "{dense:?}");
    assert!(dense[0].score > dense[1].score);
    let hybrid = library
        .search(&request(query, Mode::Hybrid), Some(embed.as_ref()))
        .await
        .unwrap();
    assert_eq!(hybrid[0].document, "pets.md", "{hybrid:?}");
    assert_eq!(hybrid[0].dense_rank, Some(1));

    // A keyword query: both rankings agree, and fusion puts the document first.
    let hybrid = library
        .search(&request("motor oil", Mode::Hybrid), Some(embed.as_ref()))
        .await
        .unwrap();
    assert_eq!(hybrid[0].document, "cars.md");
    assert_eq!(
        (hybrid[0].bm25_rank, hybrid[0].dense_rank),
        (Some(1), Some(1))
    );
    // First in both lists: 1 from each normalised list, weighted 0.75 + 0.25.
    assert!((hybrid[0].score - 1.0).abs() < 1e-6, "{}", hybrid[0].score);
    let rrf = library
        .search(&request("motor oil", Mode::HybridRrf), Some(embed.as_ref()))
        .await
        .unwrap();
    assert_eq!(rrf[0].document, "cars.md");
    assert!((rrf[0].score - 2.0 / 61.0).abs() < 1e-6, "{}", rrf[0].score);
}

#[tokio::test]
async fn the_http_embeddings_client_matches_the_real_engine_in_process() {
    let model = MiniLm::shared();
    let base = serve(engines::embed::router(model.embedder())).await;
    let client = OpenAiEmbeddings::new(base, model.model());
    let texts = vec!["This is an example sentence".to_string(), "".to_string()];
    let over_http = client.embed(texts.clone()).await.unwrap();
    let in_process = model.embed(texts).await.unwrap();
    assert_eq!(over_http.len(), 2);
    for (a, b) in over_http.iter().zip(&in_process) {
        assert_eq!(a.len(), 384);
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5);
        }
    }
    // The engine's own error, relayed with its reason.
    let error = client.embed(Vec::new()).await.unwrap_err();
    assert!(error.to_string().contains("400"), "{error}");

    // Nothing listening: a clear "cannot reach" naming the URL.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let dead = OpenAiEmbeddings::new(format!("http://127.0.0.1:{port}"), "m");
    let error = dead.embed(vec!["x".into()]).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("cannot reach") && message.contains(&port.to_string()),
        "{message}"
    );
    let _keep: Arc<MiniLm> = model;
}

/// STAND-IN embeddings servers that answer wrongly: the client must say what is wrong.
#[tokio::test]
async fn broken_embedding_answers_are_clear_errors() {
    use axum::routing::post;
    use serde_json::json;
    let cases = [
        ("not json", "not an embeddings response"),
        (
            r#"{"data": [{"index": 0, "embedding": [1.0]}]}"#,
            "no vector for input 1",
        ),
        (
            r#"{"data": [{"index": 7, "embedding": [1.0]}]}"#,
            "answered index 7 for 2 inputs",
        ),
    ];
    for (body, needle) in cases {
        let app = axum::Router::new().route("/v1/embeddings", post(move || async move { body }));
        let client = OpenAiEmbeddings::new(serve(app).await, "m");
        let error = client
            .embed(vec!["a".into(), "b".into()])
            .await
            .unwrap_err();
        assert!(error.to_string().contains(needle), "{needle}: {error}");
    }
    // Vectors of different lengths are refused by the library before anything is written.
    let app = axum::Router::new().route(
        "/v1/embeddings",
        post(|| async {
            axum::Json(json!({"data": [{"index": 0, "embedding": [1.0, 0.0]}, {"index": 1, "embedding": [1.0]}]}))
        }),
    );
    let client = OpenAiEmbeddings::new(serve(app).await, "m");
    let dir = tempfile::tempdir().unwrap();
    let library = Library::open(dir.path(), LibraryOptions::default()).unwrap();
    library.create_collection("docs").await.unwrap();
    let text = "# A\n\none\n\n# B\n\ntwo\n";
    let error = library
        .ingest_bytes("docs", "a.md", text.as_bytes().to_vec(), &client)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("different lengths"), "{error}");
    assert!(library.list_documents("docs").await.unwrap().is_empty());
    assert!(library.list_collections().await.unwrap()[0]
        .embedding_model
        .is_none());
}
