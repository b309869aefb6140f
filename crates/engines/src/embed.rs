//! The embedding engine: a BERT-family sentence-embedding model loaded from a
//! sentence-transformers directory, pooled and normalised the way that directory says, so its
//! vectors match sentence-transformers' own.

mod http;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig, DTYPE};
use serde::Deserialize;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

pub use http::{router, router_with_limits, HttpLimits};

use crate::{Error, Result};

/// How token vectors become one sentence vector (sentence-transformers' Pooling module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The average over the real (non-padding) tokens.
    Mean,
    /// The first token's vector ([CLS]).
    Cls,
    /// The element-wise maximum over the real tokens.
    Max,
}

/// Knobs of an [`Embedder`] that are not in the model directory.
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    /// At most this many texts go through the model at once; longer inputs are split into
    /// batches of this size. Bounds memory: a batch costs batch × longest × hidden floats per layer.
    pub max_batch_size: usize,
    /// Where the model runs: the CPU by default, or a GPU from [`crate::cuda_device`] in a
    /// build with the `cuda` feature. Vectors come back to the host either way.
    pub device: Device,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            max_batch_size: 32,
            device: Device::Cpu,
        }
    }
}

/// A loaded sentence-embedding model. Cheap to share behind an `Arc`; `embed` takes `&self`.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    dimension: usize,
    max_seq_length: usize,
    max_batch_size: usize,
    name: String,
}

/// Vectors in input order, and how many tokens the model read for them (special tokens
/// included, padding and the truncated tail excluded).
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: usize,
}

#[derive(Deserialize)]
struct ModelKind {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default, rename = "_name_or_path")]
    name_or_path: Option<String>,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

fn required(dir: &Path, file: &'static str) -> Result<PathBuf> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingFile {
            dir: dir.to_path_buf(),
            file,
        })
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|error| Error::InvalidFile {
        path: path.to_path_buf(),
        reason: format!("cannot read it: {error}"),
    })?;
    serde_json::from_str(&text).map_err(|error| Error::InvalidFile {
        path: path.to_path_buf(),
        reason: format!("not the JSON expected: {error}"),
    })
}

/// The Pooling module's folder and whether a Normalize module follows, from modules.json.
/// Without modules.json (a plain transformers checkout) sentence-transformers would build
/// its own mean pooling and no normalisation; we only need the folder name, `1_Pooling`.
fn read_modules(dir: &Path) -> Result<(String, bool)> {
    let path = dir.join("modules.json");
    if !path.is_file() {
        return Ok(("1_Pooling".to_string(), false));
    }
    let modules: Vec<ModuleEntry> = read_json(&path)?;
    let pooling = modules
        .iter()
        .find(|m| m.kind.ends_with(".Pooling"))
        .map(|m| m.path.clone())
        .unwrap_or_else(|| "1_Pooling".to_string());
    // The Normalize module has no weights, so the folder modules.json names for it is often
    // not shipped at all: being listed is what counts.
    let normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
    Ok((pooling, normalize))
}

fn read_pooling(dir: &Path, folder: &str) -> Result<Pooling> {
    let path = dir.join(folder).join("config.json");
    if !path.is_file() {
        return Err(Error::MissingFile {
            dir: dir.to_path_buf(),
            file: if folder == "1_Pooling" {
                "1_Pooling/config.json"
            } else {
                "<pooling folder named in modules.json>/config.json"
            },
        });
    }
    let config: PoolingConfig = read_json(&path)?;
    let unsupported = config.pooling_mode_mean_sqrt_len_tokens
        || config.pooling_mode_weightedmean_tokens
        || config.pooling_mode_lasttoken;
    let chosen: Vec<Pooling> = [
        (config.pooling_mode_mean_tokens, Pooling::Mean),
        (config.pooling_mode_cls_token, Pooling::Cls),
        (config.pooling_mode_max_tokens, Pooling::Max),
    ]
    .into_iter()
    .filter_map(|(on, pooling)| on.then_some(pooling))
    .collect();
    match (chosen.as_slice(), unsupported) {
        ([one], false) => Ok(*one),
        _ => Err(Error::InvalidFile {
            path,
            reason: "pooling must select exactly one of mean, cls or max tokens \
                     (mean_sqrt_len, weightedmean, lasttoken and combinations are not supported)"
                .to_string(),
        }),
    }
}

impl Embedder {
    /// Loads with the default options: CPU, batches of 32.
    pub fn load(dir: &Path) -> Result<Embedder> {
        Embedder::load_with(dir, EmbedderOptions::default())
    }

