//! Append and read back 100,000 events of 1 KB through each log implementation, side by side.
//!
//! `cargo bench -p twin-eventlog --bench log_throughput [-- EVENTS [BATCH]]`
//!
//! The Kafka run uses a Tansu broker (in-memory storage) started on this machine; the embedded
//! run uses a temporary folder without fsync (both acknowledge once the broker or the kernel
//! holds the data).

use std::sync::Arc;
use std::time::{Duration, Instant};

use twin_config::KafkaConfig;
use twin_eventlog::{EmbeddedLog, EventLog, KafkaLog, StartFrom};

const PARTITIONS: u32 = 3;
const EVENT_BYTES: usize = 1024;

struct Figures {
    append_per_s: f64,
    read_per_s: f64,
}

async fn measure(log: Arc<dyn EventLog>, events: usize, batch: usize) -> Figures {
    let topic = format!("bench-{}-{}", std::process::id(), twin_eventlog::now_ms());
    log.ensure_topic(&topic).await.expect("topic");
    let keys: Vec<Vec<u8>> = (0..1000).map(|k| format!("doc-{k}").into_bytes()).collect();
    let payloads: Vec<Vec<u8>> = (0..batch)
        .map(|i| {
            let mut p = format!("event {i} ").into_bytes();
            p.resize(EVENT_BYTES, b'x');
            p
        })
        .collect();

    let start = Instant::now();
    let mut appended = 0;
    while appended < events {
        let n = batch.min(events - appended);
        let records: Vec<(&[u8], &[u8])> = (0..n)
            .map(|i| {
                (
                    keys[(appended + i) % keys.len()].as_slice(),
                    payloads[i].as_slice(),
                )
            })
            .collect();
        log.append_batch(&topic, &records).await.expect("append");
        appended += n;
    }
    let append_s = start.elapsed().as_secs_f64();

    let mut consumer = log
        .consumer(&topic, "bench-reader", StartFrom::Beginning)
        .await
        .expect("consumer");
    let start = Instant::now();
    let mut read = 0;
    let mut bytes = 0usize;
    while read < events {
        match consumer.poll(Duration::from_secs(30)).await.expect("poll") {
            Some(record) => {
                bytes += record.payload.len();
                read += 1;
            }
            None => panic!("read stalled at {read} of {events}"),
        }
    }
    let read_s = start.elapsed().as_secs_f64();
    assert_eq!(bytes, events * EVENT_BYTES);
    Figures {
        append_per_s: events as f64 / append_s,
        read_per_s: events as f64 / read_s,
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let events = args.first().copied().unwrap_or(100_000);
    let batch = args.get(1).copied().unwrap_or(1_000);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    let dir = tempfile::tempdir().expect("tempdir");
    let embedded: Arc<dyn EventLog> =
        Arc::new(EmbeddedLog::open(dir.path(), PARTITIONS, false).expect("embedded log"));
    let broker = twin_testkit::tansu::tansu().unwrap_or_else(|e| panic!("{e}"));
    let kafka: Arc<dyn EventLog> = Arc::new(
        KafkaLog::new(
            &KafkaConfig {
                brokers: broker.brokers.clone(),
                ..KafkaConfig::default()
            },
            PARTITIONS,
        )
        .expect("kafka client"),
    );

    println!(
        "{events} events of {EVENT_BYTES} B, appended in batches of {batch}, {PARTITIONS} partitions"
    );
    let mut rows = Vec::new();
    for (name, log) in [("embedded", embedded), ("kafka (tansu)", kafka)] {
        eprintln!("measuring {name}...");
        let figures = runtime.block_on(measure(log, events, batch));
        rows.push((name, figures));
    }
    println!(
        "{:<16} {:>14} {:>14}",
        "backend", "append ev/s", "read ev/s"
    );
    for (name, f) in &rows {
        println!("{name:<16} {:>14.0} {:>14.0}", f.append_per_s, f.read_per_s);
    }
}
