//! Request traces: what each answered request did (route, query, filters, retrieved chunks and
//! their scores, token counts, time per step, model), sampled at a configured rate and written
//! to the warehouse off the request path: a background task takes them from a bounded queue
//! and writes them in batches. When the queue is full a trace is dropped and counted, never
//! waited for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use twin_warehouse::{TraceRow, Warehouse};

use crate::sampling::Rng;

/// Traces waiting to be written, at most.
const QUEUE: usize = 4096;
/// Traces written together, at most.
const BATCH: usize = 256;

/// Records traces.
#[derive(Clone)]
pub struct Tracer {
    sender: mpsc::Sender<TraceRow>,
    rate: f64,
    rng: Arc<Mutex<Rng>>,
    model: String,
}

impl Tracer {
    /// A tracer writing to `warehouse` a `rate` share of requests (0 to 1), naming `model`.
    /// Must be called within a tokio runtime (it starts the writer).
    pub fn start(warehouse: Arc<dyn Warehouse>, rate: f64, model: &str) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(write(warehouse, receiver));
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
        Self {
            sender,
            rate: rate.clamp(0.0, 1.0),
            rng: Arc::new(Mutex::new(Rng::new(seed))),
            model: model.to_string(),
        }
    }

    /// Whether this request is traced (drawn at the rate).
    pub fn sampled(&self) -> bool {
        if self.rate >= 1.0 {
            return true;
        }
        let draw = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next_f64();
        draw < self.rate
    }

    /// Queue a trace of request `id` on `route`; dropped (and counted) when the queue is full.
    pub fn record(&self, id: &str, route: &str, body: Value) {
        let row = TraceRow {
            id: id.to_string(),
            created_at: now_ms(),
            route: route.to_string(),
            model: self.model.clone(),
            body: body.to_string(),
        };
        if self.sender.try_send(row).is_err() {
            metrics::counter!("twin_serve_traces_dropped_total").increment(1);
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Write queued traces in batches until every sender is gone.
async fn write(warehouse: Arc<dyn Warehouse>, mut receiver: mpsc::Receiver<TraceRow>) {
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        // A little more time to fill the batch when traffic is steady.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(row) => batch.push(row),
                Err(_) => break,
            }
        }
        match warehouse.put_traces(&batch).await {
            Ok(()) => {
                metrics::counter!("twin_serve_traces_written_total").increment(batch.len() as u64)
            }
            Err(e) => {
                metrics::counter!("twin_serve_traces_dropped_total").increment(batch.len() as u64);
                tracing::warn!(error = %e, traces = batch.len(), "could not write traces");
            }
        }
        batch.clear();
    }
}
