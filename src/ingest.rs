//! `twin ingest`: the crawlers, once or on their schedules.

use std::process::ExitCode;

use anyhow::Result;
use twin_config::TwinConfig;
use twin_eventlog::EventLog;

use crate::signals::{serve_metrics, shutdown_signal};

/// Crawl the configured sources: once (a summary, then a failure exit if any source failed), or
/// on their schedules until Ctrl-C/SIGTERM. A stop lets every source publish what it fetched.
pub async fn ingest(
    config: &TwinConfig,
    log: std::sync::Arc<dyn EventLog>,
    once: bool,
    filter: Option<&str>,
) -> Result<ExitCode> {
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: finishing what was fetched");
        on_signal.cancel();
    });
    let mut crawlers =
        twin_ingest::Ingest::new(config, log, twin_ingest::Progress::auto(), stop.clone())?;
    if let Some(filter) = filter {
        crawlers.retain(filter)?;
    }
    if crawlers.sources().is_empty() {
        println!(
            "ingest: no sources configured; list them as [[ingest.sources]] in twin.toml (see README)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !once {
        serve_metrics("ingest", &config.metrics.ingest);
        crawlers
            .run_scheduled(|report| {
                println!("{report}");
                for error in &report.errors {
                    eprintln!("  failed: {error}");
                }
            })
            .await;
        return Ok(ExitCode::SUCCESS);
    }
    let reports = crawlers.run_once().await;
    print!("{}", twin_ingest::summary(&reports));
    let failed: Vec<_> = reports.iter().filter(|r| r.failed()).collect();
    for report in &failed {
        for error in &report.errors {
            eprintln!("failed: {}: {error}", report.source);
        }
    }
    if stop.is_cancelled() {
        eprintln!("ingest: stopped before the end; the next run picks up the rest");
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
