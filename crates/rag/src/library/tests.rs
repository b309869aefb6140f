//! Library tests with a stand-in embedder (a hashed bag of words, not a model): these check
//! storage, visibility, repair, digests and folders, where what the vectors mean does not
//! matter. Retrieval quality is tested with the real MiniLM in `tests/`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use super::*;

/// STAND-IN embedder: each lower-cased word adds 1 to one of 64 buckets. Deterministic and
/// instant; shared words mean similar vectors, which is all these tests need.
pub(crate) struct StandInEmbedder {
    pub name: String,
    pub dimension: usize,
}

impl StandInEmbedder {
    pub(crate) fn new() -> StandInEmbedder {
        StandInEmbedder {
            name: "stand-in-bag-of-words".to_string(),
            dimension: 64,
        }
    }
}

impl Embed for StandInEmbedder {
    fn model(&self) -> &str {
        &self.name
    }
    fn embed(&self, texts: Vec<String>) -> futures::future::BoxFuture<'_, Result<Vec<Vec<f32>>>> {
        let dimension = self.dimension;
        Box::pin(async move {
            Ok(texts
                .iter()
                .map(|text| {
                    let mut vector = vec![0.0; dimension];
                    for word in text
                        .split(|c: char| !c.is_alphanumeric())
                        .filter(|w| !w.is_empty())
                    {
                        let mut hasher = DefaultHasher::new();
                        word.to_lowercase().hash(&mut hasher);
                        vector[(hasher.finish() % dimension as u64) as usize] += 1.0;
                    }
                    vector
                })
                .collect())
        })
    }
}

fn open(dir: &Path) -> Library {
    Library::open(dir, LibraryOptions::default()).unwrap()
}

fn search_request(collection: &str, query: &str, mode: Mode) -> SearchRequest {
    SearchRequest {
        collection: collection.to_string(),
        query: query.to_string(),
        k: 10,
        mode,
        filters: Filters::default(),
    }
}

/// The documents BM25 finds for `query`: a check of what is visible (dense search always
/// returns its nearest chunks, whatever they say).
async fn sources(library: &Library, collection: &str, query: &str) -> Vec<String> {
    library
        .search(&search_request(collection, query, Mode::Bm25), None)
        .await
        .unwrap()
        .into_iter()
        .map(|hit| hit.document)
        .collect()
}

#[tokio::test]
async fn collections_are_created_listed_and_deleted_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    let created = library.create_collection("docs").await.unwrap();
    assert_eq!(created.documents, 0);
    assert_eq!(created.embedding_model, None);
    let error = library.create_collection("docs").await.unwrap_err();
    assert!(matches!(error, Error::CollectionExists(_)), "{error}");
    for bad in ["", "-x", "a b", "é", &"x".repeat(65), "../etc"] {
        let error = library.create_collection(bad).await.unwrap_err();
        assert!(
            matches!(error, Error::InvalidName { .. }),
            "{bad:?}: {error}"
        );
    }
    library.create_collection("a.b_c-1").await.unwrap();
    let names: Vec<String> = library
        .list_collections()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, vec!["a.b_c-1", "docs"]);
    library.delete_collection("docs").await.unwrap();
    let error = library.delete_collection("docs").await.unwrap_err();
    assert!(matches!(error, Error::UnknownCollection(_)), "{error}");
    assert!(error.to_string().contains("\"docs\""), "{error}");
}

#[tokio::test]
async fn ingest_adds_skips_unchanged_and_replaces_changed_documents() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    let embed = StandInEmbedder::new();
    library.create_collection("docs").await.unwrap();
    let first = library
        .ingest_bytes(
            "docs",
            "llamas.md",
            b"# Llamas\n\nLlamas hum softly.".to_vec(),
            &embed,
        )
        .await
        .unwrap();
    assert_eq!(first.status, IngestStatus::Added);
    assert_eq!(first.title, "Llamas");
    let again = library
        .ingest_bytes(
            "docs",
            "llamas.md",
            b"# Llamas\n\nLlamas hum softly.".to_vec(),
            &embed,
        )
        .await
        .unwrap();
    assert_eq!(again.status, IngestStatus::Unchanged);
    assert_eq!(again.document_id, first.document_id);

    let changed = library
        .ingest_bytes(
            "docs",
            "llamas.md",
            b"# Alpacas\n\nAlpacas graze on grass.".to_vec(),
            &embed,
        )
        .await
        .unwrap();
    assert_eq!(changed.status, IngestStatus::Replaced);
    assert_ne!(changed.document_id, first.document_id);
    assert_eq!(
        sources(&library, "docs", "alpacas graze").await,
        vec!["llamas.md"]
    );
    // The old version's text is gone from both rankings.
    let hits = library
        .search(
            &search_request("docs", "hum softly", Mode::Bm25),
            Some(&embed),
        )
        .await
        .unwrap();
    assert!(hits.is_empty(), "{hits:?}");
    let documents = library.list_documents("docs").await.unwrap();
    assert_eq!(documents.len(), 1);
    assert_eq!(documents[0].title, "Alpacas");
    assert_eq!(documents[0].origin, Origin::Upload);
    assert_eq!(library.verify().await.unwrap(), Vec::<String>::new());
    let collection = &library.list_collections().await.unwrap()[0];
    assert_eq!(
        collection.embedding_model.as_deref(),
        Some("stand-in-bag-of-words")
    );
    assert_eq!(collection.embedding_dimension, Some(64));
}

