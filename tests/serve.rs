//! `twin serve` through its real HTTP server on a local port: raw-document events in, `twin
//! stream` over them, then the API as a client sees it: `/v1/search` finds a document's chunk
//! by a sentence of it, `/rag` answers with context from those documents and cites them,
//! `/v1/chat/completions` streams, embeddings and models answer in OpenAI's shapes; and bad
//! requests get the right status and error body, the server unharmed.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};
use twin_eventlog::{publish, EmbeddedLog};
use twin_schemas::Event;
use twin_testkit::documents::substack_article;

const TOKEN: &str = "serve-test-token-5521";

fn twin_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twin"));
    cmd.current_dir(dir)
        .args(args)
        .env("RUST_LOG", "warn,qdrant_edge=error");
    for (key, _) in std::env::vars() {
        if key.starts_with("TWIN_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The small Llama of training/tests/data, with a context long enough for a few chunks.
fn model(dir: &Path) -> PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("training/tests/data/llama");
    let to = dir.join("tiny");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
    let config = to.join("config.json");
    let mut value: Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    value["max_position_embeddings"] = json!(4096);
    std::fs::write(&config, value.to_string()).unwrap();
    to
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Server {
    start_with(
        dir,
        &["--model", "tiny"],
        &[
            ("TWIN_SERVING__API_TOKEN", TOKEN),
            ("TWIN_SERVING__MAX_BODY_BYTES", "65536"),
        ],
    )
}

fn start_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut command = twin_command(dir, &["serve", "--address", "127.0.0.1:0"]);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Server { child, base }
}

const PARAGRAPHS: [&str; 3] = [
    "Rate limits protect a shared service: a client that backs off when told keeps everyone's latency low, and a client that retries at once makes an outage worse for all.",
    "Sourdough rewards patience. A starter fed twice a day for a week, a long cold proof overnight, and a very hot oven give a crust that crackles as it cools.",
    "Event sourcing keeps the log as the truth. Every table is a projection that a replay rebuilds, so a bug in a projection is fixed by replaying, not by patching rows.",
];

/// Three documents as raw-document events on the log, streamed into the stores.
async fn streamed(d: &Path) {
    let docs = [
        substack_article("backoff", &PARAGRAPHS[..1]),
        substack_article("bread", &PARAGRAPHS[1..2]),
        substack_article("events", &PARAGRAPHS[2..]),
    ];
    let log = EmbeddedLog::open(d.join(".twin/log"), 3, false).unwrap();
    let events: Vec<Event> = docs.iter().cloned().map(Event::Raw).collect();
    publish(&log, "raw-documents", &events).await.unwrap();
    drop(log);
    let out = twin_command(d, &["stream", "--once"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// POST `body` as JSON to `url` (no token): the answer's status and text.
async fn post_json(url: &str, body: &Value) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// GET `url` (no token): the answer's status and JSON body.
async fn get_json(url: impl reqwest::IntoUrl) -> (u16, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap(),
    )
}

/// The question both `/rag` checks ask: the "events" article answers it.
fn projection_question() -> Value {
    json!({"query": "How do you fix a bug in a projection?", "max_tokens": 6, "temperature": 0})
}

/// A short streamed chat completion; its body ends with `data: [DONE]`.
async fn assert_streams(base: &str, question: &str) {
    let (status, streamed) = post_json(
        &format!("{base}/v1/chat/completions"),
        &json!({"messages": [{"role": "user", "content": question}], "max_tokens": 4, "stream": true}),
    )
    .await;
    assert_eq!(status, 200, "{streamed}");
    assert!(streamed.trim_end().ends_with("data: [DONE]"), "{streamed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_answers_with_context_and_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    streamed(d).await;
    model(d);
    let server = start(d);
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .send()
    };
    let post = |path: &str, body: String| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let json_of = |text: String| -> Value { serde_json::from_str(&text).unwrap() };
    let expect_status = |status: u16, response: reqwest::Response| async move {
        assert_eq!(
            response.status(),
            status,
            "{}",
            response.text().await.unwrap()
        );
    };

    // Health and readiness need no token.
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());

    // Search finds the document a sentence comes from.
    let found = get("/v1/search?q=a%20very%20hot%20oven%20gives%20a%20crust%20that%20crackles&k=2")
        .await
        .unwrap();
    assert_eq!(found.status(), 200);
    let found = json_of(found.text().await.unwrap());
    let top = &found["results"][0];
    assert_eq!(top["url"], "https://paul.substack.com/p/bread", "{found}");
    assert!(top["text"].as_str().unwrap().contains("Sourdough"));
    // Self-query: the author named in the query becomes the filter.
    let named = json_of(
        get("/v1/search?q=what%20does%20Paul%20Iusztin%20say%20about%20retries")
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(named["author_from_query"], "Paul Iusztin", "{named}");

    // /rag answers with context from those documents and cites them.
    let rag = post(
        "/rag",
        json!({"query": "Why should a client back off when rate limited?", "k": 2, "max_tokens": 8, "temperature": 0})
            .to_string(),
    )
    .await
    .unwrap();
    assert_eq!(rag.status(), 200);
    let rag = json_of(rag.text().await.unwrap());
    assert!(rag["answer"].is_string());
    let context = rag["context"].as_array().unwrap();
    assert!(!context.is_empty(), "{rag}");
    assert_eq!(
        context[0]["url"], "https://paul.substack.com/p/backoff",
        "{rag}"
    );
    assert_eq!(context[0]["n"], 1);
    assert!(rag["usage"]["prompt_tokens"].as_u64().unwrap() > 50);
    // Query expansion: the model's rewrites are searched too, and reported.
    let expanded = post(
        "/rag",
        json!({"query": "Why should a client back off when rate limited?", "k": 2, "max_tokens": 4, "temperature": 0, "expansions": 2})
            .to_string(),
    )
    .await
    .unwrap();
    assert_eq!(expanded.status(), 200);
    let expanded = json_of(expanded.text().await.unwrap());
    assert!(
        expanded["rewrites"].as_array().unwrap().len() <= 2,
        "{expanded}"
    );
    assert!(!expanded["context"].as_array().unwrap().is_empty());
    expect_status(
        422,
        post("/rag", json!({"query": "q", "expansions": 9}).to_string())
            .await
            .unwrap(),
    )
    .await;

    // Chat completions: whole, with the context returned, and streamed.
    let chat = json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "How do you fix a bug in a projection?"}],
        "max_tokens": 6, "temperature": 0, "return_context": true
    });
    let whole = json_of(
        post("/v1/chat/completions", chat.to_string())
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        whole["context"][0]["url"], "https://paul.substack.com/p/events",
        "{whole}"
    );
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let response = post("/v1/chat/completions", streamed.to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = response.text().await.unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.len() >= 3, "role, tokens, finish: {text}");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());

    // Embeddings and models.
    let embedded = json_of(
        post("/v1/embeddings", json!({"input": ["a", "b c"]}).to_string())
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(embedded["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        embedded["data"][0]["embedding"].as_array().unwrap().len(),
        384
    );
    let models = json_of(get("/v1/models").await.unwrap().text().await.unwrap());
    assert_eq!(models["data"][0]["id"], "tiny");

    // Bad requests: the right status, OpenAI's error body, and the server goes on.
    let expect = |status: u16, response: reqwest::Response| async move {
        assert_eq!(response.status(), status);
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert!(body["error"]["message"].is_string(), "{body}");
        body
    };
    expect(
        400,
        post("/v1/chat/completions", "{not json".into())
            .await
            .unwrap(),
    )
    .await;
    let wrong = expect(
        422,
        post(
            "/v1/chat/completions",
            json!({"messages": "hello"}).to_string(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert!(
        wrong["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages"),
        "{wrong}"
    );
    expect(
        422,
        post("/rag", json!({"query": "   "}).to_string())
            .await
            .unwrap(),
    )
    .await;
    let big = "word ".repeat(200_000);
    expect(
        413,
        post("/rag", json!({"query": big}).to_string())
            .await
            .unwrap(),
    )
    .await;
    let unknown = expect(
        404,
        post(
            "/v1/chat/completions",
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(unknown["error"]["code"], "model_not_found");
    expect(422, get("/v1/search?q=x&author=nobody").await.unwrap()).await;
    let no_reranker = expect(
        422,
        get("/v1/search?q=x&rerank=cross-encoder").await.unwrap(),
    )
    .await;
    assert!(
        no_reranker["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[serving.reranker]"),
        "{no_reranker}"
    );
    expect(
        422,
        post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}).to_string(),
        )
        .await
        .unwrap(),
    )
    .await;
    let penalty = expect(
        422,
        post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "repetition_penalty": 0})
                .to_string(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert!(
        penalty.to_string().contains("repetition_penalty"),
        "{penalty}"
    );
    let no_token = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap();
    let body = expect(401, no_token).await;
    assert!(!body.to_string().contains(TOKEN));
    let wrong_token = client
        .get(format!("{base}/v1/models"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    expect(401, wrong_token).await;
    // Security item 15: the scheme is case-insensitive (RFC 9110); a JSON body must say so,
    // as a browser's form or text/plain post (no CORS preflight) cannot.
    let lower_case_scheme = client
        .get(format!("{base}/v1/models"))
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower_case_scheme.status(), 200);
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let form = client
            .post(format!("{base}/rag"))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(projection_question().to_string())
            .send()
            .await
            .unwrap();
        let body = expect(415, form).await;
        assert!(body.to_string().contains("application/json"), "{body}");
    }
    // Security item 5: metrics are labelled by route, not by path: probes of random paths,
    // with or without a token, add no series.
    for path in [
        "/v1/models/../../etc/passwd",
        "/wp-admin/setup-config.php",
        "/v1/nope-4711",
    ] {
        let _ = client.get(format!("{base}{path}")).send().await.unwrap();
    }

    // A client that goes away mid-stream: its sequence leaves the scheduler.
    let mut long = chat.clone();
    long["stream"] = json!(true);
    long["max_tokens"] = json!(2000);
    long["retrieval"] = json!(false);
    let mut response = post("/v1/chat/completions", long.to_string())
        .await
        .unwrap();
    assert!(response.chunk().await.unwrap().is_some());
    drop(response);
    let mut left = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics
            .lines()
            .any(|l| l == "twin_generate_cancelled_total 1")
            && metrics.lines().any(|l| l == "twin_generate_batch_size 0")
        {
            left = true;
            break;
        }
    }
    assert!(left, "the abandoned sequence was not cancelled");
    let after = get("/v1/models").await.unwrap();
    assert_eq!(after.status(), 200);
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("twin_serve_requests_total"), "{metrics}");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("twin_serve_requests_total"))
    {
        assert!(
            !line.contains("wp-admin") && !line.contains("nope-4711") && !line.contains("passwd"),
            "a raw path became a label: {line}"
        );
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("route=\"unmatched\"") && l.contains("status=\"404\"")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("route=\"/v1/models\"") && l.contains("status=\"401\"")),
        "{metrics}"
    );

    openai_client_talks_to_the_server(&base);
    drop(server);

    // Each answered request left a trace in the warehouse: route, query, chunks and scores,
    // tokens, times, model; the answered queries export as an evaluation dataset.
    let run = |args: &[&str]| {
        let out = twin_command(d, args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list = run(&["traces", "list", "--limit", "100"]);
    assert!(
        list.contains("/rag") && list.contains("/v1/search"),
        "{list}"
    );
    let rag_trace = list
        .lines()
        .find(|l| l.contains("/rag"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let shown: Value = serde_json::from_str(&run(&["traces", "show", &rag_trace])).unwrap();
    assert_eq!(shown["model"], "tiny");
    assert_eq!(
        shown["trace"]["query"],
        "Why should a client back off when rate limited?"
    );
    assert!(shown["trace"]["retrieved"][0]["score"].as_f64().unwrap() > 0.0);
    assert!(shown["trace"]["millis"]["retrieval"].as_f64().unwrap() > 0.0);
    let exported = run(&["traces", "export", "--out", "asked"]);
    assert!(exported.contains("answered queries"), "{exported}");
    let imported = run(&["dataset", "import", "asked", "--name", "asked"]);
    assert!(imported.contains("test"), "{imported}");
}

/// The official `openai` package (PyPI) against the server: a chat completion, a streamed
/// one, embeddings, the models list, and an error it raises as the right exception.
fn openai_client_talks_to_the_server(base: &str) {
    let test = "openai_client_talks_to_the_server";
    let Some(python) = twin_testkit::python::torch_python_with_or_skip(test, &["openai"]) else {
        return;
    };
    let script = r#"
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2], max_retries=0)
messages = [{"role": "user", "content": "How do you fix a bug in a projection?"}]
whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0,
                                       extra_body={"return_context": True})
pieces = []
finish = None
for chunk in client.chat.completions.create(model="tiny", messages=messages, max_tokens=5,
                                            temperature=0, stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.choices and chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
embedded = client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=["one", "two"])
models = [m.id for m in client.models.list()]
try:
    client.chat.completions.create(model="gpt-9", messages=messages)
    error = None
except openai.NotFoundError as e:
    error = {"status": e.status_code, "code": e.code, "message": e.message}
print(json.dumps({
    "version": openai.__version__,
    "content": whole.choices[0].message.content,
    "usage": whole.usage.completion_tokens,
    "context": (whole.model_extra or {}).get("context"),
    "streamed": "".join(pieces),
    "finish": finish,
    "embeddings": [len(d.embedding) for d in embedded.data],
    "models": models,
    "error": error,
}))
"#;
    let result = twin_testkit::python::run_json(&python, script, &[base, TOKEN])
        .expect("the openai client script ran");
    assert!(result["content"].is_string(), "{result}");
    assert!(result["usage"].as_u64().unwrap() >= 1);
    assert_eq!(
        result["context"][0]["url"], "https://paul.substack.com/p/events",
        "{result}"
    );
    assert_eq!(
        result["streamed"], result["content"],
        "the same greedy text, streamed"
    );
    assert!(result["finish"].is_string());
    assert_eq!(result["embeddings"], json!([384, 384]));
    assert_eq!(result["models"][0], "tiny");
    assert_eq!(result["error"]["status"], 404, "{result}");
    assert_eq!(result["error"]["code"], "model_not_found");
}

