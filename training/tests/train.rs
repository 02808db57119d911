//! Training end to end on the CPU, on the small checkpoints of tests/data: a LoRA run and a
//! full run whose loss falls, a run stopped and resumed onto the same loss curve as one never
//! stopped, and bad input refused before any step.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use common::*;
use twin_config::TrainingMethod;
use twin_training::job::{self, TrainRequest};
use twin_training::trainer::Quiet;
use twin_training::{registry, TrainingError};

fn request(
    dataset: &std::path::Path,
    model: &str,
    params: twin_config::TrainingConfig,
) -> TrainRequest {
    TrainRequest {
        dataset: dataset.display().to_string(),
        model: Some(model.to_string()),
        init: None,
        params,
        name: None,
        register_as: Some("tiny".into()),
        template: None,
    }
}

fn no_stop() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lora_run_learns_records_its_metrics_and_registers_an_adapter() {
    let place = place().await;
    let data = alpaca_files(place.dir.path(), 64);
    let base = checkpoint("llama");
    let summary = train_quietly(
        &place,
        request(
            &data,
            base.to_str().unwrap(),
            params(TrainingMethod::Lora, 300),
        ),
    )
    .await
    .expect("train");
    assert_eq!(summary.outcome.steps, 300);
    let losses = losses(place.warehouse.as_ref(), &summary.run_id).await;
    assert_eq!(losses.len(), 300, "a metric row per step");
    let (first, last) = (mean(&losses[..10]), mean(&losses[290..]));
    assert!(
        last < first * 0.5,
        "LoRA loss fell from {first:.3} to {last:.3} only"
    );
    let curves = twin_training::runs::curves(place.warehouse.as_ref(), &summary.run_id)
        .await
        .unwrap();
    assert_eq!(
        curves.eval.iter().map(|e| e.step).collect::<Vec<_>>(),
        (1..=12).map(|i| i * 25).collect::<Vec<_>>(),
        "evaluation every 25 steps"
    );
    assert!(curves.eval.last().unwrap().loss < curves.eval[0].loss);
    // Only the adapters trained: a fraction of the model.
    assert!(summary.info.trainable_parameters * 5 < summary.info.parameters);
    let run = place.warehouse.runs().await.unwrap();
    assert_eq!(run.len(), 1);
    assert_eq!(run[0].status, "finished");
    let entry = summary.registered.expect("registered");
    assert_eq!(entry.reference(), "tiny@v1");
    assert_eq!(entry.lineage.kind, "lora");
    assert_eq!(entry.lineage.run_id, summary.run_id);
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "lineage.json",
    ] {
        assert!(
            entry.dir.join(file).exists(),
            "{file} in the registry entry"
        );
    }
    let found = registry::find(&place.layout.registry(), "tiny")
        .unwrap()
        .unwrap();
    assert_eq!(found.version, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_run_from_scratch_trains_its_own_tokenizer_and_learns() {
    let place = place().await;
    let data = alpaca_files(place.dir.path(), 64);
    let init = place.dir.path().join("config.json");
    std::fs::write(
        &init,
        serde_json::json!({
            "model_type": "llama", "vocab_size": 400, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 128,
            "initializer_range": 0.02, "tie_word_embeddings": true
        })
        .to_string(),
    )
    .unwrap();
    let mut req = request(&data, "", params(TrainingMethod::Full, 200));
    req.model = None;
    req.init = Some(init.clone());
    let summary = train_quietly(&place, req).await.expect("train");
    let losses = losses(place.warehouse.as_ref(), &summary.run_id).await;
    let (first, last) = (mean(&losses[..10]), mean(&losses[190..]));
    assert!(
        last < first * 0.5,
        "full loss fell from {first:.3} to {last:.3} only"
    );
    let entry = summary.registered.expect("registered");
    assert_eq!(entry.lineage.kind, "full");
    let tokenizer = twin_training::tokenizer::load(&entry.dir).expect("trained tokenizer saved");
    assert!(tokenizer.get_vocab_size(true) <= 400);
    assert!(tokenizer.token_to_id("<|endoftext|>").is_some());
    // The registered model loads back and is the one trained.
    let (model, _) = job::load_model(&place.layout, "tiny", tch::Device::Cpu).expect("load");
    assert_eq!(model.config.vocab_size, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_stopped_and_resumed_follows_the_uninterrupted_curve() {
    for method in [TrainingMethod::Lora, TrainingMethod::Full] {
        let place = place().await;
        let data = alpaca_files(place.dir.path(), 48);
        let base = checkpoint("qwen2");
        let mut p = params(method, 40);
        p.gradient_accumulation = 2;
        p.lora.dropout = 0.1; // dropout draws random numbers: resume must draw the same
        let whole = train_quietly(&place, request(&data, base.to_str().unwrap(), p.clone()))
            .await
            .expect("uninterrupted");
        let stop = no_stop();
        let stopped = job::train(
            request(&data, base.to_str().unwrap(), p.clone()),
            &place.layout,
            place.warehouse.clone(),
            stop.clone(),
            Box::new(StopAt {
                at: 17,
                stop: stop.clone(),
            }),
        )
        .await
        .expect("stopped");
        assert!(stopped.outcome.interrupted);
        assert_eq!(stopped.outcome.steps, 17);
        assert!(stopped.registered.is_none());
        let record = place.warehouse.runs().await.unwrap();
        assert_eq!(record[1].status, "interrupted");
        let resumed = job::resume(
            &stopped.run_id,
            &place.layout,
            place.warehouse.clone(),
            no_stop(),
            Box::new(Quiet),
        )
        .await
        .expect("resumed");
        assert_eq!(resumed.run_id, stopped.run_id);
        let again = job::resume(
            &stopped.run_id,
            &place.layout,
            place.warehouse.clone(),
            no_stop(),
            Box::new(Quiet),
        )
        .await
        .expect_err("a finished run does not resume");
        assert!(again.to_string().contains("is finished"), "{again}");
        assert_eq!(resumed.outcome.steps, 40);
        let a = losses(place.warehouse.as_ref(), &whole.run_id).await;
        let b = losses(place.warehouse.as_ref(), &resumed.run_id).await;
        assert_eq!(a.len(), 40);
        assert_eq!(b.len(), 40);
        for ((step, x), (_, y)) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{method:?} step {step}: {x} vs {y}");
        }
        let eval_a = whole.outcome.last_eval.unwrap().loss;
        let eval_b = resumed.outcome.last_eval.unwrap().loss;
        assert!(
            (eval_a - eval_b).abs() < 1e-5,
            "{method:?} eval {eval_a} vs {eval_b}"
        );
    }
}

async fn refused(req: TrainRequest) -> TrainingError {
    let place = place().await;
    let err = train_quietly(&place, req).await.expect_err("refused");
    assert!(
        place.warehouse.runs().await.unwrap().is_empty(),
        "refused before a run was recorded"
    );
    err
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_what_and_where_before_any_step() {
    let dir = tempfile::tempdir().unwrap();
    let data = alpaca_files(dir.path(), 16);
    let llama = checkpoint("llama");
    let llama = llama.to_str().unwrap();

    // A malformed dataset line: the file and the line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"instruction\": \"a question here\", \"output\": \"an answer\"}\n{\"instruction\": 3\n",
    )
    .unwrap();
    let e = refused(request(&bad, llama, params(TrainingMethod::Lora, 5))).await;
    let text = e.to_string();
    assert!(text.contains("bad.jsonl") && text.contains('2'), "{text}");

    // A checkpoint missing a tensor: its name.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let src = checkpoint("gpt2");
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), broken.join(f)).unwrap();
    }
    let mut weights = twin_training::weights::load(&[src.join("model.safetensors")]).unwrap();
    weights.remove("transformer.h.1.mlp.c_fc.weight");
    twin_training::weights::save(&broken.join("model.safetensors"), &weights, None).unwrap();
    let e = refused(request(
        &data,
        broken.to_str().unwrap(),
        params(TrainingMethod::Lora, 5),
    ))
    .await;
    assert!(
        e.to_string()
            .contains("no tensor `transformer.h.1.mlp.c_fc.weight`"),
        "{e}"
    );

    // A config naming an unknown architecture.
    let falcon = dir.path().join("falcon");
    std::fs::create_dir_all(&falcon).unwrap();
    std::fs::write(
        falcon.join("config.json"),
        r#"{"model_type": "falcon", "vocab_size": 10}"#,
    )
    .unwrap();
    let e = refused(request(
        &data,
        falcon.to_str().unwrap(),
        params(TrainingMethod::Full, 5),
    ))
    .await;
    assert!(
        e.to_string()
            .contains("unknown architecture `model_type: falcon`"),
        "{e}"
    );

    // Samples all longer than the context.
    let mut p = params(TrainingMethod::Lora, 5);
    p.max_seq_len = 16;
    let e = refused(request(&data, llama, p)).await;
    assert!(
        e.to_string()
            .contains("every training sample is longer than the context"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_family_trains_with_lora_and_in_full() {
    let place = place().await;
    let data = alpaca_files(place.dir.path(), 32);
    for family in ["llama", "mistral", "qwen2", "gpt2"] {
        for method in [TrainingMethod::Lora, TrainingMethod::Full] {
            let base = checkpoint(family);
            let summary = train_quietly(
                &place,
                request(&data, base.to_str().unwrap(), params(method, 40)),
            )
            .await
            .unwrap_or_else(|e| panic!("{family} {method:?}: {e}"));
            let losses = losses(place.warehouse.as_ref(), &summary.run_id).await;
            let (first, last) = (mean(&losses[..5]), mean(&losses[35..]));
            assert!(
                last < first * 0.7,
                "{family} {method:?}: loss {first:.3} -> {last:.3}"
            );
        }
    }
}

/// A preference dataset in TRL's layout: the chosen answers follow the pattern the SFT run
/// learned, the rejected ones say something else.
fn preference_files(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let folder = dir.join("preferences");
    std::fs::create_dir_all(&folder).unwrap();
    let sft = alpaca_files(&dir.join("sft-for-prefs"), n + n / 8);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(sft.join("train.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rejected = [
        "No idea, ask someone else.",
        "Whatever works, I never measure.",
        "That is not worth a thought.",
    ];
    let pair = |v: &serde_json::Value, i: usize| {
        serde_json::json!({
            "prompt": v["instruction"],
            "chosen": v["output"],
            "rejected": rejected[i % 3],
        })
        .to_string()
    };
    let all: Vec<String> = lines.iter().enumerate().map(|(i, v)| pair(v, i)).collect();
    std::fs::write(folder.join("train.jsonl"), all[..n].join("\n") + "\n").unwrap();
    std::fs::write(folder.join("test.jsonl"), all[n..].join("\n") + "\n").unwrap();
    folder
}

#[tokio::test(flavor = "multi_thread")]
async fn dpo_after_sft_grows_the_margins_and_the_accuracy() {
    let place = place().await;
    let data = alpaca_files(place.dir.path(), 64);
    let llama = checkpoint("llama").display().to_string();
    let mut sft = request(&data, &llama, params(TrainingMethod::Lora, 40));
    sft.register_as = Some("sft".into());
    train_quietly(&place, sft).await.expect("sft");
    let prefs = preference_files(place.dir.path(), 48);

    let mut p = params(TrainingMethod::Dpo, 40);
    p.learning_rate = 5e-3;
    p.eval_every = 10;
    let mut dpo = request(&prefs, "sft", p.clone());
    dpo.register_as = Some("dpo".into());
    let summary = train_quietly(&place, dpo).await.expect("dpo");
    let curves = twin_training::runs::curves(place.warehouse.as_ref(), &summary.run_id)
        .await
        .unwrap();
    let rewards: Vec<_> = curves
        .train
        .iter()
        .map(|m| m.rewards.expect("rewards"))
        .collect();
    let mean = |v: &[twin_training::dpo::Rewards], f: fn(&twin_training::dpo::Rewards) -> f64| {
        v.iter().map(f).sum::<f64>() / v.len() as f64
    };
    let (first, last) = (&rewards[..5], &rewards[35..]);
    let (m0, m1) = (mean(first, |r| r.margins), mean(last, |r| r.margins));
    let (a0, a1) = (mean(first, |r| r.accuracies), mean(last, |r| r.accuracies));
    assert!(m1 > m0 + 0.5, "margins {m0:.3} -> {m1:.3}");
    assert!(a1 > a0 && a1 >= 0.9, "accuracies {a0:.2} -> {a1:.2}");
    // The test pairs too, by the evaluations.
    let evals: Vec<_> = curves
        .eval
        .iter()
        .map(|e| e.rewards.expect("eval rewards"))
        .collect();
    assert!(evals.last().unwrap().margins > evals.first().unwrap().margins);
    let entry = summary.registered.expect("registered");
    assert_eq!(entry.lineage.kind, "lora");
    println!("DPO: margins {m0:.3} -> {m1:.3}, accuracies {a0:.2} -> {a1:.2}");

    // IPO and an on-the-fly reference run too.
    let mut ipo = p.clone();
    ipo.max_steps = Some(3);
    ipo.dpo.loss = "ipo".into();
    ipo.dpo.reference = "on_the_fly".into();
    train_quietly(&place, request(&prefs, "sft", ipo))
        .await
        .expect("ipo");

    // Bad input: each dataset kind to the other method, and nonsense settings.
    let err = refused(request(&prefs, &llama, params(TrainingMethod::Lora, 3))).await;
    assert!(err.to_string().contains("is a preference dataset"), "{err}");
    let err = refused(request(&data, &llama, params(TrainingMethod::Dpo, 3))).await;
    assert!(
        err.to_string().contains("no sample has a rejected answer"),
        "{err}"
    );
    let mut bad = p.clone();
    bad.dpo.beta = -1.0;
    let err = refused(request(&prefs, &llama, bad)).await;
    assert!(err.to_string().contains("beta"), "{err}");
    let mut bad = p;
    bad.dpo.loss = "hinge2".into();
    let err = refused(request(&prefs, &llama, bad)).await;
    assert!(err.to_string().contains("unknown DPO loss"), "{err}");
}