#[tokio::test]
async fn bad_uploads_are_errors_that_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    let embed = StandInEmbedder::new();
    library.create_collection("docs").await.unwrap();
    library
        .ingest_bytes("docs", "keep.txt", b"kept text".to_vec(), &embed)
        .await
        .unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "image.png",
            b"\x89PNG".to_vec(),
            "unsupported file type .png",
        ),
        ("empty.txt", b"   \n".to_vec(), "empty document"),
        ("bin.txt", b"a\0b".to_vec(), "NUL byte"),
        (
            "bad.pdf",
            b"%PDF-1.4 garbage".to_vec(),
            "unsupported or corrupt PDF",
        ),
    ];
    for (name, bytes, expected) in cases {
        let error = library
            .ingest_bytes("docs", name, bytes, &embed)
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(name) && message.contains(expected),
            "{message}"
        );
        assert!(error.is_per_document());
    }
    let error = library
        .ingest_bytes("nope", "a.txt", b"x".to_vec(), &embed)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::UnknownCollection(_)), "{error}");
    let error = library
        .ingest_bytes("docs", "bad\nname.txt", b"x".to_vec(), &embed)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidRequest(_)), "{error}");
    let documents = library.list_documents("docs").await.unwrap();
    assert_eq!(documents.len(), 1);
    assert_eq!(library.verify().await.unwrap(), Vec::<String>::new());

    let small = tempfile::tempdir().unwrap();
    let library = Library::open(
        small.path(),
        LibraryOptions {
            extract: ExtractOptions { max_file_bytes: 10 },
            ..LibraryOptions::default()
        },
    )
    .unwrap();
    library.create_collection("docs").await.unwrap();
    let error = library
        .ingest_bytes("docs", "big.txt", vec![b'a'; 11], &embed)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("over the limit of 10 bytes"),
        "{error}"
    );
}

/// The stand-in, answering as version `version` of its model (as a Flowers engine says).
struct Versioned {
    inner: StandInEmbedder,
    version: Option<&'static str>,
}

impl Embed for Versioned {
    fn model(&self) -> &str {
        self.inner.model()
    }
    fn embed(&self, texts: Vec<String>) -> futures::future::BoxFuture<'_, Result<Vec<Vec<f32>>>> {
        self.inner.embed(texts)
    }
    fn embed_versioned(
        &self,
        texts: Vec<String>,
    ) -> futures::future::BoxFuture<'_, Result<Embedded>> {
        Box::pin(async move {
            Ok(Embedded {
                vectors: self.inner.embed(texts).await?,
                version: self.version.map(str::to_string),
            })
        })
    }
}

#[tokio::test]
async fn a_collection_refuses_another_version_of_its_embedding_model() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    library.create_collection("docs").await.unwrap();
    let version = |version| Versioned {
        inner: StandInEmbedder::new(),
        version,
    };
    library
        .ingest_bytes("docs", "a.txt", b"alpha".to_vec(), &version(Some("1")))
        .await
        .unwrap();
    let [collection] = library
        .list_collections()
        .await
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(collection.embedding_version.as_deref(), Some("1"));

    // Version 2 was promoted: its vectors would not compare with version 1's.
    let error = library
        .ingest_bytes("docs", "b.txt", b"beta".to_vec(), &version(Some("2")))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::EmbeddingVersionMismatch { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains(
            "collection \"docs\" was embedded with version 1 of \"stand-in-bag-of-words\", \
             but the embedding engine now serves version 2"
        ),
        "{error}"
    );
    for mode in [Mode::Dense, Mode::Hybrid] {
        let error = library
            .search(
                &search_request("docs", "alpha", mode),
                Some(&version(Some("2"))),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::EmbeddingVersionMismatch { .. }),
            "{error}"
        );
    }
    // BM25 needs no vectors; version 1 (promoted again) and a server that does not say
    // its version are both accepted.
    let hits = library
        .search(
            &search_request("docs", "alpha", Mode::Bm25),
            Some(&version(Some("2"))),
        )
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    for accepted in [Some("1"), None] {
        library
            .search(
                &search_request("docs", "alpha", Mode::Dense),
                Some(&version(accepted)),
            )
            .await
            .unwrap();
    }
    library
        .ingest_bytes("docs", "c.txt", b"gamma".to_vec(), &version(None))
        .await
        .unwrap();
    let documents = library.list_documents("docs").await.unwrap();
    assert_eq!(documents.len(), 2, "{documents:?}");
    assert!(documents.iter().all(|d| d.source != "b.txt"));
}

