//! The HTTP API (`twin serve`), on axum: OpenAI's chat completions (streamed as server-sent
//! events or not), completions, embeddings and models; `/rag` and `/v1/search`; health,
//! readiness and Prometheus metrics.
//!
//! Every error is a JSON body in OpenAI's shape (`{"error": {"message", "type", "param",
//! "code"}}`) with the status that says what went wrong: 400 malformed JSON, 422 a value of
//! the wrong type or out of range, 401 a missing or wrong token, 404 an unknown model or
//! route, 413 a body over the limit, 429 (with Retry-After) when every slot and queue place is
//! taken, 504 past the request timeout. A client that goes away cancels its generation.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use twin_chat::Message;

use crate::backend::Backend;
use crate::engine::{Completion, Event, GenerationRequest, Prompt};
use crate::rag;
use crate::retrieval::{parse_kind, Filters, Rerank, Retriever, Source};
use crate::sampling::SamplingParams;
use crate::trace::Tracer;
use crate::ServingError;

/// What the server needs.
pub struct ServerState {
    /// Where answers are generated: our engine, or an external endpoint.
    pub backend: Backend,
    /// The model's name, as requests give it and responses name it.
    pub model: String,
    /// The retriever.
    pub retriever: Arc<Retriever>,
    /// Whose twin this is (named in the system prompt).
    pub author: String,
    /// The limits and defaults.
    pub limits: Limits,
    /// The bearer token, when one is required.
    pub token: Option<String>,
    /// Renders the Prometheus metrics.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Writes request traces to the warehouse, when tracing is on.
    pub tracer: Option<Tracer>,
}

/// Limits and defaults of the API.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests handled at once.
    pub max_concurrent: usize,
    /// Requests waiting beyond those.
    pub max_queued: usize,
    /// Longest a request may take.
    pub timeout: Duration,
    /// Largest body.
    pub max_body_bytes: usize,
    /// Chunks of context by default.
    pub k: usize,
    /// Tokens of an answer by default.
    pub max_tokens: usize,
    /// Rewrites of a query searched besides it, by default.
    pub expansions: usize,
    /// Whether chat completions retrieve context by default.
    pub retrieval: bool,
}

struct App {
    state: ServerState,
    slots: Arc<Semaphore>,
    admitted: AtomicUsize,
}

type Shared = Arc<App>;

/// An API error: a status and OpenAI's error body.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    fn model_not_found(message: String) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
        }
    }

    fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                message,
            )
        }
    }
}

impl From<ServingError> for ApiError {
    fn from(e: ServingError) -> Self {
        match &e {
            ServingError::InvalidParameter { name, .. } => Self::invalid(name, e.to_string()),
            ServingError::EmptyPrompt => Self::invalid("prompt", e.to_string()),
            // The error names no url (the backend logs it): a client learns the upstream's
            // status and reason, not where it is.
            ServingError::Upstream(_) => Self {
                code: Some("upstream_error"),
                ..Self::new(StatusCode::BAD_GATEWAY, "server_error", e.to_string())
            },
            ServingError::Overloaded { .. } => Self {
                code: Some("overloaded"),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    e.to_string(),
                )
            },
            ServingError::ContextLength { .. } | ServingError::OverBudget { .. } => Self {
                code: Some("context_length_exceeded"),
                ..Self::invalid("max_tokens", e.to_string())
            },
            // Internal errors name files and internals: logged, not sent.
            _ => {
                tracing::error!(error = %e, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal error (the server's log says what went wrong)",
                )
            }
        }
    }
}

impl From<twin_embedding::EmbeddingError> for ApiError {
    fn from(e: twin_embedding::EmbeddingError) -> Self {
        ServingError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // The server stopped reading an oversize body part-way: the connection cannot carry
        // another request, and saying so keeps a client from reusing it (and failing its next
        // request on a closed connection).
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

fn json_response(value: &Value) -> Response {
    let mut response = (StatusCode::OK, value.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The router of the API.
pub fn router(state: ServerState) -> Router {
    let app = Arc::new(App {
        slots: Arc::new(Semaphore::new(state.limits.max_concurrent.max(1))),
        admitted: AtomicUsize::new(0),
        state,
    });
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/v1/search", get(search))
        .route("/rag", post(rag_answer))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), admit))
        .route_layer(axum::middleware::from_fn(require_json))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            authenticate,
        ));
    Router::new()
        .merge(api)
        .route(
            "/healthz",
            get(|| async { json_response(&json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "no such route",
            )
        })
        .layer(axum::middleware::from_fn(observe))
        .with_state(app)
}

