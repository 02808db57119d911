//! Logit parity with Hugging Face transformers: small random checkpoints of each family, made
//! by transformers 4.37.2 on torch 1.13.1 (tests/data/README.md), loaded by our code, give the
//! logits transformers computed, within 1e-4.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::PathBuf;

use tch::{Device, Tensor};
use twin_training::{Batch, CausalLm};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn reference(name: &str) -> (Tensor, Tensor) {
    let w = twin_training::weights::load(&[data(name).join("reference.safetensors")]).unwrap();
    (w["input_ids"].shallow_clone(), w["logits"].shallow_clone())
}

fn check(name: &str) {
    let model = CausalLm::load(&data(name), Device::Cpu).unwrap();
    let (ids, expected) = reference(name);
    let rows: Vec<Vec<i64>> = Vec::<Vec<i64>>::from(&ids);
    let logits = model.forward(&Batch::plain(&rows, 0, Device::Cpu));
    assert_eq!(logits.size(), expected.size(), "{name}: logits shape");
    let diff = (&logits - &expected).abs().max().double_value(&[]);
    let scale = expected.abs().max().double_value(&[]);
    assert!(
        scale > 1.0,
        "{name}: reference logits too small to test anything"
    );
    assert!(diff < 1e-4, "{name}: max |ours - transformers| = {diff:e}");
    println!("{name}: max |ours - transformers| = {diff:e} (max |logit| {scale:.2})");
}

#[test]
fn llama_sharded_checkpoint_matches_transformers() {
    check("llama");
}

#[test]
fn llama_with_linear_rope_scaling_and_tied_embeddings_matches_transformers() {
    check("llama-rope-linear");
}

#[test]
fn mistral_with_a_sliding_window_matches_transformers() {
    check("mistral");
}

#[test]
fn qwen2_with_qkv_bias_matches_transformers() {
    check("qwen2");
}

#[test]
fn gpt2_matches_transformers() {
    check("gpt2");
}

#[test]
fn a_packed_row_gives_each_sample_the_logits_it_has_alone() {
    for name in ["llama", "mistral", "gpt2"] {
        let model = CausalLm::load(&data(name), Device::Cpu).unwrap();
        let (a, b) = (
            vec![5i64, 9, 13, 2, 77, 31],
            vec![8i64, 100, 4, 60, 3, 12, 90, 11, 7, 1],
        );
        let alone_a = model.forward(&Batch::plain(std::slice::from_ref(&a), 0, Device::Cpu));
        let alone_b = model.forward(&Batch::plain(std::slice::from_ref(&b), 0, Device::Cpu));
        let row: Vec<(i64, i64, i64)> = a
            .iter()
            .enumerate()
            .map(|(i, t)| (*t, i as i64, 1))
            .chain(b.iter().enumerate().map(|(i, t)| (*t, i as i64, 2)))
            .collect();
        let packed = model.forward(&Batch::from_tokens(&[row], 0, Device::Cpu));
        let pa = packed.narrow(1, 0, a.len() as i64);
        let pb = packed.narrow(1, a.len() as i64, b.len() as i64);
        let da = (pa - alone_a).abs().max().double_value(&[]);
        let db = (pb - alone_b).abs().max().double_value(&[]);
        assert!(
            da < 1e-4 && db < 1e-4,
            "{name}: packed differs by {da:e} / {db:e}"
        );
    }
}
