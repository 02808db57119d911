//! The exported ONNX graph gives libtorch's logits (within 1e-4) for every family: with an
//! empty cache, with a cache of earlier tokens, and for a left-padded batch whose rows sit at
//! different positions; also with its weights in an external data file. ONNX Runtime runs it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::Path;

use ort::session::Session;
use ort::value::{DynValue, Tensor as OrtTensor};
use tch::{Device, Tensor};
use twin_training::onnx_export::{self, OnnxOptions};
use twin_training::{Batch, CausalLm};

/// One run of the graph: logits `[batch][position][vocab]` and the cache it returns.
struct Step {
    logits: Vec<Vec<Vec<f32>>>,
    cache: Vec<DynValue>,
}

fn session(dir: &Path) -> Session {
    let env = twin_onnx::environment(&twin_onnx::default_library()).unwrap();
    Session::builder(env)
        .unwrap()
        .commit_from_file(dir.join("model.onnx"))
        .unwrap()
}

/// Run `rows` (each left-padded with `pad[i]` masked tokens, then the row's tokens at positions
/// starting `start[i]`) after `cache` (whose mask is `past_mask`).
fn run(
    session: &mut Session,
    model: &CausalLm,
    rows: &[Vec<i64>],
    past_mask: &[Vec<i64>],
    positions: &[Vec<i64>],
    cache: Option<Vec<DynValue>>,
) -> Step {
    let c = &model.config;
    let (b, s) = (rows.len(), rows[0].len());
    let ids: Vec<i64> = rows.concat();
    let pos: Vec<i64> = positions.concat();
    let mut mask = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        mask.extend(&past_mask[i]);
        mask.extend(row.iter().map(|&t| i64::from(t >= 0)));
    }
    let ids: Vec<i64> = ids.iter().map(|&t| t.max(0)).collect();
    let past = past_mask[0].len();
    let mut inputs: Vec<(String, ort::session::SessionInputValue)> = vec![
        (
            "input_ids".into(),
            OrtTensor::from_array(([b, s], ids)).unwrap().into(),
        ),
        (
            "attention_mask".into(),
            OrtTensor::from_array(([b, past + s], mask)).unwrap().into(),
        ),
        (
            "position_ids".into(),
            OrtTensor::from_array(([b, s], pos)).unwrap().into(),
        ),
    ];
    let mut cache = cache.map(|c| c.into_iter());
    for layer in 0..c.num_layers {
        for part in ["key", "value"] {
            let value: ort::session::SessionInputValue = match cache.as_mut() {
                Some(values) => values.next().unwrap().into(),
                None => OrtTensor::<f32>::from_array((
                    [b, c.num_kv_heads as usize, 0, c.head_dim() as usize],
                    Vec::<f32>::new(),
                ))
                .unwrap()
                .into(),
            };
            inputs.push((format!("past_key_values.{layer}.{part}"), value));
        }
    }
    let mut outputs = session.run(inputs).unwrap();
    let (shape, data) = outputs["logits"].try_extract_tensor::<f32>().unwrap();
    let v = shape[2] as usize;
    let logits = (0..b)
        .map(|i| {
            (0..s)
                .map(|j| data[(i * s + j) * v..(i * s + j + 1) * v].to_vec())
                .collect()
        })
        .collect();
    let mut next = Vec::new();
    for layer in 0..c.num_layers {
        for part in ["key", "value"] {
            next.push(outputs.remove(format!("present.{layer}.{part}")).unwrap());
        }
    }
    Step {
        logits,
        cache: next,
    }
}

/// libtorch's logits of one unpadded row.
fn torch_logits(model: &CausalLm, row: &[i64]) -> Vec<Vec<f32>> {
    let logits = model.forward(&Batch::plain(&[row.to_vec()], 0, Device::Cpu));
    let rows: Vec<Vec<Vec<f32>>> = Vec::<Vec<Vec<f32>>>::from(&logits);
    rows.into_iter().next().unwrap()
}

