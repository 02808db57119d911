//! Generators write what a sample needs besides the author's text: the instruction a passage
//! answers, instruction/answer pairs drawn from a passage, or a plain answer to an instruction
//! (the rejected side of a preference pair).
//!
//! - [`openai::OpenAiGenerator`]: any OpenAI-compatible chat-completions endpoint (through
//!   [`openai::ChatClient`], which `twin eval`'s judge also asks through), with
//!   structured JSON answers checked against their schema, retries, and an answer cache.
//! - [`offline::OfflineGenerator`]: no LLM; instructions from the document's structure.
//! - [`cache::AnswerCache`]: answers by request hash, so that an interrupted build resumes
//!   without asking again.

pub mod cache;
pub mod offline;
pub mod openai;

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use self::offline::OfflineGenerator;
pub use self::openai::{ChatClient, OpenAiGenerator};
use crate::source::Passage;

/// An instruction and its answer, drawn from a passage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    /// What is asked.
    pub instruction: String,
    /// The answer, in the author's voice.
    pub answer: String,
}

/// What a generator wrote, and with which prompt (name and version).
#[derive(Debug, Clone, PartialEq)]
pub struct Written<T> {
    /// The text or pairs.
    pub value: T,
    /// The prompt or rule that wrote it, e.g. `openai/backtranslate-v1`.
    pub prompt: &'static str,
}

/// Why a generator gave nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// This request gave no usable answer (invalid twice, or still failing after every try):
    /// counted, and the sample is dropped.
    Dropped(String),
    /// Nothing will work (bad credentials, unknown model or url): the build stops.
    Fatal(String),
}

/// What a generator call returns.
pub type Generated<T> = Result<Written<T>, Failure>;

/// A writer of instructions and answers.
#[async_trait]
pub trait Generator: Send + Sync {
    /// `offline`, or the configured name and model (`NAME:MODEL`): recorded in each sample.
    fn name(&self) -> String;

    /// What decides its answers (model, prompts and their versions, sampling): part of a
    /// dataset's id, so that another model or prompt makes another dataset.
    fn fingerprint(&self) -> String;

    /// How many passages to work on at once.
    fn concurrency(&self) -> usize;

    /// Its counters.
    fn stats(&self) -> &GeneratorStats;

    /// The instruction to which `passage` is the answer (back-translation).
    async fn instruction(&self, passage: &Passage) -> Generated<String>;

    /// Instruction/answer pairs drawn from `passage`, answers in the author's voice.
    async fn pairs(&self, passage: &Passage) -> Generated<Vec<Pair>>;

    /// An answer to `instruction` without the author's style; `passage` is the author's answer,
    /// which an LLM is not shown.
    async fn plain_answer(&self, instruction: &str, passage: &Passage) -> Generated<String>;
}

/// Counters of a generator's work, shared by its concurrent calls.
#[derive(Debug, Default)]
pub struct GeneratorStats {
    requests: AtomicU64,
    cached: AtomicU64,
    rate_limited: AtomicU64,
    server_errors: AtomicU64,
    timeouts: AtomicU64,
    network_errors: AtomicU64,
    invalid_answers: AtomicU64,
    dropped: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratorCounts {
    /// Requests sent (each try counts).
    pub requests: u64,
    /// Answers taken from the cache instead of asking.
    pub cached: u64,
    /// Tries answered 429.
    pub rate_limited: u64,
    /// Tries answered 5xx.
    pub server_errors: u64,
    /// Tries that timed out.
    pub timeouts: u64,
    /// Tries that failed to connect or broke off.
    pub network_errors: u64,
    /// Answers that were not valid JSON of the expected schema.
    pub invalid_answers: u64,
    /// Calls that gave nothing usable: their samples were dropped.
    pub dropped: u64,
    /// Prompt tokens, as the server reported them.
    pub prompt_tokens: u64,
    /// Completion tokens, as the server reported them.
    pub completion_tokens: u64,
}

/// The counters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    Requests,
    Cached,
    RateLimited,
    ServerErrors,
    Timeouts,
    NetworkErrors,
    InvalidAnswers,
    Dropped,
    PromptTokens,
    CompletionTokens,
}

impl GeneratorStats {
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        let slot = match counter {
            Counter::Requests => &self.requests,
            Counter::Cached => &self.cached,
            Counter::RateLimited => &self.rate_limited,
            Counter::ServerErrors => &self.server_errors,
            Counter::Timeouts => &self.timeouts,
            Counter::NetworkErrors => &self.network_errors,
            Counter::InvalidAnswers => &self.invalid_answers,
            Counter::Dropped => &self.dropped,
            Counter::PromptTokens => &self.prompt_tokens,
            Counter::CompletionTokens => &self.completion_tokens,
        };
        slot.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn counts(&self) -> GeneratorCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GeneratorCounts {
            requests: get(&self.requests),
            cached: get(&self.cached),
            rate_limited: get(&self.rate_limited),
            server_errors: get(&self.server_errors),
            timeouts: get(&self.timeouts),
            network_errors: get(&self.network_errors),
            invalid_answers: get(&self.invalid_answers),
            dropped: get(&self.dropped),
            prompt_tokens: get(&self.prompt_tokens),
            completion_tokens: get(&self.completion_tokens),
        }
    }
}
