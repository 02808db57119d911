//! The DPO loss and its gradients against TRL's formula (`DPOTrainer.dpo_loss` and
//! `get_batch_logps` of TRL 0.7, written out in Python on transformers 4.37.2 and Debian's
//! torch 1.13.1): for the small Llama checkpoint and three preference pairs of different
//! lengths, the loss, the rewards and the first step's gradients agree within 1e-5, for DPO with
//! label smoothing and for IPO. And the reference of a LoRA model is its base.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::Command;

use tch::{Device, Tensor};
use twin_training::data::Example;
use twin_training::dpo::{self, DpoLoss, DpoSettings, Pair, Rewards};
use twin_training::{CausalLm, LoraSettings};

const SCRIPT: &str = r#"
import json, sys, torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM
folder, case = sys.argv[1], json.loads(sys.argv[2])
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
model.train(False)
beta, smoothing, loss_type = case["beta"], case["label_smoothing"], case["loss"]

def batch_logps(rows, average):
    # TRL 0.7 get_batch_logps: labels are the ids with -100 off the answer, shifted by one.
    width = max(len(r["ids"]) for r in rows)
    ids = torch.tensor([r["ids"] + [0] * (width - len(r["ids"])) for r in rows])
    mask = torch.tensor([[1] * len(r["ids"]) + [0] * (width - len(r["ids"])) for r in rows])
    labels = torch.tensor([[t if m else -100 for t, m in zip(r["ids"], r["targets"])] + [-100] * (width - len(r["ids"])) for r in rows])
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :]
    labels = labels[:, 1:].clone()
    loss_mask = labels != -100
    labels[labels == -100] = 0
    per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
    if average:
        return (per_token * loss_mask).sum(-1) / loss_mask.sum(-1)
    return (per_token * loss_mask).sum(-1)

average = loss_type == "ipo"
chosen = batch_logps([p["chosen"] for p in case["pairs"]], average)
rejected = batch_logps([p["rejected"] for p in case["pairs"]], average)
ref_chosen = torch.tensor(case["reference_chosen"])
ref_rejected = torch.tensor(case["reference_rejected"])
# TRL 0.7 DPOTrainer.dpo_loss
pi_logratios = chosen - rejected
ref_logratios = ref_chosen - ref_rejected
logits = pi_logratios - ref_logratios
if loss_type == "sigmoid":
    losses = -F.logsigmoid(beta * logits) * (1 - smoothing) - F.logsigmoid(-beta * logits) * smoothing
else:
    losses = (logits - 1 / (2 * beta)) ** 2
chosen_rewards = beta * (chosen - ref_chosen).detach()
rejected_rewards = beta * (rejected - ref_rejected).detach()
loss = losses.mean()
loss.backward()
names = case["gradients"]
params = dict(model.named_parameters())
print(json.dumps({
    "loss": loss.item(),
    "chosen_rewards": chosen_rewards.tolist(),
    "rejected_rewards": rejected_rewards.tolist(),
    "gradients": {n: params[n].grad.flatten().tolist() for n in names},
}))
"#;

fn example(prompt: &[i64], answer: &[i64]) -> Example {
    let mut ids = prompt.to_vec();
    ids.extend(answer);
    let mut targets = vec![false; prompt.len()];
    targets.extend(vec![true; answer.len()]);
    Example { ids, targets }
}

fn pairs() -> Vec<Pair> {
    vec![
        Pair {
            chosen: example(&[1, 17, 200, 45], &[3, 99, 311]),
            rejected: example(&[1, 17, 200, 45], &[8, 150]),
        },
        Pair {
            chosen: example(&[1, 5, 9], &[42, 42, 7, 300, 12]),
            rejected: example(&[1, 5, 9], &[400, 2, 77, 64]),
        },
        Pair {
            chosen: example(&[1, 250, 251, 252, 253, 254], &[33]),
            rejected: example(&[1, 250, 251, 252, 253, 254], &[34, 35, 36]),
        },
    ]
}

const GRADIENTS: [&str; 3] = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
    "model.norm.weight",
];

