//! `twin train` from start to end: resolve the dataset and the model, check everything that
//! could fail before any training time is spent, record the run, train (on a blocking thread,
//! writing metrics to the warehouse as they come), write the outputs in the Hugging Face layout
//! and register them.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use tch::{Device, Kind};
use tokenizers::Tokenizer;
use twin_config::{DataLayout, TrainingConfig, TrainingMethod};
use twin_datasets::{Sample, Split};
use twin_warehouse::{DocumentFilter, MetricRow, Position, Warehouse};

use crate::architecture::ModelConfig;
use crate::data::{Examples, Tokenising};
use crate::dpo::{DpoLoss, DpoObjective, DpoSettings, Pair};
use crate::model::{CausalLm, LoraSettings};
use crate::registry::{self, Lineage};
use crate::runs::{self, RunInfo, RunResult};
use crate::trainer::{self, EvalMetrics, Observer, Outcome, Plan, StepMetrics};
use crate::{export, tokenizer, Result, TrainingError};

/// What `twin train` was asked.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// A dataset id, name or id prefix, or a JSONL/JSON file (or folder) of samples.
    pub dataset: String,
    /// A checkpoint folder or a registry reference (`name`, `name@vN`).
    pub model: Option<String>,
    /// Start from scratch with this `config.json` (and a tokenizer trained on the snapshot).
    pub init: Option<PathBuf>,
    /// The parameters.
    pub params: TrainingConfig,
    /// A name for the run.
    pub name: Option<String>,
    /// The registry name of the result (default: the run's name, else `twin`).
    pub register_as: Option<String>,
    /// A built-in chat template instead of the checkpoint's.
    pub template: Option<String>,
}

/// Where a run keeps its files.
pub fn run_dir(layout: &DataLayout, run_id: &str) -> PathBuf {
    layout.runs().join(run_id)
}

/// A model ready to train, with where its tokenizer files are.
struct Prepared {
    model: CausalLm,
    tokenizer: Tokenizer,
    tokenizer_dir: PathBuf,
    source: String,
    base_dir: Option<PathBuf>,
    lora: Option<LoraSettings>,
}

/// Load a model folder or registry reference; an adapter from the registry is applied to its
/// base and merged.
pub fn load_model(layout: &DataLayout, key: &str, device: Device) -> Result<(CausalLm, PathBuf)> {
    let path = Path::new(key);
    if path.join("config.json").exists() {
        return Ok((CausalLm::load(path, device)?, path.to_path_buf()));
    }
    if path.join("adapter_config.json").exists() {
        let base = export::read_adapter_config(path)?
            .base
            .ok_or_else(|| TrainingError::Invalid(format!("{key}: the adapter names no base")))?;
        let (mut model, _) = load_model(layout, &base, device)?;
        apply_adapter(&mut model, path)?;
        return Ok((model, path.to_path_buf()));
    }
    match registry::find(&layout.registry(), key)? {
        Some(entry) if entry.lineage.kind == "lora" => {
            let base = entry.lineage.base_dir.clone().ok_or_else(|| {
                TrainingError::Invalid(format!("{}: no base folder recorded", entry.reference()))
            })?;
            let mut model = CausalLm::load(&base, device)?;
            apply_adapter(&mut model, &entry.dir)?;
            Ok((model, entry.dir))
        }
        Some(entry) => Ok((CausalLm::load(&entry.dir, device)?, entry.dir)),
        None if path.exists() => Err(TrainingError::Config {
            path: path.to_path_buf(),
            reason: "no config.json: not a Hugging Face checkpoint folder".into(),
        }),
        None => Err(TrainingError::Invalid(format!(
            "{key}: neither a checkpoint folder nor a model in the registry ({})",
            layout.registry().display()
        ))),
    }
}

/// Apply a PEFT adapter and fold it in: what training on from an adapter starts with.
fn apply_adapter(model: &mut CausalLm, dir: &Path) -> Result<()> {
    export::apply_adapter(model, dir)?;
    model.merge_lora();
    Ok(())
}

