use proptest::prelude::*;

use super::*;
use crate::extract::{extract, ExtractOptions};

fn markdown(source: &str) -> Extracted {
    extract("doc.md", source.as_bytes(), &ExtractOptions::default()).unwrap()
}

fn options(max_chars: usize, overlap_chars: usize) -> ChunkOptions {
    ChunkOptions {
        max_chars,
        overlap_chars,
    }
}

#[test]
fn small_sections_become_one_chunk_each_with_their_heading_path() {
    let doc = markdown("# A\n\nOne.\n\nTwo.\n\n## B\n\nThree.\n");
    let chunks = chunk(&doc, &ChunkOptions::default());
    let found: Vec<(&str, Vec<String>)> = chunks
        .iter()
        .map(|c| (c.text.as_str(), c.heading_path.clone()))
        .collect();
    assert_eq!(
        found,
        vec![
            ("# A\n\nOne.\n\nTwo.", vec!["A".to_string()]),
            ("## B\n\nThree.", vec!["A".to_string(), "B".to_string()]),
        ]
    );
    assert_eq!(chunks[0].char_range, 0..15);
    assert_eq!(chunks[1].ordinal, 1);
    // Character, not byte, offsets.
    let doc = markdown("é é\n\n# Ü\n\nx");
    let chunks = chunk(&doc, &ChunkOptions::default());
    assert_eq!(chunks[1].char_range, 5..11);
    assert_eq!(chunks[1].byte_range, 7..14);
}

#[test]
fn a_long_paragraph_is_cut_between_sentences_with_overlap() {
    let sentences: Vec<String> = (0..12)
        .map(|i| format!("Sentence number {i} is here."))
        .collect();
    let doc = markdown(&sentences.join(" "));
    let chunks = chunk(&doc, &options(100, 30));
    assert!(chunks.len() > 2, "{chunks:?}");
    for chunk in &chunks {
        assert!(chunk.text.chars().count() <= 100, "{chunk:?}");
        assert!(chunk.text.ends_with('.'), "cut mid-sentence: {chunk:?}");
    }
    for pair in chunks.windows(2) {
        // The next chunk starts inside the previous one: the overlap.
        assert!(
            pair[1].char_range.start < pair[0].char_range.end,
            "{pair:?}"
        );
        assert!(
            pair[1].char_range.start > pair[0].char_range.start,
            "{pair:?}"
        );
    }
}

#[test]
fn code_is_cut_between_lines_and_an_unbreakable_word_stands_alone() {
    let code: String = (0..30).map(|i| format!("let value_{i} = {i};\n")).collect();
    let doc = markdown(&format!("```\n{code}```\n"));
    let chunks = chunk(&doc, &options(120, 0));
    assert!(chunks.len() > 1);
    for chunk in &chunks {
        assert!(chunk.text.chars().count() <= 120);
        for line in chunk.text.lines() {
            assert!(
                line.starts_with("let value_") || line.starts_with("```"),
                "{line:?}"
            );
        }
    }
    let word = "x".repeat(50);
    let doc = markdown(&format!("short words {word} end"));
    let chunks = chunk(&doc, &options(20, 5));
    assert!(chunks.iter().any(|c| c.text == word), "{chunks:?}");
}

#[test]
fn chunks_never_overlap_across_sections_or_pages() {
    let doc = markdown("# A\n\naaaa aaaa aaaa aaaa\n\n# B\n\nbbbb bbbb bbbb bbbb bbbb bbbb\n");
    let chunks = chunk(&doc, &options(25, 20));
    for chunk in &chunks {
        let in_b = chunk.heading_path == vec!["B".to_string()];
        assert!(!(in_b && chunk.text.contains('a')), "{chunk:?}");
    }
}

/// Markdown made of headings, paragraphs of random words (with sentence ends), and code.
fn document() -> impl Strategy<Value = String> {
    let word = "[a-zA-Zé0-9]{1,12}[.,!?]?";
    let paragraph = prop::collection::vec(word, 1..60).prop_map(|w| w.join(" "));
    let heading = (1usize..4, "[a-zA-Z]{1,10}").prop_map(|(l, t)| format!("{} {t}", "#".repeat(l)));
    let code = prop::collection::vec("[a-z ();=]{0,30}", 1..8)
        .prop_map(|lines| format!("```\n{}\n```", lines.join("\n")));
    let block = prop_oneof![4 => paragraph, 1 => heading, 1 => code];
    prop::collection::vec(block, 1..12).prop_map(|blocks| blocks.join("\n\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn no_text_is_lost_no_chunk_is_too_long_and_order_is_kept(
        source in document(),
        max_chars in 10usize..300,
        overlap_chars in 0usize..120,
    ) {
        let doc = markdown(&source);
        let chunks = chunk(&doc, &options(max_chars, overlap_chars));
        // Every non-whitespace character of the source lies in some chunk.
        let mut covered = vec![false; source.len()];
        for chunk in &chunks {
            prop_assert_eq!(&source[chunk.byte_range.clone()], chunk.text.as_str());
            covered[chunk.byte_range.clone()].iter_mut().for_each(|c| *c = true);
            let length = chunk.text.chars().count();
            prop_assert!(
                length <= max_chars || !chunk.text.contains(char::is_whitespace),
                "chunk of {} chars over {}: {:?}", length, max_chars, chunk.text
            );
            prop_assert_eq!(
                chunk.char_range.end - chunk.char_range.start,
                length
            );
        }
        for (i, c) in source.char_indices() {
            prop_assert!(c.is_whitespace() || covered[i], "lost {:?} at {} in {:?}", c, i, source);
        }
        // In order: starts and ends both strictly increase.
        for pair in chunks.windows(2) {
            prop_assert!(pair[0].byte_range.start < pair[1].byte_range.start);
            prop_assert!(pair[0].byte_range.end < pair[1].byte_range.end);
            prop_assert_eq!(pair[0].ordinal + 1, pair[1].ordinal);
        }
    }
}
