//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, rebuilt with the
//! `tokenizers` crate. candle's own `TokenizerFromGguf` does not know the `smollm`
//! pre-tokenizer and falls back to GPT-2's `ByteLevel::default()`, which adds a prefix space and
//! keeps digit runs together: every prompt would be tokenized differently from how SmolLM2 was
//! trained. Here each `tokenizer.ggml.pre` value gets the pipeline llama.cpp uses for it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::{Error, Result};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// llama.cpp's LLAMA3 split: contractions, letters, digits in runs of at most three, punctuation.
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's QWEN2 split: as LLAMA3 but one digit per piece.
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A byte-level BPE tokenizer and what generation needs to know about its tokens.
pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    /// The bytes each token stands for, so generated text can be assembled byte by byte and
    /// a UTF-8 character split across two tokens is never turned into U+FFFD.
    token_bytes: Vec<Vec<u8>>,
    /// Control tokens (`<|im_start|>`, `<|endoftext|>`…) end a generation and are never shown.
    control: Vec<bool>,
    vocab: HashMap<String, u32>,
    bos: Option<u32>,
    eos: u32,
    add_bos: bool,
    pre: String,
}

fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn metadata<'a>(path: &Path, content: &'a Content, key: &str) -> Result<&'a Value> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| invalid(path, format!("no {key} in the GGUF metadata")))
}

fn strings(path: &Path, content: &Content, key: &str) -> Result<Vec<String>> {
    let values = metadata(path, content, key)?
        .to_vec()
        .map_err(|_| invalid(path, format!("{key} is not an array")))?;
    values
        .iter()
        .map(|value| {
            value
                .to_string()
                .cloned()
                .map_err(|_| invalid(path, format!("{key} holds a non-string")))
        })
        .collect()
}

fn integer(value: &Value) -> Option<i64> {
    Some(match value {
        Value::U8(v) => *v as i64,
        Value::I8(v) => *v as i64,
        Value::U16(v) => *v as i64,
        Value::I16(v) => *v as i64,
        Value::U32(v) => *v as i64,
        Value::I32(v) => *v as i64,
        Value::U64(v) => *v as i64,
        Value::I64(v) => *v,
        _ => return None,
    })
}

fn token_id(path: &Path, content: &Content, key: &str, vocab_size: usize) -> Result<Option<u32>> {
    let Some(value) = content.metadata.get(key) else {
        return Ok(None);
    };
    match integer(value) {
        Some(id) if id >= 0 && (id as usize) < vocab_size => Ok(Some(id as u32)),
        _ => Err(invalid(
            path,
            format!("{key} is {value:?}, not a token id below {vocab_size}"),
        )),
    }
}

/// GPT-2's map from the printable characters byte-level BPE writes back to the bytes they
/// stand for (the inverse of `bytes_to_unicode`).
fn byte_level_chars() -> HashMap<char, u8> {
    let mut bytes: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = bytes.clone();
    let mut shifted = 0;
    for byte in 0..256 {
        if !bytes.contains(&byte) {
            bytes.push(byte);
            chars.push(256 + shifted);
            shifted += 1;
        }
    }
    chars
        .into_iter()
        .zip(bytes)
        .filter_map(|(c, b)| Some((char::from_u32(c)?, b as u8)))
        .collect()
}

/// The pre-tokenizer llama.cpp applies for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    let split = |regex: &str| {
        Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|error| Error::Tokenizer(error.to_string()))
    };
    Ok(match pre {
        // SmolLM2's own tokenizer.json: each digit alone, then GPT-2's byte-level split
        // without a prefix space.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into(),
        "llama3" | "llama-bpe" | "smaug-bpe" | "lfm2" => {
            Sequence::new(vec![split(REGEX_LLAMA3)?.into(), byte_level(false).into()]).into()
        }
        "qwen2" | "deepseek-r1-qwen" => {
            Sequence::new(vec![split(REGEX_QWEN2)?.into(), byte_level(false).into()]).into()
        }
        "gpt2" => byte_level(true).into(),
        other => {
            tracing::warn!(
                pre = other,
                "tokenizer.ggml.pre is not one the chat engine knows; tokenizing like GPT-2 \
                 (byte-level, no prefix space), which may differ from how the model was trained"
            );
            byte_level(true).into()
        }
    })
}

