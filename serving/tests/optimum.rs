//! Interop with Hugging Face Optimum: `ORTModelForCausalLM` (optimum 1.17.1 on onnxruntime
//! 1.32, installed by scripts/setup.sh) loads what `twin models export-llm` writes, and its
//! greedy generation gives the tokens our engine gives: for one prompt, and for two prompts of
//! different lengths batched with left padding.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::Command;

use twin_serving::{Engine, EngineOptions, GenerationRequest, Prompt, SamplingParams};

const SCRIPT: &str = r#"
import json, sys, torch
from optimum.onnxruntime import ORTModelForCausalLM
folder, prompts, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
model = ORTModelForCausalLM.from_pretrained(folder, use_cache=True, use_io_binding=False)
model.generation_config.eos_token_id = None
def generate(rows):
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                         pad_token_id=0, eos_token_id=None)
    return [row[width:].tolist() for row in out]
print(json.dumps({"alone": [generate([p])[0] for p in prompts], "batched": generate(prompts)}))
"#;

async fn check(family: &str) {
    let Some(python) = twin_testkit::python::torch_python_with_or_skip(
        "optimum interop",
        &["optimum.onnxruntime"],
    ) else {
        return;
    };
    let dir = common::exported(family);
    let engine = Engine::load(dir.path(), EngineOptions::default()).unwrap();
    let texts = ["The log is the truth, and", "Every store"];
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| engine.tokenize(&Prompt::Text(t.to_string())).unwrap())
        .collect();
    let n = 16;
    let out = Command::new(&python)
        .args([
            "-c",
            SCRIPT,
            &dir.path().display().to_string(),
            &serde_json::to_string(&prompts).unwrap(),
            &n.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{family}: optimum failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (i, text) in texts.iter().enumerate() {
        let ours = engine
            .generate(GenerationRequest {
                prompt: Prompt::Text(text.to_string()),
                params: SamplingParams {
                    max_tokens: Some(n),
                    ignore_eos: true,
                    ..SamplingParams::greedy()
                },
            })
            .await
            .unwrap();
        let alone: Vec<u32> = serde_json::from_value(theirs["alone"][i].clone()).unwrap();
        let batched: Vec<u32> = serde_json::from_value(theirs["batched"][i].clone()).unwrap();
        assert_eq!(ours.token_ids, alone, "{family}, prompt {i}: optimum alone");
        assert_eq!(
            ours.token_ids, batched,
            "{family}, prompt {i}: optimum batched"
        );
    }
    println!("{family}: optimum's greedy tokens are ours");
}

#[tokio::test]
async fn optimum_loads_our_llama_export_and_generates_our_tokens() {
    check("llama").await;
}

#[tokio::test]
async fn optimum_loads_our_mistral_export_and_generates_our_tokens() {
    check("mistral").await;
}

#[tokio::test]
async fn optimum_loads_our_qwen2_export_and_generates_our_tokens() {
    check("qwen2").await;
}

#[tokio::test]
async fn optimum_loads_our_gpt2_export_and_generates_our_tokens() {
    check("gpt2").await;
}