/// CORS for `origins` (`*`: any).
pub fn cors(origins: &[String]) -> Result<tower_http::cors::CorsLayer, ServingError> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let layer = CorsLayer::new()
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    if origins.iter().any(|o| o == "*") {
        return Ok(layer.allow_origin(Any));
    }
    let parsed = origins
        .iter()
        .map(|o| {
            HeaderValue::from_str(o).map_err(|_| ServingError::InvalidParameter {
                name: "cors_origins".into(),
                reason: format!("`{o}` is not an origin"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(layer.allow_origin(AllowOrigin::list(parsed)))
}

/// Counts requests by route and status, and their latency. The route is the matched route's
/// pattern, never the raw path: a scan of random paths must not grow a label per path.
async fn observe(request: Request, next: Next) -> Response {
    let route = route_label(&request);
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("twin_serve_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("twin_serve_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The metrics label of a request: its matched route (`unmatched` for the fallback's 404s).
fn route_label(request: &Request) -> String {
    request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string())
}

/// Whether the request carries the server's token (always, when the server has none).
fn authorized(app: &App, headers: &HeaderMap) -> bool {
    let Some(token) = &app.state.token else {
        return true;
    };
    // The scheme is case-insensitive (RFC 9110, section 11.1).
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, credentials)| credentials.trim());
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(token.as_bytes());
    let differ = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    differ == 0
}

/// Bearer-token authentication, the token compared in constant time (as digests).
async fn authenticate(State(app): State<Shared>, request: Request, next: Next) -> Response {
    if !authorized(&app, request.headers()) {
        return ApiError {
            code: Some("invalid_api_key"),
            ..ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or wrong bearer token (Authorization: Bearer ...)",
            )
        }
        .into_response();
    }
    next.run(request).await
}

/// A body must say it is JSON: a web page may post `text/plain` or a form to a local server
/// without a CORS preflight, but not `application/json`, so refusing the rest keeps pages from
/// driving a token-less server from a browser.
async fn require_json(request: Request, next: Next) -> Response {
    if request.method() == axum::http::Method::POST {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            let shown = if content_type.is_empty() {
                "no Content-Type".to_string()
            } else {
                format!(
                    "Content-Type `{}`",
                    content_type.chars().take(80).collect::<String>()
                )
            };
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                format!("{shown}: the body must be JSON, sent as Content-Type: application/json"),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Bounded concurrency: `max_concurrent` at once, `max_queued` waiting, the rest refused
/// with 429 and Retry-After; and the request timeout. A streamed answer holds its place until
/// its last event (or the timeout, which ends the stream): its handler returns at the first.
async fn admit(State(app): State<Shared>, request: Request, next: Next) -> Response {
    let limits = app.state.limits.clone();
    let capacity = limits.max_concurrent.max(1) + limits.max_queued;
    let admitted = app.admitted.fetch_add(1, Ordering::SeqCst) + 1;
    let leave = Leave(app.clone());
    metrics::gauge!("twin_serve_admitted_requests").set(admitted as f64);
    if admitted > capacity {
        return ApiError {
            code: Some("overloaded"),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "the server is at capacity ({} requests in flight and {} waiting): try again \
                     shortly",
                    limits.max_concurrent, limits.max_queued
                ),
            )
        }
        .into_response();
    }
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let Ok(slot) = app.slots.clone().acquire_owned().await else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "shutting down",
        )
        .into_response();
    };
    match tokio::time::timeout_at(deadline, next.run(request)).await {
        Ok(response) if is_event_stream(&response) => {
            let (parts, body) = response.into_parts();
            let held = (slot, leave);
            // The permit and the place travel with the stream, and go when it ends or is
            // dropped (a client that left).
            let events = futures::stream::unfold(
                (body.into_data_stream(), held),
                move |(mut body, held)| async move {
                    match tokio::time::timeout_at(deadline, body.next()).await {
                        Ok(Some(item)) => Some((item, (body, held))),
                        Ok(None) => None,
                        Err(_) => {
                            tracing::warn!("a streamed answer reached the request timeout: ended");
                            metrics::counter!("twin_serve_streams_cut_total").increment(1);
                            None
                        }
                    }
                },
            );
            Response::from_parts(parts, Body::from_stream(events))
        }
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            format!(
                "the request took longer than {} s",
                limits.timeout.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Whether a response is a server-sent event stream.
fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// A request's place among those admitted, given back when dropped.
struct Leave(Shared);

impl Drop for Leave {
    fn drop(&mut self) {
        let left = self.0.admitted.fetch_sub(1, Ordering::SeqCst) - 1;
        metrics::gauge!("twin_serve_admitted_requests").set(left as f64);
    }
}

/// The body as `T`: 413 over the limit, 400 when it is not JSON, 422 when it is not `T`.
async fn read_json<T: DeserializeOwned>(app: &App, body: Body) -> Result<T, ApiError> {
    let limit = app.state.limits.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is over the limit of {limit} bytes"),
        )
    })?;
    let mut json = serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("the body is not valid JSON: {inner}"),
            )
        } else if path.is_empty() || path == "." || path == "?" {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                format!("the body is not the request expected: {inner}"),
            )
        } else {
            let param = path
                .split(['.', '['])
                .next()
                .unwrap_or_default()
                .to_string();
            ApiError {
                param: Some(param),
                ..ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request_error",
                    format!("`{path}`: {inner}"),
                )
            }
        }
    })
}