fn check(settings: DpoSettings, label: &str) {
    let Some(python) = twin_testkit::python::torch_python_or_skip("dpo loss against TRL") else {
        return;
    };
    let dir = common::checkpoint("llama");
    let model = CausalLm::load(&dir, Device::Cpu).unwrap();
    model.prepare_for_training();
    let pairs = pairs();
    let reference_chosen = [-30.5f32, -41.0, -8.25];
    let reference_rejected = [-20.0f32, -35.5, -19.0];
    let as_json = |e: &Example| serde_json::json!({"ids": e.ids, "targets": e.targets});
    let case = serde_json::json!({
        "beta": settings.beta,
        "label_smoothing": settings.label_smoothing,
        "loss": if settings.loss == DpoLoss::Ipo { "ipo" } else { "sigmoid" },
        "pairs": pairs.iter().map(|p| serde_json::json!({"chosen": as_json(&p.chosen), "rejected": as_json(&p.rejected)})).collect::<Vec<_>>(),
        "reference_chosen": reference_chosen,
        "reference_rejected": reference_rejected,
        "gradients": GRADIENTS,
    });
    let out = Command::new(python)
        .args(["-c", SCRIPT, &dir.display().to_string(), &case.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let average = settings.loss == DpoLoss::Ipo;
    let chosen: Vec<&Example> = pairs.iter().map(|p| &p.chosen).collect();
    let rejected: Vec<&Example> = pairs.iter().map(|p| &p.rejected).collect();
    let policy_chosen = dpo::sequence_logps(&model, &chosen, 0, false, average);
    let policy_rejected = dpo::sequence_logps(&model, &rejected, 0, false, average);
    let batch = dpo::dpo_loss(
        &settings,
        &policy_chosen,
        &policy_rejected,
        &Tensor::of_slice(&reference_chosen),
        &Tensor::of_slice(&reference_rejected),
    );
    let loss = batch.losses.mean(tch::Kind::Float);
    loss.backward();
    let diff = (loss.double_value(&[]) - theirs["loss"].as_f64().unwrap()).abs();
    assert!(diff < 1e-5, "{label}: loss differs by {diff:e}");
    let rewards = Rewards::of(&batch);
    let theirs_rewards = Rewards::of_values(
        &serde_json::from_value::<Vec<f32>>(theirs["chosen_rewards"].clone()).unwrap(),
        &serde_json::from_value::<Vec<f32>>(theirs["rejected_rewards"].clone()).unwrap(),
    );
    assert!(
        (rewards.margins - theirs_rewards.margins).abs() < 1e-5,
        "{label}: {rewards:?} vs {theirs_rewards:?}"
    );
    assert_eq!(rewards.accuracies, theirs_rewards.accuracies);
    let mut worst = 0f64;
    for name in GRADIENTS {
        let ours = Vec::<f32>::from(&model.params()[name].grad().flatten(0, -1));
        let expected: Vec<f32> = serde_json::from_value(theirs["gradients"][name].clone()).unwrap();
        assert_eq!(ours.len(), expected.len());
        let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            scale > 1e-4,
            "{label}: {name}'s gradient is too small to test anything"
        );
        for (a, b) in ours.iter().zip(&expected) {
            worst = worst.max((a - b).abs() as f64);
        }
    }
    assert!(worst < 1e-5, "{label}: gradients differ by {worst:e}");
    println!(
        "{label}: loss and gradients match TRL's formula (loss {diff:e}, gradients {worst:e})"
    );
}

#[test]
fn dpo_loss_and_gradients_match_trls_formula() {
    check(
        DpoSettings {
            beta: 0.1,
            label_smoothing: 0.1,
            loss: DpoLoss::Sigmoid,
        },
        "dpo, label smoothing 0.1",
    );
}

#[test]
fn ipo_loss_and_gradients_match_trls_formula() {
    check(
        DpoSettings {
            beta: 0.5,
            label_smoothing: 0.0,
            loss: DpoLoss::Ipo,
        },
        "ipo",
    );
}

#[test]
fn the_reference_of_a_lora_model_is_its_base() {
    let dir = common::checkpoint("qwen2");
    let base = CausalLm::load(&dir, Device::Cpu).unwrap();
    let mut model = CausalLm::load(&dir, Device::Cpu).unwrap();
    model
        .add_lora(&LoraSettings {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: vec!["q_proj".into(), "up_proj".into()],
        })
        .unwrap();
    for (name, t) in model.params() {
        if name.contains("lora_B") {
            let mut t = t.shallow_clone();
            tch::no_grad(|| {
                t.copy_(&(Tensor::randn_like(&t) * 0.5));
            });
        }
    }
    let pairs = pairs();
    let refs: Vec<&Pair> = pairs.iter().collect();
    let (chosen, rejected) = dpo::reference_logps(&mut model, None, &refs, 0, false);
    let (base_chosen, base_rejected) =
        dpo::reference_logps(&mut model, Some(&base), &refs, 0, false);
    let diff = (&chosen - &base_chosen).abs().max().double_value(&[])
        + (&rejected - &base_rejected).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "{diff:e}");
    // And the adapters are back: the policy differs from its reference.
    let policy = dpo::sequence_logps(&model, &[&pairs[0].chosen], 0, false, false);
    assert!((policy.double_value(&[0]) - chosen.double_value(&[0])).abs() > 1e-3);
}
