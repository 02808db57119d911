//! `twin log`: the event log's topics, and reading them.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use twin_config::TwinConfig;
use twin_eventlog::{EventConsumer, EventLog, StartFrom};
use twin_schemas::Event;

/// Create the pipeline's topics where missing and print each with its partitions and events.
pub async fn print_topics(config: &TwinConfig, log: &dyn EventLog) -> Result<()> {
    println!("{:<20} {:>10} {:>12}", "topic", "partitions", "events");
    for topic in config.topics.all() {
        let partitions = log
            .ensure_topic(topic)
            .await
            .with_context(|| format!("topic {topic}"))?;
        let ends = log.end_offsets(topic).await?;
        println!(
            "{topic:<20} {partitions:>10} {:>12}",
            ends.iter().sum::<u64>()
        );
    }
    Ok(())
}

/// Print a topic's events as JSON lines.
pub async fn tail(
    log: &dyn EventLog,
    topic: &str,
    group: Option<&str>,
    max: Option<u64>,
    follow: bool,
) -> Result<ExitCode> {
    let (group, start, commit) = match group {
        Some(g) => (g.to_string(), StartFrom::Committed, true),
        None => (
            format!("twin-tail-{}", std::process::id()),
            StartFrom::Beginning,
            false,
        ),
    };
    if log.partitions(topic).await?.is_none() {
        bail!(
            "topic {topic} does not exist on the {} log (`twin log topics` lists the pipeline's topics)",
            log.backend()
        );
    }
    let ends = log.end_offsets(topic).await?;
    let mut consumer = EventConsumer::new(log.consumer(topic, &group, start).await?, topic);
    let mut seen = vec![0u64; ends.len()];
    let mut printed = 0u64;
    let mut bad = 0u64;
    let stdout = std::io::stdout();
    loop {
        if max.is_some_and(|m| printed >= m) {
            break;
        }
        let caught_up = seen.iter().zip(&ends).all(|(s, e)| s >= e);
        if caught_up && !follow {
            break;
        }
        let Some(delivery) = consumer.next(Duration::from_millis(500)).await? else {
            if !follow && start == StartFrom::Committed {
                break; // a group with nothing left to read
            }
            continue;
        };
        let p = delivery.position.partition as usize;
        if p < seen.len() {
            seen[p] = seen[p].max(delivery.position.offset + 1);
        }
        match &delivery.event {
            Ok(event) => {
                let mut line = event_json(event);
                line["_partition"] = delivery.position.partition.into();
                line["_offset"] = delivery.position.offset.into();
                writeln!(stdout.lock(), "{line}")?;
                printed += 1;
            }
            Err(e) => {
                eprintln!("{e}");
                bad += 1;
            }
        }
        if commit {
            consumer.commit(delivery.position).await?;
        }
    }
    if bad > 0 {
        eprintln!("{bad} undecodable event(s) skipped");
    }
    Ok(ExitCode::SUCCESS)
}

fn event_json(event: &Event) -> serde_json::Value {
    let (kind, body) = match event {
        Event::Raw(d) => ("RawDocument", serde_json::to_value(d)),
        Event::Cleaned(d) => ("CleanedDocument", serde_json::to_value(d)),
        Event::Chunk(c) => ("Chunk", serde_json::to_value(c)),
        Event::Embedded(e) => ("EmbeddedChunk", serde_json::to_value(e)),
        Event::Deleted(d) => ("DocumentDeleted", serde_json::to_value(d)),
    };
    let mut value = body.unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("_type".into(), kind.into());
    }
    value
}
