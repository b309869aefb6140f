//! The chat engine: a llama-family GGUF model (SmolLM2, Llama, Mistral… in Q4/Q5/Q8 or
//! K-quants) run by candle's `quantized_llama`, with the tokenizer and chat template the GGUF
//! itself describes, so no tokenizer.json or config travels with the model.
//!
//! The context is min(`llama.context_length`, 4096): candle's quantized llama precomputes its
//! rotary tables for `MAX_SEQ_LEN` = 4096 positions, so SmolLM2's advertised 8192 cannot be
//! used. Models small enough are unpacked to f32 at load, which candle runs ~8× faster on
//! CPU than its quantized kernels (see [`ChatOptions::unpack_weights_up_to_bytes`]). Generation runs on the engine's own worker threads, never on the async runtime, behind
//! the fair queue described in [`queue`]; each admitted request gets its own clone of the
//! weights (the tensors are shared, the KV cache is not). A request whose receiver is dropped
//! (the client went away) stops at its next step.

mod generation;
mod http;
mod queue;
mod template;
mod text;
mod tokenizer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
use tokio::sync::mpsc;

pub use generation::{
    Completion, FinishReason, GenerationEvent, GenerationParams, GenerationStream, Usage,
    DEFAULT_SEED, MAX_STOPS,
};
pub use http::{router, ChatHttpLimits};
pub use template::{ChatMessage, Role, TemplateSource};
pub use tokenizer::ChatTokenizer;

use generation::{Generation, Job, Outcome};
use queue::{FairQueue, Next};
use template::ChatTemplate;

use crate::{Error, Result};

/// Knobs of a [`ChatModel`] that are not in the GGUF.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// The name `/v1/models` and responses report; default `general.name` from the GGUF, else
    /// the file's stem.
    pub name: Option<String>,
    /// Threads that run generation steps. Each step already spreads its matrix products over
    /// all cores (candle's rayon pool), so one worker keeps a small box busy; more help only
    /// where cores outnumber what one step can use.
    pub workers: usize,
    /// Requests generating at once, taking turns token by token. Each holds its own KV cache
    /// (up to ~190 MB for SmolLM2 at 4096 tokens), so this bounds memory.
    pub max_active: usize,
    /// Requests waiting for a place beyond `max_active`; more are refused as overloaded.
    pub max_waiting: usize,
    /// Quantized weights are unpacked to f32 at load when that takes at most this many bytes
    /// (default 2 GiB: SmolLM2-135M takes 0.6 GB instead of 98 MB). On CPU this is ~8× faster:
    /// candle 0.11's Q4_1 dot product is scalar everywhere and its other quantized kernels use
    /// AVX only when the build targets it, while f32 matrix products go through gemm, which
    /// picks AVX2/AVX-512 at run time. Larger models stay quantized; 0 turns this off.
    /// CPU only: on a GPU the weights stay quantized, where candle has CUDA kernels for the
    /// GGUF types (and unpacking there would copy every tensor to the host and back).
    pub unpack_weights_up_to_bytes: u64,
    /// A lower context than the model's (which is at most 4096), to bound each request's KV
    /// cache and prompt time on a small machine.
    pub max_context: Option<usize>,
    /// Where the model runs: the CPU by default, or a GPU from [`crate::cuda_device`] in a
    /// build with the `cuda` feature. Sampling reads each step's logits back to the host.
    pub device: Device,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            name: None,
            workers: 1,
            max_active: 4,
            max_waiting: 64,
            max_context: None,
            unpack_weights_up_to_bytes: 2 << 30,
            device: Device::Cpu,
        }
    }
}

/// Counts since the model was loaded, and the queue as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatStats {
    pub waiting: usize,
    pub active: usize,
    /// Generations that ended by eos, a stop string or their token limit.
    pub completed: u64,
    /// Generations stopped because their caller went away.
    pub cancelled: u64,
    pub failed: u64,
}