#[test]
fn hits_are_read_by_chunk_id_not_by_walking_the_collection() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    let db = lock(&library.inner.reader);
    let plan: Vec<String> = db
        .prepare(&format!("EXPLAIN QUERY PLAN {}", visible_chunks_sql(1, 3)))
        .unwrap()
        .query_map([1, 2, 3], |row| row.get::<_, String>(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(
        plan,
        vec![
            "SEARCH c USING INTEGER PRIMARY KEY (rowid=?)",
            "SEARCH d USING INTEGER PRIMARY KEY (rowid=?)"
        ]
    );
}

#[tokio::test]
async fn a_collection_refuses_a_second_embedding_model() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    library.create_collection("docs").await.unwrap();
    library
        .ingest_bytes("docs", "a.txt", b"alpha".to_vec(), &StandInEmbedder::new())
        .await
        .unwrap();
    let other_name = StandInEmbedder {
        name: "other-model".to_string(),
        dimension: 64,
    };
    let error = library
        .ingest_bytes("docs", "b.txt", b"beta".to_vec(), &other_name)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("\"other-model\""), "{error}");
    assert!(
        error
            .to_string()
            .contains("\"stand-in-bag-of-words\" (64 dimensions)"),
        "{error}"
    );
    let error = library
        .search(
            &search_request("docs", "alpha", Mode::Dense),
            Some(&other_name),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::EmbeddingMismatch { .. }), "{error}");
    // Same name, another dimension: refused after embedding.
    let other_dimension = StandInEmbedder {
        name: "stand-in-bag-of-words".to_string(),
        dimension: 32,
    };
    let error = library
        .ingest_bytes("docs", "c.txt", b"gamma".to_vec(), &other_dimension)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("(32 dimensions)"), "{error}");
    assert_eq!(library.list_documents("docs").await.unwrap().len(), 1);
}

#[tokio::test]
async fn search_validates_its_request_and_applies_filters() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    let embed = StandInEmbedder::new();
    library.create_collection("docs").await.unwrap();
    library
        .ingest_bytes(
            "docs",
            "guides/a.md",
            b"# Pumps\n\nThe pump moves water.".to_vec(),
            &embed,
        )
        .await
        .unwrap();
    library
        .ingest_bytes(
            "docs",
            "notes/b.txt",
            b"A pump needs power.".to_vec(),
            &embed,
        )
        .await
        .unwrap();
    for mode in [Mode::Bm25, Mode::Dense, Mode::Hybrid, Mode::HybridRrf] {
        let hits = library
            .search(&search_request("docs", "pump", mode), Some(&embed))
            .await
            .unwrap();
        assert_eq!(hits.len(), 2, "{mode:?}: {hits:?}");
        for hit in &hits {
            match mode {
                Mode::Bm25 => assert!(hit.bm25_rank.is_some() && hit.dense_rank.is_none()),
                Mode::Dense => assert!(hit.dense_rank.is_some() && hit.bm25_rank.is_none()),
                Mode::Hybrid | Mode::HybridRrf => {
                    assert!(hit.bm25_rank.is_some() && hit.dense_rank.is_some())
                }
            }
        }
    }
    let mut request = search_request("docs", "pump", Mode::Hybrid);
    request.filters.kind = Some(Kind::Text);
    let hits = library.search(&request, Some(&embed)).await.unwrap();
    assert_eq!(
        hits.iter().map(|h| h.document.as_str()).collect::<Vec<_>>(),
        vec!["notes/b.txt"]
    );
    request.filters = Filters {
        source_prefix: Some("guides/".into()),
        ..Filters::default()
    };
    let hits = library.search(&request, Some(&embed)).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].location.heading_path, vec!["Pumps".to_string()]);
    assert_eq!(hits[0].location_label, "Pumps");
    request.filters = Filters {
        document_ids: Some(vec![]),
        ..Filters::default()
    };
    assert!(library
        .search(&request, Some(&embed))
        .await
        .unwrap()
        .is_empty());

    // Query syntax is just text.
    for query in ["pump AND (", "title:pump", "\"unclosed", "-pump +", "***"] {
        library
            .search(&search_request("docs", query, Mode::Bm25), None)
            .await
            .unwrap();
    }
    let error = library
        .search(&search_request("docs", "  ", Mode::Bm25), None)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidRequest(_)), "{error}");
    let mut request = search_request("docs", "pump", Mode::Bm25);
    request.k = MAX_K + 1;
    let error = library.search(&request, None).await.unwrap_err();
    assert!(error.to_string().contains("1 to 100"), "{error}");
    let error = library
        .search(&search_request("nope", "pump", Mode::Bm25), None)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::UnknownCollection(_)), "{error}");
    let error = library
        .search(&search_request("docs", "pump", Mode::Dense), None)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("embedding engine"), "{error}");
}