/// The device and compute precision `params` ask for.
pub fn device_for(params: &TrainingConfig) -> Result<(Device, Kind)> {
    let device = match params.device.as_str() {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" if tch::Cuda::is_available() => Device::Cuda(0),
        "cuda" => {
            return Err(TrainingError::Invalid(
                "device = \"cuda\", but libtorch sees no GPU".into(),
            ))
        }
        other => {
            return Err(TrainingError::Invalid(format!(
                "unknown device {other:?}: use auto, cpu or cuda"
            )))
        }
    };
    let kind = match (params.precision.as_str(), device) {
        ("auto", Device::Cuda(_)) | ("bf16", Device::Cuda(_)) => Kind::BFloat16,
        ("auto", _) | ("f32", _) => Kind::Float,
        ("bf16", _) => {
            return Err(TrainingError::Invalid(
                "precision = \"bf16\" needs a GPU here: on the CPU training runs in f32".into(),
            ))
        }
        (other, _) => {
            return Err(TrainingError::Invalid(format!(
                "unknown precision {other:?}: use auto, f32 or bf16"
            )))
        }
    };
    Ok((device, kind))
}

/// The samples of `key`: a file or folder of samples, or a dataset of the warehouse. Returns
/// them with the dataset's id (or file) and its snapshot.
pub async fn load_dataset(
    warehouse: &dyn Warehouse,
    key: &str,
) -> Result<(
    Vec<(Split, Sample)>,
    String,
    Option<twin_warehouse::Snapshot>,
)> {
    let path = Path::new(key);
    if path.exists() {
        let imported = twin_datasets::formats::import(&[(None, path.to_path_buf())])?;
        // Absolute, so that `--resume` finds it from any folder.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        return Ok((imported.samples, path.display().to_string(), None));
    }
    let record = twin_warehouse::find_dataset(warehouse, key)
        .await?
        .ok_or_else(|| {
            TrainingError::Invalid(format!(
                "{key}: no such dataset (twin dataset list) and no such file"
            ))
        })?;
    let rows = warehouse.dataset_samples(&record.id).await?;
    let samples = twin_datasets::build::samples_of(&rows)?;
    let snapshot = match &record.snapshot_id {
        Some(id) => twin_warehouse::find_snapshot(warehouse, id).await?,
        None => None,
    };
    Ok((samples, record.id, snapshot))
}

/// Text to train a new tokenizer on: the snapshot's chunks, else the samples themselves.
async fn tokenizer_corpus(
    warehouse: &dyn Warehouse,
    snapshot: Option<&twin_warehouse::Snapshot>,
    samples: &[(Split, Sample)],
) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    if let Some(snapshot) = snapshot {
        let mut chunks =
            twin_warehouse::scan_chunks(warehouse, snapshot.as_of(), DocumentFilter::default());
        while let Some(chunk) = chunks.try_next().await? {
            texts.push(chunk.value.text);
        }
    }
    if texts.is_empty() {
        for (_, s) in samples {
            texts.push(s.prompt());
            texts.push(s.output.clone());
        }
    }
    Ok(texts)
}

/// The configuration of the model a request trains, when it can be read without loading
/// weights (a folder's or registry entry's `config.json`, or `--init`).
fn model_config(layout: &DataLayout, request: &TrainRequest) -> Option<ModelConfig> {
    if let Some(init) = &request.init {
        return ModelConfig::load(init).ok();
    }
    let key = request.model.as_deref()?;
    let path = Path::new(key);
    let dir = if path.join("config.json").exists() {
        path.to_path_buf()
    } else {
        let entry = registry::find(&layout.registry(), key).ok()??;
        entry.lineage.base_dir.clone().unwrap_or(entry.dir)
    };
    ModelConfig::load(&dir.join("config.json")).ok()
}

/// The memory a run of `params` on `config` needs on `device`, planned as `twin train plan`
/// plans it: training in f32 with f32 AdamW state (the CPU; on a GPU the master weights are f32
/// too), one row of `max_seq_len` per batch element.
pub fn plan_for(config: &ModelConfig, params: &TrainingConfig, memory: u64) -> crate::plan::Plan {
    use crate::plan::{PlanMethod, PlanRequest};
    let method = if params.trains_adapters() {
        PlanMethod::Lora
    } else {
        PlanMethod::Full
    };
    crate::plan::plan(
        config,
        &PlanRequest {
            device_memory: memory,
            peak_tflops: 0.2,
            compute_bytes: 4,
            seq_len: params.max_seq_len as u64,
            micro_batch: params.batch_size as u64,
            lora_rank: params.lora.rank.max(0) as u64,
            ..PlanRequest::new(method)
        },
    )
}

