//! Retrieval quality on the labelled set in `eval/` (15 self-written documents, 71 questions),
//! with the real all-MiniLM-L6-v2: recall@5 and nDCG@10 for BM25, dense and hybrid, over all
//! questions and per kind. The table (and ingest speed) is printed; run with `--nocapture`.
//!
//! What is asserted: hybrid (relative score fusion) is not worse than BM25 or dense over all
//! questions, on both measures, and not worse than BM25 on any kind of question. The
//! paraphrase third is written to defeat BM25 (0.61 recall@5 against dense's 0.94); there
//! hybrid keeps dense's recall but may rank a BM25 favourite above the target, so its
//! paraphrase nDCG against dense is printed and recorded (docs/plans/rag.md), not asserted.
//! hybrid_rrf (reciprocal rank fusion) is scored alongside for the record: it loses to dense
//! overall on this set, which is why it is not the default.

#[path = "it/common.rs"]
mod common;

use std::path::Path;
use std::time::Instant;

use rag::eval::{evaluate_by_kind, format_table, load_questions, ModeScores};
use rag::{Library, LibraryOptions, Mode};

use common::MiniLm;

#[tokio::test]
async fn hybrid_is_not_worse_than_bm25_or_dense_alone() {
    let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("eval");
    let questions = load_questions(&set.join("questions.jsonl")).unwrap();
    assert!(questions.len() >= 50, "{} questions", questions.len());
    let embed = MiniLm::shared();
    let dir = tempfile::tempdir().unwrap();
    let library = Library::open(dir.path(), LibraryOptions::default()).unwrap();
    library.create_collection("eval").await.unwrap();

    let started = Instant::now();
    let report = library
        .ingest_folder("eval", &set.join("corpus"), embed.as_ref(), |_| {})
        .await
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(report.added, 15);
    println!(
        "ingest: {} documents, {} chunks in {seconds:.2} s ({:.1} documents/s, {:.1} chunks/s; \
         MiniLM on CPU in-process)",
        report.added,
        report.chunks_added,
        report.added as f64 / seconds,
        report.chunks_added as f64 / seconds
    );

    // Every target must exist in the corpus as labelled, or the scores would be meaningless.
    let documents = library.list_documents("eval").await.unwrap();
    for question in &questions {
        for target in &question.relevant {
            assert!(
                documents
                    .iter()
                    .any(|d| d.source.ends_with(&format!("/{}", target.doc))),
                "{}: no document {}",
                question.id,
                target.doc
            );
        }
    }

    let scores = evaluate_by_kind(
        &library,
        "eval",
        &questions,
        embed.as_ref(),
        &[Mode::Bm25, Mode::Dense, Mode::Hybrid, Mode::HybridRrf],
    )
    .await
    .unwrap();
    let table = format_table(&scores);
    println!("{table}");
    let get = |subset: &str, mode: Mode| -> &ModeScores {
        scores
            .iter()
            .find(|s| s.subset == subset && s.mode == mode)
            .unwrap_or_else(|| panic!("no {subset} {mode:?} row in\n{table}"))
    };
    // Not worse, to the third decimal the table prints.
    let at_least = |subset: &str, than: Mode| {
        let hybrid = get(subset, Mode::Hybrid);
        let other = get(subset, than);
        assert!(
            hybrid.recall_at_5 >= other.recall_at_5 - 0.0005
                && hybrid.ndcg_at_10 >= other.ndcg_at_10 - 0.0005,
            "{subset}: hybrid below {than:?}\n{table}"
        );
    };
    for subset in ["all", "keyword", "natural", "paraphrase"] {
        at_least(subset, Mode::Bm25);
    }
    at_least("all", Mode::Dense);
    // A floor only a working pipeline reaches (measured 0.979; a random ranking is near 0.1).
    assert!(get("all", Mode::Hybrid).recall_at_5 > 0.9, "{table}");
}
