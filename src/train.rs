//! `twin train` (fine-tune a model on a dataset, or resume a run) and `twin runs` (list, show,
//! compare and delete training runs).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use twin_config::{LrSchedule, TrainingConfig, TrainingMethod, TwinConfig};
use twin_training::job::{self, TrainRequest};
use twin_training::runs::{self, RunKind};
use twin_training::trainer::{EvalMetrics, Observer, StepMetrics};

use twin_evaluation::{report, Evaluation};

use crate::snapshot::time;
use crate::{RunsCommand, TrainArgs};

/// Progress of training: a bar with loss, tokens/s and ETA on a terminal, log lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    last_eval: Option<f64>,
}

impl Progress {
    fn new() -> Self {
        Self {
            bar: None,
            last_eval: None,
        }
    }
}

impl Observer for Progress {
    fn step(&mut self, m: &StepMetrics, total: u64) {
        if std::io::stderr().is_terminal() {
            let bar = self.bar.get_or_insert_with(|| {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} < {eta_precise}]",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar
            });
            bar.set_position(m.step);
            let eval = self
                .last_eval
                .map_or(String::new(), |l| format!(" eval {l:.4}"));
            let rewards = m.rewards.map_or(String::new(), |r| {
                format!(" margin {:.3} acc {:.2}", r.margins, r.accuracies)
            });
            bar.set_message(format!(
                "loss {:.4}{eval}{rewards} lr {:.2e} {:.0} tok/s",
                m.loss, m.learning_rate, m.tokens_per_second
            ));
        } else if m.step.is_multiple_of(10) || m.step == 1 || m.step == total {
            tracing::info!(
                step = m.step,
                total,
                loss = m.loss,
                lr = m.learning_rate,
                grad_norm = m.grad_norm,
                tokens_per_second = m.tokens_per_second as u64,
                reward_margin = m.rewards.map(|r| r.margins),
                reward_accuracy = m.rewards.map(|r| r.accuracies),
                "training"
            );
        }
    }

    fn eval(&mut self, m: &EvalMetrics) {
        self.last_eval = Some(m.loss);
        if self.bar.is_none() {
            tracing::info!(
                step = m.step,
                eval_loss = m.loss,
                tokens = m.tokens,
                "evaluation"
            );
        }
    }

    fn checkpoint(&mut self, step: u64, dir: &Path) {
        match &self.bar {
            Some(bar) => bar.println(format!("checkpoint at step {step}: {}", dir.display())),
            None => tracing::info!(step, dir = %dir.display(), "checkpoint"),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `[training]` with the options of `twin train` over it.
fn params(config: &TwinConfig, args: &TrainArgs) -> Result<TrainingConfig> {
    let mut p = config.training.clone();
    if let Some(method) = &args.method {
        p.method = match method.as_str() {
            "lora" => TrainingMethod::Lora,
            "full" => TrainingMethod::Full,
            "dpo" => TrainingMethod::Dpo,
            other => bail!("unknown --method {other:?}: use lora, full or dpo"),
        };
    }
    if let Some(schedule) = &args.schedule {
        p.schedule = match schedule.as_str() {
            "cosine" => LrSchedule::Cosine,
            "linear" => LrSchedule::Linear,
            "constant" => LrSchedule::Constant,
            other => bail!("unknown --schedule {other:?}: use cosine, linear or constant"),
        };
    }
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = args.$field.clone() { p.$field = v; } )* };
    }
    set!(
        epochs,
        batch_size,
        gradient_accumulation,
        max_seq_len,
        learning_rate,
        weight_decay,
        warmup_steps,
        max_grad_norm,
        eval_every,
        checkpoint_every,
        seed,
        device,
        precision
    );
    if args.max_steps.is_some() {
        p.max_steps = args.max_steps;
    }
    if let Some(v) = args.dpo_beta {
        p.dpo.beta = v;
    }
    if let Some(v) = args.dpo_label_smoothing {
        p.dpo.label_smoothing = v;
    }
    if let Some(v) = &args.dpo_loss {
        p.dpo.loss = v.clone();
    }
    if let Some(v) = &args.dpo_reference {
        p.dpo.reference = v.clone();
    }
    if let Some(v) = &args.dpo_weights {
        p.dpo.weights = v.clone();
    }
    if args.no_packing {
        p.packing = false;
    }
    if args.all_tokens {
        p.answer_only = false;
    }
    if let Some(r) = args.lora_rank {
        p.lora.rank = r;
    }
    if let Some(a) = args.lora_alpha {
        p.lora.alpha = a;
    }
    if let Some(d) = args.lora_dropout {
        p.lora.dropout = d;
    }
    if let Some(t) = &args.lora_targets {
        p.lora.targets = t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
    }
    Ok(p)
}