/// Refuse a run that cannot fit in the memory of `device` (checked on the CPU, where the
/// memory available is known), with the plan's numbers.
fn check_fits(config: &ModelConfig, params: &TrainingConfig, device: Device) -> Result<()> {
    if device != Device::Cpu {
        return Ok(());
    }
    let Some(available) = available_memory() else {
        return Ok(());
    };
    let plan = plan_for(config, params, available);
    if plan.fits {
        return Ok(());
    }
    Err(TrainingError::Invalid(format!(
        "this run does not fit in the memory this machine has free ({}), so it was not started:\n{}",
        crate::plan::gib(available as f64),
        plan.table()
    )))
}

/// `MemAvailable` of `/proc/meminfo`, bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// DPO's settings from `[training.dpo]`, checked.
pub fn dpo_settings(params: &TrainingConfig) -> Result<(DpoSettings, bool)> {
    let d = &params.dpo;
    let loss = DpoLoss::parse(&d.loss).ok_or_else(|| {
        TrainingError::Invalid(format!("unknown DPO loss {:?}: use sigmoid or ipo", d.loss))
    })?;
    if !(d.beta > 0.0 && d.beta.is_finite()) {
        return Err(TrainingError::Invalid(format!(
            "DPO beta must be positive, not {}",
            d.beta
        )));
    }
    if !(0.0..0.5).contains(&d.label_smoothing) {
        return Err(TrainingError::Invalid(format!(
            "DPO label smoothing must be in [0, 0.5), not {}",
            d.label_smoothing
        )));
    }
    let cached = match d.reference.as_str() {
        "cached" => true,
        "on_the_fly" => false,
        other => {
            return Err(TrainingError::Invalid(format!(
                "unknown DPO reference {other:?}: use cached or on_the_fly"
            )))
        }
    };
    if d.weights != "lora" && d.weights != "full" {
        return Err(TrainingError::Invalid(format!(
            "unknown DPO weights {:?}: use lora or full",
            d.weights
        )));
    }
    Ok((
        DpoSettings {
            beta: d.beta,
            label_smoothing: d.label_smoothing,
            loss,
        },
        cached,
    ))
}

/// The preference samples as pairs of examples (prompt with the chosen answer, and with the
/// rejected one), by split; pairs longer than `max_seq_len` are left out.
fn dpo_pairs(
    tokenising: &Tokenising<'_>,
    samples: &[(Split, Sample)],
) -> Result<(Vec<Pair>, Vec<Pair>)> {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let mut too_long = 0;
    for (split, sample) in samples {
        let Some(rejected_answer) = &sample.rejected else {
            continue;
        };
        let rejected_sample = Sample {
            output: rejected_answer.clone(),
            rejected: None,
            ..sample.clone()
        };
        let (Some(chosen), Some(rejected)) = (
            tokenising.example(sample)?,
            tokenising.example(&rejected_sample)?,
        ) else {
            continue;
        };
        if chosen.ids.len().max(rejected.ids.len()) > tokenising.max_seq_len {
            too_long += 1;
            continue;
        }
        let pair = Pair { chosen, rejected };
        match split {
            Split::Train => train.push(pair),
            Split::Test => test.push(pair),
        }
    }
    if train.is_empty() {
        return Err(TrainingError::Invalid(format!(
            "no preference pair to train on ({too_long} longer than max_seq_len {})",
            tokenising.max_seq_len
        )));
    }
    if too_long > 0 {
        tracing::warn!(
            too_long,
            "preference pairs longer than max_seq_len left out"
        );
    }
    Ok((train, test))
}

/// Everything up to the first step: what `twin train` checks before spending training time.
struct Ready {
    prepared: Prepared,
    examples: Examples,
    /// Preference pairs (train, test), for DPO.
    pairs: Option<(Vec<Pair>, Vec<Pair>)>,
    dataset: String,
    snapshot: Option<twin_warehouse::Snapshot>,
    device: (Device, Kind),
}

