//! `twin stream` and `twin dlq`: the feature pipeline, and the events it could not handle.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use twin_config::TwinConfig;
use twin_warehouse::DocumentFilter;

use crate::signals::{serve_metrics, shutdown_signal};
use crate::DlqCommand;

/// Run the stream worker: until stopped, or with `once` until caught up; `rebuild` first.
pub async fn stream(
    config: &TwinConfig,
    rebuild: bool,
    once: bool,
    group: &str,
) -> Result<ExitCode> {
    serve_metrics("stream", &config.metrics.stream);
    let pipeline = twin_stream::Pipeline::open(config).await?;
    let options = twin_stream::RunOptions {
        group: group.to_string(),
        rebuild,
        until_caught_up: once,
        batch_size: config.stream.batch_size,
    };
    let stats = pipeline.run(&options, shutdown_signal()).await?;
    println!(
        "documents: {}, chunks: {}, deleted: {}, dead letters: {}, cleaned again for a template change: {}, batches retried: {}",
        stats.documents,
        stats.chunks,
        stats.deleted,
        stats.dead_letters,
        stats.recleaned,
        stats.retried_batches
    );
    let counts = pipeline
        .warehouse
        .counts(&twin_warehouse::AsOf::Latest, &DocumentFilter::all())
        .await?;
    println!(
        "warehouse ({}): {} raw, {} cleaned, {} chunks",
        pipeline.warehouse.backend(),
        counts.raw,
        counts.cleaned,
        counts.chunks
    );
    Ok(ExitCode::SUCCESS)
}

/// Run a `twin dlq` subcommand.
pub async fn dlq(config: &TwinConfig, command: DlqCommand) -> Result<ExitCode> {
    let log = twin_eventlog::open(config)?;
    let topic = &config.topics.dead_letters;
    match command {
        DlqCommand::List => {
            let stdout = std::io::stdout();
            for (_, letter) in twin_stream::dlq::list(log.as_ref(), topic).await? {
                let mut line = serde_json::to_value(&letter)?;
                if let serde_json::Value::Object(map) = &mut line {
                    map.remove("payload_base64");
                }
                writeln!(stdout.lock(), "{line}")?;
            }
        }
        DlqCommand::Retry => {
            let retried = twin_stream::dlq::retry(log.as_ref(), topic).await?;
            println!(
                "{} event(s) appended to their source topics again; {} skipped, their document \
                 having a newer event (letters retried before are not retried again)",
                retried.appended, retried.superseded
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
