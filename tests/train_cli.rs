//! `twin train`, `twin runs` and `twin models` as a user runs them, on the small checkpoints of
//! training/tests/data: train LoRA and full runs, compare them (a table and PNG/SVG curves),
//! list, show, merge and run registered models, and stop a run with Ctrl-C.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn twin_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twin"));
    cmd.current_dir(dir)
        .args(["--data-dir", "data"])
        .args(args)
        .env("RUST_LOG", "warn");
    for (key, _) in std::env::vars() {
        if key.starts_with("TWIN_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn twin(dir: &Path, args: &[&str]) -> Output {
    let out = twin_command(dir, args).output().expect("run twin");
    assert!(
        out.status.success(),
        "twin {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn checkpoint(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("training/tests/data")
        .join(name)
}

fn samples(dir: &Path) {
    let folder = dir.join("samples");
    std::fs::create_dir_all(&folder).unwrap();
    let line = |i: usize| {
        let topics = [
            "event sourcing",
            "the warehouse",
            "vector search",
            "retrieval",
        ];
        serde_json::json!({
            "instruction": format!("What do you think about {}?", topics[i % 4]),
            "output": format!("In my experience {} is worth measuring twice.", topics[i % 4]),
        })
        .to_string()
    };
    let train: Vec<String> = (0..32).map(line).collect();
    let test: Vec<String> = (32..36).map(line).collect();
    std::fs::write(folder.join("train.jsonl"), train.join("\n")).unwrap();
    std::fs::write(folder.join("test.jsonl"), test.join("\n")).unwrap();
}

fn logits(out: &Output) -> Vec<Vec<f64>> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| serde_json::from_value(p["logits"].clone()).unwrap())
        .collect()
}

fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

const SHORT: [&str; 10] = [
    "--batch-size",
    "4",
    "--max-seq-len",
    "128",
    "--eval-every",
    "10",
    "--lr",
    "5e-3",
    "--device",
    "cpu",
];

#[test]
fn train_compare_register_merge_and_run_models() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    samples(d);
    twin(d, &["dataset", "import", "samples", "--name", "talk"]);
    let llama = checkpoint("llama");
    let llama = llama.to_str().unwrap();

    let mut args = vec![
        "train",
        "--dataset",
        "talk",
        "--model",
        llama,
        "--method",
        "lora",
    ];
    args.extend([
        "--max-steps",
        "30",
        "--name",
        "first",
        "--register-as",
        "tiny",
    ]);
    args.extend(SHORT);
    let out = twin(d, &args);
    assert!(
        stdout(&out).contains("registered tiny@v1"),
        "{}",
        stdout(&out)
    );
    let mut args = vec![
        "train",
        "--dataset",
        "samples/train.jsonl",
        "--model",
        llama,
    ];
    args.extend(["--method", "full", "--max-steps", "20", "--name", "second"]);
    args.extend(["--register-as", "tiny"]);
    args.extend(SHORT);
    let out = twin(d, &args);
    assert!(
        stdout(&out).contains("registered tiny@v2"),
        "{}",
        stdout(&out)
    );

    let list = stdout(&twin(d, &["runs", "list"]));
    assert!(
        list.contains("(first)") && list.contains("(second)"),
        "{list}"
    );
    assert!(list.contains("finished"), "{list}");
    let show = stdout(&twin(d, &["runs", "show", "first"]));
    assert!(
        show.contains("\"rank\": 16") && show.contains("code_version"),
        "{show}"
    );
    assert!(show.contains("eval at step"), "{show}");

    let compare = stdout(&twin(
        d,
        &["runs", "compare", "first", "second", "--out", "cmp"],
    ));
    for row in ["method", "final train loss", "best eval loss", "tokens/s"] {
        assert!(compare.contains(row), "compare lacks {row}:\n{compare}");
    }
    let png = std::fs::read(d.join("cmp.png")).expect("png");
    assert_eq!(&png[..4], b"\x89PNG");
    let svg = std::fs::read_to_string(d.join("cmp.svg")).expect("svg");
    assert!(
        svg.contains("<svg") && svg.contains("polyline"),
        "an SVG with curves"
    );
    assert!(svg.contains("first train"), "the legend names the runs");

    let models = stdout(&twin(d, &["models", "list"]));
    assert!(
        models.contains("tiny@v1") && models.contains("tiny@v2"),
        "{models}"
    );
    let shown = stdout(&twin(d, &["models", "show", "tiny@v1"]));
    assert!(
        shown.contains("\"kind\": \"lora\"") && shown.contains("adapter_model.safetensors"),
        "{shown}"
    );

    // The adapter applied by the registry, and merged into a full model: the same logits.
    twin(
        d,
        &[
            "models",
            "merge",
            "tiny@v1",
            "--out",
            "merged",
            "--register",
            "merged",
        ],
    );
    let ids = ["--ids", "1,5,9,200,31", "--all", "--format", "json"];
    let via_registry = logits(&twin(
        d,
        &[&["models", "forward", "tiny@v1"][..], &ids].concat(),
    ));
    let merged = logits(&twin(
        d,
        &[&["models", "forward", "merged"][..], &ids].concat(),
    ));
    let base = logits(&twin(
        d,
        &[&["models", "forward", llama][..], &ids].concat(),
    ));
    assert!(max_diff(&via_registry, &merged) < 1e-4);
    assert!(
        max_diff(&via_registry, &base) > 1e-3,
        "training changed the model"
    );
    // Training on from a registered adapter: the new adapter's base is the merged one.
    let mut args = vec![
        "train",
        "--dataset",
        "talk",
        "--model",
        "tiny@v1",
        "--method",
        "lora",
    ];
    args.extend(["--max-steps", "5", "--register-as", "tiny2"]);
    args.extend(SHORT);
    twin(d, &args);
    let on = logits(&twin(
        d,
        &[&["models", "forward", "tiny2"][..], &ids].concat(),
    ));
    assert_eq!(on.len(), 5);
    // Only the last position without --all.
    let last = twin(
        d,
        &[
            "models", "forward", llama, "--ids", "1,5,9", "--format", "json",
        ],
    );
    assert_eq!(logits(&last).len(), 1);
    let bad = twin_command(d, &["models", "forward", llama, "--ids", "1,99999"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("outside the vocabulary"));
}