/// The ingest writes in three steps; a process killed between any two must come back with
/// the old state visible and nothing of the new one, and a later ingest must work.
#[tokio::test]
async fn every_crash_window_of_an_ingest_is_repaired_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let embed = StandInEmbedder::new();
    {
        let library = open(dir.path());
        library.create_collection("docs").await.unwrap();
        library
            .ingest_bytes("docs", "a.txt", b"old apple text".to_vec(), &embed)
            .await
            .unwrap();
    }
    for window in 0..3 {
        {
            let library = open(dir.path());
            let inner = &library.inner;
            let collection = inner.collection("docs").unwrap();
            let old = inner
                .visible_document(collection.id, "a.txt")
                .unwrap()
                .unwrap()
                .0;
            let chunks = vec![Chunk {
                ordinal: 0,
                text: format!("new banana text {window}"),
                heading_path: vec![],
                page: None,
                char_range: 0..17,
                byte_range: 0..17,
            }];
            let vectors = embed.embed(vec![chunks[0].text.clone()]).await.unwrap();
            let prepared = Prepared {
                title: "a.txt".into(),
                kind: Kind::Text,
                digest: format!("digest {window}"),
                size_bytes: 17,
                chunks,
                vectors,
                embedding_version: None,
            };
            let source = Source {
                source: "a.txt".into(),
                origin: Origin::Upload,
                folder_root: None,
            };
            // Window 0: rows written hidden. 1: also in the index. 2: visible, but the old
            // version's index entries not yet deleted.
            let (doc_id, chunk_ids) = inner
                .insert_hidden(&collection, &source, &prepared, &embed.name)
                .unwrap();
            if window >= 1 {
                let indexed = IndexedDocument {
                    doc_id,
                    kind: "text",
                    chunks: chunk_ids
                        .iter()
                        .map(|&chunk_id| IndexedChunk {
                            chunk_id,
                            body: &prepared.chunks[0].text,
                        })
                        .collect(),
                };
                inner
                    .index
                    .add_documents(collection.id, &[indexed])
                    .unwrap();
            }
            if window >= 2 {
                inner.make_visible(&[(doc_id, Some(old))]).unwrap();
            }
            // Before a repair, the hidden document is invisible to search all the same.
            let visible = sources(&library, "docs", "banana").await;
            assert_eq!(
                visible.is_empty(),
                window < 2,
                "window {window}: {visible:?}"
            );
        }
        let library = open(dir.path());
        assert_eq!(
            library.verify().await.unwrap(),
            Vec::<String>::new(),
            "window {window}"
        );
        let documents = library.list_documents("docs").await.unwrap();
        assert_eq!(documents.len(), 1, "window {window}");
        let expect_new = window >= 2;
        assert_eq!(
            !sources(&library, "docs", "banana").await.is_empty(),
            expect_new,
            "window {window}"
        );
        assert_eq!(
            !sources(&library, "docs", "apple").await.is_empty(),
            !expect_new,
            "window {window}"
        );
        if expect_new {
            // Put the old text back for the next round.
            library
                .ingest_bytes("docs", "a.txt", b"old apple text".to_vec(), &embed)
                .await
                .unwrap();
        }
    }
}

