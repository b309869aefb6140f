//! The dense side: search over a collection's vectors, kept in memory. The vectors are
//! L2-normalised, so the dot product is the cosine. Small sets are scanned exactly. From
//! [`QUANTIZED_FROM_ROWS`] rows on, the scan is memory-bound (100k × 384 floats are 154 MB,
//! about 20 ms on the 2-core reference machine, against 6 ms when in cache), so it reads an int8
//! copy of each vector first (a quarter of the bytes) and rescores the best candidates with the
//! floats: the ranking is exact unless a row's int8 score errs by more than the gap between the
//! k-th and the candidates' last, which the tests measure (see docs/plans/rag.md).

use std::collections::HashSet;

/// A collection's committed vectors, one row per chunk.
#[derive(Debug, Default)]
pub(crate) struct VectorSet {
    pub dimension: usize,
    chunk_ids: Vec<i64>,
    doc_ids: Vec<i64>,
    /// Row-major, `dimension` floats per chunk.
    data: Vec<f32>,
    /// The same rows as int8, each scaled by its own largest component: `data ≈ scale × q`.
    quantized: Vec<i8>,
    scales: Vec<f32>,
    documents: HashSet<i64>,
}

/// Rows from which a search reads the int8 copies first.
pub(crate) const QUANTIZED_FROM_ROWS: usize = 20_000;

/// How many int8 candidates are rescored exactly for a search of `k`.
fn candidates_for(k: usize) -> usize {
    (k * 4).max(k + 64)
}

/// `vector` as int8 and the scale that maps it back.
fn quantize(vector: &[f32]) -> (Vec<i8>, f32) {
    let largest = vector.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if largest > 0.0 && largest.is_finite() {
        largest / 127.0
    } else {
        1.0
    };
    let q = vector
        .iter()
        .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scale)
}

/// The `k` best of (score, row) pairs, best first; non-finite scores are skipped. A bounded
/// list kept sorted: k is at most a few hundred, so insertion is cheaper than a heap's
/// bookkeeping, and it avoids NaN-unsafe orderings.
fn best_rows(k: usize, scored: impl Iterator<Item = (f32, usize)>) -> Vec<(f32, usize)> {
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
    for (score, row) in scored {
        if !score.is_finite() || (best.len() == k && score <= best[k - 1].0) {
            continue;
        }
        let at = best.partition_point(|(s, _)| *s >= score);
        best.insert(at, (score, row));
        best.truncate(k);
    }
    best
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
            let (q, scale) = quantize(vector);
            self.quantized.extend_from_slice(&q);
            self.scales.push(scale);
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
                self.quantized
                    .copy_within(read * dimension..(read + 1) * dimension, write * dimension);
                self.scales[write] = self.scales[read];
            }
            write += 1;
        }
        self.chunk_ids.truncate(write);
        self.doc_ids.truncate(write);
        self.data.truncate(write * dimension);
        self.quantized.truncate(write * dimension);
        self.scales.truncate(write);
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
        let dimension = self.dimension;
        let rows = (0..self.chunk_ids.len()).filter(|&row| allowed(self.doc_ids[row]));
        let exact = |row: usize| dot(&self.data[row * dimension..(row + 1) * dimension], query);
        let best = if self.chunk_ids.len() < QUANTIZED_FROM_ROWS {
            best_rows(k, rows.map(|row| (exact(row), row)))
        } else {
            let (q, query_scale) = quantize(query);
            let candidates = best_rows(
                candidates_for(k),
                rows.map(|row| {
                    let stored = &self.quantized[row * dimension..(row + 1) * dimension];
                    let approximate = dot_i8(stored, &q) as f32 * self.scales[row] * query_scale;
                    (approximate, row)
                }),
            );
            best_rows(k, candidates.into_iter().map(|(_, row)| (exact(row), row)))
        };
        best.into_iter()
            .map(|(score, row)| (self.chunk_ids[row], self.doc_ids[row], score))
            .collect()
    }
}