#[test]
fn models_forward_prints_the_logits_transformers_computed() {
    let dir = tempfile::tempdir().unwrap();
    let gpt2 = checkpoint("gpt2");
    let reference = twin_training::weights::load(&[gpt2.join("reference.safetensors")]).unwrap();
    let ids: Vec<Vec<i64>> = Vec::<Vec<i64>>::from(&reference["input_ids"]);
    let expected: Vec<Vec<Vec<f32>>> = Vec::from(&reference["logits"]);
    let list: Vec<String> = ids[0].iter().map(i64::to_string).collect();
    let out = twin(
        dir.path(),
        &[
            "models",
            "forward",
            gpt2.to_str().unwrap(),
            "--ids",
            &list.join(","),
            "--all",
            "--format",
            "json",
        ],
    );
    let expected: Vec<Vec<f64>> = expected[0]
        .iter()
        .map(|r| r.iter().map(|x| *x as f64).collect())
        .collect();
    let diff = max_diff(&logits(&out), &expected);
    assert!(diff < 1e-4, "{diff:e}");
}

#[test]
fn ctrl_c_stops_training_with_a_checkpoint_to_resume_from() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    samples(d);
    let llama = checkpoint("llama");
    let mut args = vec!["--log-format", "json", "train", "--dataset", "samples"];
    args.extend(["--model", llama.to_str().unwrap(), "--max-steps", "100000"]);
    args.extend(["--checkpoint-every", "0"]);
    args.extend(SHORT);
    let mut child = twin_command(d, &args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // Wait for training to run (a progress line every 10 steps), then press Ctrl-C.
    let mut seen = 0;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("\"training\"") {
            seen += 1;
            if seen == 2 {
                break;
            }
        }
    }
    assert_eq!(seen, 2, "training never reported progress");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(130), "{text}\n{}", rest.join("\n"));
    assert!(
        text.contains("stopped early") && text.contains("--resume"),
        "{text}"
    );
    let list = stdout(&twin(d, &["runs", "list"]));
    assert!(list.contains("interrupted"), "{list}");
    let runs: Vec<_> = std::fs::read_dir(d.join("data/runs")).unwrap().collect();
    assert_eq!(runs.len(), 1);
    let checkpoints = runs[0].as_ref().unwrap().path().join("checkpoints");
    let saved: Vec<_> = std::fs::read_dir(&checkpoints).unwrap().collect();
    assert_eq!(saved.len(), 1, "one checkpoint, saved on Ctrl-C");
}

