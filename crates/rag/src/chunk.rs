//! The structural chunker. A document is cut into sections (runs of blocks with one heading
//! path and page), each section's blocks are packed into chunks of at most `max_chars`, and a
//! block too long for one chunk is cut at sentence, then word boundaries (code at line
//! boundaries first). Consecutive chunks of one section overlap by up to `overlap_chars`, so a
//! sentence near a cut is whole in at least one of them; chunks never overlap across sections,
//! so a chunk's heading path or page is exact.
//!
//! Every chunk is a contiguous range of the extracted text, which is what makes "no text lost"
//! checkable (the union of the ranges covers every block) and citations point at real text.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::extract::{BlockRole, Extracted};

/// Sizes of chunks, in characters (not bytes, not tokens).
#[derive(Debug, Clone, Copy)]
pub struct ChunkOptions {
    /// Default 1000 characters, about 256 MiniLM tokens of English: the embedding model
    /// truncates at 256, so a longer chunk's tail would be invisible to dense search.
    pub max_chars: usize,
    /// Default 150: enough for a sentence or two of shared context across a cut.
    pub overlap_chars: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        ChunkOptions {
            max_chars: 1000,
            overlap_chars: 150,
        }
    }
}

/// One chunk of a document, ready to be embedded and indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// 0, 1, 2... in document order.
    pub ordinal: usize,
    pub text: String,
    pub heading_path: Vec<String>,
    pub page: Option<u32>,
    /// Character offsets into the extracted text, end exclusive.
    pub char_range: Range<usize>,
    /// The same range in bytes.
    pub byte_range: Range<usize>,
}

fn chars(text: &str, range: Range<usize>) -> usize {
    text[range].chars().count()
}

/// Cuts a document into chunks. `max_chars` below 1 is taken as 1; an overlap of at least
/// `max_chars` is clamped below it.
pub fn chunk(document: &Extracted, options: &ChunkOptions) -> Vec<Chunk> {
    let max = options.max_chars.max(1);
    let overlap = options.overlap_chars.min(max - 1);
    let text = document.text.as_str();
    let mut ranges: Vec<(Range<usize>, usize)> = Vec::new(); // (bytes, index of first block)
    let mut section_start = 0;
    while section_start < document.blocks.len() {
        let first = &document.blocks[section_start];
        let mut section_end = section_start + 1;
        while section_end < document.blocks.len()
            && document.blocks[section_end].heading_path == first.heading_path
            && document.blocks[section_end].page == first.page
        {
            section_end += 1;
        }
        let pieces: Vec<Range<usize>> = document.blocks[section_start..section_end]
            .iter()
            .flat_map(|block| split_long(text, block.range.clone(), block.role, max))
            .collect();
        for range in pack(text, &pieces, max, overlap) {
            ranges.push((range, section_start));
        }
        section_start = section_end;
    }

    // Byte offsets to character offsets in one pass over the text.
    let mut boundaries: BTreeMap<usize, usize> = BTreeMap::new();
    for (range, _) in &ranges {
        boundaries.insert(range.start, 0);
        boundaries.insert(range.end, 0);
    }
    let mut counted_bytes = 0;
    let mut counted_chars = 0;
    for (byte, char_index) in boundaries.iter_mut() {
        counted_chars += chars(text, counted_bytes..*byte);
        counted_bytes = *byte;
        *char_index = counted_chars;
    }

    ranges
        .into_iter()
        .enumerate()
        .map(|(ordinal, (range, block))| {
            let block = &document.blocks[block];
            Chunk {
                ordinal,
                text: text[range.clone()].to_string(),
                heading_path: block.heading_path.clone(),
                page: block.page,
                char_range: boundaries[&range.start]..boundaries[&range.end],
                byte_range: range,
            }
        })
        .collect()
}

/// Packs consecutive pieces (each at most `max` characters, or one unbreakable word) into
/// chunks of at most `max` characters, each after the first starting with up to `overlap`
/// characters of the text before its first piece.
fn pack(text: &str, pieces: &[Range<usize>], max: usize, overlap: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut current: Option<(Range<usize>, usize)> = None; // (range, its length in chars)
    for piece in pieces {
        if let Some((range, length)) = &mut current {
            let added = chars(text, range.end..piece.end);
            if *length + added <= max {
                range.end = piece.end;
                *length += added;
                continue;
            }
            out.push(range.clone());
        }
        let start = overlap_start(text, out.last(), piece, max, overlap);
        current = Some((start..piece.end, chars(text, start..piece.end)));
    }
    if let Some((range, _)) = current {
        out.push(range);
    }
    out
}