async fn prepare(
    request: &TrainRequest,
    layout: &DataLayout,
    warehouse: &dyn Warehouse,
    run_id: &str,
) -> Result<Ready> {
    let params = &request.params;
    let device = device_for(params)?;
    if let Some(config) = model_config(layout, request) {
        check_fits(&config, params, device.0)?;
    }
    let (samples, dataset, snapshot) = load_dataset(warehouse, &request.dataset).await?;
    let mut prepared = match (&request.init, &request.model) {
        (Some(init), None) => {
            let mut config = ModelConfig::load(init)?;
            let init = std::fs::canonicalize(init).unwrap_or_else(|_| init.clone());
            let texts = tokenizer_corpus(warehouse, snapshot.as_ref(), &samples).await?;
            let trained = tokenizer::train_bpe(&texts, config.vocab_size as usize)?;
            let dir = run_dir(layout, run_id).join("tokenizer");
            std::fs::create_dir_all(&dir).map_err(|source| TrainingError::Io {
                path: dir.clone(),
                source,
            })?;
            tokenizer::save_trained(&trained, &dir, config.max_positions)?;
            let end = trained.token_to_id(tokenizer::END_OF_TEXT).map(i64::from);
            config.eos_token_id = end;
            config.bos_token_id = end;
            config
                .raw
                .insert("eos_token_id".into(), serde_json::json!(end));
            config
                .raw
                .insert("bos_token_id".into(), serde_json::json!(end));
            let model = CausalLm::init(config, params.seed as i64, device.0)?;
            Prepared {
                model,
                tokenizer: trained,
                tokenizer_dir: dir,
                source: format!("init:{}", init.display()),
                base_dir: None,
                lora: None,
            }
        }
        (None, Some(key)) => {
            let (model, dir) = load_model(layout, key, device.0)?;
            let tokenizer = tokenizer::load(&dir)?;
            // An adapter was merged into its base on loading: that merged model is the base of
            // what this run trains, so it is written out for the new adapter to name.
            let base_dir = if dir.join("adapter_config.json").exists() {
                let merged = run_dir(layout, run_id).join("base");
                export::save_full(&model, &merged, &dir)?;
                merged
            } else {
                dir.clone()
            };
            // A folder is recorded absolute, so that `--resume` finds it from any folder.
            let source = match std::fs::canonicalize(key) {
                Ok(path) if Path::new(key).exists() => path.display().to_string(),
                _ => key.clone(),
            };
            Prepared {
                model,
                tokenizer,
                tokenizer_dir: dir.clone(),
                source,
                base_dir: Some(base_dir),
                lora: None,
            }
        }
        (Some(_), Some(_)) => {
            return Err(TrainingError::Invalid(
                "give --model or --init, not both".into(),
            ))
        }
        (None, None) => {
            return Err(TrainingError::Invalid(
                "which model? --model DIR-or-registry-name, or --init CONFIG.json".into(),
            ))
        }
    };
    let vocab = prepared.tokenizer.get_vocab_size(true) as i64;
    if vocab > prepared.model.config.vocab_size {
        return Err(TrainingError::Invalid(format!(
            "the tokenizer has {vocab} tokens but the model only {}",
            prepared.model.config.vocab_size
        )));
    }
    let config = prepared.model.config.clone();
    let template = tokenizer::template(
        &prepared.tokenizer_dir,
        &config,
        &prepared.tokenizer,
        request.template.as_deref(),
    )?;
    trainer::validate(params, &prepared.model)?;
    let tokenising = Tokenising {
        template: &template,
        tokenizer: &prepared.tokenizer,
        max_seq_len: params.max_seq_len,
        answer_only: params.answer_only,
    };
    let preferences = samples.iter().filter(|(_, s)| s.rejected.is_some()).count();
    let (examples, pairs) = if params.method == TrainingMethod::Dpo {
        dpo_settings(params)?;
        if preferences == 0 {
            return Err(TrainingError::Invalid(format!(
                "{dataset}: no sample has a rejected answer: DPO needs a preference dataset \
                 (twin dataset build --kind preference)"
            )));
        }
        (Examples::default(), Some(dpo_pairs(&tokenising, &samples)?))
    } else {
        if preferences > 0 {
            return Err(TrainingError::Invalid(format!(
                "{dataset} is a preference dataset ({preferences} of {} samples have a rejected \
                 answer): tune on it with --method dpo, or train on an instruct dataset",
                samples.len()
            )));
        }
        (tokenising.examples(&samples)?, None)
    };
    if params.trains_adapters() {
        let settings = LoraSettings {
            rank: params.lora.rank,
            alpha: params.lora.alpha,
            dropout: params.lora.dropout,
            targets: if params.lora.targets.is_empty() {
                config.family.default_lora_targets()
            } else {
                params.lora.targets.clone()
            },
        };
        if settings.rank <= 0 {
            return Err(TrainingError::Invalid(format!(
                "LoRA rank must be positive, not {}",
                settings.rank
            )));
        }
        // The adapters' initial values are drawn: from the run's seed, so that a run repeats.
        let rng = crate::torch_rng();
        tch::manual_seed(params.seed as i64);
        prepared.model.add_lora(&settings)?;
        drop(rng);
        prepared.lora = Some(settings);
    }
    prepared.model.set_compute_kind(device.1);
    Ok(Ready {
        prepared,
        examples,
        pairs,
        dataset,
        snapshot,
        device,
    })
}

