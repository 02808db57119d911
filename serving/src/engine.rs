//! One engine per loaded model. Requests are checked and tokenised on the caller's thread; a
//! scheduler thread owns the ONNX Runtime session and runs the batch, as text-generation-inference
//! and vLLM do (continuous batching):
//!
//! - waiting requests join at the next step while the batch has room (at most `max_batch_size`
//!   sequences, and prompt plus tokens asked for, summed over the batch, within
//!   `max_batch_tokens`): they are prefilled together, left-padded, and their caches merged into
//!   the running batch's;
//! - otherwise one decode step runs for every running sequence at once, each at its own
//!   position (a row's padding is masked);
//! - a sequence that finishes (end-of-sequence or stop token, stop sequence, token limit, or a
//!   client that went away) leaves at once: its rows of the cache are dropped and the memory
//!   freed, and columns that only padding still used are trimmed.
//!
//! Each sequence samples with its own seeded generator, so its text does not depend on who else
//! shares the batch. Tokens stream to the caller as [`Event`]s.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ort::value::{DynValue, Tensor};
use serde::Serialize;
use tokenizers::Tokenizer;
use tokio::sync::mpsc as events;
use twin_chat::{ChatTemplate, Message};

use crate::model::{LlmModel, ModelInfo, StepInput};
use crate::sampling::{next_token, Rng, SamplingParams, DEFAULT_MAX_TOKENS};
use crate::text::{Detokenizer, StopText};
use crate::ServingError;

/// How an engine batches.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Most sequences decoded together.
    pub max_batch_size: usize,
    /// Most tokens (prompt plus tokens asked for, summed over the running sequences) the batch
    /// may hold in its cache; a request waits until it fits.
    pub max_batch_tokens: usize,
    /// Keep a key/value cache (the default); without it every step runs over the whole text
    /// again, which only a benchmark wants.
    pub use_cache: bool,
    /// ONNX Runtime threads per operator; 0: one per core.
    pub intra_threads: usize,
    /// Most requests waiting for the batch; more are refused (`Overloaded`) instead of
    /// queueing without bound.
    pub max_waiting: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_batch_size: 16,
            max_batch_tokens: 32_768,
            use_cache: true,
            intra_threads: 0,
            max_waiting: 256,
        }
    }
}

/// What to continue.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Plain text, tokenised as is (with the tokenizer's opening token, Llama's BOS).
    Text(String),
    /// A conversation, rendered with the model's chat template and ready for the assistant's
    /// turn.
    Chat(Vec<Message>),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// What to continue.
    pub prompt: Prompt,
    /// How.
    pub params: SamplingParams,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence or stop token, or a stop sequence.
    Stop,
    /// The token limit.
    Length,
}

/// A finished generation.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// The text generated (without a stop sequence that ended it).
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// The ids generated.
    pub token_ids: Vec<u32>,
    /// The seed the draws used (the request's, or the one chosen for it).
    pub seed: u64,
}

/// What a running generation reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A token was generated; `text` is what it completes (empty while a character or a
    /// possible stop sequence is unfinished).
    Token {
        /// Its id.
        id: u32,
        /// Text safe to show now.
        text: String,
    },
    /// Text held back until now (an unfinished character, or what might have begun a stop
    /// sequence), released when the generation ends; no token comes with it.
    Text(String),
    /// The generation ended.
    Finished(Completion),
    /// The model failed to run; the generation is over.
    Failed(String),
}

/// A submitted request: its events as they come.
#[derive(Debug)]
pub struct Generation {
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Most tokens it may generate.
    pub max_tokens: usize,
    /// Its events; the last is `Finished` or `Failed`. Dropping it cancels the request.
    pub events: events::UnboundedReceiver<Event>,
}

impl Generation {
    /// Wait for the whole completion.
    pub async fn collect(mut self) -> Result<Completion, ServingError> {
        while let Some(event) = self.events.recv().await {
            match event {
                Event::Token { .. } | Event::Text(_) => {}
                Event::Finished(done) => return Ok(done),
                Event::Failed(reason) => return Err(ServingError::Runtime(reason)),
            }
        }
        Err(ServingError::Stopped)
    }
}

/// What the scheduler has done so far, for tests and logs.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Prefill passes (each for one or more joining requests).
    pub prefills: AtomicU64,
    /// Decode steps (each for every running sequence).
    pub decode_steps: AtomicU64,
    /// Tokens generated.
    pub tokens: AtomicU64,
    /// The most sequences ever decoded in one step.
    pub largest_batch: AtomicU64,
}

