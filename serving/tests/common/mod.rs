//! What the serving tests share: the small checkpoints of `training/tests/data`, exported to
//! ONNX by twin's exporter, and libtorch's greedy continuation as the reference.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tch::Device;
use twin_training::onnx_export::{self, OnnxOptions};
use twin_training::{Batch, CausalLm};

/// A checkpoint of `training/tests/data`.
pub fn checkpoint(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../training/tests/data")
        .join(name)
}

/// `name` exported into a new temporary folder.
pub fn exported(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let model = CausalLm::load(&checkpoint(name), Device::Cpu).unwrap();
    onnx_export::export(
        &model,
        &checkpoint(name),
        dir.path(),
        &OnnxOptions::default(),
    )
    .unwrap();
    dir
}

/// libtorch's greedy continuation of `prompt`: `n` tokens, each the argmax of the whole text
/// run again (no cache, no batch: the plainest possible reference).
pub fn torch_greedy(dir: &Path, prompt: &[u32], n: usize) -> Vec<u32> {
    let model = CausalLm::load(dir, Device::Cpu).unwrap();
    let mut tokens: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = model.forward(&Batch::plain(&[tokens.clone()], 0, Device::Cpu));
        let last = logits.get(0).get(tokens.len() as i64 - 1);
        let next = last.argmax(0, false).int64_value(&[]);
        out.push(next as u32);
        tokens.push(next);
    }
    out
}
