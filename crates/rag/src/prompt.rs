//! The answer prompt: system instructions, then the retrieved chunks as numbered sources,
//! packed into what the chat model's context window leaves after the conversation and the
//! answer's `max_tokens`.
//!
//! Tokens are *estimated* at 3 characters per token. Real English runs about 4 characters per
//! token in SmolLM2's and GPT-style tokenizers, code and other languages fewer; 3 overcounts
//! for ordinary prose, so a prompt we think fits really fits, at the price of leaving some
//! context unused. This crate never links a tokenizer (the chat engine owns it).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::search::Hit;
use crate::{Error, Result};

/// Characters per token, on the conservative side (see the module doc).
pub const CHARS_PER_TOKEN: usize = 3;

/// What each message costs beyond its text in chat templates (role markers, separators).
const TOKENS_PER_MESSAGE: usize = 8;

/// The fewest tokens a truncated first source is worth sending.
const MIN_SOURCE_TOKENS: usize = 32;

/// How much of a chunk a citation shows.
const SNIPPET_CHARS: usize = 240;

pub const INSTRUCTIONS: &str = "Answer the user's question using only the numbered sources \
below. Cite the sources you use as [1], [2] and so on, right after the statements they \
support. If the sources do not contain the answer, say that you do not know.";

const NO_SOURCES: &str = "No documents matched the question. Say that the documents you can \
search do not contain the answer.";

/// The tokens `text` is estimated to take.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(CHARS_PER_TOKEN)
}

/// A source sent to the chat model, as returned to the client in the `citations` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Citation {
    /// The `n` of `[n]` in the prompt and the answer.
    pub index: usize,
    /// The document's path or upload name.
    pub document: String,
    pub document_id: i64,
    pub title: String,
    /// Page or heading path, for people.
    pub location: String,
    pub snippet: String,
    pub chunk_id: i64,
    pub score: f32,
}

/// The messages for the chat engine and the sources they cite.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub messages: Vec<Value>,
    pub citations: Vec<Citation>,
}

/// The text of a message's `content`: a string, or OpenAI's array of parts (text parts only).
pub fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn snippet(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= SNIPPET_CHARS {
        flat
    } else {
        let cut: String = flat.chars().take(SNIPPET_CHARS).collect();
        format!("{}…", cut.trim_end())
    }
}

fn source_block(index: usize, hit: &Hit, text: &str) -> String {
    format!(
        "[{index}] {} ({}; {})\n{}\n\n",
        hit.title, hit.document, hit.location_label, text
    )
}

