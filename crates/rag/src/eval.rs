//! Retrieval evaluation: recall@5 and nDCG@10 of each search mode over a labelled question
//! set (`eval/questions.jsonl` in this crate: a self-written corpus and 71 questions). Public
//! so that the binary's bench prints the same table as the test.
//!
//! Relevance is binary. A retrieved chunk is relevant to a target `{doc, section}` when its
//! document's file name is `doc` and, if a section is given, its heading path contains a
//! heading equal to `section`. Each target is counted once: a second chunk of an already found
//! target gains nothing (so a document cut into many chunks cannot inflate the scores).

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::embed::Embed;
use crate::library::Library;
use crate::search::{Filters, Hit, Mode, SearchRequest};
use crate::{Error, Result};

/// One labelled question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalQuestion {
    pub id: String,
    pub question: String,
    /// `keyword`, `paraphrase` or `natural`; informative only.
    #[serde(default)]
    pub kind: Option<String>,
    pub relevant: Vec<EvalTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalTarget {
    /// A file name in the corpus.
    pub doc: String,
    /// A heading of that document; absent: any chunk of it.
    #[serde(default)]
    pub section: Option<String>,
}

/// The scores of one mode over a subset of the questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeScores {
    /// `all`, or a question kind (`keyword`, `paraphrase`, `natural`).
    pub subset: String,
    pub mode: Mode,
    pub questions: usize,
    /// Mean over questions of the share of targets found in the top 5.
    pub recall_at_5: f64,
    /// Mean over questions of binary nDCG over the top 10.
    pub ndcg_at_10: f64,
    /// Search latency over the questions, milliseconds (the query's embedding included).
    pub latency_p50_ms: f64,
    pub latency_max_ms: f64,
}

/// Reads a `questions.jsonl`, saying which line is wrong.
pub fn load_questions(path: &Path) -> Result<Vec<EvalQuestion>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let question: EvalQuestion = serde_json::from_str(line).map_err(|error| {
                Error::InvalidRequest(format!("{}:{}: {error}", path.display(), index + 1))
            })?;
            if question.relevant.is_empty() {
                return Err(Error::InvalidRequest(format!(
                    "{}:{}: question {} has no relevant target",
                    path.display(),
                    index + 1,
                    question.id
                )));
            }
            Ok(question)
        })
        .collect()
}

/// Whether `hit` is relevant to `target` (see the module doc).
pub fn is_relevant(hit: &Hit, target: &EvalTarget) -> bool {
    let file_name = Path::new(&hit.document)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    file_name == target.doc
        && target
            .section
            .as_ref()
            .is_none_or(|section| hit.location.heading_path.iter().any(|h| h == section))
}

/// recall@k and binary nDCG@k of one ranked list, each target counted once.
pub fn score_question(
    hits: &[Hit],
    targets: &[EvalTarget],
    recall_k: usize,
    ndcg_k: usize,
) -> (f64, f64) {
    let mut found = vec![false; targets.len()];
    let mut found_in_recall_window = 0;
    let mut dcg = 0.0;
    for (rank, hit) in hits.iter().take(recall_k.max(ndcg_k)).enumerate() {
        let Some(target) = (0..targets.len()).find(|&t| !found[t] && is_relevant(hit, &targets[t]))
        else {
            continue;
        };
        found[target] = true;
        if rank < recall_k {
            found_in_recall_window += 1;
        }
        if rank < ndcg_k {
            dcg += 1.0 / ((rank + 2) as f64).log2();
        }
    }
    let ideal: f64 = (0..targets.len().min(ndcg_k))
        .map(|rank| 1.0 / ((rank + 2) as f64).log2())
        .sum();
    let recall = found_in_recall_window as f64 / targets.len() as f64;
    let ndcg = if ideal > 0.0 { dcg / ideal } else { 0.0 };
    (recall, ndcg)
}

