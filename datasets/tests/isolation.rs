//! Snapshot isolation end to end, on both warehouse implementations (SQLite, and a real
//! ClickHouse server): the stream worker projects real articles, a snapshot S is taken and
//! datasets built from it; then edits, new documents and deletions go through the log and the
//! worker (new documents of a publication also make it clean four older ones again, as its
//! template changes); a new build from S exports byte-identical files. A build from a new snapshot
//! differs, so the comparison can fail.

use std::sync::atomic::{AtomicU32, Ordering};

use futures::TryStreamExt;
use twin_config::{TwinConfig, WarehouseBackend};
use twin_datasets::formats::{self, Format};
use twin_datasets::{build, BuildParams, DatasetKind, OfflineGenerator};
use twin_eventlog::publish;
use twin_schemas::{content_hash, ContentBlock, DocumentDeleted, Event, RawDocument};
use twin_stream::{Pipeline, RunOptions};
use twin_testkit::documents::corpus;
use twin_warehouse::{scan_cleaned, AsOf, DocumentFilter, Snapshot, Warehouse};

/// Article `n` of a publication of our own, made from `doc`'s text, signed off or not.
fn journal(doc: &RawDocument, n: usize, signed_off: bool) -> RawDocument {
    let mut article = doc.clone();
    article.id = format!("journal-{n}");
    article.url = format!("https://journal.example.com/p/{n}");
    article.platform = "substack".into();
    if signed_off {
        article.content.push(ContentBlock::paragraph(
            "Written between two trains, somewhere in the Alps, for The Twin Journal.",
        ));
    }
    article.content_hash = content_hash(&article.content);
    article
}

fn once() -> RunOptions {
    RunOptions {
        until_caught_up: true,
        ..RunOptions::default()
    }
}

/// Both kinds of dataset from `snapshot`, exported (Alpaca and TRL): the files' bytes.
async fn exported(warehouse: &dyn Warehouse, snapshot: &Snapshot) -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (kind, format) in [
        (DatasetKind::Instruct, Format::Alpaca),
        (DatasetKind::Preference, Format::Trl),
    ] {
        let params = BuildParams::from_config(&Default::default(), kind);
        let built = build(
            warehouse,
            snapshot,
            &params,
            &OfflineGenerator::new(),
            &indicatif::ProgressBar::hidden(),
        )
        .await
        .expect("build");
        // Stored and read back, as `twin dataset export` reads it.
        warehouse
            .put_dataset(&built.record, &built.rows().expect("rows"))
            .await
            .expect("store");
        let stored = twin_datasets::build::samples_of(
            &warehouse
                .dataset_samples(&built.record.id)
                .await
                .expect("samples"),
        )
        .expect("samples");
        let out = dir.path().join(format!("{kind}"));
        for (path, _) in formats::export(kind, &stored, format, &out).expect("export") {
            let name = format!(
                "{kind}/{}",
                path.file_name().expect("name").to_string_lossy()
            );
            files.push((name, std::fs::read(&path).expect("read")));
        }
        warehouse
            .delete_dataset(&built.record.id)
            .await
            .expect("delete");
    }
    files
}