#[test]
fn export_and_generate_with_a_registered_lora_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    samples(d);
    let llama = checkpoint("llama");
    let mut args = vec![
        "train",
        "--dataset",
        "samples/train.jsonl",
        "--model",
        llama.to_str().unwrap(),
        "--max-steps",
        "3",
        "--register-as",
        "tiny",
    ];
    args.extend(SHORT);
    twin(d, &args);
    let generate = |model: &str| {
        let args = [
            "generate",
            model,
            "The log is",
            "--max-tokens",
            "6",
            "--temperature",
            "0.7",
            "--seed",
            "11",
            "--format",
            "json",
        ];
        let out = twin(d, &args);
        let done: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        (done, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // The adapter is merged and exported on first use, then reused.
    let (first, stderr) = generate("tiny");
    assert!(stderr.contains("exporting tiny to ONNX"), "{stderr}");
    assert!(d.join("data/registry/tiny/v1/onnx/model.onnx").exists());
    let tokens = first["completion_tokens"].as_u64().unwrap();
    assert!((1..=6).contains(&tokens), "{first}");
    assert_eq!(first["seed"], 11);
    let (second, stderr) = generate("tiny");
    assert!(!stderr.contains("exporting"), "{stderr}");
    assert_eq!(first, second, "the same seed gives the same text");
    // An explicit export, weights in an external data file, gives the same model.
    let out = twin(
        d,
        &[
            "models",
            "export-llm",
            "tiny",
            "--out",
            "exported",
            "--external-data",
        ],
    );
    assert!(stdout(&out).contains("model.onnx_data"), "{}", stdout(&out));
    for file in [
        "model.onnx",
        "model.onnx_data",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
    ] {
        assert!(d.join("exported").join(file).exists(), "{file}");
    }
    let (exported, _) = generate("exported");
    assert_eq!(exported["token_ids"], first["token_ids"]);
    // Text output streams to stdout.
    let out = twin(
        d,
        &[
            "generate",
            "tiny",
            "Hello",
            "--max-tokens",
            "3",
            "--temperature",
            "0",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("finish"));

    // Bad input: a clear error, a non-zero exit, nothing else.
    let fails = |args: &[&str], expected: &str| {
        let out = twin_command(d, args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    };
    fails(&["generate", "nosuch", "hi"], "unknown model `nosuch`");
    fails(
        &["models", "export-llm", "nosuch"],
        "unknown model `nosuch`",
    );
    fails(
        &["generate", "tiny", "hi", "--temperature", "-1"],
        "invalid `temperature`",
    );
    fails(
        &["generate", "tiny", "hi", "--top-p", "1.5"],
        "invalid `top_p`",
    );
    fails(
        &["generate", "tiny", "hi", "--max-tokens", "1000"],
        "context is 256 tokens",
    );
    let long = "word ".repeat(400);
    fails(&["generate", "tiny", &long], "context is 256 tokens");
}

#[test]
fn train_plan_sizes_runs_and_train_refuses_one_that_cannot_fit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A preset that fits (QLoRA of a 7B on a 24 GB GPU) and one that does not, with advice.
    let out = twin(
        d,
        &[
            "train",
            "plan",
            "--model",
            "mistral-7b",
            "--method",
            "qlora",
            "--gpu",
            "a10g",
            "--gradient-checkpointing",
            "--seq",
            "1024",
        ],
    );
    assert!(stdout(&out).contains("(fits)"), "{}", stdout(&out));
    let out = twin_command(
        d,
        &[
            "train",
            "plan",
            "--model",
            "llama-3.1-70b",
            "--method",
            "full",
            "--format",
            "json",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a plan that does not fit exits 1"
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["fits"], false);
    assert!(plan["per_device"]["optimizer"].as_f64().unwrap() > 800e9);
    assert!(!plan["advice"].as_array().unwrap().is_empty());
    for (args, expected) in [
        (
            vec!["train", "plan", "--model", "nosuch"],
            "unknown model `nosuch`",
        ),
        (
            vec![
                "train",
                "plan",
                "--model",
                "llama-3.1-8b",
                "--gpus",
                "6",
                "--tensor-parallel",
                "3",
            ],
            "must divide",
        ),
        (
            vec![
                "train",
                "plan",
                "--model",
                "llama-3.1-8b",
                "--gpu-memory",
                "80 furlongs",
            ],
            "unknown unit",
        ),
    ] {
        let out = twin_command(d, &args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
    }
    // `twin train` plans too, before it loads anything: a 70B model (its config alone, no
    // weights) on this machine is refused with the plan's numbers.
    samples(d);
    let big = d.join("llama-70b");
    std::fs::create_dir_all(&big).unwrap();
    let preset = twin_training::plan::PRESETS
        .iter()
        .find(|(n, _)| *n == "llama-3.1-70b")
        .unwrap()
        .1;
    std::fs::write(big.join("config.json"), preset).unwrap();
    let out = twin_command(
        d,
        &[
            "train",
            "--dataset",
            "samples/train.jsonl",
            "--model",
            "llama-70b",
            "--method",
            "full",
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("does not fit in the memory this machine has free")
            && stderr.contains("optimizer state")
            && stderr.contains("to fit:"),
        "{stderr}"
    );
    assert!(!d.join("data/registry").exists(), "nothing was registered");
}

/// An author's short posts: the training split and, on other subjects in the same voice, the
/// test split.
fn author_samples(dir: &Path) {
    let posts = [
        ("Why keep an event log?", "Keep the log as the truth. Every table you have is a projection, and a projection you can rebuild is a projection you can fix: replay it, do not patch rows."),
        ("How should a crawler retry?", "Back off when the server asks you to. A client that retries at once turns a small outage into a long one, for you and for everyone else."),
        ("What makes a good chunk?", "A good chunk is a thought, not a page. Cut where the author changed subject, keep the heading with it, and measure how retrieval does before you tune anything."),
        ("Do I need a vector database?", "Start with the warehouse you have. When search has to be fast over millions of chunks, move the vectors out, and keep the warehouse as the truth."),
        ("How do you test a pipeline?", "Test it against the real thing: a real broker, a real database, real model weights. A mock tells you that your mock works."),
        ("What is a dead letter?", "A dead letter is an event you could not handle yet. Keep it with the reason, fix the reason, and replay it. Never drop it on the floor."),
        ("Why snapshots for training data?", "Because you will want to know what a model saw. Pin the positions of the log, build the dataset from them, and the run can always be repeated."),
        ("How big should a batch be?", "As big as the memory allows and no bigger. Then measure tokens per second, not steps per second, because steps lie about padding."),
        ("Should I fine-tune or use retrieval?", "Both. Fine-tuning teaches the tone, retrieval brings the facts. The twin sounds like the author and stays correct."),
        ("How do you read a loss curve?", "Look at the evaluation loss, not the training loss. When the two part ways, the model has started to memorise, and you should stop."),
        ("What is LoRA good for?", "LoRA trains a few small matrices beside frozen weights. You keep one base and many adapters, and each adapter fits in an email."),
        ("Why measure twice?", "Because the first number is usually the warm-up. Run the benchmark twice, side by side with the baseline, and report both figures."),
    ];
    let tests = [
        ("How do you rebuild a table?", "Replay the log. The table is a projection, so you drop it and rebuild it from the events, and the bug you fixed is gone from every row."),
        ("What should a client do on a 429?", "Back off for as long as the server says, then try again. Retrying at once only makes the outage longer for everyone."),
        ("Where do the facts of a twin come from?", "From retrieval. Fine-tuning teaches the tone of the author, and retrieval brings the facts, so the twin stays correct."),
        ("When should training stop?", "When the evaluation loss stops falling. Past that point the model memorises the training set, and you should stop the run."),
    ];
    let folder = dir.join("author");
    std::fs::create_dir_all(&folder).unwrap();
    let lines = |items: &[(&str, &str)]| -> String {
        items
            .iter()
            .map(|(q, a)| serde_json::json!({"instruction": q, "output": a}).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    std::fs::write(folder.join("train.jsonl"), lines(&posts)).unwrap();
    std::fs::write(folder.join("test.jsonl"), lines(&tests)).unwrap();
}

/// An OpenAI-compatible endpoint that answers every chat completion with `content`.
fn judge_server(
    runtime: &tokio::runtime::Runtime,
    content: &str,
) -> twin_testkit::fixture::FixtureServer {
    let server = runtime
        .block_on(twin_testkit::fixture::FixtureServer::start())
        .unwrap();
    let body = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "judge",
        "choices": [{ "index": 0, "finish_reason": "stop",
                      "message": { "role": "assistant", "content": content } }]
    });
    server.put(
        "/v1/chat/completions",
        twin_testkit::fixture::Route::json(body.to_string()),
    );
    server
}

#[test]
fn eval_puts_the_base_and_the_fine_tuned_model_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    author_samples(d);
    twin(d, &["dataset", "import", "author", "--name", "author"]);
    // The base is a copy, so that its ONNX export goes to the test's folder.
    let base = d.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for entry in std::fs::read_dir(checkpoint("llama")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, base.join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut args = vec![
        "train",
        "--dataset",
        "author",
        "--model",
        "base",
        "--max-steps",
        "40",
        "--name",
        "sft",
        "--register-as",
        "twin",
    ];
    args.extend(SHORT);
    twin(d, &args);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let verdict = serde_json::json!({
        "accuracy": {"score": 2, "reason": "On the subject, with omissions."},
        "style": {"score": 3, "reason": "Reads like the author."}
    });
    let judge = judge_server(&runtime, &verdict.to_string());
    let judge_url = judge.url("/v1");
    let eval = |models: &[&str], judge_url: &str| {
        let mut args = vec!["eval"];
        args.extend(models);
        args.extend([
            "--dataset",
            "author",
            "--max-tokens",
            "12",
            "--judge",
            judge_url,
            "--format",
            "json",
        ]);
        twin_command(d, &args)
            .env("OPENAI_API_KEY", "sk-eval-test")
            .output()
            .unwrap()
    };
    let out = eval(&["base", "twin"], &judge_url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let (base_eval, twin_eval) = (&results[0], &results[1]);
    let ppl = |e: &serde_json::Value| e["perplexity"]["perplexity"].as_f64().unwrap();
    assert!(
        ppl(twin_eval) < ppl(base_eval) / 2.0,
        "the fine-tuned model finds the author's test answers less surprising: {} vs {}",
        ppl(twin_eval),
        ppl(base_eval)
    );
    for e in &results {
        assert_eq!(e["samples"], 4);
        assert_eq!(e["generation"]["answers"], 4);
        for key in ["cosine", "rouge_l"] {
            let v = e["generation"][key].as_f64().unwrap();
            assert!((-1.0..=1.0).contains(&v), "{key} {v}");
        }
        assert_eq!(e["judge"]["accuracy"], 2.0);
        assert_eq!(e["judge"]["style"], 3.0);
        assert_eq!(e["judge"]["judged"], 4);
        // The answers, their scores and the judge's reasons are kept.
        let file = d.join(e["answers_file"].as_str().unwrap());
        let lines = std::fs::read_to_string(&file).unwrap();
        assert_eq!(lines.lines().count(), 4);
        assert!(lines.contains("Reads like the author."));
    }
    // The same seed gives the same answers.
    let again = eval(&["twin"], &judge_url);
    let again: Vec<serde_json::Value> = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        again[0]["generation"]["rouge_l"],
        twin_eval["generation"]["rouge_l"]
    );
    assert_eq!(again[0]["perplexity"], twin_eval["perplexity"]);

    // Recorded with the training run of `twin`, and with an evaluation run of the base.
    let list = stdout(&twin(d, &["runs", "list"]));
    let train_run = list
        .lines()
        .find(|l| l.contains("(sft)"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(twin_eval["run_id"], train_run.as_str());
    let base_run = base_eval["run_id"].as_str().unwrap().to_string();
    assert!(
        list.contains("evaluated") && list.contains(&base_run),
        "{list}"
    );
    let show = stdout(&twin(d, &["runs", "show", &train_run]));
    assert!(show.contains("evaluations (twin eval)"), "{show}");
    let columns = show
        .lines()
        .find(|l| l.trim_start().starts_with("twin "))
        .unwrap();
    assert_eq!(
        columns.matches("twin ").count(),
        2,
        "two evaluations: {show}"
    );
    let compare = stdout(&twin(d, &["runs", "compare", &base_run, &train_run]));
    assert!(compare.contains("latest evaluations"), "{compare}");
    let perplexity_row = compare
        .lines()
        .find(|l| l.starts_with("perplexity"))
        .unwrap();
    assert!(
        perplexity_row.trim_end().ends_with('*'),
        "the fine-tuned one is best: {perplexity_row}"
    );
    let chart = d.join(format!("data/runs/compare-{base_run}-{train_run}-eval"));
    for ext in ["png", "svg"] {
        assert!(chart.with_extension(ext).exists(), "{ext}");
    }
    // The text table puts them side by side.
    let out = twin_command(
        d,
        &[
            "eval",
            "base",
            "twin",
            "--dataset",
            "author",
            "--max-tokens",
            "4",
        ],
    )
    .output()
    .unwrap();
    let table = stdout(&out);
    assert!(
        table.lines().next().unwrap().contains("base") && table.contains("twin"),
        "{table}"
    );

    // A judge that answers garbage: a clear error, and nothing recorded.
    let garbage = judge_server(&runtime, "What a lovely answer! I'd give it a solid B+.");
    let evaluations = |run: &str| {
        std::fs::read_dir(d.join("data/runs").join(run).join("evaluations"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    let before = (
        evaluations(&train_run),
        stdout(&twin(d, &["runs", "show", &train_run])),
    );
    let out = eval(&["twin"], &garbage.url("/v1"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("judge") && stderr.contains("not the JSON asked for"),
        "{stderr}"
    );
    assert!(stderr.contains("recorded nothing"), "{stderr}");
    assert_eq!(
        (
            evaluations(&train_run),
            stdout(&twin(d, &["runs", "show", &train_run]))
        ),
        before
    );

    // Bad input: clear errors.
    let fails = |args: &[&str], expected: &str| {
        let out = twin_command(d, args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    };
    std::fs::create_dir_all(d.join("only-train")).unwrap();
    std::fs::copy(
        d.join("author/train.jsonl"),
        d.join("only-train/train.jsonl"),
    )
    .unwrap();
    fails(
        &["eval", "twin", "--dataset", "only-train"],
        "no test split",
    );
    fails(
        &["eval", "twin", "--dataset", "author", "--judge", "nosuch"],
        "neither an http(s) url nor a configured endpoint",
    );
    fails(
        &["eval", "nosuch", "--dataset", "author"],
        "unknown model `nosuch`",
    );
    fails(
        &["eval", "twin", "--dataset", "author", "--temperature", "-1"],
        "invalid `temperature`",
    );
}

fn gguf_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("gguf/tests/data")
        .join(name)
}

/// `twin models import` of a Qwen2 GGUF file (written by the gguf package) registers a base
/// model that `twin train --model NAME` fine-tunes; a truncated file is refused with where it
/// ends, and nothing is registered.
#[test]
fn an_imported_gguf_model_is_registered_and_fine_tuned_by_name() {
    let dir = tempfile::tempdir().unwrap();
    samples(dir.path());
    let source = gguf_file("tiny-qwen2.gguf");

    // A truncated copy: an error naming the file and what was cut, and an empty registry.
    let bytes = std::fs::read(&source).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let out = twin_command(dir.path(), &["models", "import", cut.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );
    let listed = twin(dir.path(), &["models", "list"]);
    assert!(
        stdout(&listed).contains("no trained model registered yet"),
        "{}",
        stdout(&listed)
    );

    let out = twin(
        dir.path(),
        &[
            "models",
            "import",
            source.to_str().unwrap(),
            "--name",
            "tiny-qwen",
        ],
    );
    let text = stdout(&out);
    assert!(
        text.contains("(qwen2)") && text.contains("registered tiny-qwen@v1"),
        "{text}"
    );
    let listed = stdout(&twin(dir.path(), &["models", "list"]));
    assert!(
        listed.contains("tiny-qwen@v1")
            && listed.contains("imported from")
            && listed.contains("tiny-qwen2.gguf"),
        "{listed}"
    );

    let out = twin(
        dir.path(),
        &[
            "train",
            "--dataset",
            "samples",
            "--model",
            "tiny-qwen",
            "--method",
            "lora",
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--max-seq-len",
            "128",
            "--name",
            "from-gguf",
        ],
    );
    let text = stdout(&out);
    assert!(text.contains("registered from-gguf@v1"), "{text}");
    let show = stdout(&twin(dir.path(), &["models", "show", "from-gguf"]));
    assert!(show.contains("\"base\": \"tiny-qwen\""), "{show}");
}
