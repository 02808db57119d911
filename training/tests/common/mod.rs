//! What the training tests share: the small checkpoints of `tests/data`, a dataset of samples
//! a small model can learn, and a data folder with an embedded warehouse.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use twin_config::{DataLayout, TrainingConfig, TrainingMethod};
use twin_training::trainer::{Observer, StepMetrics};
use twin_warehouse::Warehouse;

/// A checkpoint of `tests/data`.
pub fn checkpoint(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A data folder with an embedded warehouse.
pub struct Place {
    pub dir: tempfile::TempDir,
    pub layout: DataLayout,
    pub warehouse: Arc<dyn Warehouse>,
}

pub async fn place() -> Place {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = DataLayout::new(dir.path());
    let warehouse = twin_warehouse::open(&Default::default(), dir.path())
        .await
        .expect("warehouse");
    Place {
        dir,
        layout,
        warehouse,
    }
}

const TOPICS: [&str; 8] = [
    "event sourcing",
    "the warehouse",
    "vector search",
    "fine-tuning",
    "retrieval",
    "snapshots",
    "tokenizers",
    "evaluation",
];
const VIEWS: [&str; 4] = [
    "keeps every change as a fact on the log",
    "is a projection that a replay rebuilds",
    "should be measured before it is trusted",
    "works on one laptop first and on a cluster later",
];

/// `train.jsonl` (`n` samples) and `test.jsonl` (`n / 8`) in Alpaca's format under `dir`; the
/// answers follow a pattern a small model learns in a few hundred steps.
pub fn alpaca_files(dir: &Path, n: usize) -> PathBuf {
    let folder = dir.join("samples");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let line = |i: usize| {
        let topic = TOPICS[i % TOPICS.len()];
        let view = VIEWS[(i / TOPICS.len()) % VIEWS.len()];
        serde_json::json!({
            "instruction": format!("What do you think about {topic}?"),
            "input": "",
            "output": format!("In my experience {topic} {view}. That is why {topic} {view}."),
        })
        .to_string()
    };
    let train: Vec<String> = (0..n).map(line).collect();
    let test: Vec<String> = (n..n + n / 8).map(line).collect();
    std::fs::write(folder.join("train.jsonl"), train.join("\n") + "\n").expect("write");
    std::fs::write(folder.join("test.jsonl"), test.join("\n") + "\n").expect("write");
    folder
}

/// Parameters for short CPU runs.
pub fn params(method: TrainingMethod, steps: u64) -> TrainingConfig {
    TrainingConfig {
        method,
        max_steps: Some(steps),
        batch_size: 4,
        max_seq_len: 128,
        learning_rate: if method == TrainingMethod::Lora {
            5e-3
        } else {
            2e-3
        },
        warmup_steps: 5,
        eval_every: 25,
        checkpoint_every: 0,
        device: "cpu".into(),
        lora: twin_config::LoraConfig {
            rank: 8,
            alpha: 16.0,
            ..Default::default()
        },
        ..TrainingConfig::default()
    }
}

/// Observes nothing, but raises `stop` after step `at` (what Ctrl-C does).
pub struct StopAt {
    pub at: u64,
    pub stop: Arc<AtomicBool>,
}

impl Observer for StopAt {
    fn step(&mut self, m: &StepMetrics, _total: u64) {
        if m.step == self.at {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}

/// The training losses of a run, by step.
pub async fn losses(warehouse: &dyn Warehouse, run: &str) -> Vec<(u64, f64)> {
    twin_training::runs::curves(warehouse, run)
        .await
        .expect("curves")
        .train
        .iter()
        .map(|m| (m.step, m.loss))
        .collect()
}

/// Train as `request` says, without display or stop.
pub async fn train_quietly(
    place: &Place,
    request: twin_training::job::TrainRequest,
) -> Result<twin_training::job::RunSummary, twin_training::TrainingError> {
    twin_training::job::train(
        request,
        &place.layout,
        place.warehouse.clone(),
        Arc::new(AtomicBool::new(false)),
        Box::new(twin_training::trainer::Quiet),
    )
    .await
}

pub fn mean(v: &[(u64, f64)]) -> f64 {
    v.iter().map(|(_, l)| l).sum::<f64>() / v.len() as f64
}