fn check_model(app: &App, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != app.state.model => Err(ApiError::model_not_found(format!(
            "the model `{m}` is not served here; this server serves `{}`",
            app.state.model
        ))),
        _ => Ok(()),
    }
}

/// `stop` as a string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// What chat completions and completions share.
#[derive(Debug, Deserialize)]
struct Sampling {
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    /// Divide the logits of tokens already in the text (1: off), as vLLM's and TGI's servers
    /// take it: small models loop without it.
    repetition_penalty: Option<f32>,
    n: Option<usize>,
    /// Go on past the end-of-sequence token, up to `max_tokens` (as vLLM's server allows; for
    /// benchmarks and tests of long answers).
    ignore_eos: Option<bool>,
}

impl Sampling {
    fn params(&self, default_max: usize) -> Result<SamplingParams, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
        for (name, value) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::invalid(name, format!("{name} is not supported")));
            }
        }
        let defaults = SamplingParams::default();
        Ok(SamplingParams {
            max_tokens: Some(
                self.max_completion_tokens
                    .or(self.max_tokens)
                    .unwrap_or(default_max),
            ),
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            seed: self.seed,
            stop: match &self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s.clone()],
                Some(Stop::Many(v)) => v.clone(),
            },
            ignore_eos: self.ignore_eos.unwrap_or(false),
            repetition_penalty: self
                .repetition_penalty
                .unwrap_or(defaults.repetition_penalty),
            ..defaults
        })
    }
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    /// Retrieve context for the last user message (default on).
    retrieval: Option<bool>,
    /// Return the context with the answer.
    #[serde(default)]
    return_context: bool,
    /// Chunks of context.
    k: Option<usize>,
    /// Only this author's writing.
    author: Option<String>,
    /// Rewrites of the query searched besides it (query expansion), 0 to 5.
    expansions: Option<usize>,
    #[serde(flatten)]
    sampling: Sampling,
}

fn created() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{nanos:x}")
}

fn citations(sources: &[Source]) -> Value {
    Value::Array(
        sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut citation = json!({
                    "n": i + 1,
                    "document_id": s.document_id,
                    "chunk_id": s.chunk_id,
                    "title": s.title,
                    "url": s.url,
                    "kind": s.kind,
                    "platform": s.platform,
                    "author": s.author,
                    "score": s.score,
                    "text": s.text,
                });
                if let Some(score) = s.rerank_score {
                    citation["rerank_score"] = json!(score);
                }
                citation
            })
            .collect(),
    )
}

fn usage(done: &Completion) -> Value {
    json!({
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    })
}

fn finish_reason(done: &Completion) -> &'static str {
    match done.finish_reason {
        crate::engine::FinishReason::Stop => "stop",
        crate::engine::FinishReason::Length => "length",
    }
}

