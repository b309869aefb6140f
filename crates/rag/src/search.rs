//! Search requests and results, and the two ways of fusing BM25 with dense: relative score
//! fusion (the default) and reciprocal rank fusion. Both are pure: ranked lists in, one
//! ranked list out.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::extract::Kind;

/// The most results one search returns.
pub const MAX_K: usize = 100;

/// RRF's constant: a rank r contributes 1 / (RRF_K + r). 60 is the value of the original
/// paper (Cormack et al. 2009) and of most engines since; it keeps the top of either list from
/// drowning the other.
pub const RRF_K: f32 = 60.0;

/// Relative score fusion's weight of the dense score; BM25's is the rest. 0.75 is the default
/// of Weaviate's `relativeScoreFusion` (its hybrid default since 1.24), not a value fitted here.
pub const DENSE_WEIGHT: f32 = 0.75;

/// How many of each list's best scores relative score fusion normalises over: the list's
/// 20th score maps to 0, its first to 1, and chunks below the 20th get nothing from that list.
/// A deeper window stretches the dense scores' narrow band (cosines of one corpus sit close
/// together) less than BM25's, which amounts to a larger BM25 weight. Chosen on the eval set
/// (docs/plans/rag.md, "Fusion"): windows of 15 and 20 did best, 30 and more lost a question.
pub const FUSION_WINDOW: usize = 20;

/// Which rankings a search uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// BM25 and dense, fused by their relative scores ([`relative_score_fusion`]).
    #[default]
    Hybrid,
    /// BM25 and dense, fused by rank alone ([`reciprocal_rank_fusion`]).
    HybridRrf,
    Bm25,
    Dense,
}

impl Mode {
    /// As the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Hybrid => "hybrid",
            Mode::HybridRrf => "hybrid_rrf",
            Mode::Bm25 => "bm25",
            Mode::Dense => "dense",
        }
    }

    pub fn wants_bm25(self) -> bool {
        self != Mode::Dense
    }

    pub fn wants_dense(self) -> bool {
        self != Mode::Bm25
    }
}

/// Narrows a search to some of a collection's documents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Only documents whose source (path or upload name) starts with this.
    #[serde(default)]
    pub source_prefix: Option<String>,
    /// Only documents of this kind (`text`, `markdown`, `html`, `pdf`).
    #[serde(default)]
    pub kind: Option<Kind>,
    /// Only these documents (ids as listed by the documents route).
    #[serde(default)]
    pub document_ids: Option<Vec<i64>>,
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.source_prefix.is_none() && self.kind.is_none() && self.document_ids.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchRequest {
    pub collection: String,
    pub query: String,
    /// 1..=[`MAX_K`].
    pub k: usize,
    pub mode: Mode,
    pub filters: Filters,
}

/// Where a chunk sits in its document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// 1-based, for PDFs.
    pub page: Option<u32>,
    /// Headings enclosing the chunk, outermost first.
    pub heading_path: Vec<String>,
    /// Character offsets into the document's extracted text, end exclusive.
    pub char_start: usize,
    pub char_end: usize,
}

impl Location {
    /// For people and prompts: `page 3`, `Install > Linux`, or `characters 120–980`.
    pub fn label(&self) -> String {
        match (self.page, self.heading_path.is_empty()) {
            (Some(page), _) => format!("page {page}"),
            (None, false) => self.heading_path.join(" > "),
            (None, true) => format!("characters {}–{}", self.char_start, self.char_end),
        }
    }
}

/// One retrieved chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub chunk_id: i64,
    pub document_id: i64,
    /// The document's path or upload name.
    pub document: String,
    pub title: String,
    pub kind: Kind,
    pub location: Location,
    /// `location` for people (see [`Location::label`]).
    pub location_label: String,
    pub text: String,
    /// Fused score in [0, 1] (hybrid), RRF score (hybrid_rrf), BM25 score (bm25) or cosine
    /// similarity (dense); larger is better.
    pub score: f32,
    /// 1-based rank in the BM25 list, if the chunk was in it.
    pub bm25_rank: Option<usize>,
    /// 1-based rank in the dense list, if the chunk was in it.
    pub dense_rank: Option<usize>,
}

