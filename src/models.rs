//! `twin models`: pull, export and try the embedding model.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use twin_config::TwinConfig;

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
            let out =
                out.unwrap_or_else(|| config.layout().models().join(&files.id).join("model.onnx"));
            let summary = files.export(&out)?;
            println!(
                "{} exported to {}: {} layers, {} dimensions, {} parameters, {} bytes",
                files.id,
                out.display(),
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
    }
    Ok(ExitCode::SUCCESS)
}
