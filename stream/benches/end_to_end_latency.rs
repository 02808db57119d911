//! End-to-end latency on the embedded defaults: raw-document events appended at a steady rate
//! (5 per second for a minute by default), each timed from its append until its chunks are
//! searchable in the vector store. Prints p50, p95 and p99.
//!
//! `cargo bench -p twin-stream --bench end_to_end_latency [-- RATE SECONDS]`, or
//! `scripts/bench.sh latency`. Needs what scripts/setup.sh installs (model, ONNX Runtime).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use twin_config::TwinConfig;
use twin_eventlog::publish;
use twin_schemas::{
    content_hash, document_id, Author, ContentBlock, DocumentKind, Event, RawDocument,
};
use twin_stream::{Pipeline, RunOptions};
use twin_vectorstore::SearchFilter;

const TOPICS: [&str; 6] = [
    "event logs",
    "vector search",
    "fine-tuning",
    "chunking",
    "embeddings",
    "Rust",
];

/// A post of a few paragraphs, about 150 tokens: one or two chunks.
fn document(i: usize) -> RawDocument {
    let topic = TOPICS[i % TOPICS.len()];
    let content: Vec<ContentBlock> = (0..3)
        .map(|p| ContentBlock::paragraph(format!(
            "Note {i}, part {p}: what I learned about {topic} this week. The details matter more than the \
             headline, and measuring beats guessing every single time."
        )))
        .collect();
    let url = format!(
        "https://www.linkedin.com/posts/bench-{i}-{}",
        std::process::id()
    );
    RawDocument {
        id: document_id("linkedin", &url),
        kind: DocumentKind::Post,
        platform: "linkedin".into(),
        author: Author {
            id: "bench".into(),
            full_name: "Bench Author".into(),
        },
        url,
        title: format!("Note {i}"),
        published_at: None,
        crawled_at: twin_eventlog::now_ms(),
        content_hash: content_hash(&content),
        content,
        metadata: BTreeMap::new(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<f64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rate = args.first().copied().unwrap_or(5.0);
    let seconds = args.get(1).copied().unwrap_or(60.0);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = TwinConfig { data_dir: dir.path().to_path_buf(), ..TwinConfig::default() };
        let pipeline = std::sync::Arc::new(Pipeline::open(&config).await.expect("pipeline"));
        // Warm the model so the first document does not pay for loading it.
        pipeline.embedder.embed(&["warm-up"]).expect("warm-up");

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let worker = {
            let pipeline = pipeline.clone();
            tokio::spawn(async move {
                pipeline
                    .run(&RunOptions::default(), async { let _ = stop_rx.await; })
                    .await
                    .expect("worker")
            })
        };

        let total = (rate * seconds).round() as usize;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now();
        let mut pending: Vec<(String, Instant)> = Vec::new();
        let mut latencies = Vec::with_capacity(total);
        let mut sent = 0;
        eprintln!("{total} documents at {rate}/s...");
        while latencies.len() < total {
            if sent < total && start.elapsed() >= interval * sent as u32 {
                let doc = document(sent);
                let id = doc.id.clone();
                let appended = Instant::now();
                publish(pipeline.log.as_ref(), &config.topics.raw_documents, &[Event::Raw(doc)]).await.expect("publish");
                pending.push((id, appended));
                sent += 1;
            }
            let mut still = Vec::new();
            for (id, appended) in pending.drain(..) {
                let filter = SearchFilter { document_id: Some(id.clone()), ..Default::default() };
                if pipeline.vectors.count(DocumentKind::Post, &filter).await.expect("count") > 0 {
                    latencies.push(appended.elapsed().as_secs_f64());
                } else {
                    still.push((id, appended));
                }
            }
            pending = still;
            assert!(start.elapsed().as_secs_f64() < seconds * 3.0 + 60.0, "the pipeline fell behind");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop_tx.send(());
        let stats = worker.await.expect("worker task");
        latencies.sort_by(|a, b| a.total_cmp(b));
        println!(
            "end-to-end latency, append to searchable, embedded defaults: {} documents at {rate}/s over {seconds:.0} s ({} chunks)",
            latencies.len(),
            stats.chunks
        );
        println!(
            "p50 {:.0} ms   p95 {:.0} ms   p99 {:.0} ms   max {:.0} ms   (target: p95 under 1000 ms)",
            1000.0 * percentile(&latencies, 50.0),
            1000.0 * percentile(&latencies, 95.0),
            1000.0 * percentile(&latencies, 99.0),
            1000.0 * latencies.last().copied().unwrap_or(0.0)
        );
    });
}