/// Fuses ranked lists of chunk ids (best first) with reciprocal rank fusion: each chunk's
/// score is the sum of 1 / (RRF_K + rank) over the lists it is in. Ties keep the order of
/// first appearance (the BM25 list's, when it is first), so the result is deterministic.
pub fn reciprocal_rank_fusion(lists: &[&[i64]]) -> Vec<(i64, f32)> {
    let mut scores: HashMap<i64, (f32, usize)> = HashMap::new();
    let mut order = 0;
    for list in lists {
        for (index, id) in list.iter().enumerate() {
            let entry = scores.entry(*id).or_insert_with(|| {
                order += 1;
                (0.0, order)
            });
            entry.0 += 1.0 / (RRF_K + index as f32 + 1.0);
        }
    }
    let mut fused: Vec<(i64, f32, usize)> = scores
        .into_iter()
        .map(|(id, (score, first))| (id, score, first))
        .collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    fused
        .into_iter()
        .map(|(id, score, _)| (id, score))
        .collect()
}

/// Fuses a BM25 and a dense list of (chunk id, score), best first, by their scores (Weaviate's
/// relative score fusion; Bruch et al. 2023 find such convex combinations beat RRF): each
/// list's top [`FUSION_WINDOW`] scores are min-max normalised to [0, 1], and a chunk scores
/// `DENSE_WEIGHT × dense + (1 − DENSE_WEIGHT) × bm25`, missing counting 0. Unlike RRF, a chunk
/// far ahead in one list keeps its lead over one merely present in both, which matters where
/// the lists cover much of a small collection. A list whose window holds one score (or equal
/// ones) normalises to 1. Chunks outside both windows follow, scored 0, in order of their
/// better rank (dense first on a tie); ties among the fused keep first appearance, dense
/// before BM25, so the result is deterministic.
pub fn relative_score_fusion(bm25: &[(i64, f32)], dense: &[(i64, f32)]) -> Vec<(i64, f32)> {
    // (score, best rank, order of first appearance) per chunk.
    let mut fused: HashMap<i64, (f32, usize, usize)> = HashMap::new();
    let mut order = 0;
    for (list, weight) in [(dense, DENSE_WEIGHT), (bm25, 1.0 - DENSE_WEIGHT)] {
        let window = &list[..list.len().min(FUSION_WINDOW)];
        let max = window
            .iter()
            .map(|(_, s)| *s)
            .fold(f32::NEG_INFINITY, f32::max);
        let min = window.iter().map(|(_, s)| *s).fold(f32::INFINITY, f32::min);
        let range = max - min;
        for (index, (id, score)) in list.iter().enumerate() {
            let entry = fused.entry(*id).or_insert_with(|| {
                order += 1;
                (0.0, usize::MAX, order)
            });
            entry.1 = entry.1.min(index);
            if index < window.len() && score.is_finite() {
                let normalised = if range > 0.0 && range.is_finite() {
                    (score - min) / range
                } else {
                    1.0
                };
                entry.0 += weight * normalised;
            }
        }
    }
    let mut out: Vec<(i64, f32, usize, usize)> = fused
        .into_iter()
        .map(|(id, (score, rank, first))| (id, score, rank, first))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
    out.into_iter().map(|(id, score, ..)| (id, score)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrf_rewards_agreement_between_the_lists() {
        // 3 is second in both lists, 1 and 4 top one list each but are missing from the other.
        let fused = reciprocal_rank_fusion(&[&[1, 3, 5], &[4, 3, 6]]);
        let ids: Vec<i64> = fused.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![3, 1, 4, 5, 6]);
        let expected = 2.0 / (RRF_K + 2.0);
        assert!((fused[0].1 - expected).abs() < 1e-7, "{fused:?}");
    }

    #[test]
    fn rrf_of_one_list_keeps_its_order_and_of_none_is_empty() {
        let fused = reciprocal_rank_fusion(&[&[9, 2, 7]]);
        assert_eq!(
            fused.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![9, 2, 7]
        );
        assert!(reciprocal_rank_fusion(&[]).is_empty());
        assert!(reciprocal_rank_fusion(&[&[], &[]]).is_empty());
    }

    #[test]
    fn relative_fusion_keeps_a_far_lead_that_rrf_gives_away() {
        // Chunk 1 is dense's clear best and missing from BM25; chunk 2 is BM25's best and
        // dense's third. RRF puts 2 (in both lists) first; relative fusion puts 1 first, by
        // 0.75 against 0.25 + 0.75 × 0.18.
        let bm25 = [(2, 9.0), (4, 5.0), (5, 1.0)];
        let dense = [(1, 0.80), (3, 0.50), (2, 0.45), (6, 0.375)];
        let rrf: Vec<i64> = reciprocal_rank_fusion(&[&[2, 4, 5], &[1, 3, 2, 6]])
            .iter()
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(rrf[0], 2);
        let fused = relative_score_fusion(&bm25, &dense);
        assert_eq!(
            fused.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
        let score = |id: i64| fused.iter().find(|(i, _)| *i == id).unwrap().1;
        assert!((score(1) - 0.75).abs() < 1e-6, "{fused:?}");
        assert!(
            (score(2) - (0.25 + 0.75 * 0.075 / 0.425)).abs() < 1e-6,
            "{fused:?}"
        );
        // Each list's last in-window score maps to 0.
        assert_eq!(score(5), 0.0);
        assert_eq!(score(6), 0.0);
    }

    #[test]
    fn relative_fusion_windows_degenerate_lists_and_orders_the_rest_by_rank() {
        // One BM25 match normalises to 1, not 0 (0/0).
        let fused = relative_score_fusion(&[(7, 3.0)], &[]);
        assert_eq!(fused, vec![(7, 0.25)]);
        assert!(relative_score_fusion(&[], &[]).is_empty());
        // Beyond the window a chunk gets nothing from that list, and ties fall back to rank:
        // dense's 21st and 22nd follow in their order, and BM25's 21st joins by its rank.
        let dense: Vec<(i64, f32)> = (0..22).map(|i| (i, 1.0 - i as f32 * 0.01)).collect();
        let bm25: Vec<(i64, f32)> = (100..121).map(|i| (i, 200.0 - i as f32)).collect();
        let fused = relative_score_fusion(&bm25, &dense);
        assert_eq!(fused.len(), 43);
        let tail: Vec<i64> = fused[fused.len() - 3..].iter().map(|(id, _)| *id).collect();
        assert_eq!(tail, vec![20, 120, 21]);
        assert!(fused[fused.len() - 5..].iter().all(|(_, s)| *s == 0.0));
    }

    #[test]
    fn modes_read_as_the_api_spells_them() {
        for mode in [Mode::Hybrid, Mode::HybridRrf, Mode::Bm25, Mode::Dense] {
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{}\"", mode.as_str()));
            assert_eq!(serde_json::from_str::<Mode>(&json).unwrap(), mode);
        }
    }

    #[test]
    fn locations_read_as_page_heading_path_or_characters() {
        let mut location = Location {
            page: Some(3),
            heading_path: vec![],
            char_start: 10,
            char_end: 20,
        };
        assert_eq!(location.label(), "page 3");
        location.page = None;
        assert_eq!(location.label(), "characters 10–20");
        location.heading_path = vec!["Install".into(), "Linux".into()];
        assert_eq!(location.label(), "Install > Linux");
    }
}
