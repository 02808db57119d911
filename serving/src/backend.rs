//! Where the answers are generated: our engine on ONNX Runtime, or an external
//! OpenAI-compatible endpoint (vLLM, TGI, llama.cpp's server, OpenAI, another `twin serve`) for
//! users who serve their model elsewhere. Both give the same events, so the HTTP API streams
//! either the same way.
//!
//! An external model's tokenizer is not at hand: its prompt is measured as one token per four
//! characters (a rough rule for English with BPE vocabularies) against the configured context,
//! which is why packing leaves a margin there.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::engine::{
    Completion, Engine, Event, FinishReason, Generation, GenerationRequest, Prompt,
};
use crate::ServingError;

/// An external OpenAI-compatible chat endpoint.
#[derive(Clone)]
pub struct Remote {
    /// Base url, up to and including `/v1`.
    pub base_url: String,
    /// The model it serves.
    pub model: String,
    /// The API key (never logged or shown).
    pub api_key: Option<String>,
    /// Its context length, tokens.
    pub context_tokens: usize,
    client: reqwest::Client,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("context_tokens", &self.context_tokens)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// A client of `base_url` serving `model`.
    pub fn new(
        base_url: &str,
        model: &str,
        api_key: Option<String>,
        context_tokens: usize,
        timeout: Duration,
    ) -> Result<Self, ServingError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| ServingError::Upstream(format!("HTTP client: {e}")))?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            api_key,
            context_tokens,
            client,
        })
    }
}

/// The model behind the API.
#[derive(Clone)]
pub enum Backend {
    /// Our engine.
    Local(Arc<Engine>),
    /// An external endpoint.
    Remote(Remote),
}

impl Backend {
    /// The model's context length, tokens.
    pub fn context_length(&self) -> usize {
        match self {
            Backend::Local(engine) => engine.info().context_length,
            Backend::Remote(remote) => remote.context_tokens,
        }
    }

    /// Tokens of `prompt`: counted by the engine's tokenizer, estimated for a remote model.
    pub fn count_tokens(&self, prompt: &Prompt) -> Result<usize, ServingError> {
        match self {
            Backend::Local(engine) => Ok(engine.tokenize(prompt)?.len()),
            Backend::Remote(_) => {
                let chars = match prompt {
                    Prompt::Text(t) => t.chars().count(),
                    Prompt::Chat(messages) => {
                        messages.iter().map(|m| m.content.chars().count() + 8).sum()
                    }
                    Prompt::Tokens(ids) => ids.len() * 4,
                };
                Ok(chars.div_ceil(4).max(1))
            }
        }
    }

    /// Start a generation; its tokens come as events.
    pub async fn submit(&self, request: GenerationRequest) -> Result<Generation, ServingError> {
        match self {
            Backend::Local(engine) => engine.submit(request),
            Backend::Remote(remote) => submit_remote(remote, request).await,
        }
    }

    /// Generate and wait for the whole completion.
    pub async fn generate(&self, request: GenerationRequest) -> Result<Completion, ServingError> {
        self.submit(request).await?.collect().await
    }
}

