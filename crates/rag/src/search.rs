//! Search requests and results, and reciprocal rank fusion. The fusion is pure: two ranked
//! lists in, one ranked list out.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::extract::Kind;

/// The most results one search returns.
pub const MAX_K: usize = 100;

/// RRF's constant: a rank r contributes 1 / (RRF_K + r). 60 is the value of the original
/// paper (Cormack et al. 2009) and of most engines since; it keeps the top of either list from
/// drowning the other.
pub const RRF_K: f32 = 60.0;

/// Which rankings a search uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// BM25 and dense, fused with RRF.
    #[default]
    Hybrid,
    Bm25,
    Dense,
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
    /// RRF score (hybrid), BM25 score (bm25) or cosine similarity (dense); larger is better.
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