/// Generation on an external OpenAI-compatible endpoint (here another `twin serve`, on its
/// own data, retrieval off), retrieval on this one: `/rag` answers with this server's context
/// and the other's words, streaming goes through, and the other server saw the requests.
#[tokio::test(flavor = "multi_thread")]
async fn an_external_model_generates_while_retrieval_stays_here() {
    let upstream_dir = tempfile::tempdir().unwrap();
    model(upstream_dir.path());
    let upstream_token = "upstream-token-0042";
    let upstream = start_with(
        upstream_dir.path(),
        &["--model", "tiny"],
        &[
            ("TWIN_SERVING__API_TOKEN", upstream_token),
            ("TWIN_SERVING__RETRIEVAL", "false"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    streamed(d).await;
    let remote_url = format!("{}/v1", upstream.base);
    let server = start_with(
        d,
        &[],
        &[
            ("TWIN_SERVING__REMOTE__BASE_URL", remote_url.as_str()),
            ("TWIN_SERVING__REMOTE__MODEL", "tiny"),
            ("TWIN_SERVING__REMOTE__API_KEY_ENV", "REMOTE_MODEL_KEY"),
            ("REMOTE_MODEL_KEY", upstream_token),
        ],
    );
    let client = reqwest::Client::new();
    let (status, rag) = post_json(&format!("{}/rag", server.base), &projection_question()).await;
    assert_eq!(status, 200, "{rag}");
    let rag: Value = serde_json::from_str(&rag).unwrap();
    assert_eq!(rag["model"], "tiny");
    assert_eq!(
        rag["context"][0]["url"], "https://paul.substack.com/p/events",
        "{rag}"
    );
    assert!(
        rag["usage"]["completion_tokens"].as_u64().unwrap() >= 1,
        "{rag}"
    );
    assert_streams(&server.base, "What is a dead letter?").await;
    // The upstream answered them.
    let metrics = client
        .get(format!("{}/metrics", upstream.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let answered = metrics
        .lines()
        .find(|l| {
            l.starts_with("twin_serve_requests_total")
                && l.contains("/v1/chat/completions")
                && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(answered.ends_with(" 2"), "{answered}");
    drop(server);

    // A wrong key upstream: 502, with the upstream's reason, and no key in it.
    let wrong = start_with(
        d,
        &[],
        &[
            ("TWIN_SERVING__REMOTE__BASE_URL", remote_url.as_str()),
            ("TWIN_SERVING__REMOTE__MODEL", "tiny"),
            ("TWIN_SERVING__REMOTE__API_KEY", "not-the-upstream-key"),
        ],
    );
    let (status, body) = post_json(
        &format!("{}/rag", wrong.base),
        &json!({"query": "What is a dead letter?"}),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("401") && body.contains("upstream_error"),
        "{body}"
    );
    assert!(!body.contains("not-the-upstream-key"), "{body}");
    // Security item 13: where the model runs is not told.
    assert!(!body.contains(&upstream.base), "{body}");
}

/// A cross-encoder (a `BertForSequenceClassification` checkpoint made by transformers, see
/// `embedding/reference/make_cross_encoder.py`) configured as the re-ranker: `/v1/search` ranks
/// by its scores and shows them; the other re-rankings can still be asked for.
#[tokio::test(flavor = "multi_thread")]
async fn a_configured_cross_encoder_reranks_the_candidates() {
    let test = "the cross-encoder re-ranker";
    let Some(python) = twin_testkit::python::torch_python_with_or_skip(test, &["transformers"])
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    streamed(d).await;
    model(d);
    let checkpoint = d.join("cross-encoder");
    let encoder =
        twin_testkit::process::tool_cache().join("models/sentence-transformers/all-MiniLM-L6-v2");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("embedding/reference/make_cross_encoder.py");
    let made = Command::new(python)
        .arg(script)
        .arg(encoder)
        .arg(&checkpoint)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let server = start_with(
        d,
        &["--model", "tiny"],
        &[
            ("TWIN_SERVING__RERANKER__MODEL", "test/cross-encoder"),
            (
                "TWIN_SERVING__RERANKER__MODEL_DIR",
                checkpoint.to_str().unwrap(),
            ),
        ],
    );
    let search = |query: &str| get_json(format!("{}/v1/search?k=3&{query}", server.base));
    let (status, reranked) = search("q=how%20should%20a%20client%20retry").await;
    assert_eq!(status, 200, "{reranked}");
    let hits = reranked["results"].as_array().unwrap();
    assert_eq!(hits.len(), 3, "{reranked}");
    let scores: Vec<f64> = hits
        .iter()
        .map(|h| h["rerank_score"].as_f64().unwrap_or_else(|| panic!("{h}")))
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "best re-ranker score first: {scores:?}"
    );
    // By the search's own score when asked: no re-ranker score then.
    let (status, plain) = search("q=how%20should%20a%20client%20retry&rerank=none").await;
    assert_eq!(status, 200, "{plain}");
    let plain = plain["results"].as_array().unwrap();
    assert!(
        plain.iter().all(|h| h.get("rerank_score").is_none()),
        "{plain:?}"
    );
    let by_score: Vec<f64> = plain.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(by_score.windows(2).all(|w| w[0] >= w[1]), "{by_score:?}");
    let (status, bad) = search("q=retry&rerank=best").await;
    assert_eq!(status, 422, "{bad}");
    assert_eq!(bad["error"]["param"], "rerank", "{bad}");
}

/// Answers of `max_tokens` tokens, streamed; long enough to be in flight when the signal comes.
fn long_answer() -> String {
    json!({
        "messages": [{"role": "user", "content": "Tell me everything you know."}],
        "max_tokens": 3000,
        "ignore_eos": true,
        "temperature": 0,
        "stream": true,
    })
    .to_string()
}

fn sigterm(child: &Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// SIGTERM while answers stream: the server takes no new connection, finishes the answers in
/// flight, and exits 0. With no grace (`shutdown_grace_secs = 0`) it exits at once instead, and
/// the answers in flight are cut.
#[tokio::test(flavor = "multi_thread")]
async fn a_shutdown_finishes_the_answers_in_flight_within_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    model(d);
    let client = reqwest::Client::new();
    for grace in ["30", "0"] {
        let mut server = start_with(
            d,
            &["--model", "tiny"],
            &[
                ("TWIN_SERVING__RETRIEVAL", "false"),
                ("TWIN_SERVING__SHUTDOWN_GRACE_SECS", grace),
            ],
        );
        let mut streams = Vec::new();
        for _ in 0..3 {
            let response = client
                .post(format!("{}/v1/chat/completions", server.base))
                .header("content-type", "application/json")
                .body(long_answer())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let mut stream = response;
            // The answer is under way.
            let first = stream.chunk().await.unwrap().unwrap();
            streams.push((first.to_vec(), stream));
        }
        sigterm(&server.child);
        let started = std::time::Instant::now();
        if grace == "0" {
            let status = loop {
                if let Some(status) = server.child.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(10),
                    "no grace: the server stops at once"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            };
            assert!(status.success(), "{status}");
            for (mut body, mut stream) in streams {
                while let Ok(Some(bytes)) = stream.chunk().await {
                    body.extend_from_slice(&bytes);
                }
                let body = String::from_utf8_lossy(&body);
                assert!(!body.contains("[DONE]"), "cut: {}", body.len());
            }
            continue;
        }
        // No new connection once the signal has landed, while the answers still stream.
        let refused = loop {
            let probe = client.get(format!("{}/healthz", server.base)).send().await;
            if probe.is_err() {
                break true;
            }
            if started.elapsed() > std::time::Duration::from_secs(5) {
                break false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert!(refused, "a new connection was still taken after the signal");
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "still running for the answers in flight"
        );
        for (mut body, mut stream) in streams {
            while let Some(chunk) = stream.chunk().await.unwrap() {
                body.extend_from_slice(&chunk);
            }
            let body = String::from_utf8_lossy(&body);
            assert!(body.trim_end().ends_with("data: [DONE]"), "finished");
            assert!(
                body.contains("\"finish_reason\":\"length\""),
                "all 3000 tokens"
            );
        }
        let status = server.child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

/// The distributed backends: events on Kafka (Tansu) while `twin stream` runs, and two `twin
/// serve` replicas side by side on the same Qdrant server. Both find what the running stream
/// projects, near real time, and answer with it.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_serve_what_a_running_stream_projects_on_kafka_and_qdrant() {
    let test = "serving beside a running stream on Kafka and Qdrant";
    let Some(qdrant) = twin_testkit::qdrant::qdrant_or_skip(test) else {
        return;
    };
    let broker = twin_testkit::tansu::tansu().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    model(d);
    let name = format!("serve{}", std::process::id());
    let topic = |t: &str| format!("{name}-{t}");
    let mut env: Vec<(String, String)> = vec![
        ("TWIN_LOG__BACKEND".into(), "kafka".into()),
        ("TWIN_LOG__KAFKA__BROKERS".into(), broker.brokers.clone()),
        ("TWIN_VECTORS__BACKEND".into(), "qdrant".into()),
        ("TWIN_VECTORS__QDRANT__URL".into(), qdrant.grpc_url.clone()),
        ("TWIN_VECTORS__COLLECTION_PREFIX".into(), format!("{name}_")),
        ("TWIN_METRICS__STREAM".into(), String::new()),
    ];
    env.extend(twin_testkit::tansu::topic_env(&name));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let mut stream = twin_command(d, &["stream"]);
    for (key, value) in &env_refs {
        stream.env(key, value);
    }
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stream = Killed(stream.stdout(Stdio::null()).spawn().unwrap());
    let replicas = [
        start_with(d, &["--model", "tiny"], &env_refs),
        start_with(d, &["--model", "tiny"], &env_refs),
    ];

    // The documents arrive while everything runs.
    let log = twin_eventlog::KafkaLog::new(
        &twin_config::KafkaConfig {
            brokers: broker.brokers.clone(),
            ..Default::default()
        },
        3,
    )
    .unwrap();
    let docs = [
        substack_article("backoff", &PARAGRAPHS[..1]),
        substack_article("bread", &PARAGRAPHS[1..2]),
        substack_article("events", &PARAGRAPHS[2..]),
    ];
    let events: Vec<Event> = docs.iter().cloned().map(Event::Raw).collect();
    let published = std::time::Instant::now();
    publish(&log, &topic("raw-documents"), &events)
        .await
        .unwrap();

    for replica in &replicas {
        let url = format!(
            "{}/v1/search?q=a%20long%20cold%20proof%20overnight&k=1",
            replica.base
        );
        let found = loop {
            let (_, body) = get_json(&url).await;
            if body["results"][0]["url"] == "https://paul.substack.com/p/bread" {
                break body;
            }
            assert!(
                published.elapsed() < std::time::Duration::from_secs(120),
                "not searchable after 2 minutes: {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        assert!(found["results"][0]["text"]
            .as_str()
            .unwrap()
            .contains("long cold proof"));
    }
    eprintln!(
        "searchable on both replicas {:.1} s after publishing",
        published.elapsed().as_secs_f64()
    );
    // Every document is projected before the answer is checked against all three.
    let all = format!("{}/v1/search?q=projection%20replay&k=3", replicas[0].base);
    loop {
        let (_, body) = get_json(&all).await;
        if body["results"].as_array().unwrap().len() == 3 {
            break;
        }
        assert!(
            published.elapsed() < std::time::Duration::from_secs(120),
            "{body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (status, rag) =
        post_json(&format!("{}/rag", replicas[1].base), &projection_question()).await;
    assert_eq!(status, 200, "{rag}");
    let rag: Value = serde_json::from_str(&rag).unwrap();
    assert_eq!(
        rag["context"][0]["url"], "https://paul.substack.com/p/events",
        "{rag}"
    );
    assert_streams(&replicas[0].base, "Why back off?").await;
    sigterm(&stream.0);
    let status = stream.0.wait().unwrap();
    assert!(status.success(), "the stream stops cleanly: {status}");
}

/// `twin up` on the embedded defaults: the crawlers on their schedule, the stream worker and the
/// server in one process, sharing the stores. A page crawled is searchable through the server,
/// and so is its next version once the schedule crawls it again; SIGTERM stops all three
/// cleanly, with every offset committed.
#[tokio::test(flavor = "multi_thread")]
async fn twin_up_crawls_streams_and_serves_in_one_process_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    model(d);
    let site = twin_testkit::FixtureServer::start().await.unwrap();
    let page = |text: &str| {
        twin_testkit::Route::html(format!(
            "<html><head><title>Backoff</title></head><body><article><h1>Backoff</h1>\
             <p>{text}</p></article></body></html>"
        ))
    };
    site.put("/backoff", page(PARAGRAPHS[0]));
    std::fs::write(
        d.join("twin.toml"),
        format!(
            "[metrics]\nstream = \"\"\ningest = \"\"\n[author]\nid = \"paul\"\n\
             full_name = \"Paul Iusztin\"\n[ingest]\nschedule = \"1s\"\n[ingest.http]\n\
             requests_per_second = 0.0\n[[ingest.sources]]\nurl = \"{}\"\nplatform = \"web\"\n",
            site.url("/backoff")
        ),
    )
    .unwrap();
    let mut child = twin_command(d, &["up", "--model", "tiny", "--address", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The address from the server's line; the rest of stdout is kept for the end.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    let base = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("twin up ended before serving:\n{printed}"))
            .unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
            break url.to_string();
        }
    };
    let rest = std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .map(|l| l + "\n")
            .collect::<String>()
    });
    let finds = |sentence: &'static str| {
        let base = base.clone();
        // Only what a query string needs escaped here.
        async move {
            for _ in 0..240 {
                let (status, found) = get_json(format!(
                    "{base}/v1/search?k=1&q={}",
                    sentence
                        .replace(' ', "%20")
                        .replace(',', "%2C")
                        .replace(':', "%3A")
                ))
                .await;
                assert_eq!(status, 200, "{found}");
                let text = found["results"][0]["text"].as_str().unwrap_or("");
                if text.contains(&sentence[..60]) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            panic!("{sentence:?} never became searchable");
        }
    };
    finds(PARAGRAPHS[0]).await;
    // The next scheduled crawl finds the page changed; the worker replaces its chunks.
    site.put("/backoff", page(PARAGRAPHS[2]));
    finds(PARAGRAPHS[2]).await;
    let (_, old) = get_json(format!(
        "{base}/v1/search?k=5&q=rate%20limits%20backs%20off"
    ))
    .await;
    assert!(
        !old.to_string().contains(&PARAGRAPHS[0][..60]),
        "the first version's chunk is still there: {old}"
    );

    sigterm(&child);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "twin up did not stop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    printed.push_str(&rest.join().unwrap());
    assert!(status.success(), "{printed}");
    for role in ["ingest: stopped", "stream: stopped", "serve: stopped"] {
        assert!(printed.contains(role), "{role:?} missing:\n{printed}");
    }
    // Every event the worker handled was committed: a new worker of its group has nothing to do.
    let out = twin_command(d, &["stream", "--once"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("documents: 0,"), "{text}");
}

/// The server's resident memory, in KiB (Linux).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Whether the server closed `stream` within `within` (a read gives end of file or an error).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Security item 4: slow, idle and streaming clients stay within the limits. A client that
/// sends its headers a line at a time is cut at the header timeout; 200 connections that send
/// nothing are closed and the server still answers; 64 streamed answers at once against 8 slots
/// and no queue: at most 8 stream (each holds its slot to its last event), the rest get 429,
/// and the server's memory stays flat.
#[tokio::test(flavor = "multi_thread")]
async fn slow_idle_and_streaming_clients_stay_within_the_limits() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    streamed(d).await;
    model(d);
    let server = start_with(
        d,
        &["--model", "tiny"],
        &[
            ("TWIN_SERVING__MAX_CONCURRENT_REQUESTS", "8"),
            ("TWIN_SERVING__MAX_QUEUED_REQUESTS", "0"),
            ("TWIN_SERVING__HEADER_READ_TIMEOUT_SECS", "2"),
            ("TWIN_SERVING__IDLE_TIMEOUT_SECS", "3"),
            ("TWIN_SERVING__MAX_CONNECTIONS", "100"),
            ("TWIN_SERVING__RETRIEVAL", "false"),
        ],
    );
    let address = server.base.trim_start_matches("http://").to_string();
    let health = format!("{}/healthz", server.base);

    // Slow-loris: a header line every 300 ms, never the blank line that ends them.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: twin\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut cut = false;
    for i in 0..40 {
        if closed_within(&mut slow, std::time::Duration::from_millis(300)).await {
            cut = true;
            break;
        }
        if slow
            .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
            .await
            .is_err()
        {
            cut = true;
            break;
        }
    }
    let lasted = started.elapsed();
    assert!(cut, "a slow-loris client was never cut");
    assert!(
        lasted >= std::time::Duration::from_millis(1500)
            && lasted < std::time::Duration::from_secs(8),
        "cut after {lasted:?} (header timeout 2 s)"
    );

    // 200 connections that send nothing: twice the cap. All are closed in the end, and the
    // server answers a real client.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    let mut all_closed = true;
    for stream in &mut idle {
        all_closed &= closed_within(stream, std::time::Duration::from_secs(20)).await;
    }
    assert!(all_closed, "idle connections were left open");
    drop(idle);
    let answered = reqwest::Client::new()
        .get(&health)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);

    // 64 long streamed answers at once.
    let pid = server.child.id();
    let before = rss_kib(pid);
    let client = reqwest::Client::new();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..64 {
        let client = client.clone();
        let url = format!("{}/v1/chat/completions", server.base);
        requests.spawn(async move {
            let body = json!({
                "messages": [{"role": "user", "content": format!("Tell a long story {i}.")}],
                "max_tokens": 1500, "stream": true, "temperature": 0.8, "seed": i,
                "ignore_eos": true,
            });
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (status, text)
        });
    }
    let (mut streamed_ok, mut refused) = (0, 0);
    while let Some(done) = requests.join_next().await {
        let (status, text) = done.unwrap();
        match status {
            200 => {
                assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
                streamed_ok += 1;
            }
            429 => refused += 1,
            other => panic!("{other}: {text}"),
        }
    }
    assert!(
        (1..=8).contains(&streamed_ok) && streamed_ok + refused == 64,
        "{streamed_ok} streamed, {refused} refused"
    );
    let after = rss_kib(pid);
    assert!(
        after < before + 150 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
    let answered = reqwest::get(&health).await.unwrap();
    assert_eq!(answered.status(), 200);
}