fn max_diff(ours: &[Vec<f32>], theirs: &[Vec<f32>]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

fn ids(n: usize, salt: i64, vocab: i64) -> Vec<i64> {
    (0..n as i64)
        .map(|i| (i * 37 + salt * 11 + 5) % vocab)
        .collect()
}

/// Export `dir`'s model and check the three ways of running it against libtorch.
fn check_model(model: &CausalLm, tokenizer_dir: &Path, label: &str, options: &OnnxOptions) {
    let out = tempfile::tempdir().unwrap();
    let summary = onnx_export::export(model, tokenizer_dir, out.path(), options).unwrap();
    assert_eq!(summary.data_bytes.is_some(), options.external_data);
    for file in [
        "model.onnx",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
    ] {
        assert!(out.path().join(file).exists(), "{label}: {file} written");
    }
    let mut session = session(out.path());
    let names: Vec<String> = session
        .inputs()
        .iter()
        .map(|i| i.name().to_string())
        .collect();
    assert_eq!(
        &names[..4],
        [
            "input_ids",
            "attention_mask",
            "position_ids",
            "past_key_values.0.key"
        ]
    );
    assert_eq!(names.len(), 3 + 2 * model.config.num_layers as usize);
    let outputs: Vec<String> = session
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect();
    assert_eq!(
        &outputs[..3],
        ["logits", "present.0.key", "present.0.value"]
    );
    let vocab = model.config.vocab_size;
    let tolerance = 1e-4;

    // An empty cache: the whole row at once.
    let row = ids(20, 1, vocab);
    let expected = torch_logits(model, &row);
    let positions: Vec<i64> = (0..20).collect();
    let whole = run(
        &mut session,
        model,
        std::slice::from_ref(&row),
        &[vec![]],
        &[positions],
        None,
    );
    let diff = max_diff(&whole.logits[0], &expected);
    assert!(diff < tolerance, "{label}, empty cache: {diff:e}");
    let mut worst = diff;

    // A cache of the first 13 tokens, then 5 more, then 2 one at a time.
    let first = run(
        &mut session,
        model,
        &[row[..13].to_vec()],
        &[vec![]],
        &[(0..13).collect()],
        None,
    );
    let mut diff = max_diff(&first.logits[0], &expected[..13]);
    let second = run(
        &mut session,
        model,
        &[row[13..18].to_vec()],
        &[vec![1; 13]],
        &[(13..18).collect()],
        Some(first.cache),
    );
    diff = diff.max(max_diff(&second.logits[0], &expected[13..18]));
    let mut cache = second.cache;
    for t in 18..20 {
        let step = run(
            &mut session,
            model,
            &[vec![row[t]]],
            &[vec![1; t]],
            &[vec![t as i64]],
            Some(cache),
        );
        diff = diff.max(max_diff(&step.logits[0], &expected[t..t + 1]));
        cache = step.cache;
    }
    assert!(diff < tolerance, "{label}, with a cache: {diff:e}");
    worst = worst.max(diff);

    // A batch: a long row and a short one left-padded to its length, then a step on the cache.
    let long = ids(16, 2, vocab);
    let short = ids(9, 3, vocab);
    let pad = long.len() - short.len();
    let mut padded = vec![-1; pad];
    padded.extend(&short);
    let short_positions: Vec<i64> = std::iter::repeat_n(0, pad).chain(0..9).collect();
    let batch = run(
        &mut session,
        model,
        &[long.clone(), padded],
        &[vec![], vec![]],
        &[(0..16).collect(), short_positions],
        None,
    );
    let mut diff = max_diff(&batch.logits[0], &torch_logits(model, &long));
    diff = diff.max(max_diff(
        &batch.logits[1][pad..],
        &torch_logits(model, &short),
    ));
    let (next_long, next_short) = (7, 8);
    let mut short_mask = vec![0; pad];
    short_mask.extend(vec![1; 9]);
    let step = run(
        &mut session,
        model,
        &[vec![next_long], vec![next_short]],
        &[vec![1; 16], short_mask],
        &[vec![16], vec![9]],
        Some(batch.cache),
    );
    let long_full: Vec<i64> = long.iter().copied().chain([next_long]).collect();
    let short_full: Vec<i64> = short.iter().copied().chain([next_short]).collect();
    diff = diff.max(max_diff(
        &step.logits[0],
        &torch_logits(model, &long_full)[16..],
    ));
    diff = diff.max(max_diff(
        &step.logits[1],
        &torch_logits(model, &short_full)[9..],
    ));
    assert!(diff < tolerance, "{label}, left-padded batch: {diff:e}");
    worst = worst.max(diff);
    println!("{label}: ONNX Runtime matches libtorch (max difference {worst:e})");
}

fn check(name: &str) {
    let dir = common::checkpoint(name);
    let model = CausalLm::load(&dir, Device::Cpu).unwrap();
    check_model(&model, &dir, name, &OnnxOptions::default());
}

#[test]
fn llama_with_grouped_query_attention_exports_with_parity() {
    check("llama");
}

#[test]
fn llama_with_linear_rope_scaling_exports_with_parity() {
    check("llama-rope-linear");
}

#[test]
fn mistral_with_a_sliding_window_exports_with_parity() {
    check("mistral");
}

#[test]
fn qwen2_exports_with_parity() {
    check("qwen2");
}

#[test]
fn gpt2_exports_with_parity() {
    check("gpt2");
}

#[test]
fn weights_in_an_external_data_file_give_the_same_logits() {
    let dir = common::checkpoint("llama");
    let model = CausalLm::load(&dir, Device::Cpu).unwrap();
    check_model(
        &model,
        &dir,
        "llama, external data",
        &OnnxOptions {
            external_data: true,
        },
    );
}

#[test]
fn a_model_with_lora_is_merged_before_export() {
    let dir = common::checkpoint("qwen2");
    let mut model = CausalLm::load(&dir, Device::Cpu).unwrap();
    let settings = twin_training::LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec!["q_proj".into(), "down_proj".into()],
    };
    model.add_lora(&settings).unwrap();
    // Non-zero B, so that the adapter changes the logits.
    for (name, t) in model.params() {
        if name.contains("lora_B") {
            let mut t = t.shallow_clone();
            tch::no_grad(|| {
                t.copy_(&(Tensor::randn_like(&t) * 0.5));
            });
        }
    }
    let out = tempfile::tempdir().unwrap();
    let err = onnx_export::export(&model, &dir, out.path(), &OnnxOptions::default())
        .expect_err("unmerged LoRA");
    assert!(err.to_string().contains("merge"), "{err}");
    model.merge_lora();
    check_model(&model, &dir, "qwen2 + merged LoRA", &OnnxOptions::default());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_model_trained_from_scratch_exports_with_parity() {
    let place = common::place().await;
    let data = common::alpaca_files(place.dir.path(), 64);
    let init = place.dir.path().join("demo-llama.json");
    std::fs::write(&init, twin_training::architecture::DEMO_CONFIG).unwrap();
    let request = twin_training::job::TrainRequest {
        dataset: data.display().to_string(),
        model: None,
        init: Some(init),
        params: common::params(twin_config::TrainingMethod::Full, 10),
        name: None,
        register_as: Some("demo".into()),
        template: None,
    };
    common::train_quietly(&place, request).await.unwrap();
    let (model, dir) = twin_training::job::load_model(&place.layout, "demo", Device::Cpu).unwrap();
    assert_eq!(model.config.hidden_size, 256);
    check_model(&model, &dir, "demo model", &OnnxOptions::default());
}

/// A small Llama with random weights and `rope_scaling`.
fn scaled_llama(rope_scaling: serde_json::Value, max_positions: i64) -> CausalLm {
    let config = twin_training::ModelConfig::from_json(&serde_json::json!({
        "model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 112,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": max_positions, "rope_theta": 10000.0,
        "initializer_range": 0.2, "rope_scaling": rope_scaling
    }))
    .unwrap();
    CausalLm::init(config, 7, Device::Cpu).unwrap()
}

#[test]
fn llama3_rope_scaling_exports_with_parity() {
    let model = scaled_llama(
        serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
        256,
    );
    check_model(
        &model,
        &common::checkpoint("llama"),
        "llama3 rope scaling",
        &OnnxOptions::default(),
    );
}

#[test]
fn dynamic_rope_scaling_past_the_trained_context_matches_libtorch() {
    // Positions beyond 16 stretch the base; run as one pass (with a cache, keys cached before
    // the stretch keep their rotation, in transformers too).
    let model = scaled_llama(serde_json::json!({"type": "dynamic", "factor": 2.0}), 16);
    let out = tempfile::tempdir().unwrap();
    onnx_export::export(
        &model,
        &common::checkpoint("llama"),
        out.path(),
        &OnnxOptions::default(),
    )
    .unwrap();
    let mut session = session(out.path());
    for n in [12usize, 30] {
        let row = ids(n, 4, 512);
        let step = run(
            &mut session,
            &model,
            std::slice::from_ref(&row),
            &[vec![]],
            &[(0..n as i64).collect()],
            None,
        );
        let diff = max_diff(&step.logits[0], &torch_logits(&model, &row));
        assert!(diff < 1e-4, "{n} tokens: {diff:e}");
    }
}

/// The reference data of the GGUF import (made by transformers; see gguf/tests/data/README.md).
fn gguf_data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gguf/tests/data")
        .join(name)
}

