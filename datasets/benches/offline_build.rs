//! Offline dataset build time: the 76-article corpus (`../shared/corpus/articles.json` when
//! present, else 76 generated articles), and ten times as many documents, side by side, for
//! each kind of dataset. The documents are cleaned and chunked by the real stages into a SQLite
//! warehouse first (not timed); the build (read the snapshot, make passages, generate, filter,
//! deduplicate, split) is what is timed, best of three.
//!
//! The ten-fold corpus is ten copies of the articles, each copy with every third word changed
//! (so that the copies are not duplicates of each other and all go through the filters).
//!
//! Run: `cargo bench -p twin-datasets --bench offline_build`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use twin_config::DatasetsConfig;
use twin_datasets::{build, BuildParams, DatasetKind, Method, OfflineGenerator};
use twin_schemas::{content_hash, ContentBlock, RawDocument};
use twin_warehouse::{Snapshot, SqliteWarehouse, Warehouse};

const WORDS: [&str; 12] = [
    "river", "lantern", "copper", "meadow", "signal", "harbor", "velvet", "summit", "ember",
    "quartz", "willow", "orbit",
];

/// Copy `k` of `doc`: its own id and url, every third word replaced.
fn variant(doc: &RawDocument, k: usize) -> RawDocument {
    let mut copy = doc.clone();
    copy.id = format!("{}-copy-{k}", doc.id);
    copy.url = format!("{}?copy={k}", doc.url);
    copy.content = doc
        .content
        .iter()
        .map(|block| {
            let text: Vec<String> = block
                .text
                .split(' ')
                .enumerate()
                .map(|(i, w)| {
                    if i % 3 == 2 {
                        WORDS[(i + k) % WORDS.len()].to_string()
                    } else {
                        w.to_string()
                    }
                })
                .collect();
            ContentBlock {
                text: text.join(" "),
                ..block.clone()
            }
        })
        .collect();
    copy.content_hash = content_hash(&copy.content);
    copy
}

async fn warehouse_of(dir: &std::path::Path, docs: &[RawDocument]) -> (SqliteWarehouse, Snapshot) {
    let warehouse = SqliteWarehouse::open(&dir.join("warehouse.sqlite")).expect("open");
    warehouse.ensure_schema().await.expect("schema");
    common::project(&warehouse, &common::chunker(), docs, 0).await;
    let snapshot = Snapshot::new(warehouse.applied().await.expect("applied"), None, 1);
    (warehouse, snapshot)
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let corpus = twin_testkit::documents::corpus();
        let tenfold: Vec<RawDocument> = (0..10)
            .flat_map(|k| corpus.iter().map(move |d| variant(d, k)))
            .collect();
        let small_dir = tempfile::tempdir().expect("tempdir");
        let large_dir = tempfile::tempdir().expect("tempdir");
        let small = warehouse_of(small_dir.path(), &corpus).await;
        let large = warehouse_of(large_dir.path(), &tenfold).await;

        println!(
            "{:<26} {:>9} {:>9} {:>9} {:>11} {:>12}",
            "offline build", "documents", "passages", "samples", "time", "samples/s"
        );
        for (label, kind, method) in [
            (
                "instruct (backtranslate)",
                DatasetKind::Instruct,
                Method::Backtranslate,
            ),
            ("instruct (extract)", DatasetKind::Instruct, Method::Extract),
            ("preference", DatasetKind::Preference, Method::Backtranslate),
        ] {
            let mut params = BuildParams::from_config(&DatasetsConfig::default(), kind);
            params.method = method;
            for (warehouse, snapshot) in [&small, &large] {
                let mut best = Duration::MAX;
                let mut last = None;
                for _ in 0..3 {
                    let started = Instant::now();
                    let built = build(
                        warehouse as &dyn Warehouse,
                        snapshot,
                        &params,
                        &OfflineGenerator::new(),
                        &indicatif::ProgressBar::hidden(),
                    )
                    .await
                    .expect("build");
                    best = best.min(started.elapsed());
                    last = Some(built.stats);
                }
                let stats = last.expect("stats");
                println!(
                    "{:<26} {:>9} {:>9} {:>9} {:>9.0}ms {:>12.0}",
                    label,
                    stats.documents,
                    stats.passages,
                    stats.kept,
                    best.as_secs_f64() * 1000.0,
                    stats.kept as f64 / best.as_secs_f64()
                );
            }
        }
    });
}