impl ChatTokenizer {
    pub(crate) fn from_gguf(path: &Path, content: &Content) -> Result<ChatTokenizer> {
        let model = metadata(path, content, "tokenizer.ggml.model")?
            .to_string()
            .map_err(|_| invalid(path, "tokenizer.ggml.model is not a string"))?;
        if model != "gpt2" {
            return Err(invalid(
                path,
                format!(
                    "tokenizer.ggml.model is \"{model}\"; the chat engine reads byte-level BPE \
                     (\"gpt2\") tokenizers only"
                ),
            ));
        }
        let tokens = strings(path, content, "tokenizer.ggml.tokens")?;
        let merges = strings(path, content, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|merge| match merge.split_once(' ') {
                Some((left, right)) => Ok((left.to_string(), right.to_string())),
                None => Err(invalid(
                    path,
                    format!("tokenizer.ggml.merges holds \"{merge}\", not two tokens"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let types: Vec<i64> = match content.metadata.get("tokenizer.ggml.token_type") {
            Some(value) => value
                .to_vec()
                .map_err(|_| invalid(path, "tokenizer.ggml.token_type is not an array"))?
                .iter()
                .map(|v| integer(v).unwrap_or(1))
                .collect(),
            None => Vec::new(),
        };
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id as u32))
            .collect();
        let bpe_vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(bpe_vocab, merges)
            .build()
            .map_err(|error| invalid(path, format!("tokenizer does not build: {error}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let pre = content
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_else(|| "gpt2".to_string());
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer(&pre)?));
        tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));

        let token_type = |id: usize| types.get(id).copied().unwrap_or(1);
        let control: Vec<bool> = (0..tokens.len())
            .map(|id| token_type(id) == TOKEN_TYPE_CONTROL)
            .collect();
        // Control tokens are split out of any text before BPE sees it (the chat template
        // writes them as text); user-defined ones too, but they decode as ordinary text.
        let added: Vec<AddedToken> = tokens
            .iter()
            .enumerate()
            .filter(|(id, _)| {
                matches!(
                    token_type(*id),
                    TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED
                )
            })
            .map(|(id, token)| AddedToken::from(token.clone(), control[id]))
            .collect();
        tokenizer.add_special_tokens(added).map_err(|error| {
            invalid(
                path,
                format!("control tokens do not fit the tokenizer: {error}"),
            )
        })?;

        let chars = byte_level_chars();
        let token_bytes = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| {
                if matches!(token_type(id), TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED) {
                    return token.as_bytes().to_vec();
                }
                let mut bytes = Vec::with_capacity(token.len());
                for c in token.chars() {
                    match chars.get(&c) {
                        Some(byte) => bytes.push(*byte),
                        None => {
                            let mut buffer = [0; 4];
                            bytes.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                        }
                    }
                }
                bytes
            })
            .collect();

        let bos = token_id(path, content, "tokenizer.ggml.bos_token_id", tokens.len())?;
        let eos = token_id(path, content, "tokenizer.ggml.eos_token_id", tokens.len())?
            .ok_or_else(|| {
                invalid(
                    path,
                    "no tokenizer.ggml.eos_token_id: generation would not know where to stop",
                )
            })?;
        let add_bos = content
            .metadata
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false);
        Ok(ChatTokenizer {
            tokenizer,
            token_bytes,
            control,
            vocab,
            bos,
            eos,
            add_bos,
            pre,
        })
    }

    /// Token ids of `text`. Control tokens written in it (`<|im_start|>`) become their ids,
    /// as llama.cpp does for templated prompts; no BOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|error| Error::Tokenizer(error.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// The text of `ids`; bytes that do not form UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The bytes a token stands for (empty for an id outside the vocabulary).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// The id of a vocabulary entry, written as the GGUF stores it (`Ġworld` for " world").
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// Whether generating this token ends the answer: the end-of-sequence token or any other
    /// control token, which a chat model emits only to end or restart a turn.
    pub fn ends_generation(&self, id: u32) -> bool {
        id == self.eos || self.control.get(id as usize).copied().unwrap_or(false)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Whether raw (untemplated) prompts start with BOS (`tokenizer.ggml.add_bos_token`).
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// The text of a token id as the vocabulary writes it, for the template's bos/eos_token.
    pub(crate) fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.token_bytes(id)).into_owned()
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// `tokenizer.ggml.pre`, which chose the pre-tokenizer.
    pub fn pre(&self) -> &str {
        &self.pre
    }

    /// The `tokenizers` pipeline itself, for checks against its own decoder.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}
