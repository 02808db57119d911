//! `twin eval`: evaluate one or more models on a dataset's test split, record the results with
//! their runs, and print them side by side.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use twin_config::{GeneratorConfig, TwinConfig};
use twin_evaluation::job::Progress;
use twin_evaluation::{report, EvalRequest, Evaluator, Judge};

use crate::EvalArgs;

/// A bar per phase on a terminal; a log line per phase otherwise.
struct Bars {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn phase(&self, model: &str, phase: &str, total: usize) {
        let mut slot = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = slot.take() {
            bar.finish_and_clear();
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{msg:32} {bar:30} {pos}/{len} [{elapsed_precise}]")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(format!("{model}: {phase}"));
            *slot = Some(bar);
        } else {
            tracing::info!(model, phase, total, "evaluating");
        }
    }

    fn advance(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            bar.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

/// The judge `--judge` names: a configured endpoint, or a url with `--judge-model`. Its
/// temperature is 0 either way, so that its verdicts repeat.
fn judge(config: &TwinConfig, args: &EvalArgs) -> Result<Option<Judge>> {
    let Some(endpoint) = &args.judge else {
        if args.judge_model.is_some() {
            bail!("--judge-model needs --judge ENDPOINT");
        }
        return Ok(None);
    };
    let (name, mut settings) = match config.datasets.generators.get(endpoint) {
        Some(settings) => (endpoint.clone(), settings.clone()),
        None if endpoint.starts_with("http://") || endpoint.starts_with("https://") => (
            "judge".to_string(),
            GeneratorConfig {
                base_url: endpoint.clone(),
                model: config.evaluation.judge_model.clone(),
                ..GeneratorConfig::default()
            },
        ),
        None => {
            let known: Vec<&str> = config
                .datasets
                .generators
                .keys()
                .map(String::as_str)
                .collect();
            bail!(
                "--judge {endpoint}: neither an http(s) url nor a configured endpoint \
                 ([datasets.generators.NAME]{})",
                if known.is_empty() {
                    String::new()
                } else {
                    format!(": {}", known.join(", "))
                }
            );
        }
    };
    if let Some(model) = &args.judge_model {
        settings.model = model.clone();
    }
    settings.temperature = 0.0;
    Ok(Some(Judge::new(&name, &settings)?))
}

/// `twin eval`.
pub async fn eval(config: &TwinConfig, args: EvalArgs) -> Result<ExitCode> {
    evaluate(config, args).await?;
    Ok(ExitCode::SUCCESS)
}

/// `twin eval`, returning the recorded evaluations (in the order of the models) after printing
/// them.
pub async fn evaluate(
    config: &TwinConfig,
    args: EvalArgs,
) -> Result<Vec<twin_evaluation::Evaluation>> {
    if args.format != "text" && args.format != "json" {
        bail!("--format must be `text` or `json`, not `{}`", args.format);
    }
    let mut settings = config.evaluation.clone();
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = args.$field { settings.$field = v; } )* };
    }
    set!(samples, max_tokens, temperature, top_p, seed);
    let judge = judge(config, &args)?;
    let layout = config.layout();
    // Every model is found (and exported) before any is evaluated.
    let mut requests = Vec::new();
    for model in &args.models {
        requests.push(EvalRequest {
            model: model.clone(),
            onnx_dir: crate::generate::resolve(&layout, model)?,
        });
    }
    let warehouse = twin_warehouse::open(&config.warehouse, &config.data_dir).await?;
    let embedder = Arc::new(twin_embedding::open(&config.embedding, &config.data_dir).await?);
    let evaluator = Evaluator {
        layout,
        warehouse,
        embedder,
        judge,
        settings,
        engine: crate::generate::engine_options(config),
        progress: Arc::new(Bars {
            bar: Mutex::new(None),
        }),
    };
    let split = evaluator.test_split(&args.dataset).await?;
    if split.samples.len() < split.available {
        eprintln!(
            "evaluating on {} of the {} test samples of {} (--samples 0 for all)",
            split.samples.len(),
            split.available,
            split.dataset
        );
    }
    // Everything is evaluated before anything is recorded: a failure records nothing.
    let mut results = Vec::new();
    for request in &requests {
        results.push(evaluator.evaluate(request, &split).await?);
    }
    evaluator.progress.finish();
    for (evaluation, answers) in &mut results {
        evaluator.record(evaluation, answers).await?;
    }
    let columns: Vec<(String, &twin_evaluation::Evaluation)> =
        results.iter().map(|(e, _)| (e.model.clone(), e)).collect();
    if args.format == "json" {
        let all: Vec<_> = columns.iter().map(|(_, e)| e).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print!("{}", report::table(&columns));
        for (e, _) in &results {
            if let Some(file) = &e.answers_file {
                println!("{}: answers and scores in {}", e.model, file.display());
            }
        }
    }
    if let Some(out) = &args.chart {
        let (png, svg) = report::chart(&columns, out)?;
        eprintln!("charts: {} and {}", png.display(), svg.display());
    }
    Ok(results.into_iter().map(|(e, _)| e).collect())
}
