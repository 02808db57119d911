//! The generation engine on ONNX Runtime, on models exported by twin: greedy decoding gives
//! libtorch's tokens; the same seed gives the same text alone and in a batch of concurrent
//! requests; a request joins a running batch at once; stop sequences, stop tokens and limits
//! end a text where they should; bad requests are refused clearly and the engine goes on.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use twin_chat::Message;
use twin_serving::{
    Completion, Engine, EngineOptions, Event, FinishReason, Generation, GenerationRequest, Prompt,
    SamplingParams, ServingError,
};

fn request(prompt: &str, params: SamplingParams) -> GenerationRequest {
    GenerationRequest {
        prompt: Prompt::Text(prompt.into()),
        params,
    }
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens: Some(max_tokens),
        ignore_eos: true,
        ..SamplingParams::greedy()
    }
}

fn sampled(seed: u64, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens: Some(max_tokens),
        temperature: 0.9,
        top_k: 50,
        top_p: 0.95,
        repetition_penalty: 1.1,
        seed: Some(seed),
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

const PROMPTS: [&str; 5] = [
    "The log is the truth",
    "Every store is a projection that a replay rebuilds, and",
    "A",
    "Kafka, ClickHouse and Qdrant: the distributed backends of",
    "Fine-tuning a small model on a laptop",
];

#[tokio::test]
async fn greedy_decoding_gives_libtorchs_tokens_with_and_without_a_cache() {
    for name in ["llama", "mistral", "qwen2", "gpt2"] {
        let dir = common::exported(name);
        let engine = Engine::load(dir.path(), EngineOptions::default()).unwrap();
        let uncached = Engine::load(
            dir.path(),
            EngineOptions {
                use_cache: false,
                ..EngineOptions::default()
            },
        )
        .unwrap();
        // Mistral's window (8) is shorter than these texts: the cache must honour it.
        let prompt = PROMPTS[1];
        let ids = engine.tokenize(&Prompt::Text(prompt.into())).unwrap();
        let expected = common::torch_greedy(&common::checkpoint(name), &ids, 24);
        let ours = engine.generate(request(prompt, greedy(24))).await.unwrap();
        assert_eq!(ours.token_ids, expected, "{name}: cached greedy tokens");
        assert_eq!(ours.finish_reason, FinishReason::Length);
        assert_eq!(ours.completion_tokens, 24);
        assert_eq!(ours.prompt_tokens, ids.len());
        let plain = uncached
            .generate(request(prompt, greedy(24)))
            .await
            .unwrap();
        assert_eq!(plain.token_ids, expected, "{name}: uncached greedy tokens");
        assert_eq!(plain.text, ours.text);
    }
}

/// Every event of a request: its completion, the text streamed and the number of token events.
async fn stream_all(engine: &Engine, req: GenerationRequest) -> (Completion, String, usize) {
    stream(engine.submit(req).unwrap()).await
}

async fn stream(mut generation: Generation) -> (Completion, String, usize) {
    let (mut streamed, mut tokens) = (String::new(), 0);
    while let Some(event) = generation.events.recv().await {
        match event {
            Event::Token { text, .. } => {
                streamed.push_str(&text);
                tokens += 1;
            }
            Event::Text(text) => streamed.push_str(&text),
            Event::Finished(done) => return (done, streamed, tokens),
            Event::Failed(e) => panic!("failed: {e}"),
        }
    }
    panic!("no Finished event");
}

#[tokio::test]
async fn the_same_seed_gives_the_same_text_alone_and_among_concurrent_requests() {
    let dir = common::exported("llama");
    let engine = std::sync::Arc::new(Engine::load(dir.path(), EngineOptions::default()).unwrap());
    let cases: Vec<(&str, SamplingParams)> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let params = if i % 2 == 0 {
                sampled(100 + i as u64, 10 + 7 * i)
            } else {
                greedy(12 + 5 * i)
            };
            (*p, params)
        })
        .collect();
    let mut alone = Vec::new();
    for (prompt, params) in &cases {
        alone.push(
            engine
                .generate(request(prompt, params.clone()))
                .await
                .unwrap(),
        );
    }
    // Twice as many requests at once: the first five submitted together, the next five arriving
    // while those run; with different lengths they leave at different steps.
    let mut tasks = Vec::new();
    for (prompt, params) in &cases {
        let generation = engine.submit(request(prompt, params.clone())).unwrap();
        tasks.push(tokio::spawn(async move { stream(generation).await }));
    }
    for (i, (prompt, params)) in cases.iter().enumerate() {
        let engine = engine.clone();
        let req = request(prompt, params.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2 * i as u64)).await;
            stream_all(&engine, req).await
        }));
    }
    for (n, task) in tasks.into_iter().enumerate() {
        let (done, streamed, tokens) = task.await.unwrap();
        let expected = &alone[n % cases.len()];
        assert_eq!(done.token_ids, expected.token_ids, "request {n}");
        assert_eq!(done.text, expected.text, "request {n}");
        if let Some(seed) = cases[n % cases.len()].1.seed {
            assert_eq!(done.seed, seed);
        }
        assert_eq!(
            streamed, done.text,
            "request {n}: the stream adds up to the text"
        );
        assert_eq!(tokens, done.completion_tokens, "one event per token");
    }
    assert!(
        engine.stats().largest_batch.load(Ordering::Relaxed) >= 5,
        "the requests were decoded together"
    );
    // A different seed gives a different text.
    let other = engine
        .generate(request(cases[0].0, sampled(999, 17)))
        .await
        .unwrap();
    assert_ne!(other.token_ids, alone[0].token_ids);
}

