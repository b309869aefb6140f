//! One generation as a state machine a worker advances a step at a time: a chunk of the
//! prompt, then one token per step, each checked against eos, stop strings and max_tokens.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::ModelWeights;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::text::TextAssembler;
use super::tokenizer::ChatTokenizer;
use crate::{Error, Result};

/// The seed of a sampled request that gives none, so the same request gives the same answer
/// (the speed of light in m/s: a number nobody will mistake for a tuned value).
pub const DEFAULT_SEED: u64 = 299_792_458;

/// At most this many stop strings per request, as OpenAI allows.
pub const MAX_STOPS: usize = 4;

/// Prompt tokens run per step. A 4,000-token prompt in one forward pass would hold the
/// worker for seconds; in chunks, the other active requests keep getting their turns.
const PREFILL_CHUNK: usize = 256;

/// How to generate. The defaults are OpenAI's: temperature 1, top_p 1, no stop strings, as
/// many tokens as the context has room for.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// At most this many tokens are generated; clamped to what the context has left.
    pub max_tokens: Option<usize>,
    /// 0 is greedy (always the likeliest token); otherwise the logits are divided by it.
    pub temperature: f64,
    /// Nucleus sampling: only the likeliest tokens whose probabilities add up to top_p.
    pub top_p: f64,
    /// The answer ends before the first of these appears in the text; it is never sent.
    pub stop: Vec<String>,
    /// The sampler's seed; [`DEFAULT_SEED`] when none is given.
    pub seed: Option<u64>,
    /// OpenAI's penalties, each in [-2, 2], on the tokens this answer has generated so far
    /// (as vLLM does; the prompt's are not counted): a token's logit is lowered by
    /// `presence_penalty` once it has appeared, and by `frequency_penalty` per appearance.
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
}

impl Default for GenerationParams {
    fn default() -> Self {
        GenerationParams {
            max_tokens: None,
            temperature: 1.0,
            top_p: 1.0,
            stop: Vec::new(),
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

impl GenerationParams {
    /// The ranges OpenAI accepts; anything else is the caller's mistake, named.
    pub fn check(&self) -> Result<()> {
        let bad = |field, reason: String| Err(Error::InvalidParameter { field, reason });
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad(
                "temperature",
                format!("is {}; it must be between 0 and 2", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(
                "top_p",
                format!("is {}; it must be above 0 and at most 1", self.top_p),
            );
        }
        for (field, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return bad(field, format!("is {value}; it must be between -2 and 2"));
            }
        }
        if self.max_tokens == Some(0) {
            return bad("max_tokens", "is 0; ask for at least 1 token".into());
        }
        if self.stop.len() > MAX_STOPS {
            return bad(
                "stop",
                format!(
                    "has {} strings; at most {MAX_STOPS} are allowed",
                    self.stop.len()
                ),
            );
        }
        if self.stop.iter().any(String::is_empty) {
            return bad(
                "stop",
                "holds an empty string, which would match at once".into(),
            );
        }
        Ok(())
    }

    fn sampling(&self) -> Sampling {
        if self.temperature == 0.0 {
            Sampling::ArgMax
        } else if self.top_p < 1.0 {
            Sampling::TopP {
                p: self.top_p,
                temperature: self.temperature,
            }
        } else {
            Sampling::All {
                temperature: self.temperature,
            }
        }
    }
}

/// Why an answer ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its turn (eos or another control token) or a stop string appeared.
    Stop,
    /// max_tokens, or the end of the context.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Tokens sampled, the one that ended the turn included.
    pub completion_tokens: usize,
}

/// What a generation sends its caller, in order: text pieces, then `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// The next piece of the answer: whole UTF-8 characters, never part of a stop string.
    Text(String),
    Finished {
        reason: FinishReason,
        usage: Usage,
    },
    /// Our fault (a model error); the detail is for the log.
    Failed(String),
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// The caller's end of a queued generation. Dropping it cancels the generation.
pub struct GenerationStream {
    receiver: UnboundedReceiver<GenerationEvent>,
    prompt_tokens: usize,
}

impl GenerationStream {
    pub(crate) fn new(
        receiver: UnboundedReceiver<GenerationEvent>,
        prompt_tokens: usize,
    ) -> GenerationStream {
        GenerationStream {
            receiver,
            prompt_tokens,
        }
    }

    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// The next event; `None` after the last one, or when the engine stopped.
    pub async fn next(&mut self) -> Option<GenerationEvent> {
        self.receiver.recv().await
    }

    /// Waits for the whole answer.
    pub async fn collect(mut self) -> Result<Completion> {
        let mut text = String::new();
        while let Some(event) = self.next().await {
            match event {
                GenerationEvent::Text(piece) => text.push_str(&piece),
                GenerationEvent::Finished { reason, usage } => {
                    return Ok(Completion {
                        text,
                        finish_reason: reason,
                        usage,
                    })
                }
                GenerationEvent::Failed(detail) => return Err(Error::Generation(detail)),
            }
        }
        Err(Error::Stopped)
    }
}

/// A request as it waits in the queue: no model state yet.
pub(crate) struct Job {
    prompt: Vec<u32>,
    max_tokens: usize,
    sampling: Sampling,
    seed: u64,
    stop: Vec<String>,
    penalties: Penalties,
    sink: UnboundedSender<GenerationEvent>,
}

/// Presence and frequency penalties over the tokens generated so far.
#[derive(Debug, Default)]
pub(crate) struct Penalties {
    presence: f32,
    frequency: f32,
    counts: HashMap<u32, u32>,
}

impl Penalties {
    pub(crate) fn new(params: &GenerationParams) -> Penalties {
        Penalties {
            presence: params.presence_penalty as f32,
            frequency: params.frequency_penalty as f32,
            counts: HashMap::new(),
        }
    }

    pub(crate) fn record(&mut self, token: u32) {
        if self.presence != 0.0 || self.frequency != 0.0 {
            *self.counts.entry(token).or_default() += 1;
        }
    }

    /// The logits with each generated token's lowered; untouched when there is nothing to do.
    pub(crate) fn apply(&self, logits: Tensor) -> Result<Tensor> {
        if self.counts.is_empty() {
            return Ok(logits);
        }
        let mut values = logits.to_vec1::<f32>()?;
        for (&token, &count) in &self.counts {
            if let Some(value) = values.get_mut(token as usize) {
                *value -= self.presence + self.frequency * count as f32;
            }
        }
        let len = values.len();
        Ok(Tensor::from_vec(values, len, logits.device())?)
    }
}

impl Job {
    pub(crate) fn new(
        prompt: Vec<u32>,
        max_tokens: usize,
        params: &GenerationParams,
        sink: UnboundedSender<GenerationEvent>,
    ) -> Job {
        Job {
            prompt,
            max_tokens,
            sampling: params.sampling(),
            seed: params.seed.unwrap_or(DEFAULT_SEED),
            stop: params.stop.clone(),
            penalties: Penalties::new(params),
            sink,
        }
    }
}

/// How a step left the generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Continue,
    Done,
    Cancelled,
    Failed,
}

pub(crate) struct Generation {
    /// A clone of the loaded weights: shared tensors, this request's own KV cache.
    model: ModelWeights,
    prompt: Vec<u32>,
    /// Prompt tokens already in the KV cache.
    prefilled: usize,
    /// The last sampled token, the input of the next step.
    last: Option<u32>,
    generated: usize,
    max_tokens: usize,
    sampler: LogitsProcessor,
    penalties: Penalties,
    text: TextAssembler,
    sink: UnboundedSender<GenerationEvent>,
}

impl Generation {
    pub(crate) fn start(job: Job, weights: &ModelWeights) -> Generation {
        Generation {
            model: weights.clone(),
            prompt: job.prompt,
            prefilled: 0,
            last: None,
            generated: 0,
            max_tokens: job.max_tokens,
            sampler: LogitsProcessor::from_sampling(job.seed, job.sampling),
            penalties: job.penalties,
            text: TextAssembler::new(job.stop),
            sink: job.sink,
        }
    }