/// Writes metrics to the warehouse in small batches (and always before a checkpoint, so that
/// a resumed run finds every step up to it), and passes them on to `display`.
struct Recorder {
    run_id: String,
    warehouse: Arc<dyn Warehouse>,
    runtime: tokio::runtime::Handle,
    pending: Vec<MetricRow>,
    display: Box<dyn Observer + Send>,
    tokens_per_second: Vec<f64>,
    error: Option<TrainingError>,
}

impl Recorder {
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut self.pending);
        if let Err(e) = self.runtime.block_on(self.warehouse.put_run_metrics(&rows)) {
            tracing::warn!(error = %e, "could not record metrics");
            self.error.get_or_insert(e.into());
        }
    }
}

impl Observer for Recorder {
    fn step(&mut self, m: &StepMetrics, total: u64) {
        metrics::counter!("twin_training_steps_total").increment(1);
        metrics::gauge!("twin_training_loss").set(m.loss);
        metrics::gauge!("twin_training_learning_rate").set(m.learning_rate);
        metrics::gauge!("twin_training_grad_norm").set(m.grad_norm);
        metrics::gauge!("twin_training_tokens_per_second").set(m.tokens_per_second);
        metrics::gauge!("twin_training_progress_ratio").set(m.step as f64 / total.max(1) as f64);
        self.pending.push(runs::step_row(&self.run_id, m));
        self.tokens_per_second.push(m.tokens_per_second);
        if self.pending.len() >= 20 {
            self.flush();
        }
        self.display.step(m, total);
    }

    fn eval(&mut self, m: &EvalMetrics) {
        metrics::gauge!("twin_training_eval_loss").set(m.loss);
        self.pending.push(runs::eval_row(&self.run_id, m));
        self.display.eval(m);
    }

    fn checkpoint(&mut self, step: u64, dir: &Path) {
        self.flush();
        self.display.checkpoint(step, dir);
    }
}

/// What a finished (or stopped) run made.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run.
    pub run_id: String,
    /// How training ended.
    pub outcome: Outcome,
    /// Its record as stored.
    pub info: RunInfo,
    /// The registry entry (none when interrupted).
    pub registered: Option<registry::Entry>,
}

/// Train as `request` says. `display` shows progress; `stop` (Ctrl-C) ends training early with
/// a checkpoint, from which `resume` continues.
pub async fn train(
    request: TrainRequest,
    layout: &DataLayout,
    warehouse: Arc<dyn Warehouse>,
    stop: Arc<AtomicBool>,
    display: Box<dyn Observer + Send>,
) -> Result<RunSummary> {
    let created_at = twin_datasets::build::now_ms();
    let run_id = runs::new_run_id(created_at);
    let ready = prepare(&request, layout, warehouse.as_ref(), &run_id).await?;
    let info = RunInfo {
        kind: runs::RunKind::Training,
        params: request.params.clone(),
        model: ready.prepared.source.clone(),
        family: ready.prepared.model.config.family.model_type().into(),
        parameters: ready.prepared.model.config.parameter_count(),
        trainable_parameters: trainable_count(&ready.prepared.model),
        dataset: ready.dataset.clone(),
        snapshot_id: ready.snapshot.as_ref().map(|s| s.id.clone()),
        positions: ready
            .snapshot
            .as_ref()
            .map(|s| s.positions.clone())
            .unwrap_or_default(),
        examples: (
            ready.examples.train.len(),
            ready.examples.test.len(),
            ready.examples.too_long,
        ),
        code_version: runs::code_version(),
        device: format!(
            "{:?} {}",
            ready.device.0,
            if ready.device.1 == Kind::BFloat16 {
                "bf16"
            } else {
                "f32"
            }
        ),
        plan: Plan::new(
            crate::data::rows(
                &ready.examples.train,
                request.params.max_seq_len,
                request.params.packing,
            )
            .len(),
            &request.params,
        ),
        result: None,
    };
    run_loop(
        run_id,
        request.name.clone(),
        request.register_as.clone(),
        created_at,
        info,
        ready,
        None,
        layout,
        warehouse,
        stop,
        display,
    )
    .await
}