fn reference(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(gguf_data(name)).unwrap()).unwrap()
}

fn rows_of(value: &serde_json::Value) -> Vec<Vec<f32>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

/// A JSON array of integers (token ids) as a vector.
fn integers(value: &serde_json::Value) -> Vec<i64> {
    let items = value.as_array().expect("an array of integers");
    items.iter().map(|i| i.as_i64().unwrap()).collect()
}

/// Small Llama (its q/k permuted by the GGUF writer, as llama.cpp's converter does) and Qwen2
/// models written by the `gguf` package: imported, they give the logits transformers gives on
/// their original weights, and their ONNX export gives the same.
#[test]
fn imported_gguf_models_equal_transformers_on_their_original_weights() {
    let expected = reference("tiny_logits.json");
    let ids = integers(&expected["ids"]);
    for file in ["tiny-llama.gguf", "tiny-qwen2.gguf"] {
        let out = tempfile::tempdir().unwrap();
        twin_gguf::import(&gguf_data(file), out.path()).unwrap();
        let model = CausalLm::load(out.path(), Device::Cpu).unwrap();
        let ours = torch_logits(&model, &ids);
        let diff = max_diff(&ours, &rows_of(&expected["models"][file]));
        assert!(
            diff < 1e-4,
            "{file}: logits differ from transformers by {diff:e}"
        );
        check_model(&model, out.path(), file, &OnnxOptions::default());
    }
}