#[tokio::test]
async fn a_new_request_joins_a_running_batch_and_leaves_before_it() {
    let dir = common::exported("qwen2");
    let engine = Engine::load(dir.path(), EngineOptions::default()).unwrap();
    let mut long = engine.submit(request(PROMPTS[0], greedy(150))).unwrap();
    let mut seen = 0;
    while seen < 5 {
        if let Some(Event::Token { .. }) = long.events.recv().await {
            seen += 1;
        }
    }
    let short = engine
        .generate(request(PROMPTS[3], greedy(5)))
        .await
        .unwrap();
    assert_eq!(short.completion_tokens, 5);
    // The long one is still running: it has not finished, and it goes on to its end.
    let mut finished = None;
    let mut remaining = 0;
    while let Some(event) = long.events.recv().await {
        match event {
            Event::Token { .. } => remaining += 1,
            Event::Text(_) => {}
            Event::Finished(done) => {
                finished = Some(done);
                break;
            }
            Event::Failed(e) => panic!("{e}"),
        }
    }
    assert!(remaining > 100, "the short request waited for the long one");
    assert_eq!(finished.unwrap().completion_tokens, 150);
    // And the long one's tokens did not change for the company.
    let alone = engine
        .generate(request(PROMPTS[0], greedy(150)))
        .await
        .unwrap();
    let again = engine
        .generate(request(PROMPTS[3], greedy(5)))
        .await
        .unwrap();
    assert_eq!(again.token_ids, short.token_ids);
    assert_eq!(alone.completion_tokens, 150);
}

#[tokio::test]
async fn stop_sequences_stop_tokens_and_limits_end_the_text() {
    let dir = common::exported("gpt2");
    let engine = Engine::load(dir.path(), EngineOptions::default()).unwrap();
    let full = engine
        .generate(request(PROMPTS[1], greedy(30)))
        .await
        .unwrap();
    assert_eq!(full.finish_reason, FinishReason::Length);
    // A stop token: the third generated token ends the text before it.
    let third = full.token_ids[2];
    let first_at = full.token_ids.iter().position(|&t| t == third).unwrap();
    let stopped = engine
        .generate(request(
            PROMPTS[1],
            SamplingParams {
                stop_token_ids: vec![third],
                ..greedy(30)
            },
        ))
        .await
        .unwrap();
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert_eq!(stopped.token_ids, full.token_ids[..first_at]);
    // A stop sequence: a piece of the middle of the text; the text ends just before it.
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 12, "{:?}", full.text);
    let stop: String = chars[8..11].iter().collect();
    let cut = full.text.find(&stop).unwrap();
    let (done, streamed, _) = stream_all(
        &engine,
        request(
            PROMPTS[1],
            SamplingParams {
                stop: vec![stop.clone(), "never seen \u{1F600}".into()],
                ..greedy(30)
            },
        ),
    )
    .await;
    assert_eq!(done.finish_reason, FinishReason::Stop);
    assert_eq!(done.text, full.text[..cut], "stop {stop:?}");
    assert_eq!(
        streamed, done.text,
        "nothing of the stop sequence was streamed"
    );
    // The model's own end-of-sequence token ends it too (unless ignored).
    let eos = engine.info().eos_token_ids.clone();
    assert!(!eos.is_empty());
    // With a token limit the text is what the first tokens decode to.
    let short = engine
        .generate(request(PROMPTS[1], greedy(3)))
        .await
        .unwrap();
    assert_eq!(short.token_ids, full.token_ids[..3]);
}