/// The dot product: with AVX2 and FMA where the CPU has them (checked once, at run time; the
/// binary is built for plain x86-64), else [`dot_lanes`] as compiled.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has both features, checked just above.
        return unsafe { dot_avx2(a, b) };
    }
    dot_lanes(a, b)
}

/// The dot product of int8 vectors, with AVX2 where the CPU has it (see [`dot`]).
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { dot_i8_avx2(a, b) };
    }
    dot_i8_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// [`dot_i8_lanes`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_lanes(a, b)
}

/// In 32 independent i32 lanes, which the compiler turns into widening multiply-adds.
#[inline(always)]
fn dot_i8_lanes(a: &[i8], b: &[i8]) -> i32 {
    const LANES: usize = 32;
    let mut lanes = [0i32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: i32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            lanes[lane] += i32::from(x[lane]) * i32::from(y[lane]);
        }
    }
    lanes.iter().sum::<i32>() + tail
}

/// [`dot_lanes`] compiled for AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

/// The dot product, in 16 independent lanes: a plain `.sum()` adds in order, which the compiler
/// may not reorder for floats, so it stays scalar; separate accumulators vectorise.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
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

    /// Deterministic pseudo-random unit vectors: the hard case for the int8 prescan, their
    /// scores lying close together (real embeddings of one corpus spread more).
    fn random_units(count: usize, dimension: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        (0..count)
            .map(|_| unit(&(0..dimension).map(|_| next()).collect::<Vec<f32>>()))
            .collect()
    }

    #[test]
    fn the_int8_prescan_finds_the_exact_top_ten() {
        let dimension = 96;
        let mut set = VectorSet::new(dimension);
        let vectors = random_units(QUANTIZED_FROM_ROWS + 500, dimension, 7);
        for (doc, chunk) in vectors.chunks(10).enumerate() {
            let rows: Vec<(i64, Vec<f32>)> = chunk
                .iter()
                .enumerate()
                .map(|(i, v)| ((doc * 10 + i) as i64, v.clone()))
                .collect();
            set.add_document(doc as i64, &rows);
        }
        let exact_top = |query: &[f32], allowed: &dyn Fn(i64) -> bool| -> Vec<i64> {
            let scored = vectors
                .iter()
                .enumerate()
                .filter(|(row, _)| allowed((row / 10) as i64))
                .map(|(row, v)| (v.iter().zip(query).map(|(a, b)| a * b).sum::<f32>(), row));
            best_rows(10, scored)
                .into_iter()
                .map(|(_, row)| row as i64)
                .collect()
        };
        for (index, query) in random_units(20, dimension, 11).iter().enumerate() {
            // Every other query with a filter: only even documents.
            let allowed = |doc: i64| index % 2 == 0 || doc % 2 == 0;
            let found: Vec<i64> = set
                .top_k(query, 10, allowed)
                .iter()
                .map(|(chunk, ..)| *chunk)
                .collect();
            assert_eq!(found, exact_top(query, &allowed), "query {index}");
        }
        // Removing documents keeps the int8 copies in step with the floats (and the set on
        // the int8 path: QUANTIZED_FROM_ROWS rows remain).
        set.remove_documents(&(0..50).collect::<Vec<i64>>());
        assert_eq!(set.len(), QUANTIZED_FROM_ROWS);
        let query = &random_units(1, dimension, 13)[0];
        let found: Vec<i64> = set
            .top_k(query, 10, |_| true)
            .iter()
            .map(|(chunk, ..)| *chunk)
            .collect();
        assert_eq!(found, exact_top(query, &|doc| doc >= 50));
    }

    #[test]
    fn dot_matches_the_plain_sum_at_every_length() {
        for len in [0, 1, 15, 16, 17, 384, 385] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-4, "length {len}");
        }
    }

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