/// Send a streamed chat completion to the endpoint and turn its server-sent events into
/// ours. Dropping the generation's events drops the response, which closes the connection.
async fn submit_remote(
    remote: &Remote,
    request: GenerationRequest,
) -> Result<Generation, ServingError> {
    let params = request.params;
    params.validate(usize::MAX)?;
    let mut body = json!({
        "model": remote.model,
        "stream": true,
        "stream_options": { "include_usage": true },
        "temperature": params.temperature,
        "top_p": params.top_p,
    });
    let object = body
        .as_object_mut()
        .ok_or_else(|| ServingError::Upstream("request body".into()))?;
    match &request.prompt {
        Prompt::Chat(messages) => {
            let messages: Vec<Value> = messages
                .iter()
                .map(|m| json!({"role": m.role, "content": m.content}))
                .collect();
            object.insert("messages".into(), Value::Array(messages));
        }
        Prompt::Text(text) => {
            object.insert(
                "messages".into(),
                json!([{"role": "user", "content": text}]),
            );
        }
        Prompt::Tokens(_) => {
            return Err(ServingError::InvalidParameter {
                name: "prompt".into(),
                reason: "an external model takes text, not token ids".into(),
            })
        }
    }
    // Always bounded: an endpoint without a limit of its own would otherwise write until its
    // context is full, at the operator's cost.
    let max_tokens = params
        .max_tokens
        .unwrap_or(remote.context_tokens)
        .min(remote.context_tokens)
        .max(1);
    object.insert("max_tokens".into(), json!(max_tokens));
    if let Some(seed) = params.seed {
        object.insert("seed".into(), json!(seed));
    }
    if !params.stop.is_empty() {
        object.insert("stop".into(), json!(params.stop));
    }
    let url = format!("{}/chat/completions", remote.base_url);
    let mut post = remote
        .client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    if let Some(key) = &remote.api_key {
        post = post.bearer_auth(key);
    }
    // The url goes to the log only: errors reach API clients, who need not learn where the
    // model runs.
    let response = post.send().await.map_err(|e| {
        let e = e.without_url();
        tracing::warn!(%url, error = %e, "the external model could not be reached");
        ServingError::Upstream(format!("could not be reached: {e}"))
    })?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(300).collect());
        tracing::warn!(%url, %status, %message, "the external model refused");
        return Err(ServingError::Upstream(format!(
            "answered {status}: {message}"
        )));
    }
    let (sender, events) = mpsc::unbounded_channel();
    let seed = params.seed.unwrap_or(0);
    tokio::spawn(read_events(response, sender, seed));
    Ok(Generation {
        prompt_tokens: 0,
        max_tokens,
        events,
    })
}

/// Read `data:` lines until `[DONE]`, sending a token event per content delta and the
/// completion at the end.
async fn read_events(
    mut response: reqwest::Response,
    sender: mpsc::UnboundedSender<Event>,
    seed: u64,
) {
    let mut buffer = String::new();
    let mut text = String::new();
    let mut pieces = 0usize;
    let mut finish = FinishReason::Stop;
    let mut usage = (0usize, None::<usize>);
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                let _ = sender.send(Event::Failed(format!("the external model: {e}")));
                return;
            }
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line = buffer[..end].trim().to_string();
            buffer.drain(..=end);
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                let _ = sender.send(Event::Finished(Completion {
                    text,
                    finish_reason: finish,
                    prompt_tokens: usage.0,
                    completion_tokens: usage.1.unwrap_or(pieces),
                    token_ids: Vec::new(),
                    seed,
                }));
                return;
            }
            let Ok(value) = serde_json::from_str::<Value>(data) else {
                let _ = sender.send(Event::Failed(format!(
                    "the external model sent something that is not JSON: {}",
                    data.chars().take(200).collect::<String>()
                )));
                return;
            };
            if let Some(message) = value["error"]["message"].as_str() {
                let _ = sender.send(Event::Failed(format!("the external model: {message}")));
                return;
            }
            if let Some(u) = value.get("usage").filter(|u| !u.is_null()) {
                usage = (
                    u["prompt_tokens"].as_u64().unwrap_or(0) as usize,
                    u["completion_tokens"].as_u64().map(|n| n as usize),
                );
            }
            let choice = &value["choices"][0];
            if let Some(piece) = choice["delta"]["content"].as_str() {
                if !piece.is_empty() {
                    pieces += 1;
                    text.push_str(piece);
                    let event = Event::Token {
                        id: 0,
                        text: piece.to_string(),
                    };
                    if sender.send(event).is_err() {
                        // Our client went away: dropping the response closes the connection.
                        metrics::counter!("twin_generate_cancelled_total").increment(1);
                        return;
                    }
                }
            }
            if choice["finish_reason"].as_str() == Some("length") {
                finish = FinishReason::Length;
            }
        }
    }
    let _ = sender.send(Event::Failed(
        "the external model's stream ended before [DONE]".into(),
    ));
}