/// Where a chunk beginning with `piece` starts: up to `overlap` characters earlier (never more
/// than `max` leaves room for, never before the previous chunk's start), moved forward to the
/// start of a word so that no chunk opens with half a word.
fn overlap_start(
    text: &str,
    previous: Option<&Range<usize>>,
    piece: &Range<usize>,
    max: usize,
    overlap: usize,
) -> usize {
    let Some(previous) = previous else {
        return piece.start;
    };
    let budget = overlap.min(max.saturating_sub(chars(text, piece.clone())));
    if budget == 0 {
        return piece.start;
    }
    let before = &text[previous.start..piece.start];
    // The byte offset `budget` characters before the piece, within the previous chunk.
    let mut start = previous.start
        + before
            .char_indices()
            .rev()
            .nth(budget - 1)
            .map_or(0, |(i, _)| i);
    // Forward to a word start: past the rest of a word we landed inside, then past spaces.
    let preceded_by_space = text[..start]
        .chars()
        .next_back()
        .is_none_or(char::is_whitespace);
    if !preceded_by_space {
        start += text[start..piece.start]
            .find(char::is_whitespace)
            .unwrap_or(piece.start - start);
    }
    start += text[start..piece.start].len() - text[start..piece.start].trim_start().len();
    start.min(piece.start)
}

/// A block as pieces of at most `max` characters: whole if it fits, else cut between lines
/// (code) or sentences (prose), and a line or sentence still too long between words. A single
/// word longer than `max` is one piece of its own.
fn split_long(text: &str, block: Range<usize>, role: BlockRole, max: usize) -> Vec<Range<usize>> {
    if chars(text, block.clone()) <= max {
        return vec![block];
    }
    let units = match role {
        BlockRole::Code => lines(text, block),
        BlockRole::Heading | BlockRole::Paragraph => sentences(text, block),
    };
    let mut out = Vec::new();
    for unit in units {
        if chars(text, unit.clone()) <= max {
            out.push(unit);
        } else {
            out.extend(greedy(text, &words(text, unit), max));
        }
    }
    greedy(text, &out, max)
}

/// Joins consecutive ranges while the joined range stays within `max` characters.
fn greedy(text: &str, units: &[Range<usize>], max: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut length = 0;
    for unit in units {
        if let Some(last) = out.last_mut() {
            let added = chars(text, last.end..unit.end);
            if length + added <= max {
                last.end = unit.end;
                length += added;
                continue;
            }
        }
        out.push(unit.clone());
        length = chars(text, unit.clone());
    }
    out
}

/// Trimmed, non-empty pieces of `text[range]` split after each byte where `cut_after` says so.
fn split_by(
    text: &str,
    range: Range<usize>,
    cut_after: impl Fn(&str, usize) -> bool,
) -> Vec<Range<usize>> {
    let slice = &text[range.clone()];
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in slice.char_indices() {
        let end = i + c.len_utf8();
        if cut_after(slice, end) {
            push_trimmed(slice, range.start, start..end, &mut out);
            start = end;
        }
    }
    push_trimmed(slice, range.start, start..slice.len(), &mut out);
    out
}

fn push_trimmed(slice: &str, base: usize, range: Range<usize>, out: &mut Vec<Range<usize>>) {
    let part = &slice[range.clone()];
    let start = range.start + (part.len() - part.trim_start().len());
    let end = range.start + part.trim_end().len();
    if start < end {
        out.push(base + start..base + end);
    }
}

fn lines(text: &str, range: Range<usize>) -> Vec<Range<usize>> {
    split_by(text, range, |slice, end| slice[..end].ends_with('\n'))
}

/// Sentences end after `.`, `!` or `?` (and any closing quotes or brackets) followed by
/// whitespace, or at a line end.
fn sentences(text: &str, range: Range<usize>) -> Vec<Range<usize>> {
    split_by(text, range, |slice, end| {
        let next_is_space = slice[end..].chars().next().is_some_and(char::is_whitespace);
        if slice[..end].ends_with('\n') {
            return true;
        }
        if !next_is_space {
            return false;
        }
        let trimmed = slice[..end].trim_end_matches(['"', '\'', ')', ']', '»', '”', '’']);
        trimmed.ends_with(['.', '!', '?', '。', '！', '？'])
    })
}

fn words(text: &str, range: Range<usize>) -> Vec<Range<usize>> {
    split_by(text, range, |slice, end| {
        slice[..end].ends_with(char::is_whitespace)
    })
}

#[cfg(test)]
mod tests;