    /// Runs one step. A caller that went away (its receiver dropped) is noticed here, before
    /// any work, so a cancelled request costs at most the step in flight.
    pub(crate) fn step(&mut self, tokenizer: &ChatTokenizer, device: &Device) -> Outcome {
        if self.sink.is_closed() {
            return Outcome::Cancelled;
        }
        match self.advance(tokenizer, device) {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::error!(%error, "chat generation failed");
                self.fail(&error.to_string());
                Outcome::Failed
            }
        }
    }

    pub(crate) fn fail(&mut self, detail: &str) {
        let _ = self.sink.send(GenerationEvent::Failed(detail.to_string()));
    }

    fn advance(&mut self, tokenizer: &ChatTokenizer, device: &Device) -> Result<Outcome> {
        let logits = if self.prefilled < self.prompt.len() {
            let end = (self.prefilled + PREFILL_CHUNK).min(self.prompt.len());
            let input = Tensor::new(&self.prompt[self.prefilled..end], device)?.unsqueeze(0)?;
            let logits = self.model.forward(&input, self.prefilled)?;
            self.prefilled = end;
            if end < self.prompt.len() {
                return Ok(Outcome::Continue);
            }
            logits
        } else {
            let Some(last) = self.last else {
                return Err(Error::Generation("no token to continue from".into()));
            };
            let position = self.prompt.len() + self.generated - 1;
            let input = Tensor::new(&[last], device)?.unsqueeze(0)?;
            self.model.forward(&input, position)?
        };
        let logits = self
            .penalties
            .apply(logits.squeeze(0)?.to_dtype(DType::F32)?)?;
        let token = self.sampler.sample(&logits)?;
        self.penalties.record(token);
        self.generated += 1;
        self.last = Some(token);
        if tokenizer.ends_generation(token) {
            return Ok(self.finish(FinishReason::Stop));
        }
        let released = self.text.push(tokenizer.token_bytes(token));
        if !released.text.is_empty()
            && self
                .sink
                .send(GenerationEvent::Text(released.text))
                .is_err()
        {
            return Ok(Outcome::Cancelled);
        }
        if released.stopped {
            return Ok(self.finish(FinishReason::Stop));
        }
        if self.generated >= self.max_tokens {
            return Ok(self.finish(FinishReason::Length));
        }
        Ok(Outcome::Continue)
    }

    fn finish(&mut self, reason: FinishReason) -> Outcome {
        let rest = self.text.finish();
        let usage = Usage {
            prompt_tokens: self.prompt.len(),
            completion_tokens: self.generated,
        };
        let sent = (rest.is_empty() || self.sink.send(GenerationEvent::Text(rest)).is_ok())
            && self
                .sink
                .send(GenerationEvent::Finished { reason, usage })
                .is_ok();
        if sent {
            Outcome::Done
        } else {
            Outcome::Cancelled
        }
    }
}