/// [`evaluate`] over all the questions, then over each kind of question separately: the
/// kinds tell different stories (BM25 fails paraphrases by design), which one mean hides.
pub async fn evaluate_by_kind(
    library: &Library,
    collection: &str,
    questions: &[EvalQuestion],
    embed: &dyn Embed,
    modes: &[Mode],
) -> Result<Vec<ModeScores>> {
    let mut out = evaluate(library, collection, questions, embed, modes, "all").await?;
    let mut kinds: Vec<&str> = questions.iter().filter_map(|q| q.kind.as_deref()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    for kind in kinds {
        let subset: Vec<EvalQuestion> = questions
            .iter()
            .filter(|q| q.kind.as_deref() == Some(kind))
            .cloned()
            .collect();
        out.extend(evaluate(library, collection, &subset, embed, modes, kind).await?);
    }
    Ok(out)
}

/// Runs every question in each mode against `collection` and scores the rankings; `subset`
/// names the questions in the result.
pub async fn evaluate(
    library: &Library,
    collection: &str,
    questions: &[EvalQuestion],
    embed: &dyn Embed,
    modes: &[Mode],
    subset: &str,
) -> Result<Vec<ModeScores>> {
    let mut out = Vec::new();
    for &mode in modes {
        let mut recall = 0.0;
        let mut ndcg = 0.0;
        let mut latencies = Vec::with_capacity(questions.len());
        for question in questions {
            let request = SearchRequest {
                collection: collection.to_string(),
                query: question.question.clone(),
                k: 10,
                mode,
                filters: Filters::default(),
            };
            let started = Instant::now();
            let hits = library.search(&request, Some(embed)).await?;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            let (r, n) = score_question(&hits, &question.relevant, 5, 10);
            recall += r;
            ndcg += n;
        }
        latencies.sort_by(f64::total_cmp);
        let count = questions.len().max(1) as f64;
        out.push(ModeScores {
            subset: subset.to_string(),
            mode,
            questions: questions.len(),
            recall_at_5: recall / count,
            ndcg_at_10: ndcg / count,
            latency_p50_ms: latencies.get(latencies.len() / 2).copied().unwrap_or(0.0),
            latency_max_ms: latencies.last().copied().unwrap_or(0.0),
        });
    }
    Ok(out)
}

/// The scores as a Markdown table.
pub fn format_table(scores: &[ModeScores]) -> String {
    let mut table = String::from(
        "| questions | mode | n | recall@5 | nDCG@10 | p50 ms | max ms |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for s in scores {
        let mode = s.mode.as_str();
        table.push_str(&format!(
            "| {} | {mode} | {} | {:.3} | {:.3} | {:.1} | {:.1} |\n",
            s.subset, s.questions, s.recall_at_5, s.ndcg_at_10, s.latency_p50_ms, s.latency_max_ms
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::Kind;
    use crate::search::Location;

    fn hit(document: &str, headings: &[&str]) -> Hit {
        let location = Location {
            page: None,
            heading_path: headings.iter().map(|h| h.to_string()).collect(),
            char_start: 0,
            char_end: 1,
        };
        Hit {
            chunk_id: 0,
            document_id: 0,
            document: document.to_string(),
            title: String::new(),
            kind: Kind::Markdown,
            location_label: location.label(),
            location,
            text: String::new(),
            score: 0.0,
            bm25_rank: None,
            dense_rank: None,
        }
    }

    fn target(doc: &str, section: Option<&str>) -> EvalTarget {
        EvalTarget {
            doc: doc.to_string(),
            section: section.map(str::to_string),
        }
    }

    #[test]
    fn relevance_needs_the_file_and_a_heading_of_the_path() {
        let h = hit("/media/usb/docs/bike.md", &["Bike", "Brakes", "Pads"]);
        assert!(is_relevant(&h, &target("bike.md", Some("Brakes"))));
        assert!(is_relevant(&h, &target("bike.md", None)));
        assert!(!is_relevant(&h, &target("bike.md", Some("Brake"))));
        assert!(!is_relevant(&h, &target("car.md", Some("Brakes"))));
    }

    #[test]
    fn each_target_counts_once_and_rank_discounts() {
        let targets = [target("a.md", None), target("b.md", None)];
        // Found at ranks 1 and 3, with a duplicate of a.md at rank 2 that gains nothing.
        let hits = [hit("a.md", &[]), hit("a.md", &[]), hit("b.md", &[])];
        let (recall, ndcg) = score_question(&hits, &targets, 5, 10);
        assert_eq!(recall, 1.0);
        let expected = (1.0 + 1.0 / 4f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        assert!((ndcg - expected).abs() < 1e-12, "{ndcg} vs {expected}");
        // Nothing found; and a target found only at rank 6 counts for nDCG, not recall@5.
        assert_eq!(
            score_question(&[hit("c.md", &[])], &targets, 5, 10),
            (0.0, 0.0)
        );
        let late: Vec<Hit> = (0..5)
            .map(|_| hit("c.md", &[]))
            .chain([hit("a.md", &[])])
            .collect();
        let (recall, ndcg) = score_question(&late, &targets[..1], 5, 10);
        assert_eq!(recall, 0.0);
        assert!((ndcg - 1.0 / 7f64.log2()).abs() < 1e-12);
    }

    #[test]
    fn a_bad_questions_file_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.jsonl");
        std::fs::write(
            &path,
            "{\"id\":\"q1\",\"question\":\"x\",\"relevant\":[{\"doc\":\"a.md\"}]}\n\n{\"id\": 2}\n",
        )
        .unwrap();
        let error = load_questions(&path).unwrap_err();
        assert!(error.to_string().contains("q.jsonl:3:"), "{error}");
        std::fs::write(
            &path,
            "{\"id\":\"q1\",\"question\":\"x\",\"relevant\":[]}\n",
        )
        .unwrap();
        let error = load_questions(&path).unwrap_err();
        assert!(error.to_string().contains("no relevant target"), "{error}");
    }
}