#[tokio::test]
async fn chat_prompts_use_the_models_template() {
    let dir = common::exported("qwen2");
    let engine = Engine::load(dir.path(), EngineOptions::default()).unwrap();
    let chat = Prompt::Chat(vec![
        Message::new("system", "You write like Paul."),
        Message::new("user", "What is a log?"),
    ]);
    let ids = engine.tokenize(&chat).unwrap();
    let text = engine.tokenizer().decode(&ids, false).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou write like Paul.<|im_end|>\n<|im_start|>user\nWhat is a log?<|im_end|>\n<|im_start|>assistant\n"
    );
    let done = engine
        .generate(GenerationRequest {
            prompt: chat,
            params: greedy(4),
        })
        .await
        .unwrap();
    assert_eq!(done.prompt_tokens, ids.len());
}

#[tokio::test]
async fn bad_requests_are_refused_clearly_and_the_engine_goes_on() {
    let dir = common::exported("llama");
    let engine = Engine::load(
        dir.path(),
        EngineOptions {
            max_batch_tokens: 200,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let context = engine.info().context_length;
    let refused = |params: SamplingParams, prompt: &str| {
        engine
            .submit(request(prompt, params))
            .expect_err("refused")
            .to_string()
    };
    let err = refused(
        SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        },
        "hi",
    );
    assert!(err.contains("temperature") && err.contains("-1"), "{err}");
    let err = refused(
        SamplingParams {
            top_p: 1.5,
            ..SamplingParams::default()
        },
        "hi",
    );
    assert!(err.contains("top_p") && err.contains("1.5"), "{err}");
    let long_prompt = "word ".repeat(400);
    let err = engine
        .submit(request(&long_prompt, SamplingParams::default()))
        .expect_err("over the context");
    assert!(matches!(err, ServingError::ContextLength { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("context is {context} tokens")),
        "{err}"
    );
    let err = refused(
        SamplingParams {
            max_tokens: Some(context),
            ..SamplingParams::default()
        },
        "hi",
    );
    assert!(err.contains("context"), "{err}");
    let err = refused(
        SamplingParams {
            max_tokens: Some(199),
            ..SamplingParams::default()
        },
        "hi there",
    );
    assert!(err.contains("max_batch_tokens"), "{err}");
    let err = engine
        .submit(request("", SamplingParams::default()))
        .expect_err("empty");
    assert!(matches!(err, ServingError::EmptyPrompt), "{err}");
    // A client that goes away mid-stream is dropped; the others are served, and requests over
    // the batch budget together wait their turn rather than fail.
    let mut gone = engine.submit(request(PROMPTS[0], greedy(100))).unwrap();
    let _ = gone.events.recv().await;
    drop(gone);
    let mut waiting = Vec::new();
    for p in PROMPTS.iter().take(4) {
        waiting.push(engine.submit(request(p, greedy(60))).unwrap());
    }
    for generation in waiting {
        let done = generation.collect().await.unwrap();
        assert_eq!(done.completion_tokens, 60);
    }
    let missing = tempfile::tempdir().unwrap();
    let err = Engine::load(missing.path(), EngineOptions::default())
        .err()
        .expect("no model");
    assert!(err.to_string().contains("export-llm"), "{err}");
}

#[test]
fn multi_byte_characters_are_never_streamed_in_halves() {
    use twin_serving::text::Detokenizer;
    let tokenizer = twin_chat::load_tokenizer(&common::checkpoint("llama")).unwrap();
    let prompt = tokenizer
        .encode("Say it:", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let answer = " héllo 日本語 ✓ 😀 done";
    let ids = tokenizer.encode(answer, false).unwrap().get_ids().to_vec();
    // The byte-level tokenizer splits these characters over several tokens.
    assert!(ids.len() > answer.chars().count() - 4, "{ids:?}");
    let halves = ids
        .iter()
        .filter(|&&id| tokenizer.decode(&[id], false).unwrap().contains('\u{FFFD}'))
        .count();
    assert!(halves >= 4, "tokens holding half a character: {halves}");
    let mut tokens = prompt.clone();
    let mut detokenizer = Detokenizer::new(prompt.len());
    let mut streamed = String::new();
    for id in ids {
        tokens.push(id);
        let piece = detokenizer.next(&tokenizer, &tokens);
        assert!(
            !piece.contains('\u{FFFD}'),
            "half a character streamed: {piece:?}"
        );
        streamed.push_str(&piece);
    }
    streamed.push_str(&detokenizer.finish(&tokenizer, &tokens));
    assert_eq!(streamed, answer);
}