async fn snapshot_builds_are_byte_identical_after_later_changes(config: TwinConfig) {
    let pipeline = Pipeline::open(&config).await.expect("pipeline");
    let topic = config.topics.raw_documents.clone();
    let docs = corpus();
    // Twelve articles, and five of one publication, four with the same sign-off: not yet a
    // template (fewer than five documents hold it).
    let mut first: Vec<RawDocument> = docs[..12].to_vec();
    first.extend((0..5).map(|n| journal(&docs[20 + n], n, n < 4)));
    // Later: two more articles, and two more of the publication with the sign-off, which makes
    // it the publication's template: its four older documents are cleaned again.
    let mut later: Vec<RawDocument> = docs[12..14].to_vec();
    later.extend((5..7).map(|n| journal(&docs[20 + n], n, true)));
    publish(
        pipeline.log.as_ref(),
        &topic,
        &first.iter().cloned().map(Event::Raw).collect::<Vec<_>>(),
    )
    .await
    .expect("publish");
    pipeline
        .run(&once(), std::future::pending())
        .await
        .expect("stream");
    let warehouse = pipeline.warehouse.as_ref();
    let snapshot = Snapshot::new(warehouse.applied().await.expect("applied"), None, 1);
    warehouse.put_snapshot(&snapshot).await.expect("snapshot");
    let before = exported(warehouse, &snapshot).await;
    assert!(before.iter().all(|(_, bytes)| !bytes.is_empty()));

    // Edits, new documents and deletions, through the log and the worker.
    let mut events = Vec::new();
    for doc in &first[..3] {
        let mut edited = doc.clone();
        edited.content.insert(
            1,
            ContentBlock::paragraph(
                "An editor's note added long after the first version was published.",
            ),
        );
        edited.content.pop();
        edited.content_hash = content_hash(&edited.content);
        events.push(Event::Raw(edited));
    }
    events.extend(later.iter().cloned().map(Event::Raw));
    for doc in &first[3..5] {
        events.push(Event::Deleted(DocumentDeleted {
            document_id: doc.id.clone(),
            kind: doc.kind,
            platform: doc.platform.clone(),
            url: doc.url.clone(),
            deleted_at: 1_764_000_100_000,
            reason: "HTTP 404 at source".into(),
        }));
    }
    publish(pipeline.log.as_ref(), &topic, &events)
        .await
        .expect("publish");
    let stats = pipeline
        .run(&once(), std::future::pending())
        .await
        .expect("stream");
    assert_eq!((stats.documents, stats.deleted), (7, 2), "{stats:?}");
    // The four signed-off articles at least (deletions change other sources' counts too).
    assert!(stats.recleaned >= 4, "{stats:?}");
    let now = warehouse
        .counts(&AsOf::Latest, &DocumentFilter::all())
        .await
        .expect("counts");
    assert_eq!(now.raw, 17 + 4 - 2);
    // The sign-off is gone from the publication's older articles now, and still there in S.
    let signed_off = |doc: &twin_schemas::CleanedDocument| {
        doc.content.iter().any(|b| b.text.contains("Twin Journal"))
    };
    let latest = warehouse.cleaned("journal-0").await.expect("cleaned");
    assert!(!signed_off(&latest.expect("journal-0")));
    let pinned: Vec<_> = scan_cleaned(
        warehouse,
        snapshot.as_of(),
        DocumentFilter::documents(["journal-0"]),
    )
    .try_collect()
    .await
    .expect("pinned");
    assert!(signed_off(&pinned[0].value));

    let after = exported(warehouse, &snapshot).await;
    assert_eq!(before.len(), after.len());
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert!(a == b, "{name} changed after the snapshot");
    }
    let newer = Snapshot::new(warehouse.applied().await.expect("applied"), None, 2);
    assert_ne!(newer.id, snapshot.id);
    assert_ne!(
        exported(warehouse, &newer).await,
        before,
        "a newer snapshot sees the changes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_warehouse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TwinConfig {
        data_dir: dir.path().to_path_buf(),
        ..TwinConfig::default()
    };
    snapshot_builds_are_byte_identical_after_later_changes(config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_warehouse() {
    static N: AtomicU32 = AtomicU32::new(0);
    let server = twin_testkit::clickhouse::clickhouse().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = TwinConfig {
        data_dir: dir.path().to_path_buf(),
        ..TwinConfig::default()
    };
    config.warehouse.backend = WarehouseBackend::ClickHouse;
    config.warehouse.clickhouse.url = server.url.clone();
    config.warehouse.clickhouse.database = format!(
        "isolation_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    snapshot_builds_are_byte_identical_after_later_changes(config).await;
}
