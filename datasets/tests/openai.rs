//! The OpenAI-compatible generator against a local server that speaks the chat-completions wire
//! format and misbehaves on purpose: a 429 with `Retry-After`, a 500, an answer slower than the
//! client's timeout, an answer that is not JSON, answers that miss the schema's field. Each is
//! handled (retried, or asked once more, or counted and dropped), the build finishes, token usage
//! is counted, and a second build asks the server nothing (answers cached by request hash).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use twin_config::{DatasetsConfig, GeneratorConfig};
use twin_datasets::{build, BuildParams, DatasetError, DatasetKind, Generator, OpenAiGenerator};
use twin_testkit::documents::article;
use twin_warehouse::{Snapshot, SqliteWarehouse, Warehouse};

const KEY: &str = "sk-test-secret-7731";

/// What each document's text is about, and the marker that makes the server misbehave.
const DOCUMENTS: [(&str, &str); 8] = [
    ("RATE", "Rate limits protect a shared service: a client that backs off when told keeps everyone's latency low, and a client that retries at once makes an outage worse for all."),
    ("BROKEN", "Servers fail in the middle of the night. An idempotent request can simply be sent again, which is why every write of our pipeline carries the position of its event."),
    ("SLOW", "A timeout is a promise to the caller: it bounds how long anyone waits. Without one, a single slow dependency quietly holds every thread of the process hostage."),
    ("GARBLED", "Structured output turns a chatty model into a component: a schema says what an answer must hold, and a parser refuses whatever does not fit it."),
    ("PARTIAL", "Fine-tuning on one person's writing teaches tone more than facts; retrieval brings the facts, and the two together sound like the author and stay correct."),
    ("MISSING", "Event sourcing keeps the log as the truth. Every table is a projection that a replay rebuilds, so a bug in a projection is fixed by replaying, not by patching rows."),
    ("PLAIN-ONE", "Gardening in a small city balcony is mostly about light: tomatoes want six hours of sun, while mint and parsley are happy with a bright corner and regular water."),
    ("PLAIN-TWO", "Sourdough rewards patience. A starter fed twice a day for a week, a long cold proof overnight, and a very hot oven give a crust that crackles as it cools."),
];

#[derive(Default)]
struct Server {
    calls: BTreeMap<String, u32>,
    times: BTreeMap<String, Vec<Instant>>,
    requests: u32,
    ok_responses: u64,
}

type Shared = Arc<Mutex<Server>>;

fn reply(status: StatusCode, body: Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("response")
}

fn completion(content: &str) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "mock",
        "choices": [{ "index": 0, "finish_reason": "stop",
                      "message": { "role": "assistant", "content": content } }],
        "usage": { "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15 }
    })
}