#[cfg(unix)]
#[tokio::test]
async fn folders_are_walked_synced_and_reported() {
    let data = tempfile::tempdir().unwrap();
    let library = open(data.path());
    let embed = StandInEmbedder::new();
    library.create_collection("docs").await.unwrap();
    let folder = tempfile::tempdir().unwrap();
    let root = folder.path();
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::write(root.join("a.md"), "# A\n\nAbout apples.").unwrap();
    std::fs::write(root.join("sub/b.txt"), "Bananas are yellow.").unwrap();
    std::fs::write(root.join("sub/deeper/c.html"), "<h1>C</h1><p>Cherries.</p>").unwrap();
    std::fs::write(root.join(".hidden.md"), "secret").unwrap();
    std::fs::write(root.join(".git/config"), "secret").unwrap();
    std::fs::write(root.join("photo.png"), b"\x89PNG\r\n").unwrap();
    std::os::unix::fs::symlink(root, root.join("sub/loop")).unwrap();

    let mut events = Vec::new();
    let report = library
        .ingest_folder("docs", root, &embed, |event| events.push(event))
        .await
        .unwrap();
    assert_eq!(report.files_total, 4, "{report:?}");
    assert_eq!(
        (report.added, report.unchanged, report.failed),
        (3, 0, 2),
        "{report:?}"
    );
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.file.ends_with("photo.png")
                && e.message.contains("unsupported file type .png")),
        "{report:?}"
    );
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.message.contains("symbolic link loop")),
        "{report:?}"
    );
    assert!(
        matches!(&events[0], IngestEvent::Started { files_total: 4, .. }),
        "{events:?}"
    );
    let last_progress = events
        .iter()
        .rev()
        .filter_map(|e| match e {
            IngestEvent::Progress {
                files_done,
                files_total,
                chunks,
                ..
            } => Some((*files_done, *files_total, *chunks)),
            _ => None,
        })
        .next()
        .unwrap();
    assert_eq!(last_progress, (4, 4, report.chunks_added));

    // Again: everything unchanged. Then change one, delete one, and ingest again.
    let report = library
        .ingest_folder("docs", root, &embed, |_| {})
        .await
        .unwrap();
    assert_eq!(
        (report.added, report.unchanged, report.deleted),
        (0, 3, 0),
        "{report:?}"
    );
    std::fs::write(root.join("a.md"), "# A\n\nAbout apricots now.").unwrap();
    std::fs::remove_file(root.join("sub/b.txt")).unwrap();
    // A document from elsewhere must survive the sync of this folder.
    library
        .ingest_bytes("docs", "upload.txt", b"Uploaded dates.".to_vec(), &embed)
        .await
        .unwrap();
    let mut deleted = Vec::new();
    let report = library
        .ingest_folder("docs", root, &embed, |event| {
            if let IngestEvent::Deleted { source } = event {
                deleted.push(source);
            }
        })
        .await
        .unwrap();
    assert_eq!(
        (
            report.added,
            report.replaced,
            report.unchanged,
            report.deleted
        ),
        (0, 1, 1, 1),
        "{report:?}"
    );
    assert!(deleted[0].ends_with("sub/b.txt"), "{deleted:?}");
    let mut titles: Vec<String> = library
        .list_documents("docs")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.title)
        .collect();
    titles.sort();
    assert_eq!(titles, vec!["A", "C", "upload.txt"]);
    assert!(sources(&library, "docs", "bananas").await.is_empty());
    assert_eq!(library.verify().await.unwrap(), Vec::<String>::new());

    // A folder that is not there (an unplugged drive) is an error and deletes nothing.
    let error = library
        .ingest_folder("docs", &root.join("missing"), &embed, |_| {})
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("is the drive mounted?"),
        "{error}"
    );
    let error = library
        .ingest_folder("docs", &root.join("a.md"), &embed, |_| {})
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not a folder"), "{error}");
    assert_eq!(library.list_documents("docs").await.unwrap().len(), 3);
}

#[tokio::test]
async fn documents_are_deleted_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    let embed = StandInEmbedder::new();
    library.create_collection("docs").await.unwrap();
    let outcome = library
        .ingest_bytes("docs", "a.txt", b"removable words".to_vec(), &embed)
        .await
        .unwrap();
    let error = library
        .delete_document("docs", outcome.document_id + 100)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::UnknownDocument { .. }), "{error}");
    // Load the dense cache first, so the deletion must update it.
    assert_eq!(sources(&library, "docs", "removable").await.len(), 1);
    library
        .delete_document("docs", outcome.document_id)
        .await
        .unwrap();
    assert!(sources(&library, "docs", "removable").await.is_empty());
    assert_eq!(library.verify().await.unwrap(), Vec::<String>::new());
}

#[test]
fn a_second_process_on_the_same_directory_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let error = Library::open(dir.path(), LibraryOptions::default())
        .err()
        .unwrap();
    assert!(error.to_string().contains("writer lock"), "{error}");
}