/// Continue run `key` from its newest checkpoint.
pub async fn resume(
    key: &str,
    layout: &DataLayout,
    warehouse: Arc<dyn Warehouse>,
    stop: Arc<AtomicBool>,
    display: Box<dyn Observer + Send>,
) -> Result<RunSummary> {
    let record = twin_warehouse::find_run(warehouse.as_ref(), key)
        .await?
        .ok_or_else(|| TrainingError::Invalid(format!("{key}: no such run (twin runs list)")))?;
    if record.status == "finished" {
        return Err(TrainingError::Invalid(format!(
            "run {} is finished: nothing to resume (train again to continue from its model)",
            record.id
        )));
    }
    let info = runs::info(&record)?;
    if info.kind == runs::RunKind::Evaluation {
        return Err(TrainingError::Invalid(format!(
            "run {} is an evaluation (twin eval): it trained nothing, so nothing resumes",
            record.id
        )));
    }
    let dir = run_dir(layout, &record.id);
    let checkpoint = trainer::latest_checkpoint(&dir.join("checkpoints")).ok_or_else(|| {
        TrainingError::Invalid(format!(
            "run {} has no checkpoint to resume from in {}",
            record.id,
            dir.display()
        ))
    })?;
    let lineage: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("request.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    let text = |k: &str| lineage.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let (model, init) = match info.model.strip_prefix("init:") {
        Some(config) => (None, Some(PathBuf::from(config))),
        None => (Some(info.model.clone()), None),
    };
    let request = TrainRequest {
        dataset: info.dataset.clone(),
        model,
        init,
        params: info.params.clone(),
        name: record.name.clone(),
        register_as: text("register_as"),
        template: text("template"),
    };
    let ready = prepare(&request, layout, warehouse.as_ref(), &record.id).await?;
    run_loop(
        record.id.clone(),
        record.name.clone(),
        request.register_as.clone(),
        record.created_at,
        info,
        ready,
        Some(checkpoint),
        layout,
        warehouse,
        stop,
        display,
    )
    .await
}

fn trainable_count(model: &CausalLm) -> i64 {
    model
        .params()
        .iter()
        .filter(|(k, _)| model.trainable().contains(*k))
        .map(|(_, t)| t.numel() as i64)
        .sum()
}

