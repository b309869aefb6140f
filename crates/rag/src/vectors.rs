//! The dense side: exact search over a collection's vectors, kept in memory. The vectors are
//! L2-normalised, so the dot product is the cosine; a scan of 100k × 384 floats is a few
//! milliseconds on one core, which an approximate index would only beat at sizes a single box's
//! document folder rarely reaches (see docs/plans/rag.md).

use std::collections::HashSet;

/// A collection's committed vectors, one row per chunk.
#[derive(Debug, Default)]
pub(crate) struct VectorSet {
    pub dimension: usize,
    chunk_ids: Vec<i64>,
    doc_ids: Vec<i64>,
    /// Row-major, `dimension` floats per chunk.
    data: Vec<f32>,
    documents: HashSet<i64>,
}

impl VectorSet {
    pub(crate) fn new(dimension: usize) -> VectorSet {
        VectorSet {
            dimension,
            ..VectorSet::default()
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.chunk_ids.len()
    }

    #[cfg(test)]
    pub(crate) fn contains_document(&self, doc_id: i64) -> bool {
        self.documents.contains(&doc_id)
    }

    /// Adds one document's vectors, unless it is already there (a lazy load that read the
    /// database after the document was committed already holds it).
    pub(crate) fn add_document(&mut self, doc_id: i64, rows: &[(i64, Vec<f32>)]) {
        if !self.documents.insert(doc_id) {
            return;
        }
        for (chunk_id, vector) in rows {
            debug_assert_eq!(vector.len(), self.dimension);
            self.chunk_ids.push(*chunk_id);
            self.doc_ids.push(doc_id);
            self.data.extend_from_slice(vector);
        }
    }

    pub(crate) fn remove_documents(&mut self, doc_ids: &[i64]) {
        let gone: HashSet<i64> = doc_ids
            .iter()
            .copied()
            .filter(|id| self.documents.remove(id))
            .collect();
        if gone.is_empty() {
            return;
        }
        let dimension = self.dimension;
        let mut write = 0;
        for read in 0..self.chunk_ids.len() {
            if gone.contains(&self.doc_ids[read]) {
                continue;
            }
            if write != read {
                self.chunk_ids[write] = self.chunk_ids[read];
                self.doc_ids[write] = self.doc_ids[read];
                self.data
                    .copy_within(read * dimension..(read + 1) * dimension, write * dimension);
            }
            write += 1;
        }
        self.chunk_ids.truncate(write);
        self.doc_ids.truncate(write);
        self.data.truncate(write * dimension);
    }

    /// The `k` rows with the largest dot product with `query`, best first, as
    /// (chunk id, doc id, score); only documents `allowed` accepts are considered.
    pub(crate) fn top_k(
        &self,
        query: &[f32],
        k: usize,
        allowed: impl Fn(i64) -> bool,
    ) -> Vec<(i64, i64, f32)> {
        if k == 0 || query.len() != self.dimension {
            return Vec::new();
        }
        // A bounded list kept sorted: k is at most a few hundred, so insertion is cheaper than
        // a heap's bookkeeping, and it avoids NaN-unsafe orderings.
        let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
        for (row, vector) in self.data.chunks_exact(self.dimension).enumerate() {
            if !allowed(self.doc_ids[row]) {
                continue;
            }
            let score: f32 = vector.iter().zip(query).map(|(a, b)| a * b).sum();
            if !score.is_finite() {
                continue;
            }
            if best.len() == k && score <= best[k - 1].0 {
                continue;
            }
            let at = best.partition_point(|(s, _)| *s >= score);
            best.insert(at, (score, row));
            best.truncate(k);
        }
        best.into_iter()
            .map(|(score, row)| (self.chunk_ids[row], self.doc_ids[row], score))
            .collect()
    }
}

/// Little-endian f32 bytes, the BLOB format of the `vectors` table.
pub(crate) fn to_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    bytes.len().is_multiple_of(4).then(|| {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(values: &[f32]) -> Vec<f32> {
        let norm = values.iter().map(|x| x * x).sum::<f32>().sqrt();
        values.iter().map(|x| x / norm).collect()
    }

    #[test]
    fn top_k_is_the_exact_ranking_by_dot_product() {
        let mut set = VectorSet::new(2);
        set.add_document(1, &[(10, unit(&[1.0, 0.0])), (11, unit(&[0.0, 1.0]))]);
        set.add_document(2, &[(20, unit(&[1.0, 1.0])), (21, unit(&[-1.0, 0.0]))]);
        let query = unit(&[1.0, 0.2]);
        let top = set.top_k(&query, 3, |_| true);
        let ids: Vec<i64> = top.iter().map(|(c, _, _)| *c).collect();
        assert_eq!(ids, vec![10, 20, 11]);
        assert!(top[0].2 > top[1].2 && top[1].2 > top[2].2);
        // A filter excludes a whole document.
        let ids: Vec<i64> = set
            .top_k(&query, 3, |d| d != 1)
            .iter()
            .map(|(c, _, _)| *c)
            .collect();
        assert_eq!(ids, vec![20, 21]);
        // A query of another dimension matches nothing rather than panicking.
        assert!(set.top_k(&[1.0, 0.0, 0.0], 3, |_| true).is_empty());
    }

    #[test]
    fn documents_are_added_once_and_removed_whole() {
        let mut set = VectorSet::new(2);
        set.add_document(1, &[(10, unit(&[1.0, 0.0]))]);
        set.add_document(1, &[(10, unit(&[1.0, 0.0]))]);
        assert_eq!(set.len(), 1);
        set.add_document(2, &[(20, unit(&[0.0, 1.0])), (21, unit(&[1.0, 1.0]))]);
        set.add_document(3, &[(30, unit(&[1.0, -1.0]))]);
        set.remove_documents(&[2, 99]);
        assert_eq!(set.len(), 2);
        assert!(!set.contains_document(2));
        let ids: Vec<i64> = set
            .top_k(&unit(&[1.0, -1.0]), 5, |_| true)
            .iter()
            .map(|(c, _, _)| *c)
            .collect();
        assert_eq!(ids, vec![30, 10]);
    }

    #[test]
    fn vectors_round_trip_through_bytes_and_bad_lengths_are_refused() {
        let vector = vec![0.25, -1.5, 3.0e-7];
        assert_eq!(from_bytes(&to_bytes(&vector)).unwrap(), vector);
        assert_eq!(from_bytes(&[0, 1, 2]), None);
    }
}