/// A loaded chat model and the worker threads that serve it. Share it behind an `Arc`;
/// dropping it stops the workers after their current step.
pub struct ChatModel {
    shared: Arc<Shared>,
}

struct Shared {
    weights: ModelWeights,
    tokenizer: ChatTokenizer,
    template: ChatTemplate,
    name: String,
    context_length: usize,
    device: Device,
    /// Unix seconds of the load, reported as the model's `created` time.
    loaded_at: u64,
    queue: Mutex<FairQueue<Job, Generation>>,
    wake: Condvar,
    shutdown: AtomicBool,
    completed: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, FairQueue<Job, Generation>> {
        // A worker that panicked did so outside the lock (steps run unlocked), so the
        // queue's state is still whole.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The one `.gguf` a model path names: the file itself, or the only one in a directory.
fn find_gguf(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let entries = std::fs::read_dir(path).map_err(|error| Error::InvalidFile {
        path: path.to_path_buf(),
        reason: format!("cannot list it: {error}"),
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.is_file()
                && path
                    .extension()
                    .is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    found.sort();
    match found.len() {
        0 => Err(Error::NoGguf {
            dir: path.to_path_buf(),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(Error::SeveralGguf {
            dir: path.to_path_buf(),
            found,
        }),
    }
}

/// The same GGUF with every quantized tensor converted to f32, in memory. candle's
/// `ModelWeights` keeps f32 tensors as plain tensors (gemm matmuls) and quantized ones as
/// quantized matmuls, and offers no other switch than a process-wide environment variable.
fn unpack_to_f32(
    content: Content,
    file: &mut File,
    device: &Device,
) -> candle_core::Result<(Content, std::io::Cursor<Vec<u8>>)> {
    let mut tensors = Vec::with_capacity(content.tensor_infos.len());
    for (name, info) in &content.tensor_infos {
        let tensor = info.read(file, content.tensor_data_offset, device)?;
        let tensor = match tensor.dtype() {
            GgmlDType::F32 => tensor,
            _ => QTensor::quantize(&tensor.dequantize(device)?, GgmlDType::F32)?,
        };
        tensors.push((name.clone(), tensor));
    }
    // The rewritten file has the writer's own alignment.
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .filter(|(key, _)| key.as_str() != "general.alignment")
        .map(|(key, value)| (key.as_str(), value))
        .collect();
    let tensors: Vec<(&str, &QTensor)> = tensors
        .iter()
        .map(|(name, tensor)| (name.as_str(), tensor))
        .collect();
    let mut unpacked = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut unpacked, &metadata, &tensors)?;
    drop(tensors);
    unpacked.set_position(0);
    let content = Content::read(&mut unpacked)?;
    Ok((content, unpacked))
}

fn metadata_string(content: &Content, key: &str) -> Option<String> {
    content
        .metadata
        .get(key)
        .and_then(|value| value.to_string().ok())
        .cloned()
}

impl ChatModel {
    /// Loads a llama-family GGUF (`path` is the file, or a directory holding exactly one) and
    /// starts its workers. A file that is not GGUF, is truncated or is another architecture is
    /// an error naming it.
    pub fn load(path: &Path, options: ChatOptions) -> Result<ChatModel> {
        let started = Instant::now();
        let path = find_gguf(path)?;
        let invalid = |reason: String| Error::InvalidFile {
            path: path.clone(),
            reason,
        };
        let mut file =
            File::open(&path).map_err(|error| invalid(format!("cannot open it: {error}")))?;
        let content = Content::read(&mut file)
            .map_err(|error| invalid(format!("not a readable GGUF file: {error}")))?;
        let architecture =
            metadata_string(&content, "general.architecture").unwrap_or_else(|| "(none)".into());
        if architecture != "llama" {
            return Err(Error::UnsupportedArchitecture {
                path,
                found: architecture,
            });
        }
        let context_length = content
            .metadata
            .get("llama.context_length")
            .and_then(|value| value.to_u32().ok())
            .map_or(MAX_SEQ_LEN, |length| (length as usize).min(MAX_SEQ_LEN))
            .min(options.max_context.unwrap_or(usize::MAX))
            .max(2);
        let tokenizer = ChatTokenizer::from_gguf(&path, &content)?;
        let template = ChatTemplate::new(
            metadata_string(&content, "tokenizer.chat_template"),
            tokenizer
                .bos_id()
                .map(|id| tokenizer.token_text(id))
                .unwrap_or_default(),
            tokenizer.token_text(tokenizer.eos_id()),
        );
        let name = options
            .name
            .clone()
            .or_else(|| metadata_string(&content, "general.name").filter(|n| !n.is_empty()))
            .or_else(|| {
                path.file_stem()
                    .map(|stem| stem.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "chat-model".to_string());
        let unpacked_bytes: u64 = content
            .tensor_infos
            .values()
            .map(|info| info.shape.elem_count() as u64 * 4)
            .sum();
        let unpack =
            options.device.is_cpu() && unpacked_bytes <= options.unpack_weights_up_to_bytes;
        // candle reports a short file or a missing tensor as an error; the catch is for
        // anything in a corrupt header that slips past its checks.
        let weights = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if unpack {
                let (content, mut unpacked) = unpack_to_f32(content, &mut file, &options.device)?;
                ModelWeights::from_gguf(content, &mut unpacked, &options.device)
            } else {
                ModelWeights::from_gguf(content, &mut file, &options.device)
            }
        }))
        .map_err(|_| invalid("the tensors are corrupt (reading them panicked)".into()))?
        .map_err(|error| invalid(format!("truncated or corrupt tensors: {error}")))?;
        let shared = Arc::new(Shared {
            weights,
            tokenizer,
            template,
            name,
            context_length,
            device: options.device.clone(),
            loaded_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            queue: Mutex::new(FairQueue::new(options.max_waiting, options.max_active)),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            completed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        for index in 0..options.workers.max(1) {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("chat-worker-{index}"))
                .spawn(move || work(&shared))
                .map_err(|error| invalid(format!("cannot start a worker thread: {error}")))?;
        }
        tracing::info!(
            path = %path.display(),
            name = %shared.name,
            context_length,
            device = if options.device.is_cpu() { "cpu" } else { "cuda" },
            unpacked_to_f32 = unpack,
            template = ?shared.template.source(),
            pre = shared.tokenizer.pre(),
            seconds = started.elapsed().as_secs_f64(),
            "chat model loaded"
        );
        Ok(ChatModel { shared })
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Tokens of prompt and answer together: min(`llama.context_length`, 4096,
    /// `ChatOptions::max_context`).
    pub fn context_length(&self) -> usize {
        self.shared.context_length
    }

    pub fn tokenizer(&self) -> &ChatTokenizer {
        &self.shared.tokenizer
    }

    pub fn template_source(&self) -> TemplateSource {
        self.shared.template.source()
    }

    /// Unix seconds of the load.
    pub fn loaded_at(&self) -> u64 {
        self.shared.loaded_at
    }

    /// The prompt the chat template makes of `messages`, ready for the assistant's answer.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        self.shared.template.render(messages)
    }

    /// Queues a chat: template, tokenize, queue. Tokenizing a long prompt is CPU work, so
    /// async callers should call this from a blocking thread.
    pub fn submit_chat(
        &self,
        messages: &[ChatMessage],
        params: &GenerationParams,
    ) -> Result<GenerationStream> {
        let prompt = self.render_chat(messages)?;
        let tokens = self.shared.tokenizer.encode(&prompt)?;
        self.submit_tokens(tokens, params)
    }

    /// Queues a plain completion of `text` (BOS first when the GGUF asks for it).
    pub fn submit_text(&self, text: &str, params: &GenerationParams) -> Result<GenerationStream> {
        let tokenizer = &self.shared.tokenizer;
        let mut tokens = Vec::new();
        if tokenizer.adds_bos() {
            tokens.extend(tokenizer.bos_id());
        }
        tokens.extend(tokenizer.encode(text)?);
        self.submit_tokens(tokens, params)
    }

    /// Queues a prompt given as token ids. The answer's length is clamped to what the
    /// context has left (`finish_reason` `length` when it ends there).
    pub fn submit_tokens(
        &self,
        prompt: Vec<u32>,
        params: &GenerationParams,
    ) -> Result<GenerationStream> {
        params.check()?;
        if prompt.is_empty() {
            return Err(Error::InvalidParameter {
                field: "prompt",
                reason: "is empty: there is nothing to continue".into(),
            });
        }
        let context_length = self.shared.context_length;
        if prompt.len() >= context_length {
            return Err(Error::PromptTooLong {
                prompt_tokens: prompt.len(),
                context_length,
            });
        }
        let room = context_length - prompt.len();
        let max_tokens = params.max_tokens.map_or(room, |wanted| wanted.min(room));
        let (sink, receiver) = mpsc::unbounded_channel();
        let prompt_tokens = prompt.len();
        let job = Job::new(prompt, max_tokens, params, sink);
        {
            let mut queue = self.shared.queue();
            if self.shared.shutdown.load(Ordering::Acquire) {
                return Err(Error::Stopped);
            }
            let waiting = queue.waiting();
            queue
                .submit(job)
                .map_err(|_| Error::Overloaded { waiting })?;
        }
        self.shared.wake.notify_one();
        Ok(GenerationStream::new(receiver, prompt_tokens))
    }

    /// Runs a chat to its end. Dropping the future cancels the generation.
    pub async fn chat(
        &self,
        messages: &[ChatMessage],
        params: &GenerationParams,
    ) -> Result<Completion> {
        self.submit_chat(messages, params)?.collect().await
    }

    /// Runs a plain completion to its end. Dropping the future cancels the generation.
    pub async fn complete(&self, text: &str, params: &GenerationParams) -> Result<Completion> {
        self.submit_text(text, params)?.collect().await
    }

    pub fn stats(&self) -> ChatStats {
        let (waiting, active) = {
            let queue = self.shared.queue();
            (queue.waiting(), queue.active())
        };
        ChatStats {
            waiting,
            active,
            completed: self.shared.completed.load(Ordering::Relaxed),
            cancelled: self.shared.cancelled.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ChatModel {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.wake.notify_all();
    }
}

/// A worker: take the next step the fair queue gives, run it unlocked, report back.
fn work(shared: &Shared) {
    loop {
        let next = {
            let mut queue = shared.queue();
            loop {
                if shared.shutdown.load(Ordering::Acquire) {
                    return;
                }
                match queue.next() {
                    Next::Idle => {
                        queue = shared
                            .wake
                            .wait(queue)
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                    next => break next,
                }
            }
        };
        let mut generation = match next {
            Next::Start(job) => Generation::start(job, &shared.weights),
            Next::Step(generation) => generation,
            Next::Idle => continue,
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            generation.step(&shared.tokenizer, &shared.device)
        }))
        .unwrap_or_else(|_| {
            generation.fail("generation panicked");
            Outcome::Failed
        });
        let counter = match outcome {
            Outcome::Continue => {
                shared.queue().yielded(generation);
                shared.wake.notify_one();
                continue;
            }
            Outcome::Done => &shared.completed,
            Outcome::Cancelled => &shared.cancelled,
            Outcome::Failed => &shared.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Freed outside the lock: a KV cache can be hundreds of megabytes.
        drop(generation);
        shared.queue().finished();
        shared.wake.notify_one();
    }
}

#[cfg(test)]
mod tests;