#[allow(clippy::too_many_arguments)]
async fn run_loop(
    run_id: String,
    name: Option<String>,
    register_as: Option<String>,
    created_at: i64,
    mut info: RunInfo,
    ready: Ready,
    checkpoint: Option<PathBuf>,
    layout: &DataLayout,
    warehouse: Arc<dyn Warehouse>,
    stop: Arc<AtomicBool>,
    display: Box<dyn Observer + Send>,
) -> Result<RunSummary> {
    let dir = run_dir(layout, &run_id);
    std::fs::create_dir_all(&dir).map_err(|source| TrainingError::Io {
        path: dir.clone(),
        source,
    })?;
    crate::weights::write_json(
        &dir.join("request.json"),
        &serde_json::json!({ "register_as": register_as }),
    )?;
    warehouse
        .put_run(&runs::record(
            &run_id,
            name.clone(),
            "running",
            created_at,
            &info,
        ))
        .await?;
    let Ready {
        mut prepared,
        examples,
        pairs,
        snapshot,
        ..
    } = ready;
    let params = info.params.clone();
    let started = Instant::now();
    let mut recorder = Recorder {
        run_id: run_id.clone(),
        warehouse: warehouse.clone(),
        runtime: tokio::runtime::Handle::current(),
        pending: Vec::new(),
        display,
        tokens_per_second: Vec::new(),
        error: None,
    };
    let checkpoints = dir.join("checkpoints");
    let joined = tokio::task::spawn_blocking(move || {
        let outcome = match pairs {
            None => trainer::train(
                &mut prepared.model,
                &examples,
                &params,
                &checkpoints,
                checkpoint.as_deref(),
                &stop,
                &mut recorder,
            ),
            Some((train, test)) => (|| {
                let (settings, cached) = dpo_settings(&params)?;
                // The reference: the policy with its adapters out (LoRA), else a copy of the
                // starting weights when it is computed at every step.
                let copy = if !cached && !params.trains_adapters() {
                    Some(prepared.model.frozen_copy()?)
                } else {
                    None
                };
                let pad = prepared.model.config.eos_token_id.unwrap_or(0);
                let mut objective = DpoObjective::new(
                    &mut prepared.model,
                    copy.as_ref(),
                    train,
                    test,
                    settings,
                    pad,
                    cached,
                    params.batch_size,
                );
                trainer::optimize(
                    &mut prepared.model,
                    &mut objective,
                    &params,
                    &checkpoints,
                    checkpoint.as_deref(),
                    &stop,
                    &mut recorder,
                )
            })(),
        };
        recorder.flush();
        (outcome, prepared, recorder)
    })
    .await
    .map_err(|e| TrainingError::Invalid(format!("training thread: {e}")))?;
    let (outcome, prepared, recorder) = joined;
    let outcome = match outcome.and_then(|o| match recorder.error {
        Some(e) => Err(e),
        None => Ok(o),
    }) {
        Ok(o) => o,
        Err(e) => {
            let _ = warehouse
                .put_run(&runs::record(
                    &run_id,
                    name.clone(),
                    "failed",
                    created_at,
                    &info,
                ))
                .await;
            return Err(e);
        }
    };
    let tps = &recorder.tokens_per_second;
    let mut result = RunResult {
        steps: outcome.steps,
        train_loss: outcome.last_loss,
        eval_loss: outcome.last_eval.map(|e| e.loss),
        tokens_per_second: if tps.is_empty() {
            0.0
        } else {
            tps.iter().sum::<f64>() / tps.len() as f64
        },
        seconds: started.elapsed().as_secs_f64(),
        output: None,
        registered: None,
        checkpoint: outcome.checkpoint.clone(),
    };
    let mut registered = None;
    if !outcome.interrupted {
        let output = dir.join("output");
        let kind = match &prepared.lora {
            Some(settings) => {
                export::save_adapter(
                    &prepared.model,
                    settings,
                    &prepared
                        .base_dir
                        .as_ref()
                        .map_or(prepared.source.clone(), |d| d.display().to_string()),
                    &output,
                    &prepared.tokenizer_dir,
                )?;
                "lora"
            }
            None => {
                export::save_full(&prepared.model, &output, &prepared.tokenizer_dir)?;
                "full"
            }
        };
        let registry_name = register_as
            .or_else(|| name.clone())
            .unwrap_or_else(|| "twin".into());
        let entry = registry::register(
            &layout.registry(),
            &registry_name,
            &output,
            &Lineage {
                kind: kind.into(),
                base: prepared.source.clone(),
                base_dir: prepared.base_dir.clone(),
                run_id: run_id.clone(),
                dataset: info.dataset.clone(),
                snapshot_id: snapshot.as_ref().map(|s| s.id.clone()),
                positions: snapshot
                    .as_ref()
                    .map(|s| s.positions.clone())
                    .unwrap_or_else(Vec::<Position>::new),
                created_at: twin_datasets::build::now_ms(),
            },
        )?;
        result.output = Some(output);
        result.registered = Some(entry.reference());
        registered = Some(entry);
    }
    info.result = Some(result);
    let status = if outcome.interrupted {
        "interrupted"
    } else {
        "finished"
    };
    warehouse
        .put_run(&runs::record(&run_id, name, status, created_at, &info))
        .await?;
    Ok(RunSummary {
        run_id,
        outcome,
        info,
        registered,
    })
}

/// Read the curves of several runs (for `twin runs compare`).
pub async fn compare(
    warehouse: &dyn Warehouse,
    keys: &[String],
) -> Result<Vec<(twin_warehouse::RunRecord, RunInfo, runs::Curves)>> {
    let mut out = Vec::new();
    for key in keys {
        let record = twin_warehouse::find_run(warehouse, key)
            .await?
            .ok_or_else(|| TrainingError::Invalid(format!("{key}: no such run")))?;
        let info = runs::info(&record)?;
        let curves = runs::curves(warehouse, &record.id).await?;
        out.push((record, info, curves));
    }
    Ok(out)
}