/// A request on its way to the scheduler.
struct Job {
    prompt: Vec<u32>,
    params: SamplingParams,
    max_new: usize,
    seed: u64,
    events: events::UnboundedSender<Event>,
}

/// A model and the thread that runs it.
pub struct Engine {
    jobs: mpsc::Sender<Job>,
    /// Requests submitted and not yet in the batch.
    pending: Arc<AtomicUsize>,
    stats: Arc<EngineStats>,
    info: ModelInfo,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    opening: Vec<u32>,
    options: EngineOptions,
}

impl Engine {
    /// Load the exported model in `dir` and start its scheduler.
    pub fn load(dir: &Path, options: EngineOptions) -> Result<Self, ServingError> {
        if options.max_batch_size == 0 || options.max_batch_tokens == 0 {
            return Err(ServingError::InvalidParameter {
                name: "max_batch_size / max_batch_tokens".into(),
                reason: "must be at least 1".into(),
            });
        }
        let model = LlmModel::load(dir, options.intra_threads)?;
        let info = model.info.clone();
        let tokenizer = model.tokenizer.clone();
        let template = model.template.clone();
        let opening = model.opening.clone();
        let (jobs, queue) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let pending = Arc::new(AtomicUsize::new(0));
        let scheduler = Scheduler {
            pending: pending.clone(),
            stats: stats.clone(),
            model,
            tokenizer: tokenizer.clone(),
            options: options.clone(),
            queue,
            waiting: VecDeque::new(),
            batch: Batch::default(),
        };
        std::thread::Builder::new()
            .name("twin-generate".into())
            .spawn(move || scheduler.run())
            .map_err(|e| ServingError::Runtime(format!("cannot start the scheduler: {e}")))?;
        Ok(Self {
            jobs,
            pending,
            stats,
            info,
            tokenizer,
            template,
            opening,
            options,
        })
    }

    /// What the engine knows of its model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// What the scheduler has done so far.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// A prompt as the model will see it: tokens.
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>, ServingError> {
        let ids = match prompt {
            Prompt::Text(text) => twin_chat::checkpoint::encode(&self.tokenizer, text, true)?,
            Prompt::Chat(messages) => twin_chat::checkpoint::encode_chat(
                &self.tokenizer,
                &self.template,
                messages,
                &self.opening,
            )?,
            Prompt::Tokens(ids) => {
                if let Some(id) = ids.iter().find(|&&id| id as usize >= self.info.vocab_size) {
                    return Err(ServingError::InvalidParameter {
                        name: "prompt".into(),
                        reason: format!(
                            "token {id} is not in this model's vocabulary of {}",
                            self.info.vocab_size
                        ),
                    });
                }
                ids.clone()
            }
        };
        if ids.is_empty() {
            return Err(ServingError::EmptyPrompt);
        }
        Ok(ids)
    }

    /// Check and queue a request; its tokens come as events. A request that cannot be served
    /// (bad parameters, over the context) is refused here and nothing is queued.
    pub fn submit(&self, request: GenerationRequest) -> Result<Generation, ServingError> {
        let params = request.params;
        params.validate(self.info.vocab_size)?;
        let prompt = self.tokenize(&request.prompt)?;
        let context = self.info.context_length;
        let room = context.saturating_sub(prompt.len());
        let max_new = match params.max_tokens {
            Some(n) => n,
            None => DEFAULT_MAX_TOKENS.min(room),
        };
        if max_new == 0 || prompt.len() + max_new > context {
            return Err(ServingError::ContextLength {
                prompt: prompt.len(),
                max_tokens: max_new.max(1),
                context,
            });
        }
        if prompt.len() + max_new > self.options.max_batch_tokens {
            return Err(ServingError::OverBudget {
                needed: prompt.len() + max_new,
                budget: self.options.max_batch_tokens,
            });
        }
        let seed = params.seed.unwrap_or_else(fresh_seed);
        // A place in the queue, given back when the scheduler takes the request into the batch
        // (or drops it, its client gone).
        let waiting = self.pending.fetch_add(1, Ordering::SeqCst);
        if waiting >= self.options.max_waiting {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            metrics::counter!("twin_generate_refused_total").increment(1);
            return Err(ServingError::Overloaded { waiting });
        }
        let (sender, receiver) = events::unbounded_channel();
        let prompt_tokens = prompt.len();
        self.jobs
            .send(Job {
                prompt,
                params,
                max_new,
                seed,
                events: sender,
            })
            .map_err(|_| {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                ServingError::Stopped
            })?;
        metrics::counter!("twin_generate_requests_total").increment(1);
        Ok(Generation {
            prompt_tokens,
            max_tokens: max_new,
            events: receiver,
        })
    }

