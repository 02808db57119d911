//! `twin up`: several roles in one process: the crawlers on their schedules, the stream worker
//! and the HTTP endpoint. They share one event log, one embedder and one set of stores, which is
//! how they run together on the embedded backends (one process owns those), and they stop
//! together on Ctrl-C/SIGTERM: ingest publishes what it fetched, the worker finishes its batch
//! and commits, the server finishes the requests in flight.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;
use twin_config::TwinConfig;

use crate::UpArgs;

/// The roles `twin up` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Ingest,
    Stream,
    Serve,
}

/// Each role's name on the command line.
const ROLES: [(&str, Role); 3] = [
    ("ingest", Role::Ingest),
    ("stream", Role::Stream),
    ("serve", Role::Serve),
];

impl Role {
    fn name(self) -> &'static str {
        ROLES
            .iter()
            .find(|(_, r)| *r == self)
            .map_or("", |(n, _)| n)
    }
}

fn parse_roles(text: &str) -> Result<BTreeSet<Role>> {
    let mut roles = BTreeSet::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some((_, role)) = ROLES.iter().find(|(n, _)| *n == name) else {
            bail!("--roles: unknown role {name:?}; the roles are ingest, stream and serve")
        };
        roles.insert(*role);
    }
    if roles.is_empty() {
        bail!("--roles names no role; the roles are ingest, stream and serve");
    }
    Ok(roles)
}

/// `twin up`.
pub async fn up(config: &TwinConfig, args: UpArgs) -> Result<ExitCode> {
    let roles = parse_roles(&args.roles)?;
    if roles.contains(&Role::Serve) {
        // Before any role starts: a refused server must not leave the others running.
        let address = args.address.as_deref().unwrap_or(&config.serving.address);
        crate::serve::check_exposure(address, &config.serving.api_token, args.insecure_no_auth)
            .await?;
    }
    let serving_model = args
        .model
        .clone()
        .unwrap_or_else(|| config.serving.model.clone());
    if roles.contains(&Role::Serve)
        && serving_model.is_empty()
        && config.serving.remote.base_url.is_empty()
    {
        bail!(
            "which model? twin up --model NAME ([serving] model), or leave serve out with \
             --roles ingest,stream"
        );
    }
    let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
    println!("twin up: {}", names.join(", "));

    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            crate::signals::shutdown_signal().await;
            eprintln!(
                "stopping: ingest publishes what it fetched, the worker finishes its batch and \
                 commits, the server finishes the requests in flight"
            );
            stop.cancel();
        });
    }
    // One metrics recorder per process: the server's `/metrics` when it runs, else the stream's
    // port.
    if !roles.contains(&Role::Serve) {
        crate::signals::serve_metrics("up", &config.metrics.stream);
    }

    let pipeline = if roles.contains(&Role::Stream) {
        Some(Arc::new(
            twin_stream::Pipeline::open(config)
                .await
                .context("opening the stream worker's log and stores")?,
        ))
    } else {
        None
    };
    let log = match &pipeline {
        Some(pipeline) => pipeline.log.clone(),
        None => twin_eventlog::open(config)?,
    };

    let ingest = async {
        if !roles.contains(&Role::Ingest) {
            return Ok(());
        }
        let crawlers = match twin_ingest::Ingest::new(
            config,
            log.clone(),
            twin_ingest::Progress::hidden(),
            stop.clone(),
        ) {
            Ok(crawlers) => crawlers,
            Err(e) => {
                stop.cancel();
                return Err(e.into());
            }
        };
        if crawlers.sources().is_empty() {
            println!(
                "ingest: no sources configured ([[ingest.sources]] in twin.toml); not crawling"
            );
            return Ok(());
        }
        crawlers
            .run_scheduled(|report| {
                println!("ingest: {report}");
                for error in &report.errors {
                    eprintln!("  failed: {error}");
                }
            })
            .await;
        println!("ingest: stopped");
        anyhow::Ok(())
    };

    let stream = async {
        let Some(pipeline) = &pipeline else {
            return Ok(());
        };
        let options = twin_stream::RunOptions {
            group: args.group.clone(),
            rebuild: false,
            until_caught_up: false,
            batch_size: config.stream.batch_size,
        };
        let stats = pipeline.run(&options, stop.cancelled()).await;
        // The others stop with the worker, whatever stopped it.
        stop.cancel();
        let stats = stats?;
        println!(
            "stream: stopped after {} documents, {} chunks, {} deleted, {} dead letters; offsets committed",
            stats.documents, stats.chunks, stats.deleted, stats.dead_letters
        );
        anyhow::Ok(())
    };

    let serve = async {
        if !roles.contains(&Role::Serve) {
            return Ok(());
        }
        let shared = pipeline.as_ref().map(|p| crate::serve::Shared {
            embedder: p.embedder.clone(),
            store: p.vectors.clone(),
            warehouse: p.warehouse.clone(),
        });
        let (ready, _) = tokio::sync::oneshot::channel();
        let result = crate::serve::serve_until(
            config,
            crate::ServeArgs {
                model: args.model.clone(),
                address: args.address.clone(),
                insecure_no_auth: args.insecure_no_auth,
            },
            shared,
            stop.clone().cancelled_owned(),
            ready,
        )
        .await;
        stop.cancel();
        result?;
        println!("serve: stopped");
        anyhow::Ok(())
    };

    let (ingest, stream, serve) = tokio::join!(ingest, stream, serve);
    let mut failed = false;
    for (role, result) in [("ingest", ingest), ("stream", stream), ("serve", serve)] {
        if let Err(e) = result {
            eprintln!("error: {role}: {e:#}");
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_named_and_checked() {
        let all = parse_roles("ingest, stream,serve").map(|r| r.len()).ok();
        assert_eq!(all, Some(3));
        let err = parse_roles("ingest,trian")
            .map(|_| ())
            .err()
            .unwrap_or_else(|| anyhow::anyhow!(""));
        assert!(err.to_string().contains("\"trian\""), "{err}");
        assert!(parse_roles(" , ").is_err());
    }
}
