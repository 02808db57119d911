//! A generator over any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, TGI,
//! Ollama, llama.cpp's server...).
//!
//! Each call asks for structured JSON (`response_format` with the answer's JSON schema, or
//! JSON mode, as configured) and parses the answer into the type the schema describes, unknown
//! fields refused and empty strings too. An invalid answer is asked once more, then counted and
//! dropped. A request rate limited (429), failed on the server (5xx), timed out or cut off is
//! tried again after a wait (the `Retry-After` header's when given, else doubling from
//! `backoff_ms`), up to `max_attempts` tries, then counted and dropped. Bad credentials, an
//! unknown model or url stop the build. Valid answers (and requests that stayed invalid) are
//! cached by request hash. The API key goes in the `Authorization` header only: it appears in
//! no log, error or cache key.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, warn};
use twin_config::{GeneratorConfig, StructuredOutput};

use super::cache::{AnswerCache, Cached};
use super::{Counter, Failure, Generated, Generator, GeneratorStats, Pair, Written};
use crate::source::Passage;
use crate::{DatasetError, Result};

const INSTRUCTION: &str = "openai/backtranslate-v1";
const PAIRS: &str = "openai/extract-v1";
const PLAIN: &str = "openai/plain-v1";

/// Longest wait a `Retry-After` may impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Longest backoff between tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

const INSTRUCTION_SYSTEM: &str = "You write the instructions of a training set for a writing \
assistant. Given a text, write the one instruction a user could have given for which this text \
is the ideal answer. The instruction is self-contained and specific to the text's content, does \
not mention 'the text', 'the passage' or 'the author', and does not copy sentences from it. \
Reply with JSON only: {\"instruction\": \"...\"}.";

const PAIRS_SYSTEM: &str = "You create instruction and answer pairs to fine-tune a model to \
write like the author of an extract. From the extract, write one to three pairs. Each \
instruction asks for something the extract covers; each answer is written in the author's \
voice, reusing the author's own words, phrasing and tone, and stands on its own without \
mentioning the extract. Reply with JSON only: {\"pairs\": [{\"instruction\": \"...\", \
\"answer\": \"...\"}]}.";

const PLAIN_SYSTEM: &str = "You are a helpful assistant. Answer the user's request. Reply with \
JSON only: {\"answer\": \"...\"}.";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstructionAnswer {
    instruction: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairsAnswer {
    pairs: Vec<Pair>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainAnswer {
    answer: String,
}

fn string_schema(field: &str) -> Value {
    json!({
        "type": "object",
        "properties": { field: { "type": "string" } },
        "required": [field],
        "additionalProperties": false
    })
}

fn pairs_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "pairs": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "instruction": { "type": "string" },
                        "answer": { "type": "string" }
                    },
                    "required": ["instruction", "answer"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["pairs"],
        "additionalProperties": false
    })
}

/// Non-empty after trimming.
fn filled(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        Err(format!("`{field}` is empty"))
    } else {
        Ok(())
    }
}

/// A client of an OpenAI-compatible chat-completions endpoint that asks for JSON of a schema
/// and returns it parsed and checked: what the generator and `twin eval`'s judge ask through.
pub struct ChatClient {
    name: String,
    config: GeneratorConfig,
    api_key: Option<String>,
    client: reqwest::Client,
    cache: Option<Arc<AnswerCache>>,
    stats: GeneratorStats,
}

/// The generator.
pub struct OpenAiGenerator {
    chat: ChatClient,
}

/// How one try ended.
enum Attempt {
    /// The answer's content (or the whole body when it had none).
    Content(String),
    /// Try again after this long.
    Retry(Duration, String),
    /// Stop.
    Fail(Failure),
}

impl OpenAiGenerator {
    /// The generator `name` of the configuration, its answers cached in `cache_path`.
    pub fn new(name: &str, config: &GeneratorConfig, cache_path: &Path) -> Result<Self> {
        Ok(Self {
            chat: ChatClient::new(name, config, Some(cache_path))?,
        })
    }
}