/// A conversation with its retrieved context.
struct Retrieved {
    messages: Vec<Message>,
    sources: Vec<Source>,
    millis: f64,
    rewrites: Vec<String>,
}

/// The conversation with the retrieved context, when retrieval is on.
async fn with_context(
    app: &App,
    messages: Vec<Message>,
    query: &str,
    filters: &Filters,
    k: usize,
    expansions: usize,
    max_tokens: usize,
) -> Result<Retrieved, ApiError> {
    let rewrites = rag::rewrites(&app.state.backend, query, expansions).await?;
    let retrieval = app
        .state
        .retriever
        .search(
            query,
            &rewrites,
            filters,
            k,
            app.state.retriever.default_rerank(true),
        )
        .await?;
    let packed = rag::pack(
        &app.state.backend,
        &app.state.author,
        &messages,
        &retrieval.sources,
        max_tokens,
    )?;
    Ok(Retrieved {
        messages: packed.messages,
        sources: packed.sources,
        millis: retrieval.millis,
        rewrites,
    })
}

/// What a trace says of retrieved chunks.
fn retrieved(sources: &[Source]) -> Value {
    Value::Array(
        sources
            .iter()
            .map(|s| {
                json!({"chunk_id": s.chunk_id, "document_id": s.document_id, "score": s.score,
                           "rerank_score": s.rerank_score})
            })
            .collect(),
    )
}

fn filters_json(filters: &Filters) -> Value {
    json!({
        "author": filters.author,
        "platform": filters.platform,
        "kinds": filters.kinds.iter().map(|k| crate::retrieval::kind_name(*k)).collect::<Vec<_>>(),
        "published_after": filters.published_after,
        "published_before": filters.published_before,
    })
}

/// Record a trace of request `id` when the tracer samples it.
fn trace(app: &App, id: &str, route: &str, body: impl FnOnce() -> Value) {
    if let Some(tracer) = &app.state.tracer {
        if tracer.sampled() {
            tracer.record(id, route, body());
        }
    }
}

