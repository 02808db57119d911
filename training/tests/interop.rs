//! What we write, the Python ecosystem loads: transformers reads our full checkpoints and PEFT
//! our LoRA adapters, and both give the logits our code gives (within 1e-4). Runs Debian's
//! python3-torch with transformers 4.37.2 and peft 0.8.2 (installed by scripts/setup.sh).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

use tch::{Device, Kind, Tensor};
use twin_training::{export, Batch, CausalLm, LoraSettings};

const SCRIPT: &str = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, merged, ids = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
x = torch.tensor([ids])
out = {}
with torch.no_grad():
    m = AutoModelForCausalLM.from_pretrained(base)
    p = PeftModel.from_pretrained(m, adapter).eval()
    out["peft"] = p(input_ids=x).logits[0].tolist()
    f = AutoModelForCausalLM.from_pretrained(merged).eval()
    out["merged"] = f(input_ids=x).logits[0].tolist()
print(json.dumps(out))
"#;

fn logits(model: &CausalLm, ids: &[i64]) -> Tensor {
    model
        .forward(&Batch::plain(&[ids.to_vec()], 0, Device::Cpu))
        .squeeze_dim(0)
}

fn max_diff(ours: &Tensor, theirs: &serde_json::Value) -> f64 {
    let rows: Vec<Vec<f32>> = serde_json::from_value(theirs.clone()).expect("logits");
    let flat: Vec<f32> = rows.concat();
    let theirs = Tensor::of_slice(&flat).reshape(&ours.size());
    (ours - theirs).abs().max().double_value(&[])
}

fn check(family: &str, targets: &[&str]) {
    let Some(python) = twin_testkit::python::torch_python_or_skip("interop") else {
        return;
    };
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(family);
    let dir = tempfile::tempdir().unwrap();
    let (adapter, merged) = (dir.path().join("adapter"), dir.path().join("merged"));
    let settings = LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: targets.iter().map(|s| s.to_string()).collect(),
    };
    let mut model = CausalLm::load(&base, Device::Cpu).unwrap();
    model.add_lora(&settings).unwrap();
    // As if trained: B is zero at the start, which would hide a wrong layout.
    tch::no_grad(|| {
        for (name, t) in model.params() {
            if name.contains("lora_B") {
                t.shallow_clone()
                    .copy_(&(Tensor::randn(&t.size(), (Kind::Float, Device::Cpu)) * 0.3));
            }
        }
    });
    export::save_adapter(
        &model,
        &settings,
        &base.display().to_string(),
        &adapter,
        &base,
    )
    .unwrap();
    let ids = [1i64, 17, 200, 45, 3, 99, 311, 8, 150, 42];
    let with_adapter = logits(&model, &ids);
    let merged_model = export::merge(&base, &adapter, &merged).unwrap();
    let merged_logits = logits(&merged_model, &ids);
    let unchanged = (&logits(&CausalLm::load(&base, Device::Cpu).unwrap(), &ids) - &with_adapter)
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        unchanged > 1e-2,
        "{family}: the adapter changes nothing ({unchanged:e})"
    );

    let output = Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(&base)
        .arg(&adapter)
        .arg(&merged)
        .arg(serde_json::to_string(&ids).unwrap())
        .output()
        .expect("python");
    assert!(
        output.status.success(),
        "{family}: python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&output.stdout).expect("python's JSON");
    let peft = max_diff(&with_adapter, &theirs["peft"]);
    let full = max_diff(&merged_logits, &theirs["merged"]);
    println!("{family}: PEFT vs ours {peft:e}; transformers on our merged model vs ours {full:e}");
    assert!(peft < 1e-4, "{family}: PEFT's logits differ by {peft:e}");
    assert!(
        full < 1e-4,
        "{family}: transformers' logits differ by {full:e}"
    );
}

#[test]
fn peft_and_transformers_load_our_llama_adapter_and_merged_model() {
    check("llama", &["q_proj", "v_proj", "down_proj"]);
}

#[test]
fn peft_and_transformers_load_our_gpt2_adapter_and_merged_model() {
    // GPT-2's Conv1D stores weights transposed: PEFT's fan_in_fan_out.
    check("gpt2", &["c_attn", "c_proj", "c_fc"]);
}

#[test]
fn peft_and_transformers_load_our_qwen2_adapter_and_merged_model() {
    let every = twin_training::Family::Qwen2.default_lora_targets();
    check(
        "qwen2",
        &every.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}
