//! `twin snapshot`: pin what the warehouse holds at the log positions it has applied, list,
//! show and forget snapshots, and compact the history no kept snapshot needs.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use twin_config::TwinConfig;
use twin_schemas::Position;
use twin_warehouse::{catalog, find_snapshot, Snapshot, Warehouse};

use crate::SnapshotCommand;

/// Run a `twin snapshot` subcommand.
pub async fn snapshot(config: &TwinConfig, command: SnapshotCommand) -> Result<ExitCode> {
    let warehouse = twin_warehouse::open(&config.warehouse, &config.data_dir).await?;
    match command {
        SnapshotCommand::Create {
            name,
            wait,
            timeout_secs,
        } => {
            let positions = applied_positions(
                config,
                warehouse.as_ref(),
                wait.then(|| Duration::from_secs(timeout_secs)),
            )
            .await?;
            let mut snapshot = Snapshot::new(positions, name, twin_datasets::build::now_ms());
            // The same positions make the same snapshot: it keeps its name unless given one.
            match warehouse
                .snapshots()
                .await?
                .into_iter()
                .find(|s| s.id == snapshot.id)
            {
                Some(existing) if snapshot.name.is_none() || snapshot.name == existing.name => {
                    snapshot = existing;
                }
                _ => warehouse.put_snapshot(&snapshot).await?,
            }
            let counts = warehouse
                .counts(&snapshot.as_of(), &twin_warehouse::DocumentFilter::all())
                .await?;
            println!(
                "snapshot {}{} pinned at {}: {} documents, {} chunks",
                snapshot.id,
                label(&snapshot.name),
                describe(&snapshot.positions),
                counts.cleaned,
                counts.chunks
            );
        }
        SnapshotCommand::List => {
            let all = warehouse.snapshots().await?;
            if all.is_empty() {
                println!("no snapshots yet: `twin snapshot create` makes one");
            }
            for s in all {
                println!(
                    "{}  {:<16}  {}  {}",
                    s.id,
                    s.name.as_deref().unwrap_or("-"),
                    time(s.created_at),
                    describe(&s.positions)
                );
            }
        }
        SnapshotCommand::Show { id } => {
            let s = find(warehouse.as_ref(), &id).await?;
            println!("snapshot {}{}", s.id, label(&s.name));
            println!("created    {}", time(s.created_at));
            println!("positions  {}", describe(&s.positions));
            println!(
                "\n{:<20} {:<11} {:<22} {:>9} {:>8}",
                "author", "kind", "platform", "documents", "chunks"
            );
            let (mut documents, mut chunks) = (0, 0);
            for b in warehouse.breakdown(&s.as_of()).await? {
                println!(
                    "{:<20} {:<11} {:<22} {:>9} {:>8}",
                    b.author_id, b.kind, b.platform, b.documents, b.chunks
                );
                documents += b.documents;
                chunks += b.chunks;
            }
            println!(
                "{:<20} {:<11} {:<22} {:>9} {:>8}",
                "total", "", "", documents, chunks
            );
        }
        SnapshotCommand::Delete { id } => {
            let s = find(warehouse.as_ref(), &id).await?;
            warehouse.delete_snapshot(&s.id).await?;
            println!(
                "snapshot {} deleted; `twin snapshot compact` frees the history only it kept",
                s.id
            );
        }
        SnapshotCommand::Compact => {
            let kept = warehouse.snapshots().await?;
            let floor = match catalog::floor(kept.iter().map(|s| s.positions.as_slice())) {
                Some(floor) => floor,
                None => warehouse.applied().await?,
            };
            let removed = warehouse.compact(&floor).await?;
            println!(
                "removed {} document and {} chunk versions that no snapshot ({} kept) can read",
                removed.documents,
                removed.chunks,
                kept.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A snapshot by id, id prefix or name, or an error that says how to list them.
pub async fn find(warehouse: &dyn Warehouse, key: &str) -> Result<Snapshot> {
    find_snapshot(warehouse, key)
        .await?
        .ok_or_else(|| anyhow!("no snapshot {key:?} (`twin snapshot list` shows them)"))
}

/// The positions the warehouse has applied. When the raw-documents topic holds events it has
/// not applied yet: with `wait`, wait up to that long for them; without, say so and pin what
/// has been applied.
async fn applied_positions(
    config: &TwinConfig,
    warehouse: &dyn Warehouse,
    wait: Option<Duration>,
) -> Result<Vec<Position>> {
    let log = twin_eventlog::open(config)?;
    let ends = match log.end_offsets(&config.topics.raw_documents).await {
        Ok(ends) => ends,
        Err(e) => {
            eprintln!("warning: cannot read where the log ends ({e}); pinning what the warehouse has applied");
            return Ok(warehouse.applied().await?);
        }
    };
    let started = Instant::now();
    loop {
        let applied = warehouse.applied().await?;
        let behind: u64 = ends
            .iter()
            .enumerate()
            .map(|(partition, end)| {
                let done = applied
                    .iter()
                    .find(|p| p.partition as usize == partition)
                    .map_or(0, |p| p.offset + 1);
                end.saturating_sub(done)
            })
            .sum();
        if behind == 0 {
            return Ok(applied);
        }
        match wait {
            None => {
                eprintln!(
                    "warning: the warehouse has not applied {behind} event(s) of {} yet; \
                     pinning what it has applied (`--wait` waits for `twin stream` to catch up)",
                    config.topics.raw_documents
                );
                return Ok(applied);
            }
            Some(limit) if started.elapsed() >= limit => bail!(
                "the warehouse is still {behind} event(s) behind {} after {}s: is `twin stream` \
                 running?",
                config.topics.raw_documents,
                limit.as_secs()
            ),
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn label(name: &Option<String>) -> String {
    name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
}

/// `partition 0 @ 41, partition 1 @ 17`, or `nothing applied`.
pub fn describe(positions: &[Position]) -> String {
    if positions.is_empty() {
        return "the start (nothing applied yet)".into();
    }
    positions
        .iter()
        .map(|p| format!("partition {} @ {}", p.partition, p.offset))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A time in ms since the epoch as UTC text.
pub fn time(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}