async fn chat_completions(State(app): State<Shared>, body: Body) -> Result<Response, ApiError> {
    let request: ChatRequest = read_json(&app, body).await?;
    check_model(&app, request.model.as_deref())?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` is empty"));
    }
    let params = request.sampling.params(app.state.limits.max_tokens)?;
    let messages: Vec<Message> = request
        .messages
        .iter()
        .map(|m| Message::new(&m.role, m.content.clone()))
        .collect();
    for m in &request.messages {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(ApiError::invalid(
                "messages",
                format!("unknown role `{}`: use system, user or assistant", m.role),
            ));
        }
    }
    let started = Instant::now();
    let filters = Filters {
        author: request.author.clone(),
        ..Filters::default()
    };
    // The last user message is what retrieval searches for, and what a trace records.
    let query = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.content.clone());
    let found = if request.retrieval.unwrap_or(app.state.limits.retrieval) {
        let Some(query) = &query else {
            return Err(ApiError::invalid(
                "messages",
                "retrieval needs a user message to search for (or set \"retrieval\": false)",
            ));
        };
        let k = request.k.unwrap_or(app.state.limits.k);
        with_context(
            &app,
            messages,
            query,
            &filters,
            k,
            request.expansions.unwrap_or(app.state.limits.expansions),
            params.max_tokens.unwrap_or(app.state.limits.max_tokens),
        )
        .await?
    } else {
        Retrieved {
            messages,
            sources: Vec::new(),
            millis: 0.0,
            rewrites: Vec::new(),
        }
    };
    let Retrieved {
        messages,
        sources,
        millis: retrieval_ms,
        rewrites,
    } = found;
    let generation = app
        .state
        .backend
        .submit(GenerationRequest {
            prompt: Prompt::Chat(messages),
            params,
        })
        .await?;
    let id = request_id("chatcmpl");
    let context = request.return_context.then(|| citations(&sources));
    let trace_of = {
        let filters = filters_json(&filters);
        let sources = retrieved(&sources);
        move |done: &Completion, total_ms: f64| {
            json!({
                "query": query,
                "rewrites": rewrites,
                "filters": filters,
                "retrieved": sources,
                "prompt_tokens": done.prompt_tokens,
                "completion_tokens": done.completion_tokens,
                "finish_reason": finish_reason(done),
                "answer": done.text,
                "millis": { "retrieval": retrieval_ms, "total": total_ms },
            })
        }
    };
    if request.stream {
        let app_for_trace = app.clone();
        let trace_id = id.clone();
        let on_done = move |done: &Completion| {
            let total = started.elapsed().as_secs_f64() * 1000.0;
            trace(&app_for_trace, &trace_id, "/v1/chat/completions", || {
                trace_of(done, total)
            });
        };
        return Ok(
            stream_chat(app.state.model.clone(), id, generation, context, on_done).into_response(),
        );
    }
    let done = generation.collect().await?;
    trace(&app, &id, "/v1/chat/completions", || {
        trace_of(&done, started.elapsed().as_secs_f64() * 1000.0)
    });
    let mut body = json!({
        "id": id,
        "object": "chat.completion",
        "created": created(),
        "model": app.state.model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": done.text },
            "finish_reason": finish_reason(&done),
        }],
        "usage": usage(&done),
    });
    if let (Some(context), Some(object)) = (context, body.as_object_mut()) {
        object.insert("context".into(), context);
    }
    Ok(json_response(&body))
}

/// Chat completion chunks as server-sent events, then `[DONE]`. Dropping the stream (the
/// client went away) drops the generation, which the engine then stops.
fn stream_chat(
    model: String,
    id: String,
    mut generation: crate::engine::Generation,
    context: Option<Value>,
    on_done: impl FnOnce(&Completion) + Send + 'static,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let created = created();
    let chunk = move |delta: Value, finish: Option<&str>, extra: Option<(&str, Value)>| {
        let mut value = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        });
        if let (Some((key, extra)), Some(object)) = (extra, value.as_object_mut()) {
            object.insert(key.into(), extra);
        }
        SseEvent::default().data(value.to_string())
    };
    let stream = async_stream(move |mut send| async move {
        let first = match context {
            Some(context) => chunk(
                json!({"role": "assistant", "content": ""}),
                None,
                Some(("context", context)),
            ),
            None => chunk(json!({"role": "assistant", "content": ""}), None, None),
        };
        if !send(first) {
            return;
        }
        while let Some(event) = generation.events.recv().await {
            let sent = match event {
                Event::Token { text, .. } | Event::Text(text) if !text.is_empty() => {
                    send(chunk(json!({ "content": text }), None, None))
                }
                Event::Token { .. } | Event::Text(_) => true,
                Event::Finished(done) => {
                    on_done(&done);
                    send(chunk(
                        json!({}),
                        Some(finish_reason(&done)),
                        Some(("usage", usage(&done))),
                    ));
                    send(SseEvent::default().data("[DONE]"));
                    return;
                }
                Event::Failed(reason) => {
                    send(SseEvent::default().data(
                        json!({"error": {"message": reason, "type": "server_error"}}).to_string(),
                    ));
                    return;
                }
            };
            if !sent {
                return;
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// A stream fed by `body` through a bounded channel; `send` returns false once the receiver
/// (the response) is gone.
fn async_stream<F, Fut>(body: F) -> impl Stream<Item = Result<SseEvent, Infallible>>
where
    F: FnOnce(Box<dyn FnMut(SseEvent) -> bool + Send>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<SseEvent>();
    let send = Box::new(move |event: SseEvent| sender.send(event).is_ok());
    tokio::spawn(body(send));
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|e| (Ok(e), receiver))
    })
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    prompt: String,
    #[serde(default)]
    stream: bool,
    #[serde(flatten)]
    sampling: Sampling,
}

async fn completions(State(app): State<Shared>, body: Body) -> Result<Response, ApiError> {
    let request: CompletionRequest = read_json(&app, body).await?;
    check_model(&app, request.model.as_deref())?;
    if request.stream {
        return Err(ApiError::invalid(
            "stream",
            "streaming is offered by /v1/chat/completions; /v1/completions answers whole",
        ));
    }
    let params = request.sampling.params(app.state.limits.max_tokens)?;
    let done = app
        .state
        .backend
        .generate(GenerationRequest {
            prompt: Prompt::Text(request.prompt),
            params,
        })
        .await?;
    Ok(json_response(&json!({
        "id": request_id("cmpl"),
        "object": "text_completion",
        "created": created(),
        "model": app.state.model,
        "choices": [{ "index": 0, "text": done.text, "finish_reason": finish_reason(&done), "logprobs": null }],
        "usage": usage(&done),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct EmbeddingRequest {
    model: Option<String>,
    input: Input,
    encoding_format: Option<String>,
}

async fn embeddings(State(app): State<Shared>, body: Body) -> Result<Response, ApiError> {
    let request: EmbeddingRequest = read_json(&app, body).await?;
    let embedder = app.state.retriever.embedder().clone();
    if let Some(model) = &request.model {
        if model != embedder.model_id() && model != &app.state.model {
            return Err(ApiError::model_not_found(format!(
                "the model `{model}` is not served here; embeddings come from `{}`",
                embedder.model_id()
            )));
        }
    }
    // The openai client asks for base64 by default: little-endian f32s, base64-encoded.
    let as_base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("unknown encoding_format `{other}`: use float or base64"),
            ))
        }
    };
    let texts = match request.input {
        Input::One(s) => vec![s],
        Input::Many(v) => v,
    };
    if texts.is_empty() || texts.len() > 2048 {
        return Err(ApiError::invalid("input", "give 1 to 2048 texts"));
    }
    let tokens: usize = texts
        .iter()
        .map(|t| {
            embedder
                .tokenizer()
                .encode(t.as_str(), true)
                .map(|e| e.len())
                .unwrap_or(0)
        })
        .sum();
    let vectors = embedder.embed_async(texts).await?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if as_base64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(json_response(&json!({
        "object": "list",
        "data": data,
        "model": embedder.model_id(),
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    })))
}

async fn models(State(app): State<Shared>) -> Response {
    let model = |id: &str| json!({"id": id, "object": "model", "created": 0, "owned_by": "twin"});
    json_response(&json!({
        "object": "list",
        "data": [model(&app.state.model), model(app.state.retriever.embedder().model_id())],
    }))
}

/// Filters and `k` from a query string or a `/rag` body.
fn filters(
    author: Option<String>,
    platform: Option<String>,
    kind: Option<&str>,
    after: Option<i64>,
    before: Option<i64>,
) -> Result<Filters, ApiError> {
    let kinds = match kind {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|k| {
                parse_kind(k).ok_or_else(|| {
                    ApiError::invalid(
                        "kind",
                        format!("unknown kind `{k}`: use article, post or repository"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Filters {
        author: author.filter(|a| !a.trim().is_empty()),
        platform: platform.filter(|p| !p.trim().is_empty()),
        kinds,
        published_after: after,
        published_before: before,
    })
}

async fn search(
    State(app): State<Shared>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let number = |key: &str| -> Result<Option<i64>, ApiError> {
        get(key)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::invalid(key, format!("`{key}` must be an integer, not `{v}`"))
                })
            })
            .transpose()
    };
    let Some(q) = get("q") else {
        return Err(ApiError::invalid("q", "give the query as ?q=..."));
    };
    let k = number("k")?.unwrap_or(app.state.limits.k as i64);
    let filters = filters(
        get("author"),
        get("platform"),
        get("kind").as_deref(),
        number("after")?,
        number("before")?,
    )?;
    let rerank = match get("rerank") {
        Some(name) => Rerank::parse(&name).ok_or_else(|| {
            ApiError::invalid(
                "rerank",
                format!("`rerank` is none, mmr or cross-encoder, not `{name}`"),
            )
        })?,
        None => app.state.retriever.default_rerank(false),
    };
    let retrieval = app
        .state
        .retriever
        .search(&q, &[], &filters, k.max(0) as usize, rerank)
        .await?;
    trace(&app, &request_id("search"), "/v1/search", || {
        json!({
            "query": q,
            "filters": filters_json(&filters),
            "k": k,
            "author_from_query": retrieval.author_from_query,
            "retrieved": retrieved(&retrieval.sources),
            "millis": { "retrieval": retrieval.millis },
        })
    });
    Ok(json_response(&json!({
        "query": q,
        "author_from_query": retrieval.author_from_query,
        "results": citations(&retrieval.sources),
        "millis": retrieval.millis,
    })))
}

#[derive(Debug, Deserialize)]
struct RagRequest {
    query: String,
    k: Option<usize>,
    author: Option<String>,
    platform: Option<String>,
    kind: Option<String>,
    published_after: Option<i64>,
    published_before: Option<i64>,
    /// Rewrites of the query searched besides it (query expansion), 0 to 5.
    expansions: Option<usize>,
    #[serde(flatten)]
    sampling: Sampling,
}

async fn rag_answer(State(app): State<Shared>, body: Body) -> Result<Response, ApiError> {
    let request: RagRequest = read_json(&app, body).await?;
    let params = request.sampling.params(app.state.limits.max_tokens)?;
    let filters = filters(
        request.author,
        request.platform,
        request.kind.as_deref(),
        request.published_after,
        request.published_before,
    )?;
    let k = request.k.unwrap_or(app.state.limits.k);
    let started = Instant::now();
    let found = with_context(
        &app,
        vec![Message::new("user", request.query.clone())],
        &request.query,
        &filters,
        k,
        request.expansions.unwrap_or(app.state.limits.expansions),
        params.max_tokens.unwrap_or(app.state.limits.max_tokens),
    )
    .await?;
    let sources = found.sources;
    let done = app
        .state
        .backend
        .generate(GenerationRequest {
            prompt: Prompt::Chat(found.messages),
            params,
        })
        .await?;
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    trace(&app, &request_id("rag"), "/rag", || {
        json!({
            "query": request.query,
            "rewrites": found.rewrites,
            "filters": filters_json(&filters),
            "k": k,
            "retrieved": retrieved(&sources),
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "finish_reason": finish_reason(&done),
            "answer": done.text,
            "millis": { "retrieval": found.millis, "total": total_ms },
        })
    });
    Ok(json_response(&json!({
        "answer": done.text,
        "rewrites": found.rewrites,
        "context": citations(&sources),
        "model": app.state.model,
        "finish_reason": finish_reason(&done),
        "usage": usage(&done),
        "seconds": started.elapsed().as_secs_f64(),
    })))
}

/// Readiness, for probes that carry no token: what is wrong is logged, and told only to a
/// client with the token (a server with a token set; without one, only the log says).
async fn ready(State(app): State<Shared>, headers: HeaderMap) -> Response {
    match app.state.retriever.check_model().await {
        Ok(()) => json_response(&json!({
            "status": "ready",
            "model": app.state.model,
            "embedding_model": app.state.retriever.embedder().model_id(),
        })),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            let message = if app.state.token.is_some() && authorized(&app, &headers) {
                format!("not ready: {e}")
            } else {
                "not ready (the server's log says why)".to_string()
            };
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).into_response()
        }
    }
}

async fn metrics_text(State(app): State<Shared>) -> Response {
    let text = app
        .state
        .metrics
        .as_ref()
        .map(|render| render())
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    (StatusCode::OK, headers, text).into_response()
}

async fn openapi() -> Response {
    let mut response = (StatusCode::OK, include_str!("../openapi.json")).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Security item 13: what a 500 or a 502 tells a client.
    #[test]
    fn internal_errors_tell_no_paths_and_upstream_errors_no_urls() {
        let internal = ApiError::from(ServingError::Runtime(
            "/home/nora/.twin/models/twin/model.onnx: cannot open".into(),
        ));
        assert_eq!(internal.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !internal.message.contains("/home/nora"),
            "{}",
            internal.message
        );
        assert!(internal.message.contains("log"), "{}", internal.message);
        let store = ApiError::from(ServingError::Store(
            "qdrant at 10.1.2.3:6334 refused".into(),
        ));
        assert!(!store.message.contains("10.1.2.3"), "{}", store.message);
        let upstream = ApiError::from(ServingError::Upstream(
            "answered 401 Unauthorized: bad key".into(),
        ));
        assert_eq!(upstream.status, StatusCode::BAD_GATEWAY);
        assert!(upstream.message.contains("401"), "{}", upstream.message);
        let overloaded = ApiError::from(ServingError::Overloaded { waiting: 256 });
        assert_eq!(overloaded.status, StatusCode::TOO_MANY_REQUESTS);
    }
}