    /// Generate and wait for the whole completion.
    pub async fn generate(&self, request: GenerationRequest) -> Result<Completion, ServingError> {
        self.submit(request)?.collect().await
    }
}

/// A seed for a request that gave none: different for every request of the process.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut rng = Rng::new(nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32));
    rng.next_u64()
}

/// A running sequence.
struct Sequence {
    /// Prompt, then what was generated.
    tokens: Vec<u32>,
    prompt_len: usize,
    params: SamplingParams,
    max_new: usize,
    seed: u64,
    rng: Rng,
    detokenizer: Detokenizer,
    text: StopText,
    events: events::UnboundedSender<Event>,
}

impl Sequence {
    fn new(job: Job) -> Self {
        let prompt_len = job.prompt.len();
        Self {
            tokens: job.prompt,
            prompt_len,
            rng: Rng::new(job.seed),
            detokenizer: Detokenizer::new(prompt_len),
            text: StopText::new(job.params.stop.clone()),
            params: job.params,
            max_new: job.max_new,
            seed: job.seed,
            events: job.events,
        }
    }

    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Cache positions the sequence holds (every token but the last sampled one).
    fn cached(&self) -> usize {
        self.tokens.len() - 1
    }

    /// Take the next token from `logits`; `true` when the sequence is over.
    fn advance(&mut self, logits: &mut [f32], tokenizer: &Tokenizer, eos: &[u32]) -> bool {
        let id = next_token(logits, &self.tokens, &self.params, &mut self.rng);
        let stop_token = (!self.params.ignore_eos && eos.contains(&id))
            || self.params.stop_token_ids.contains(&id);
        if stop_token {
            self.finish(tokenizer, FinishReason::Stop);
            return true;
        }
        self.tokens.push(id);
        let piece = self.detokenizer.next(tokenizer, &self.tokens);
        let (text, stopped) = self.text.push(&piece);
        if self.events.send(Event::Token { id, text }).is_err() {
            // The client went away: nothing more to do for it.
            metrics::counter!("twin_generate_cancelled_total").increment(1);
            return true;
        }
        if stopped {
            self.finish(tokenizer, FinishReason::Stop);
            return true;
        }
        if self.generated() >= self.max_new {
            self.finish(tokenizer, FinishReason::Length);
            return true;
        }
        false
    }

    fn finish(&mut self, tokenizer: &Tokenizer, reason: FinishReason) {
        let rest = self.detokenizer.finish(tokenizer, &self.tokens);
        let (mut tail, stopped) = self.text.push(&rest);
        if !stopped {
            tail.push_str(&self.text.flush());
        }
        if !tail.is_empty() {
            let _ = self.events.send(Event::Text(tail));
        }
        let reason = if stopped { FinishReason::Stop } else { reason };
        metrics::counter!("twin_generate_tokens_total").increment(self.generated() as u64);
        let _ = self.events.send(Event::Finished(Completion {
            text: self.text.text().to_string(),
            finish_reason: reason,
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
            token_ids: self.tokens[self.prompt_len..].to_vec(),
            seed: self.seed,
        }));
    }
}

/// The running sequences and their cache: `2 * layers` tensors of `[rows, kv_heads, width,
/// head_dim]`, each row left-padded (its last `cached()` columns are its own).
#[derive(Default)]
struct Batch {
    sequences: Vec<Sequence>,
    cache: Option<Vec<DynValue>>,
    width: usize,
}

struct Scheduler {
    /// Requests submitted and not yet in the batch (shared with the engine's handle).
    pending: Arc<AtomicUsize>,
    stats: Arc<EngineStats>,
    model: LlmModel,
    tokenizer: Arc<Tokenizer>,
    options: EngineOptions,
    queue: mpsc::Receiver<Job>,
    waiting: VecDeque<Job>,
    batch: Batch,
}