    /// Loads a sentence-transformers directory: config.json (must say BERT),
    /// model.safetensors, tokenizer.json, the Pooling module's config.json, and optionally
    /// modules.json (Normalize) and sentence_bert_config.json (max_seq_length).
    pub fn load_with(dir: &Path, options: EmbedderOptions) -> Result<Embedder> {
        let config_path = required(dir, "config.json")?;
        let kind: ModelKind = read_json(&config_path)?;
        let is_bert = match &kind.model_type {
            Some(model_type) => model_type == "bert",
            None => kind.architectures.iter().any(|a| a.starts_with("Bert")),
        };
        if !is_bert {
            let found = match &kind.model_type {
                Some(model_type) => format!("model_type is \"{model_type}\""),
                None => format!(
                    "no model_type, architectures {:?}",
                    kind.architectures.as_slice()
                ),
            };
            return Err(Error::NotBert {
                path: config_path,
                found,
            });
        }
        let config: BertConfig = read_json(&config_path)?;
        let weights_path = required(dir, "model.safetensors")?;
        let tokenizer_path = required(dir, "tokenizer.json")?;
        let (pooling_folder, normalize) = read_modules(dir)?;
        let pooling = read_pooling(dir, &pooling_folder)?;

        let sbert_path = dir.join("sentence_bert_config.json");
        let max_seq_length = if sbert_path.is_file() {
            read_json::<SentenceBertConfig>(&sbert_path)?.max_seq_length
        } else {
            None
        }
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);

        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|error| Error::InvalidFile {
                path: tokenizer_path.clone(),
                reason: format!("not a tokenizers JSON file: {error}"),
            })?;
        // tokenizer.json often carries the settings of whoever exported it (all-MiniLM-L6-v2's
        // truncates and pads to a fixed 128); sentence-transformers truncates at the model's
        // max_seq_length and pads each batch to its longest text, so do the same.
        let mut padding = tokenizer
            .get_padding()
            .cloned()
            .unwrap_or_else(|| PaddingParams {
                pad_id: config.pad_token_id as u32,
                ..PaddingParams::default()
            });
        padding.strategy = PaddingStrategy::BatchLongest;
        padding.pad_to_multiple_of = None;
        tokenizer.with_padding(Some(padding));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..TruncationParams::default()
            }))
            .map_err(|error| Error::Tokenizer(error.to_string()))?;

        let bytes = std::fs::read(&weights_path).map_err(|error| Error::InvalidFile {
            path: weights_path.clone(),
            reason: format!("cannot read it: {error}"),
        })?;
        // Buffered rather than memory-mapped: 90 MB copied once buys freedom from the
        // undefined behaviour of a mapped file changing underneath us.
        let vb = VarBuilder::from_buffered_safetensors(bytes, DTYPE, &options.device).map_err(
            |error| Error::InvalidFile {
                path: weights_path.clone(),
                reason: format!("not a safetensors file: {error}"),
            },
        )?;
        let model = BertModel::load(vb, &config).map_err(|error| Error::InvalidFile {
            path: weights_path.clone(),
            reason: format!("weights do not fit config.json's BERT: {error}"),
        })?;
        let name = kind
            .name_or_path
            .filter(|name| !name.is_empty())
            .or_else(|| {
                dir.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "embedding-model".to_string());
        Ok(Embedder {
            model,
            tokenizer,
            pooling,
            normalize,
            dimension: config.hidden_size,
            max_seq_length,
            max_batch_size: options.max_batch_size.max(1),
            name,
        })
    }

    /// The length of every vector.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Texts longer than this many tokens (special tokens included) are truncated.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// The model's name as its config records it (`_name_or_path`), else the directory's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One vector per text, in order. An empty string is a valid text (its vector is the
    /// pooled [CLS] [SEP]); an empty slice is an error.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(self.embed_counting(texts)?.vectors)
    }

    /// Like [`Embedder::embed`], also counting the tokens read.
    pub fn embed_counting(&self, texts: &[&str]) -> Result<Embeddings> {
        if texts.is_empty() {
            return Err(Error::EmptyInput);
        }
        // A batch is padded to its longest text, and attention costs the square of that: batch
        // texts of similar length together (longest first, as sentence-transformers does),
        // then put the vectors back in the caller's order.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].chars().count()));
        let mut vectors = vec![Vec::new(); texts.len()];
        let mut tokens = 0;
        for indices in order.chunks(self.max_batch_size) {
            let batch: Vec<&str> = indices.iter().map(|&i| texts[i]).collect();
            let (batch_vectors, batch_tokens) = self.embed_batch(&batch)?;
            for (&i, vector) in indices.iter().zip(batch_vectors) {
                vectors[i] = vector;
            }
            tokens += batch_tokens;
        }
        Ok(Embeddings { vectors, tokens })
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<(Vec<Vec<f32>>, usize)> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|error| Error::Tokenizer(error.to_string()))?;
        let device = &self.model.device;
        let rows = encodings.len();
        let width = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(rows * width);
        let mut type_ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for encoding in &encodings {
            ids.extend_from_slice(encoding.get_ids());
            type_ids.extend_from_slice(encoding.get_type_ids());
            mask.extend_from_slice(encoding.get_attention_mask());
        }
        let tokens = mask.iter().map(|&m| m as usize).sum();
        let ids = Tensor::from_vec(ids, (rows, width), device)?;
        let type_ids = Tensor::from_vec(type_ids, (rows, width), device)?;
        let mask = Tensor::from_vec(mask, (rows, width), device)?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?; // (rows, width, dim)

        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (rows, width, 1)
        let pooled = match self.pooling {
            Pooling::Mean => {
                let sums = hidden.broadcast_mul(&mask)?.sum(1)?;
                let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
                sums.broadcast_div(&counts)?
            }
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Max => {
                // Padding must never win the maximum: push it far below any real value,
                // as sentence-transformers does.
                let penalty = ((mask.ones_like()? - &mask)? * -1e9)?;
                hidden.broadcast_add(&penalty)?.max(1)?
            }
        };
        let pooled = if self.normalize {
            let norms = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            pooled.broadcast_div(&norms)?
        } else {
            pooled
        };
        Ok((pooled.to_vec2::<f32>()?, tokens))
    }
}

#[cfg(test)]
mod tests;