impl ChatClient {
    /// A client of the endpoint `name` of the configuration; with `cache_path`, answers are
    /// cached there by request hash (and asked again only when the request changes).
    pub fn new(name: &str, config: &GeneratorConfig, cache_path: Option<&Path>) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .build()
            .map_err(|e| DatasetError::Generator {
                generator: name.to_string(),
                reason: format!("HTTP client: {e}"),
            })?;
        Ok(Self {
            name: name.to_string(),
            config: config.clone(),
            api_key: config.resolve_api_key(),
            client,
            cache: match cache_path {
                Some(path) => Some(Arc::new(AnswerCache::open(path)?)),
                None => None,
            },
            stats: GeneratorStats::default(),
        })
    }

    fn endpoint(&self) -> String {
        format!(
            "{}/chat/completions",
            self.config.base_url.trim_end_matches('/')
        )
    }

    /// The endpoint's name and model, `NAME:MODEL`.
    pub fn name(&self) -> String {
        format!("{}:{}", self.name, self.config.model)
    }

    /// Its configuration.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Its counters.
    pub fn stats(&self) -> &GeneratorStats {
        &self.stats
    }

    /// The request body: the same request always gives the same body, and so the same hash.
    pub fn body(&self, system: &str, user: &str, schema_name: &str, schema: &Value) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "messages": [
                { "role": "system", "content": system },
                { "role": "user", "content": user }
            ],
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        });
        let format = match self.config.structured_output {
            StructuredOutput::JsonSchema => Some(json!({
                "type": "json_schema",
                "json_schema": { "name": schema_name, "strict": true, "schema": schema }
            })),
            StructuredOutput::JsonObject => Some(json!({ "type": "json_object" })),
            StructuredOutput::Prompt => None,
        };
        if let (Some(format), Some(object)) = (format, body.as_object_mut()) {
            object.insert("response_format".into(), format);
        }
        body
    }

    /// Ask, parse and check; from the cache when it was asked before. An answer that does not
    /// parse or pass `check` is asked once more, then given up as [`Failure::Dropped`] with
    /// the reason.
    pub async fn ask<T: DeserializeOwned>(
        &self,
        body: Value,
        check: impl Fn(&T) -> Result<(), String>,
    ) -> Result<T, Failure> {
        let text = body.to_string();
        let key = crate::digest([self.config.base_url.as_bytes(), text.as_bytes()]);
        let parse = |content: &str| -> Result<T, String> {
            let value: T = serde_json::from_str(strip_fences(content))
                .map_err(|e| format!("not the JSON asked for: {e}"))?;
            check(&value)?;
            Ok(value)
        };
        let cached = match &self.cache {
            Some(cache) => cache.get(&key),
            None => Ok(None),
        };
        match cached {
            Ok(Some(Cached::Answer(content))) => {
                if let Ok(value) = parse(&content) {
                    self.stats.add(Counter::Cached, 1);
                    return Ok(value);
                }
            }
            Ok(Some(Cached::Invalid(reason))) => {
                self.stats.add(Counter::Cached, 1);
                self.stats.add(Counter::Dropped, 1);
                return Err(Failure::Dropped(reason));
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "answer cache unreadable; asking again"),
        }
        let mut reason = String::new();
        // An invalid answer is asked once more, then dropped.
        for round in 0..2 {
            let content = match self.send(&text).await {
                Ok(content) => content,
                Err(failure) => {
                    if let Failure::Dropped(_) = failure {
                        self.stats.add(Counter::Dropped, 1);
                    }
                    return Err(failure);
                }
            };
            match parse(&content) {
                Ok(value) => {
                    self.remember(&key, &Cached::Answer(content));
                    return Ok(value);
                }
                Err(why) => {
                    self.stats.add(Counter::InvalidAnswers, 1);
                    debug!(round, reason = %why, "invalid answer");
                    reason = why;
                }
            }
        }
        self.stats.add(Counter::Dropped, 1);
        warn!(endpoint = %self.name, reason = %reason, "answer invalid twice: given up");
        self.remember(&key, &Cached::Invalid(reason.clone()));
        Err(Failure::Dropped(reason))
    }

    fn remember(&self, key: &str, answer: &Cached) {
        if let Some(cache) = &self.cache {
            if let Err(e) = cache.put(key, answer) {
                warn!(error = %e, "answer not cached");
            }
        }
    }

    /// Send one request, trying again while a try can help.
    async fn send(&self, body: &str) -> Result<String, Failure> {
        let attempts = self.config.max_attempts.max(1);
        let mut last = String::new();
        for attempt in 0..attempts {
            let backoff = Duration::from_millis(self.config.backoff_ms)
                .saturating_mul(1 << attempt.min(16))
                .min(MAX_BACKOFF);
            match self.try_once(body, backoff).await {
                Attempt::Content(content) => return Ok(content),
                Attempt::Fail(failure) => return Err(failure),
                Attempt::Retry(wait, why) => {
                    last = why;
                    if attempt + 1 < attempts {
                        debug!(attempt, wait_ms = wait.as_millis() as u64, reason = %last, "trying again");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Err(Failure::Dropped(format!(
            "no answer after {attempts} tries: {last}"
        )))
    }

    async fn try_once(&self, body: &str, backoff: Duration) -> Attempt {
        self.stats.add(Counter::Requests, 1);
        let mut request = self
            .client
            .post(self.endpoint())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return self.transport_error(&e, backoff),
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return self.transport_error(&e, backoff),
        };
        let text = String::from_utf8_lossy(&bytes);
        if status.is_success() {
            return Attempt::Content(self.content(&text));
        }
        let message = format!("HTTP {status}: {}", excerpt(&text));
        match status {
            StatusCode::TOO_MANY_REQUESTS => {
                self.stats.add(Counter::RateLimited, 1);
                Attempt::Retry(retry_after.unwrap_or(backoff), message)
            }
            StatusCode::REQUEST_TIMEOUT => {
                self.stats.add(Counter::Timeouts, 1);
                Attempt::Retry(retry_after.unwrap_or(backoff), message)
            }
            s if s.is_server_error() => {
                self.stats.add(Counter::ServerErrors, 1);
                Attempt::Retry(retry_after.unwrap_or(backoff), message)
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                let hint = match status {
                    StatusCode::NOT_FOUND => format!(
                        " (is {} an OpenAI-compatible base url, and {} a model it serves?)",
                        self.config.base_url, self.config.model
                    ),
                    _ => format!(
                        " (check the API key in {} or the generator's api_key)",
                        self.config.api_key_env
                    ),
                };
                Attempt::Fail(Failure::Fatal(format!("{message}{hint}")))
            }
            _ => Attempt::Fail(Failure::Dropped(message)),
        }
    }

    fn transport_error(&self, e: &reqwest::Error, backoff: Duration) -> Attempt {
        if e.is_timeout() {
            self.stats.add(Counter::Timeouts, 1);
            Attempt::Retry(
                backoff,
                format!("no answer within {}s", self.config.timeout_secs),
            )
        } else {
            self.stats.add(Counter::NetworkErrors, 1);
            // reqwest's message names the url, never the headers.
            Attempt::Retry(backoff, format!("request failed: {e}"))
        }
    }

    /// The first choice's message content, with the usage counted; the whole body when it is
    /// not a chat completion (then it fails the answer's parse, as an invalid answer).
    fn content(&self, body: &str) -> String {
        let Ok(value) = serde_json::from_str::<Value>(body) else {
            return body.to_string();
        };
        if let Some(usage) = value.get("usage") {
            let get = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
            self.stats.add(Counter::PromptTokens, get("prompt_tokens"));
            self.stats
                .add(Counter::CompletionTokens, get("completion_tokens"));
        }
        value
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string())
    }
}

/// A model may wrap JSON in a Markdown code fence even when asked not to.
fn strip_fences(content: &str) -> &str {
    let trimmed = content.trim();
    trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .map(str::trim)
        .unwrap_or(trimmed)
}

fn excerpt(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().take(200).collect()
}

/// `Retry-After` as seconds or an HTTP date, capped.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let wait = match value.trim().parse::<f64>() {
        Ok(seconds) if seconds >= 0.0 => Duration::from_secs_f64(seconds),
        _ => httpdate::parse_http_date(value.trim())
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[async_trait]
impl Generator for OpenAiGenerator {
    fn name(&self) -> String {
        self.chat.name()
    }

    fn fingerprint(&self) -> String {
        let config = self.chat.config();
        format!(
            "openai {} {} t={} max={} {INSTRUCTION} {PAIRS} {PLAIN}",
            config.base_url, config.model, config.temperature, config.max_tokens
        )
    }

    fn concurrency(&self) -> usize {
        self.chat.config().concurrency.max(1)
    }

    fn stats(&self) -> &GeneratorStats {
        self.chat.stats()
    }

    async fn instruction(&self, passage: &Passage) -> Generated<String> {
        let mut user = format!("Title: {}\n", passage.title);
        if let Some(heading) = &passage.heading {
            user.push_str(&format!("Section: {heading}\n"));
        }
        user.push_str(&format!("\nText:\n{}", passage.text));
        let body = self.chat.body(
            INSTRUCTION_SYSTEM,
            &user,
            "instruction",
            &string_schema("instruction"),
        );
        let answer: InstructionAnswer = self
            .chat
            .ask(body, |a: &InstructionAnswer| {
                filled("instruction", &a.instruction)
            })
            .await?;
        Ok(Written {
            value: answer.instruction.trim().to_string(),
            prompt: INSTRUCTION,
        })
    }

    async fn pairs(&self, passage: &Passage) -> Generated<Vec<Pair>> {
        let user = format!(
            "Author: {}\nTitle: {}\n\nExtract:\n{}",
            passage.author, passage.title, passage.text
        );
        let body = self
            .chat
            .body(PAIRS_SYSTEM, &user, "pairs", &pairs_schema());
        let answer: PairsAnswer = self
            .chat
            .ask(body, |a: &PairsAnswer| {
                if a.pairs.is_empty() {
                    return Err("`pairs` is empty".into());
                }
                a.pairs.iter().try_for_each(|p| {
                    filled("instruction", &p.instruction)?;
                    filled("answer", &p.answer)
                })
            })
            .await?;
        Ok(Written {
            value: answer
                .pairs
                .into_iter()
                .map(|p| Pair {
                    instruction: p.instruction.trim().to_string(),
                    answer: p.answer.trim().to_string(),
                })
                .collect(),
            prompt: PAIRS,
        })
    }

    async fn plain_answer(&self, instruction: &str, _passage: &Passage) -> Generated<String> {
        let body = self.chat.body(
            PLAIN_SYSTEM,
            instruction,
            "answer",
            &string_schema("answer"),
        );
        let answer: PlainAnswer = self
            .chat
            .ask(body, |a: &PlainAnswer| filled("answer", &a.answer))
            .await?;
        Ok(Written {
            value: answer.answer.trim().to_string(),
            prompt: PLAIN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "2".parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after", "86400".parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        headers.insert("retry-after", soon.parse().expect("header"));
        let wait = retry_after(&headers).expect("date");
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }

    #[test]
    fn fenced_json_is_unwrapped() {
        assert_eq!(strip_fences("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(strip_fences(" {\"a\":1} "), "{\"a\":1}");
    }
}