/// The whole texts of `sequences`, left-padded to the longest: its length, and the ids,
/// positions and attention mask of the rows.
fn left_padded(sequences: &[Sequence]) -> (usize, Vec<i64>, Vec<i64>, Vec<i64>) {
    let width = sequences.iter().map(|s| s.tokens.len()).max().unwrap_or(0);
    let (mut ids, mut positions, mut mask) = (Vec::new(), Vec::new(), Vec::new());
    for s in sequences {
        let pad = width - s.tokens.len();
        ids.extend(std::iter::repeat_n(0, pad));
        ids.extend(s.tokens.iter().map(|&t| i64::from(t)));
        positions.extend(std::iter::repeat_n(0, pad));
        positions.extend(0..s.tokens.len() as i64);
        mask_row(&mut mask, pad, width);
    }
    (width, ids, positions, mask)
}

/// A row's attention mask: `pad` zeros, then ones up to `width`.
fn mask_row(mask: &mut Vec<i64>, pad: usize, width: usize) {
    mask.extend(std::iter::repeat_n(0, pad));
    mask.extend(std::iter::repeat_n(1, width - pad));
}

impl Scheduler {
    fn run(mut self) {
        loop {
            if self.batch.sequences.is_empty() && self.waiting.is_empty() {
                match self.queue.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    // Every handle dropped and nothing left to do.
                    Err(_) => return,
                }
            }
            while let Ok(job) = self.queue.try_recv() {
                self.waiting.push_back(job);
            }
            let before = self.waiting.len();
            self.waiting.retain(|job| !job.events.is_closed());
            let joining = self.admit();
            let left = before - self.waiting.len();
            self.pending.fetch_sub(left, Ordering::SeqCst);
            let step = Instant::now();
            let result = if joining.is_empty() {
                self.decode()
            } else {
                self.prefill(joining)
            };
            metrics::histogram!("twin_generate_step_seconds").record(step.elapsed().as_secs_f64());
            metrics::gauge!("twin_generate_batch_size").set(self.batch.sequences.len() as f64);
            metrics::gauge!("twin_generate_waiting").set(self.waiting.len() as f64);
            if let Err(e) = result {
                tracing::error!(error = %e, "generation step failed; its sequences end");
                for sequence in self.batch.sequences.drain(..) {
                    let _ = sequence.events.send(Event::Failed(e.to_string()));
                }
                self.batch = Batch::default();
            }
        }
    }

    /// Waiting requests that fit in the batch now, first come first served.
    fn admit(&mut self) -> Vec<Job> {
        let mut used: usize = self
            .batch
            .sequences
            .iter()
            .map(|s| s.prompt_len + s.max_new)
            .sum();
        let mut joining = Vec::new();
        while let Some(job) = self.waiting.front() {
            let cost = job.prompt.len() + job.max_new;
            if self.batch.sequences.len() + joining.len() >= self.options.max_batch_size
                || used + cost > self.options.max_batch_tokens
            {
                break;
            }
            used += cost;
            joining.extend(self.waiting.pop_front());
        }
        joining
    }

    /// Run the new requests' prompts (left-padded together), take their first tokens, and merge
    /// them into the batch.
    fn prefill(&mut self, jobs: Vec<Job>) -> Result<(), ServingError> {
        let mut fresh: Vec<Sequence> = jobs.into_iter().map(Sequence::new).collect();
        let (width, ids, positions, mask) = left_padded(&fresh);
        tracing::debug!(
            joining = fresh.len(),
            running = self.batch.sequences.len(),
            width,
            "prefill"
        );
        self.stats.prefills.fetch_add(1, Ordering::Relaxed);
        self.stats
            .tokens
            .fetch_add(fresh.len() as u64, Ordering::Relaxed);
        let output = self.model.forward(StepInput {
            batch: fresh.len(),
            sequence: width,
            ids,
            positions,
            mask,
            cache: None,
        });
        let output = match output {
            Ok(output) => output,
            Err(e) => {
                for s in &fresh {
                    let _ = s.events.send(Event::Failed(e.to_string()));
                }
                return Ok(());
            }
        };
        let mut done = Vec::new();
        for (i, (s, mut logits)) in fresh.iter_mut().zip(output.last_logits).enumerate() {
            if s.advance(&mut logits, &self.tokenizer, &self.model.info.eos_token_ids) {
                done.push(i);
            }
        }
        let new_part = Batch {
            sequences: fresh,
            cache: self.options.use_cache.then_some(output.cache),
            width,
        };
        let old = std::mem::take(&mut self.batch);
        self.batch = self.merge(old, &[], new_part, &done)?;
        Ok(())
    }

    /// One decode step for every running sequence.
    fn decode(&mut self) -> Result<(), ServingError> {
        if self.batch.sequences.is_empty() {
            return Ok(());
        }
        let rows = self.batch.sequences.len();
        let (mut ids, mut positions, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        let (sequence, width) = if self.options.use_cache {
            let width = self.batch.width + 1;
            for s in &self.batch.sequences {
                ids.push(i64::from(*s.tokens.last().unwrap_or(&0)));
                positions.push(s.cached() as i64);
                mask_row(&mut mask, width - s.tokens.len(), width);
            }
            (1, width)
        } else {
            // No cache: the whole text again, left-padded.
            let width;
            (width, ids, positions, mask) = left_padded(&self.batch.sequences);
            (width, width)
        };
        self.stats.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.stats
            .largest_batch
            .fetch_max(rows as u64, Ordering::Relaxed);
        self.stats.tokens.fetch_add(rows as u64, Ordering::Relaxed);
        let output = self.model.forward(StepInput {
            batch: rows,
            sequence,
            ids,
            positions,
            mask,
            cache: self.batch.cache.take(),
        })?;
        if self.options.use_cache {
            self.batch.cache = Some(output.cache);
            self.batch.width = width;
        }
        let mut done = Vec::new();
        for (i, (s, mut logits)) in self
            .batch
            .sequences
            .iter_mut()
            .zip(output.last_logits)
            .enumerate()
        {
            if s.advance(&mut logits, &self.tokenizer, &self.model.info.eos_token_ids) {
                done.push(i);
            }
        }
        if !done.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.batch = self.merge(batch, &done, Batch::default(), &[])?;
        }
        Ok(())
    }

    /// The sequences of `old` but those at `old_done`, then those of `new` but those at
    /// `new_done`, in one cache as narrow as they allow (copied row by row, right-aligned).
    fn merge(
        &self,
        old: Batch,
        old_done: &[usize],
        new: Batch,
        new_done: &[usize],
    ) -> Result<Batch, ServingError> {
        let keep = |sequences: Vec<Sequence>, gone: &[usize]| -> Vec<(usize, Sequence)> {
            sequences
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !gone.contains(i))
                .collect()
        };
        let parts = [
            (old.cache, old.width, keep(old.sequences, old_done)),
            (new.cache, new.width, keep(new.sequences, new_done)),
        ];
        let rows: usize = parts.iter().map(|(_, _, kept)| kept.len()).sum();
        let width = parts
            .iter()
            .flat_map(|(_, _, kept)| kept.iter().map(|(_, s)| s.cached()))
            .max()
            .unwrap_or(0);
        let mut cache = None;
        if self.options.use_cache && rows > 0 {
            let info = &self.model.info;
            let (heads, dim) = (info.kv_heads, info.head_dim);
            let mut tensors = Vec::with_capacity(2 * info.layers);
            for tensor in 0..2 * info.layers {
                let mut out = vec![0f32; rows * heads * width * dim];
                let mut row = 0;
                for (part_cache, part_width, kept) in &parts {
                    if kept.is_empty() {
                        continue;
                    }
                    let source = part_cache
                        .as_ref()
                        .and_then(|c| c.get(tensor))
                        .ok_or_else(|| ServingError::Runtime("a cache tensor is missing".into()))?;
                    let (_, data) = source.try_extract_tensor::<f32>()?;
                    for (from, s) in kept {
                        let len = s.cached();
                        for h in 0..heads {
                            let src = ((from * heads + h) * part_width + part_width - len) * dim;
                            let dst = ((row * heads + h) * width + width - len) * dim;
                            out[dst..dst + len * dim].copy_from_slice(&data[src..src + len * dim]);
                        }
                        row += 1;
                    }
                }
                tensors.push(Tensor::from_array(([rows, heads, width, dim], out))?.into_dyn());
            }
            cache = Some(tensors);
        }
        let sequences = parts
            .into_iter()
            .flat_map(|(_, _, kept)| kept.into_iter().map(|(_, s)| s))
            .collect();
        Ok(Batch {
            sequences,
            cache,
            width,
        })
    }
}
