//! The judge against a local server that speaks the chat-completions wire format: it checks
//! what the judge sends (our prompts, the sample, the verdict's schema, the key) and answers
//! a verdict, or garbage, or a score out of range, or 401. A verdict is parsed with one-line
//! reasons; anything else is an error that names the judge, the sample and what was wrong,
//! after asking once more, and never shows the key.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use twin_config::GeneratorConfig;
use twin_evaluation::judge::{Judge, SYSTEM_PROMPT};
use twin_evaluation::EvalError;

const KEY: &str = "sk-judge-secret-4410";

#[derive(Default)]
struct Seen {
    requests: Vec<Value>,
}

async fn chat(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let request: Value = serde_json::from_str(&body).unwrap();
    let json_type = [("content-type", "application/json")];
    seen.lock().unwrap().requests.push(request.clone());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}"))
    {
        return (
            StatusCode::UNAUTHORIZED,
            json_type,
            json!({ "error": { "message": "Incorrect API key provided" } }).to_string(),
        );
    }
    let user = request["messages"][1]["content"]
        .as_str()
        .unwrap_or_default();
    let content = if user.contains("GARBAGE") {
        "Sure! I would rate this answer quite highly overall.".to_string()
    } else if user.contains("OUT-OF-RANGE") {
        json!({ "accuracy": { "score": 5, "reason": "great" },
                "style": { "score": 2, "reason": "fine" } })
        .to_string()
    } else {
        // The answer is scored by whether it repeats the reference, as a judge would.
        let same = user.contains("Assistant's answer:\nThe log is the truth.");
        let score = if same { 3 } else { 1 };
        format!(
            "```json\n{}\n```",
            json!({ "accuracy": { "score": score, "reason": "Covers what the author covers.\nSecond line." },
                    "style": { "score": score, "reason": "Reads like the author." } })
        )
    };
    (
        StatusCode::OK,
        json_type,
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "judge",
            "choices": [{ "index": 0, "finish_reason": "stop",
                          "message": { "role": "assistant", "content": content } }]
        })
        .to_string(),
    )
}

async fn server() -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{address}/v1"), seen)
}

fn config(url: &str, key: &str) -> GeneratorConfig {
    GeneratorConfig {
        base_url: url.into(),
        model: "judge-model".into(),
        api_key: key.into(),
        api_key_env: "TWIN_TEST_NO_SUCH_KEY".into(),
        temperature: 0.0,
        max_attempts: 2,
        backoff_ms: 10,
        ..GeneratorConfig::default()
    }
}

#[tokio::test]
async fn the_judge_scores_answers_and_refuses_garbage() {
    let (url, seen) = server().await;
    let judge = Judge::new("local", &config(&url, KEY)).unwrap();
    assert!(
        judge.name().contains("local:judge-model"),
        "{}",
        judge.name()
    );

    let good = judge
        .judge(
            0,
            "What is the log?",
            "The log is the truth.",
            "The log is the truth.",
        )
        .await
        .unwrap();
    assert_eq!((good.accuracy.score, good.style.score), (3, 3));
    assert_eq!(good.accuracy.reason, "Covers what the author covers.");
    let poor = judge
        .judge(
            1,
            "What is the log?",
            "The log is the truth.",
            "Bananas are yellow.",
        )
        .await
        .unwrap();
    assert_eq!((poor.accuracy.score, poor.style.score), (1, 1));

    // What it sent: our prompts, the sample, the schema, temperature 0.
    let request = seen.lock().unwrap().requests[0].clone();
    assert_eq!(request["model"], "judge-model");
    assert_eq!(request["temperature"], 0.0);
    assert_eq!(request["messages"][0]["content"], SYSTEM_PROMPT);
    let user = request["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains("Instruction:\nWhat is the log?"), "{user}");
    assert!(user.contains("Author's answer (reference):\nThe log is the truth."));
    let schema = &request["response_format"]["json_schema"]["schema"];
    assert_eq!(schema["required"], json!(["accuracy", "style"]));

    // Garbage: asked twice, then a clear error naming the judge, the sample and the reason.
    let before = seen.lock().unwrap().requests.len();
    let err = judge
        .judge(7, "GARBAGE", "The log is the truth.", "Anything.")
        .await
        .unwrap_err();
    assert_eq!(seen.lock().unwrap().requests.len() - before, 2);
    let message = err.to_string();
    assert!(
        matches!(err, EvalError::Judge { sample: 7, .. }),
        "{message}"
    );
    assert!(message.contains("local:judge-model"), "{message}");
    assert!(message.contains("not the JSON asked for"), "{message}");
    assert!(message.contains("recorded nothing"), "{message}");

    // A score outside 1 to 3 is no verdict either.
    let err = judge
        .judge(2, "OUT-OF-RANGE", "ref", "answer")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("accuracy score 5 is not 1, 2 or 3"),
        "{err}"
    );

    // A wrong key: an error that says so, without the key.
    let wrong = "sk-wrong-judge-key-0000";
    let locked_out = Judge::new("local", &config(&url, wrong)).unwrap();
    let err = locked_out
        .judge(0, "q", "r", "a")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains(wrong) && !err.contains(KEY), "{err}");
}