/// Run `twin train`.
pub async fn train(config: &TwinConfig, args: TrainArgs) -> Result<ExitCode> {
    if let Some(crate::TrainCommand::Plan(plan_args)) = &args.command {
        return plan(config, plan_args);
    }
    let warehouse = twin_warehouse::open(&config.warehouse, &config.data_dir).await?;
    let layout = config.layout();
    crate::signals::serve_metrics("train", &config.metrics.train);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            crate::signals::shutdown_signal().await;
            eprintln!("stopping after this step (a checkpoint is saved; `twin train --resume RUN` continues)");
            stop.store(true, Ordering::SeqCst);
        });
    }
    let display = Box::new(Progress::new());
    let summary = match &args.resume {
        Some(run) => job::resume(run, &layout, warehouse, stop, display).await?,
        None => {
            let Some(dataset) = args.dataset.clone() else {
                bail!("which dataset? --dataset ID-or-FILE (twin dataset list)");
            };
            let request = TrainRequest {
                dataset,
                model: args.model.clone(),
                init: args.init.clone(),
                params: params(config, &args)?,
                name: args.name.clone(),
                register_as: args.register_as.clone(),
                template: args.template.clone(),
            };
            job::train(request, &layout, warehouse, stop, display).await?
        }
    };
    let o = &summary.outcome;
    let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
    println!(
        "run {}: {} of {} steps, train loss {}, eval loss {}",
        summary.run_id,
        o.steps,
        o.total_steps,
        fmt(o.last_loss),
        fmt(o.last_eval.map(|e| e.loss))
    );
    if let Some(result) = &summary.info.result {
        println!(
            "{:.0} tokens/s over {:.1} s on {}",
            result.tokens_per_second, result.seconds, summary.info.device
        );
    }
    if o.interrupted {
        println!(
            "stopped early; checkpoint {}; continue with `twin train --resume {}`",
            o.checkpoint
                .as_ref()
                .map_or("-".into(), |c| c.display().to_string()),
            summary.run_id
        );
        return Ok(ExitCode::from(130));
    }
    if let Some(entry) = &summary.registered {
        println!(
            "registered {} at {}",
            entry.reference(),
            entry.dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Run a `twin runs` subcommand.
pub async fn runs(config: &TwinConfig, command: RunsCommand) -> Result<ExitCode> {
    let warehouse = twin_warehouse::open(&config.warehouse, &config.data_dir).await?;
    match command {
        RunsCommand::List => {
            let all = warehouse.runs().await?;
            if all.is_empty() {
                println!("no training runs yet (twin train)");
            }
            for record in all {
                let info = runs::info(&record)?;
                let result = info.result.as_ref();
                let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
                println!(
                    "{}  {:<11} {:<5} {}  {}  steps {}/{}  loss {}  eval {}  {}{}",
                    record.id,
                    record.status,
                    match info.kind {
                        RunKind::Evaluation => "eval",
                        RunKind::Training => method_name(&info.params),
                    },
                    info.model,
                    info.dataset,
                    result.map_or(0, |r| r.steps),
                    info.plan.total_steps,
                    fmt(result.and_then(|r| r.train_loss)),
                    fmt(result.and_then(|r| r.eval_loss)),
                    time(record.created_at),
                    record
                        .name
                        .as_ref()
                        .map_or(String::new(), |n| format!("  ({n})"))
                );
            }
        }
        RunsCommand::Show { run } => {
            let Some(record) = twin_warehouse::find_run(warehouse.as_ref(), &run).await? else {
                bail!("{run}: no such run (twin runs list)");
            };
            let info = runs::info(&record)?;
            let curves = runs::curves(warehouse.as_ref(), &record.id).await?;
            println!("run {} ({})", record.id, record.status);
            if let Some(name) = &record.name {
                println!("name: {name}");
            }
            println!("started: {}", time(record.created_at));
            match info.kind {
                RunKind::Training => println!("{}", serde_json::to_string_pretty(&info)?),
                RunKind::Evaluation => println!(
                    "an evaluation of {} ({}, {} parameters) on {}; it trained nothing",
                    info.model, info.family, info.parameters, info.dataset
                ),
            }
            println!("steps recorded: {}", curves.train.len());
            let rewards = |r: Option<twin_training::dpo::Rewards>| {
                r.map_or(String::new(), |r| {
                    format!(
                        "  rewards chosen {:.3} rejected {:.3} margin {:.3} accuracy {:.2}",
                        r.chosen, r.rejected, r.margins, r.accuracies
                    )
                })
            };
            for m in curves.train.iter().rev().take(5).rev() {
                println!(
                    "  step {:>6}  loss {:.4}  lr {:.2e}  grad norm {:.3}  {:.0} tok/s{}",
                    m.step,
                    m.loss,
                    m.learning_rate,
                    m.grad_norm,
                    m.tokens_per_second,
                    rewards(m.rewards)
                );
            }
            for m in &curves.eval {
                println!(
                    "  eval at step {:>6}: loss {:.4} over {} tokens{}",
                    m.step,
                    m.loss,
                    m.tokens,
                    rewards(m.rewards)
                );
            }
            let evaluations = report::recorded(warehouse.as_ref(), &record.id).await?;
            if !evaluations.is_empty() {
                println!("evaluations (twin eval):");
                let columns: Vec<(String, &Evaluation)> = evaluations
                    .iter()
                    .map(|e| (format!("{} {}", e.model, time(e.created_at)), e))
                    .collect();
                for line in report::table(&columns).lines() {
                    println!("  {line}");
                }
            }
        }
        RunsCommand::Compare {
            runs: keys,
            out,
            all,
        } => {
            let compared = job::compare(warehouse.as_ref(), &keys).await?;
            print!("{}", runs::compare_table(&compared, all));
            let out = out.unwrap_or_else(|| {
                let ids: Vec<&str> = compared.iter().map(|(r, _, _)| r.id.as_str()).collect();
                config
                    .layout()
                    .runs()
                    .join(format!("compare-{}", ids.join("-")))
            });
            let curves: Vec<(String, runs::Curves)> = compared
                .iter()
                .map(|(r, _, c)| (r.name.clone().unwrap_or_else(|| r.id.clone()), c.clone()))
                .collect();
            let (png, svg) = runs::plot(&curves, &out)?;
            println!("loss curves: {} and {}", png.display(), svg.display());
            // Each run's latest evaluation, side by side and as bar charts.
            let mut evaluated: Vec<(String, Evaluation)> = Vec::new();
            for (record, _, _) in &compared {
                if let Some(latest) = report::recorded(warehouse.as_ref(), &record.id)
                    .await?
                    .pop()
                {
                    let label = record.name.clone().unwrap_or_else(|| record.id.clone());
                    evaluated.push((label, latest));
                }
            }
            if !evaluated.is_empty() {
                let columns: Vec<(String, &Evaluation)> =
                    evaluated.iter().map(|(n, e)| (n.clone(), e)).collect();
                println!("\nlatest evaluations (twin eval):");
                print!("{}", report::table(&columns));
                let (png, svg) = report::chart(&columns, &eval_chart_path(&out))?;
                println!("evaluation charts: {} and {}", png.display(), svg.display());
            }
        }
        RunsCommand::Delete { run } => {
            let Some(record) = twin_warehouse::find_run(warehouse.as_ref(), &run).await? else {
                bail!("{run}: no such run");
            };
            warehouse.delete_run(&record.id).await?;
            let dir: PathBuf = job::run_dir(&config.layout(), &record.id);
            let _ = std::fs::remove_dir_all(&dir);
            println!("deleted run {} and {}", record.id, dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `OUT-eval`, beside the loss curves' `OUT`.
fn eval_chart_path(out: &Path) -> PathBuf {
    let mut name = out
        .file_stem()
        .map(|s| s.to_os_string())
        .unwrap_or_default();
    name.push("-eval");
    out.with_file_name(name)
}

fn method_name(p: &TrainingConfig) -> &'static str {
    match p.method {
        TrainingMethod::Lora => "lora",
        TrainingMethod::Full => "full",
        TrainingMethod::Dpo => "dpo",
    }
}

/// `twin train plan`.
fn plan(config: &TwinConfig, args: &crate::PlanArgs) -> Result<ExitCode> {
    use twin_training::plan::{self, PlanMethod, PlanRequest};
    let Some(method) = PlanMethod::parse(&args.method) else {
        bail!(
            "--method must be full, lora or qlora, not `{}`",
            args.method
        );
    };
    let model = match plan::preset(&args.model) {
        Some(model) => model,
        None => {
            let path = std::path::Path::new(&args.model);
            let file = if path.is_file() {
                path.to_path_buf()
            } else if path.join("config.json").exists() {
                path.join("config.json")
            } else if let Some(entry) =
                twin_training::registry::find(&config.layout().registry(), &args.model)?
            {
                entry
                    .lineage
                    .base_dir
                    .unwrap_or(entry.dir)
                    .join("config.json")
            } else {
                let presets: Vec<&str> = plan::PRESETS.iter().map(|(n, _)| *n).collect();
                bail!(
                    "unknown model `{}`: a preset ({}), a checkpoint folder, a config.json or a \
                     registry name",
                    args.model,
                    presets.join(", ")
                );
            };
            twin_training::ModelConfig::load(&file)?
        }
    };
    let Some(&(_, tflops, memory_gib)) = plan::GPUS.iter().find(|(n, _, _)| *n == args.gpu) else {
        let gpus: Vec<&str> = plan::GPUS.iter().map(|(n, _, _)| *n).collect();
        bail!(
            "unknown GPU `{}`: {} (or give --gpu-memory and --gpu-tflops)",
            args.gpu,
            gpus.join(", ")
        );
    };
    let device_memory = match &args.gpu_memory {
        Some(text) => parse_bytes(text)?,
        None => memory_gib << 30,
    };
    if args.gpus == 0 || args.seq == 0 || args.batch == 0 || args.tensor_parallel == 0 {
        bail!("--gpus, --seq, --batch and --tensor-parallel must be at least 1");
    }
    let kv_heads = model.num_kv_heads as u64;
    if !args.gpus.is_multiple_of(args.tensor_parallel)
        || !kv_heads.is_multiple_of(args.tensor_parallel)
    {
        bail!(
            "--tensor-parallel {} must divide --gpus {} and the model's {kv_heads} key/value heads",
            args.tensor_parallel,
            args.gpus
        );
    }
    if !(args.efficiency > 0.0 && args.efficiency <= 1.0) {
        bail!("--efficiency must be in (0, 1], not {}", args.efficiency);
    }
    let request = PlanRequest {
        method,
        gpus: args.gpus,
        device_memory,
        peak_tflops: args.gpu_tflops.unwrap_or(tflops),
        efficiency: args.efficiency,
        seq_len: args.seq,
        micro_batch: args.batch,
        gradient_checkpointing: args.gradient_checkpointing,
        lora_rank: args.lora_rank,
        tensor_parallel: args.tensor_parallel,
        compute_bytes: 2,
    };
    let result = plan::plan(&model, &request);
    if args.format == "json" {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", result.table());
    }
    Ok(if result.fits {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `80GiB`, `48GB`, `24G`, `512MiB` or a plain number of GiB, as bytes.
fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("`{text}` is not a size: use e.g. 80GiB or 48GB"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "g" | "gib" => (1u64 << 30) as f64,
        "gb" => 1e9,
        "t" | "tib" => (1u64 << 40) as f64,
        "tb" => 1e12,
        "m" | "mib" => (1u64 << 20) as f64,
        "mb" => 1e6,
        other => bail!("`{text}`: unknown unit `{other}` (GiB, GB, TiB, TB, MiB, MB)"),
    };
    Ok((value * scale) as u64)
}