/// Builds the prompt. `conversation` is the client's messages, kept as they are after our
/// system message; `hits` are in rank order, and as many are sent as fit in
/// `context_tokens − max_tokens − the conversation`. An error when the conversation alone
/// leaves no room.
pub fn build(
    conversation: &[Value],
    hits: &[Hit],
    context_tokens: usize,
    max_tokens: usize,
) -> Result<Prompt> {
    let conversation_tokens: usize = conversation
        .iter()
        .map(|m| {
            TOKENS_PER_MESSAGE
                + estimate_tokens(&m.get("content").and_then(content_text).unwrap_or_default())
        })
        .sum();
    let fixed = conversation_tokens + TOKENS_PER_MESSAGE + estimate_tokens(INSTRUCTIONS) + 4;
    let budget = context_tokens
        .checked_sub(max_tokens)
        .and_then(|rest| rest.checked_sub(fixed))
        .ok_or_else(|| {
            Error::InvalidRequest(format!(
                "the conversation (about {conversation_tokens} tokens at {CHARS_PER_TOKEN} \
                 characters per token) and max_tokens {max_tokens} do not fit the chat model's \
                 context of {context_tokens} tokens; shorten the conversation or lower max_tokens"
            ))
        })?;

    let mut sources = String::new();
    let mut used = 0;
    let mut citations = Vec::new();
    for hit in hits {
        let index = citations.len() + 1;
        let block = source_block(index, hit, &hit.text);
        let cost = estimate_tokens(&block);
        if used + cost <= budget {
            sources.push_str(&block);
            used += cost;
        } else if citations.is_empty()
            && budget >= MIN_SOURCE_TOKENS + estimate_tokens(&source_block(index, hit, ""))
        {
            // The best source alone is too long: send what fits of it rather than nothing.
            let room = (budget - estimate_tokens(&source_block(index, hit, ""))) * CHARS_PER_TOKEN;
            let cut: String = hit.text.chars().take(room.saturating_sub(2)).collect();
            let block = source_block(index, hit, &format!("{cut}…"));
            used += estimate_tokens(&block);
            sources.push_str(&block);
        } else {
            break;
        }
        citations.push(Citation {
            index,
            document: hit.document.clone(),
            document_id: hit.document_id,
            title: hit.title.clone(),
            location: hit.location_label.clone(),
            snippet: snippet(&hit.text),
            chunk_id: hit.chunk_id,
            score: hit.score,
        });
    }
    let system = if citations.is_empty() {
        format!("{INSTRUCTIONS}\n\n{NO_SOURCES}")
    } else {
        format!("{INSTRUCTIONS}\n\nSources:\n\n{}", sources.trim_end())
    };
    let mut messages = vec![json!({"role": "system", "content": system})];
    messages.extend(conversation.iter().cloned());
    Ok(Prompt {
        messages,
        citations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::Kind;
    use crate::search::Location;

    fn hit(id: i64, text: &str) -> Hit {
        let location = Location {
            page: None,
            heading_path: vec!["Setup".into()],
            char_start: 0,
            char_end: text.chars().count(),
        };
        Hit {
            chunk_id: id,
            document_id: id * 10,
            document: format!("doc{id}.md"),
            title: format!("Doc {id}"),
            kind: Kind::Markdown,
            location_label: location.label(),
            location,
            text: text.to_string(),
            score: 1.0 / id as f32,
            bm25_rank: Some(id as usize),
            dense_rank: None,
        }
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    #[test]
    fn sources_are_numbered_and_cited_in_rank_order() {
        let hits = [hit(1, "Pumps need oil."), hit(2, "Valves need grease.")];
        let prompt = build(&[user("What do pumps need?")], &hits, 4096, 512).unwrap();
        assert_eq!(prompt.messages.len(), 2);
        let system = prompt.messages[0]["content"].as_str().unwrap();
        assert!(system.starts_with(INSTRUCTIONS));
        assert!(
            system.contains("[1] Doc 1 (doc1.md; Setup)\nPumps need oil."),
            "{system}"
        );
        assert!(system.contains("[2] Doc 2"), "{system}");
        assert_eq!(prompt.messages[1], user("What do pumps need?"));
        assert_eq!(
            prompt
                .citations
                .iter()
                .map(|c| (c.index, c.chunk_id))
                .collect::<Vec<_>>(),
            vec![(1, 1), (2, 2)]
        );
        assert_eq!(prompt.citations[0].location, "Setup");
    }

    #[test]
    fn the_prompt_fits_the_context_and_drops_what_does_not() {
        let long = "word ".repeat(300); // 1500 characters, about 500 tokens
        let hits: Vec<Hit> = (1..=10).map(|i| hit(i, &long)).collect();
        let conversation = [user("Question?")];
        for (context, max_tokens) in [(4096, 512), (2048, 256), (1200, 100)] {
            let prompt = build(&conversation, &hits, context, max_tokens).unwrap();
            let total: usize = prompt
                .messages
                .iter()
                .map(|m| TOKENS_PER_MESSAGE + estimate_tokens(m["content"].as_str().unwrap()))
                .sum();
            assert!(
                total + max_tokens <= context,
                "{context}: {total} + {max_tokens}"
            );
            assert!(!prompt.citations.is_empty() && prompt.citations.len() < 10);
        }
        // The first source alone too long: it is cut, not dropped.
        let huge = hit(1, &"x ".repeat(5000));
        let prompt = build(&conversation, &[huge], 1024, 256).unwrap();
        assert_eq!(prompt.citations.len(), 1);
        assert!(prompt.messages[0]["content"]
            .as_str()
            .unwrap()
            .ends_with('…'));
    }

    #[test]
    fn no_room_or_no_sources_are_handled() {
        let error = build(&[user(&"a".repeat(20_000))], &[], 4096, 512).unwrap_err();
        assert!(error.to_string().contains("do not fit"), "{error}");
        let error = build(&[user("hi")], &[], 4096, 5000).unwrap_err();
        assert!(error.to_string().contains("max_tokens 5000"), "{error}");
        let prompt = build(&[user("hi")], &[], 4096, 512).unwrap();
        assert!(prompt.citations.is_empty());
        assert!(prompt.messages[0]["content"]
            .as_str()
            .unwrap()
            .contains("No documents matched"));
    }

    #[test]
    fn content_may_be_a_string_or_text_parts() {
        assert_eq!(content_text(&json!("hi")).unwrap(), "hi");
        let parts = json!([{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]);
        assert_eq!(content_text(&parts).unwrap(), "a\nb");
        assert_eq!(content_text(&json!(5)), None);
        assert_eq!(snippet(&"long ".repeat(100)).chars().count(), SNIPPET_CHARS);
    }
}