async fn chat(State(server): State<Shared>, headers: HeaderMap, body: String) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}"))
    {
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({ "error": { "message": "Incorrect API key provided", "type": "invalid_request_error" } }),
        );
    }
    let request: Value = serde_json::from_str(&body).expect("request body is JSON");
    // Structured output: the answer's JSON schema goes with the request.
    let required = request.pointer("/response_format/json_schema/schema/required/0");
    if required != Some(&json!("instruction")) {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({ "error": { "message": "no json_schema response_format" } }),
        );
    }
    let user = request
        .pointer("/messages/1/content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let marker = DOCUMENTS
        .iter()
        .map(|(m, _)| *m)
        .find(|m| user.contains(m))
        .unwrap_or("?")
        .to_string();
    let n = {
        let mut s = server.lock().expect("state");
        s.requests += 1;
        s.times
            .entry(marker.clone())
            .or_default()
            .push(Instant::now());
        let n = s.calls.entry(marker.clone()).or_default();
        *n += 1;
        *n
    };
    let ok = |content: &str| {
        server.lock().expect("state").ok_responses += 1;
        reply(StatusCode::OK, completion(content))
    };
    let instruction =
        json!({ "instruction": format!("Write about the topic of {marker}, in depth.") })
            .to_string();
    match (marker.as_str(), n) {
        ("RATE", 1) => Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("retry-after", "1")
            .body(Body::from(r#"{"error":{"message":"Rate limit reached"}}"#))
            .expect("response"),
        ("BROKEN", 1) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": { "message": "The server had an error" } }),
        ),
        ("SLOW", 1) => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            ok(&instruction)
        }
        ("GARBLED", _) => ok("Sure! Here is an instruction you could use."),
        ("PARTIAL", 1) => ok(r#"{"topic": "fine-tuning"}"#),
        ("MISSING", _) => ok("{}"),
        _ => ok(&instruction),
    }
}

async fn start() -> (String, Shared) {
    let server = Shared::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/v1"), server)
}

fn generator_config(base_url: &str, key: &str) -> GeneratorConfig {
    GeneratorConfig {
        base_url: base_url.into(),
        model: "mock".into(),
        api_key: key.into(),
        api_key_env: "TWIN_TEST_UNSET_KEY".into(),
        concurrency: 4,
        timeout_secs: 1,
        max_attempts: 4,
        backoff_ms: 10,
        ..GeneratorConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_endpoint_is_retried_counted_and_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = SqliteWarehouse::open(&dir.path().join("warehouse.sqlite")).expect("open");
    warehouse.ensure_schema().await.expect("schema");
    let docs: Vec<_> = DOCUMENTS
        .iter()
        .map(|(marker, text)| article(&marker.to_lowercase(), &format!("{marker}. {text}")))
        .collect();
    common::project(&warehouse, &common::chunker(), &docs, 0).await;
    let snapshot = Snapshot::new(warehouse.applied().await.expect("applied"), None, 1);
    let mut params = BuildParams::from_config(&DatasetsConfig::default(), DatasetKind::Instruct);
    params.limits.min_answer = 100;
    let (url, server) = start().await;
    let cache = dir.path().join("answers.sqlite");
    let progress = indicatif::ProgressBar::hidden();

    let generator =
        OpenAiGenerator::new("mock", &generator_config(&url, KEY), &cache).expect("generator");
    let built = build(&warehouse, &snapshot, &params, &generator, &progress)
        .await
        .expect("the build finishes");
    let stats = &built.stats;
    let g = stats.generator;
    assert_eq!(g.rate_limited, 1, "{g:?}");
    assert_eq!(g.server_errors, 1, "{g:?}");
    assert_eq!(g.timeouts, 1, "{g:?}");
    // GARBLED and MISSING twice each, PARTIAL once (its second answer is valid).
    assert_eq!(g.invalid_answers, 5, "{g:?}");
    assert_eq!(g.dropped, 2, "{g:?}");
    assert_eq!(stats.generator_dropped, 2);
    assert_eq!(stats.kept, 6, "{stats:?}");
    let answered: Vec<String> = built
        .samples
        .iter()
        .map(|(_, s)| s.instruction.clone())
        .collect();
    for kept in [
        "RATE",
        "BROKEN",
        "SLOW",
        "PARTIAL",
        "PLAIN-ONE",
        "PLAIN-TWO",
    ] {
        assert!(
            answered.iter().any(|i| i.contains(kept)),
            "{kept} missing from {answered:?}"
        );
    }
    for (_, sample) in &built.samples {
        assert_eq!(sample.origin.generator, "mock:mock");
        assert_eq!(sample.origin.prompts, ["openai/backtranslate-v1"]);
        // The answer is the author's own text, the one the instruction was written for.
        let marker = sample
            .instruction
            .trim_start_matches("Write about the topic of ")
            .trim_end_matches(", in depth.");
        assert!(sample.output.starts_with(marker), "{sample:?}");
    }
    {
        let s = server.lock().expect("state");
        // Every try reached the server, the abandoned slow one included.
        assert_eq!(u64::from(s.requests), g.requests);
        assert_eq!(g.prompt_tokens, 10 * s.ok_responses);
        assert_eq!(g.completion_tokens, 5 * s.ok_responses);
        let rate = &s.times["RATE"];
        assert_eq!(rate.len(), 2);
        assert!(
            rate[1] - rate[0] >= Duration::from_millis(950),
            "Retry-After: 1 was honoured: {:?}",
            rate[1] - rate[0]
        );
    }

    // Built again (an interrupted build resumed): nothing is asked again, the same samples come.
    let before = server.lock().expect("state").requests;
    let again =
        OpenAiGenerator::new("mock", &generator_config(&url, KEY), &cache).expect("generator");
    let rebuilt = build(&warehouse, &snapshot, &params, &again, &progress)
        .await
        .expect("rebuild");
    assert_eq!(server.lock().expect("state").requests, before);
    assert_eq!(rebuilt.samples, built.samples);
    assert_eq!(rebuilt.stats.generator.cached, 8);
    assert_eq!(rebuilt.stats.generator.requests, 0);
    assert_eq!(rebuilt.record.id, built.record.id);

    // A wrong key stops the build with a clear error that does not show the key.
    let wrong = "sk-wrong-key-0000";
    let other_cache = dir.path().join("other.sqlite");
    let locked_out = OpenAiGenerator::new("mock", &generator_config(&url, wrong), &other_cache)
        .expect("generator");
    let err = build(&warehouse, &snapshot, &params, &locked_out, &progress)
        .await
        .expect_err("unauthorised");
    let text = err.to_string();
    assert!(matches!(err, DatasetError::Generator { .. }), "{text}");
    assert!(text.contains("HTTP 401"), "{text}");
    assert!(text.contains("TWIN_TEST_UNSET_KEY"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    assert_eq!(locked_out.name(), "mock:mock");
}
