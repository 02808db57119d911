//! `twin models`: pull, export and try the embedding model; run checkpoints on token ids; list,
//! show and merge the trained models of the registry.

use std::io::Write;
use std::process::ExitCode;

use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::Device;
use twin_config::TwinConfig;
use twin_training::{export, job, registry, Batch};

use crate::ModelsCommand;

/// Run a `twin models` subcommand.
pub async fn models(config: &TwinConfig, command: ModelsCommand) -> Result<ExitCode> {
    let settings = &config.embedding;
    match command {
        ModelsCommand::Pull => {
            let files = twin_embedding::pull_configured(settings, &config.data_dir).await?;
            println!("{} pulled into {}", files.id, files.dir.display());
        }
        ModelsCommand::Export { out } => {
            let files = twin_embedding::model_files(settings, &config.data_dir).await?;
            let out = out.unwrap_or_else(|| {
                config
                    .layout()
                    .models()
                    .join(&files.id)
                    .join(twin_embedding::model::onnx_file_name(settings.precision))
            });
            let summary = files.export(&out, settings.precision)?;
            println!(
                "{} exported to {} ({}): {} layers, {} dimensions, {} parameters, {} bytes",
                files.id,
                out.display(),
                settings.precision.name(),
                summary.layers,
                summary.hidden_size,
                summary.parameters,
                summary.bytes
            );
        }
        ModelsCommand::Embed { texts } => {
            let embedder =
                std::sync::Arc::new(twin_embedding::open(settings, &config.data_dir).await?);
            let vectors = embedder.embed_async(texts.clone()).await?;
            let stdout = std::io::stdout();
            for (text, vector) in texts.iter().zip(vectors) {
                let line = serde_json::json!({
                    "model": embedder.model_id(),
                    "text": text,
                    "dimension": vector.len(),
                    "embedding": vector,
                });
                writeln!(stdout.lock(), "{line}")?;
            }
        }
        ModelsCommand::Forward {
            model,
            ids,
            all,
            format,
        } => {
            let layout = config.layout();
            let (model, _) = job::load_model(&layout, &model, Device::Cpu)?;
            let vocab = model.config.vocab_size;
            if let Some(bad) = ids.iter().find(|i| **i < 0 || **i >= vocab) {
                bail!("token id {bad} is outside the vocabulary (0..{vocab})");
            }
            if ids.len() as i64 > model.config.max_positions {
                bail!(
                    "{} ids, but the model has {} positions",
                    ids.len(),
                    model.config.max_positions
                );
            }
            let logits = model.forward(&Batch::plain(std::slice::from_ref(&ids), 0, Device::Cpu));
            let rows: Vec<Vec<f32>> = Vec::<Vec<f32>>::from(&logits.squeeze_dim(0));
            let first = if all { 0 } else { rows.len() - 1 };
            match format.as_str() {
                "json" => {
                    let positions: Vec<serde_json::Value> = rows
                        .iter()
                        .enumerate()
                        .skip(first)
                        .map(|(i, l)| serde_json::json!({"position": i, "logits": l}))
                        .collect();
                    println!(
                        "{}",
                        serde_json::json!({"ids": ids, "vocab_size": vocab, "positions": positions})
                    );
                }
                "text" => {
                    for (i, l) in rows.iter().enumerate().skip(first) {
                        let text: Vec<String> = l.iter().map(|x| format!("{x:.6}")).collect();
                        println!("{i}: {}", text.join(" "));
                    }
                }
                other => bail!("unknown --format {other:?}: use text or json"),
            }
        }
        ModelsCommand::Import { file, name } => {
            let entry = import_gguf(config, &file, name.as_deref())?;
            println!("registered {} ({})", entry.reference(), entry.dir.display());
        }
        ModelsCommand::List => {
            let entries = registry::list(&config.layout().registry())?;
            if entries.is_empty() {
                println!("no trained model registered yet (twin train)");
            }
            for e in entries {
                if e.lineage.kind == registry::IMPORTED {
                    println!(
                        "{:<24} {:<4} imported from {}  {}",
                        e.reference(),
                        "base",
                        e.lineage.base,
                        crate::snapshot::time(e.lineage.created_at)
                    );
                    continue;
                }
                println!(
                    "{:<24} {:<4} from {}  run {}  dataset {}  {}",
                    e.reference(),
                    e.lineage.kind,
                    e.lineage.base,
                    e.lineage.run_id,
                    e.lineage.dataset,
                    crate::snapshot::time(e.lineage.created_at)
                );
            }
        }
        ModelsCommand::Show { model } => {
            let Some(entry) = registry::find(&config.layout().registry(), &model)? else {
                bail!("{model}: not in the registry (twin models list)");
            };
            println!("{} ({})", entry.reference(), entry.dir.display());
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "kind": entry.lineage.kind,
                    "base": entry.lineage.base,
                    "run": entry.lineage.run_id,
                    "dataset": entry.lineage.dataset,
                    "snapshot": entry.lineage.snapshot_id,
                    "positions": entry.lineage.positions,
                }))?
            );
            let mut files: Vec<String> = std::fs::read_dir(&entry.dir)?
                .filter_map(|e| e.ok())
                .map(|e| {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    format!("{} ({size} bytes)", e.file_name().to_string_lossy())
                })
                .collect();
            files.sort();
            println!("files: {}", files.join(", "));
        }
        ModelsCommand::ExportLlm {
            model,
            out,
            external_data,
        } => {
            let summary =
                crate::generate::export_llm(&config.layout(), &model, out, external_data)?;
            crate::generate::print_export(&model, &summary);
        }
        ModelsCommand::Merge {
            adapter,
            base,
            out,
            register,
        } => {
            let layout = config.layout();
            let (adapter_dir, recorded_base, lineage) =
                match registry::find(&layout.registry(), &adapter)? {
                    Some(e) => (e.dir.clone(), e.lineage.base_dir.clone(), Some(e.lineage)),
                    None => {
                        let dir = std::path::PathBuf::from(&adapter);
                        let recorded = export::read_adapter_config(&dir)?
                            .base
                            .map(std::path::PathBuf::from);
                        (dir, recorded, None)
                    }
                };
            let Some(base) = base.or(recorded_base) else {
                bail!("the adapter records no base model folder: give --base DIR");
            };
            let model = export::merge(&base, &adapter_dir, &out)?;
            println!(
                "merged {} into {} ({} parameters): {}",
                adapter_dir.display(),
                base.display(),
                model.config.parameter_count(),
                out.display()
            );
            if let Some(name) = register {
                let mut lineage = lineage.unwrap_or(registry::Lineage {
                    kind: "full".into(),
                    base: base.display().to_string(),
                    base_dir: None,
                    run_id: String::new(),
                    dataset: String::new(),
                    snapshot_id: None,
                    positions: Vec::new(),
                    created_at: 0,
                });
                lineage.kind = "full".into();
                lineage.base_dir = None;
                lineage.created_at = twin_datasets::build::now_ms();
                let entry = registry::register(&layout.registry(), &name, &out, &lineage)?;
                println!("registered {}", entry.reference());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Import a GGUF file as a Hugging Face checkpoint and register it as `name` (default: the file's
/// stem). The checkpoint is written beside the registry first, so that a file that cannot be
/// imported registers nothing.
pub fn import_gguf(
    config: &TwinConfig,
    file: &Path,
    name: Option<&str>,
) -> Result<registry::Entry> {
    let name = match name {
        Some(name) => name.to_string(),
        None => file
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("{}: give the model a --name", file.display()))?,
    };
    registry::check_name(&name)?;
    let layout = config.layout();
    let root = layout.registry();
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let staging = root.join(format!(".import-{name}.part"));
    let _ = std::fs::remove_dir_all(&staging);
    let started = std::time::Instant::now();
    tracing::info!(file = %file.display(), name, "importing a GGUF model");
    let imported = match twin_gguf::import(file, &staging) {
        Ok(imported) => imported,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.into());
        }
    };
    let types: Vec<String> = imported
        .types
        .iter()
        .map(|(kind, n)| format!("{n} {kind}"))
        .collect();
    println!(
        "{}: {} ({}), {} parameters from {} tensors ({}), dequantized to f32 in {:.1} s",
        file.display(),
        imported.name.as_deref().unwrap_or("unnamed"),
        imported.model_type,
        imported.parameters,
        imported.types.values().sum::<usize>(),
        types.join(", "),
        started.elapsed().as_secs_f64()
    );
    let lineage = registry::Lineage {
        kind: registry::IMPORTED.into(),
        base: std::fs::canonicalize(file)
            .unwrap_or_else(|_| file.to_path_buf())
            .display()
            .to_string(),
        base_dir: None,
        run_id: String::new(),
        dataset: String::new(),
        snapshot_id: None,
        positions: Vec::new(),
        created_at: twin_datasets::build::now_ms(),
    };
    let entry = registry::register(&root, &name, &staging, &lineage);
    let _ = std::fs::remove_dir_all(&staging);
    Ok(entry?)
}