/// SmolLM2-135M-Instruct imported from its GGUF file: transformers' logits on the checkpoint
/// the gguf package makes of it (dequantized, un-permuted), within 1e-4, from libtorch and from
/// the ONNX export.
#[test]
fn imported_smollm2_equals_transformers_and_its_onnx_export() {
    let file = twin_onnx::runtime::tool_cache()
        .unwrap_or_default()
        .join("models/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !file.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} missing under CI",
            file.display()
        );
        eprintln!(
            "SKIPPED: {} is missing (run scripts/setup.sh)",
            file.display()
        );
        return;
    }
    let expected = reference("smollm2_logits.json");
    let ids = integers(&expected["ids"]);
    let out = tempfile::tempdir().unwrap();
    twin_gguf::import(&file, out.path()).unwrap();
    let model = CausalLm::load(out.path(), Device::Cpu).unwrap();
    let ours = torch_logits(&model, &ids);
    let argmax: Vec<i64> = ours
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0 as i64
        })
        .collect();
    let theirs = integers(&expected["argmax"]);
    assert_eq!(argmax, theirs, "the most likely next tokens");
    let last: Vec<f32> = rows_of(&serde_json::json!([expected["last"]]))[0].clone();
    let diff = max_diff(&[ours[ours.len() - 1][..last.len()].to_vec()], &[last]);
    assert!(diff < 1e-4, "last position's logits differ by {diff:e}");
    let top = rows_of(&expected["top5_logits"]);
    let indices = &expected["top5"];
    for (position, values) in top.iter().enumerate() {
        for (k, value) in values.iter().enumerate() {
            let id = indices[position][k].as_u64().unwrap() as usize;
            let d = (ours[position][id] - value).abs();
            assert!(d < 1e-4, "position {position}, token {id}: {d:e}");
        }
    }
    // The ONNX export: the whole row at once, against transformers' numbers.
    let onnx = tempfile::tempdir().unwrap();
    onnx_export::export(&model, out.path(), onnx.path(), &OnnxOptions::default()).unwrap();
    let mut session = session(onnx.path());
    let whole = run(
        &mut session,
        &model,
        std::slice::from_ref(&ids),
        &[vec![]],
        &[(0..ids.len() as i64).collect()],
        None,
    );
    let diff = max_diff(&whole.logits[0], &ours);
    assert!(
        diff < 1e-4,
        "ONNX Runtime's logits differ from libtorch's by {diff:e}"
    );
}
