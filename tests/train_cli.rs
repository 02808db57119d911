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
