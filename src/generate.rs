//! `twin generate` and `twin models export-llm`: trained models on ONNX Runtime.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tch::Device;
use twin_chat::Message;
use twin_config::{DataLayout, TwinConfig};
use twin_serving::{Engine, EngineOptions, Event, GenerationRequest, Prompt, SamplingParams};
use twin_training::onnx_export::{self, OnnxOptions, OnnxSummary, MODEL_FILE};
use twin_training::{job, registry};

use crate::GenerateArgs;

/// The folder an export of `model` goes to when `--out` is not given: `onnx/` inside the
/// registry entry or checkpoint folder.
fn default_export_dir(layout: &DataLayout, model: &str) -> Result<PathBuf> {
    if let Some(entry) = registry::find(&layout.registry(), model)? {
        return Ok(entry.dir.join("onnx"));
    }
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.join("onnx"));
    }
    bail!(unknown_model(layout, model))
}

fn unknown_model(layout: &DataLayout, model: &str) -> String {
    format!(
        "unknown model `{model}`: neither a folder nor a model in the registry ({}; `twin models \
         list` shows them)",
        layout.registry().display()
    )
}

/// Export `model` (a registry reference or a folder) to ONNX in `out`.
pub fn export_llm(
    layout: &DataLayout,
    model: &str,
    out: Option<PathBuf>,
    external_data: bool,
) -> Result<OnnxSummary> {
    let out = match out {
        Some(out) => out,
        None => default_export_dir(layout, model)?,
    };
    let (loaded, source) = job::load_model(layout, model, Device::Cpu)?;
    tracing::info!(model, out = %out.display(), "exporting to ONNX");
    let summary = onnx_export::export(&loaded, &source, &out, &OnnxOptions { external_data })
        .with_context(|| format!("exporting {model} to {}", out.display()))?;
    Ok(summary)
}

/// The exported folder to generate with: `model` itself if it holds `model.onnx`, its `onnx/`
/// if that does, else an export made there now (once).
pub fn resolve(layout: &DataLayout, model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    for candidate in [path.to_path_buf(), path.join("onnx")] {
        if candidate.join(MODEL_FILE).exists() {
            return Ok(candidate);
        }
    }
    let registered = registry::find(&layout.registry(), model)?;
    let exported = match &registered {
        Some(entry) => entry.dir.join("onnx"),
        None if path.join("config.json").exists() || path.join("adapter_config.json").exists() => {
            path.join("onnx")
        }
        None => bail!(unknown_model(layout, model)),
    };
    if !exported.join(MODEL_FILE).exists() {
        eprintln!(
            "exporting {model} to ONNX in {} (once)...",
            exported.display()
        );
        export_llm(layout, model, Some(exported.clone()), false)?;
    }
    Ok(exported)
}

/// Print what an export wrote.
pub fn print_export(model: &str, summary: &OnnxSummary) {
    let data = summary
        .data_bytes
        .map(|b| format!(" + {} MB of weights in model.onnx_data", b / 1_000_000))
        .unwrap_or_default();
    println!(
        "{model} exported to {}: {} parameters, model.onnx {} MB{data}",
        summary.dir.display(),
        summary.parameters,
        summary.graph_bytes / 1_000_000,
    );
}

/// The engine's options from `[generation]`.
pub fn engine_options(config: &TwinConfig) -> EngineOptions {
    let settings = &config.generation;
    EngineOptions {
        max_batch_size: settings.max_batch_size,
        max_batch_tokens: settings.max_batch_tokens,
        use_cache: true,
        intra_threads: settings.threads,
        ..EngineOptions::default()
    }
}

/// `twin generate`.
pub async fn generate(config: &TwinConfig, args: GenerateArgs) -> Result<ExitCode> {
    if args.format != "text" && args.format != "json" {
        bail!("--format must be `text` or `json`, not `{}`", args.format);
    }
    let layout = config.layout();
    let dir = resolve(&layout, &args.model)?;
    let engine = Engine::load(&dir, engine_options(config))?;
    let defaults = SamplingParams::default();
    let params = SamplingParams {
        max_tokens: args.max_tokens,
        temperature: args.temperature.unwrap_or(defaults.temperature),
        top_k: args.top_k.unwrap_or(defaults.top_k),
        top_p: args.top_p.unwrap_or(defaults.top_p),
        repetition_penalty: args
            .repetition_penalty
            .unwrap_or(defaults.repetition_penalty),
        seed: args.seed,
        stop: args.stop,
        ..defaults
    };
    let prompt = if args.chat || args.system.is_some() {
        let mut messages = Vec::new();
        if let Some(system) = args.system {
            messages.push(Message::new("system", system));
        }
        messages.push(Message::new("user", args.prompt));
        Prompt::Chat(messages)
    } else {
        Prompt::Text(args.prompt)
    };
    let started = Instant::now();
    let mut generation = engine.submit(GenerationRequest { prompt, params })?;
    let mut first_token = None;
    let stdout = std::io::stdout();
    while let Some(event) = generation.events.recv().await {
        match event {
            Event::Token { text, .. } | Event::Text(text) => {
                first_token.get_or_insert_with(|| started.elapsed());
                if args.format == "text" {
                    let mut out = stdout.lock();
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                }
            }
            Event::Finished(done) => {
                let elapsed = started.elapsed().as_secs_f64();
                if args.format == "json" {
                    println!("{}", serde_json::to_string_pretty(&done)?);
                } else {
                    println!();
                }
                let decode = elapsed - first_token.map_or(0.0, |t| t.as_secs_f64());
                eprintln!(
                    "{} prompt tokens, {} generated in {elapsed:.2} s (first token after {:.0} ms, \
                     {:.1} tokens/s after it), finish: {:?}, seed {}",
                    done.prompt_tokens,
                    done.completion_tokens,
                    first_token.map_or(0.0, |t| t.as_secs_f64() * 1000.0),
                    (done.completion_tokens.saturating_sub(1)) as f64 / decode.max(1e-9),
                    done.finish_reason,
                    done.seed,
                );
                return Ok(ExitCode::SUCCESS);
            }
            Event::Failed(reason) => bail!("generation failed: {reason}"),
        }
    }
    bail!("the generation engine stopped before the text was finished")
}
