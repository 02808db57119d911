//! The warehouse contract: one suite, run against the embedded SQLite warehouse and against a
//! real ClickHouse server (started by `twin_testkit::clickhouse`), for the write side (what the
//! stream worker does) and the read side (what training and serving read).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use futures::TryStreamExt;
use twin_config::ClickHouseConfig;
use twin_schemas::{CleanedDocument, DocumentKind, Position, RawDocument};
use twin_testkit::documents::{article as raw, chunks};
use twin_testkit::Backend;
use twin_warehouse::{
    find_run, find_snapshot, find_trace, scan_chunks, scan_cleaned, scan_raw, AsOf, Breakdown,
    ClickHouseWarehouse, Compaction, Counts, DatasetRecord, DocumentFilter, MetricRow, RunRecord,
    SampleRow, Snapshot, SqliteWarehouse, TraceRow, Warehouse, WarehouseError,
};

type Handle = Arc<dyn Warehouse>;

async fn embedded() -> Option<Backend<Handle>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = SqliteWarehouse::open(&dir.path().join("warehouse.sqlite")).expect("open");
    warehouse.ensure_schema().await.expect("schema");
    Some(Backend::with_guard(Arc::new(warehouse), dir))
}

async fn clickhouse() -> Option<Backend<Handle>> {
    static N: AtomicU32 = AtomicU32::new(0);
    let server = twin_testkit::clickhouse::clickhouse().unwrap_or_else(|e| panic!("{e}"));
    let config = ClickHouseConfig {
        url: server.url.clone(),
        database: format!(
            "test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ),
        ..ClickHouseConfig::default()
    };
    let warehouse = ClickHouseWarehouse::connect(&config)
        .await
        .expect("connect");
    warehouse.ensure_schema().await.expect("schema");
    Some(Backend::new(Arc::new(warehouse)))
}

/// A cleaned document as the clean stage would make it (the stage itself lives in twin-stream).
fn cleaned(doc: &RawDocument) -> CleanedDocument {
    CleanedDocument {
        id: doc.id.clone(),
        kind: doc.kind,
        platform: doc.platform.clone(),
        author: doc.author.clone(),
        url: doc.url.clone(),
        title: doc.title.clone(),
        published_at: doc.published_at,
        cleaned_at: 9,
        content_hash: doc.content_hash.clone(),
        content: doc.content.clone(),
        raw_content_hash: doc.content_hash.clone(),
        metadata: doc.metadata.clone(),
    }
}

fn at(offset: u64) -> Position {
    Position {
        partition: 1,
        offset,
    }
}

fn texts(stored: &[twin_warehouse::StoredChunk]) -> Vec<String> {
    stored.iter().map(|s| s.value.text.clone()).collect()
}

async fn documents_round_trip_with_their_log_position(w: Handle) {
    let doc = raw("doc-a", "Hello 𝗯𝗼𝗹𝗱 world.");
    w.put_raw(&doc, at(5)).await.expect("put raw");
    assert_eq!(w.raw("doc-a").await.expect("get"), Some(doc.clone()));
    let cleaned = cleaned(&doc);
    w.put_cleaned(&cleaned, at(5)).await.expect("put cleaned");
    assert_eq!(w.cleaned("doc-a").await.expect("get"), Some(cleaned));
    w.replace_chunks("doc-a", &chunks("doc-a", &["one", "two"]), at(5))
        .await
        .expect("chunks");
    let stored = w.chunks("doc-a").await.expect("chunks");
    assert_eq!(texts(&stored), ["one", "two"]);
    assert!(stored.iter().all(|s| s.position == at(5)));
    assert_eq!(w.raw("missing").await.expect("get"), None);
}

async fn writes_are_idempotent(w: Handle) {
    let doc = raw("doc-b", "Same event twice.");
    for _ in 0..3 {
        w.put_raw(&doc, at(7)).await.expect("put");
        w.replace_chunks("doc-b", &chunks("doc-b", &["x", "y"]), at(7))
            .await
            .expect("chunks");
    }
    let counts = w
        .counts(&AsOf::Latest, &DocumentFilter::all())
        .await
        .expect("counts");
    assert_eq!((counts.raw, counts.chunks), (1, 2));
}

async fn a_changed_document_leaves_no_stale_chunk(w: Handle) {
    w.replace_chunks(
        "doc-c",
        &chunks("doc-c", &["old one", "old two", "old three"]),
        at(1),
    )
    .await
    .expect("v1");
    w.replace_chunks("doc-c", &chunks("doc-c", &["new one", "old two"]), at(2))
        .await
        .expect("v2");
    let stored = w.chunks("doc-c").await.expect("chunks");
    assert_eq!(texts(&stored), ["new one", "old two"]);
    assert_eq!(
        w.counts(&AsOf::Latest, &DocumentFilter::all())
            .await
            .expect("counts")
            .chunks,
        2
    );
    // A redelivered older event does not bring the old version back.
    w.replace_chunks(
        "doc-c",
        &chunks("doc-c", &["old one", "old two", "old three"]),
        at(1),
    )
    .await
    .expect("late v1");
    assert_eq!(
        texts(&w.chunks("doc-c").await.expect("chunks")),
        ["new one", "old two"]
    );
}

async fn a_tombstone_removes_the_document_and_its_chunks(w: Handle) {
    let doc = raw("doc-d", "Soon gone.");
    w.put_raw(&doc, at(3)).await.expect("raw");
    w.put_cleaned(&cleaned(&doc), at(3)).await.expect("cleaned");
    w.replace_chunks("doc-d", &chunks("doc-d", &["a", "b"]), at(3))
        .await
        .expect("chunks");
    w.put_raw(&raw("doc-e", "Stays."), at(4))
        .await
        .expect("other");
    w.delete_document("doc-d", at(8)).await.expect("delete");
    assert_eq!(w.raw("doc-d").await.expect("raw"), None);
    assert_eq!(w.cleaned("doc-d").await.expect("cleaned"), None);
    assert!(w.chunks("doc-d").await.expect("chunks").is_empty());
    assert!(
        w.raw("doc-e").await.expect("raw").is_some(),
        "other documents stay"
    );
    let counts = w
        .counts(&AsOf::Latest, &DocumentFilter::all())
        .await
        .expect("counts");
    assert_eq!((counts.raw, counts.cleaned, counts.chunks), (1, 0, 0));
    // The document can come back later.
    w.put_raw(&doc, at(9)).await.expect("back");
    assert!(w.raw("doc-d").await.expect("raw").is_some());
}

async fn drop_all_empties_the_warehouse_for_a_rebuild(w: Handle) {
    w.put_raw(&raw("doc-f", "x"), at(1)).await.expect("raw");
    w.drop_all().await.expect("drop");
    w.ensure_schema().await.expect("schema again");
    assert_eq!(
        w.counts(&AsOf::Latest, &DocumentFilter::all())
            .await
            .expect("counts")
            .raw,
        0
    );
}

/// A small library: two authors, three kinds, two platforms, four publication times.
async fn library(w: &Handle) -> Vec<RawDocument> {
    let mut docs = Vec::new();
    for (i, (author, kind, platform, published)) in [
        ("paul", DocumentKind::Article, "substack", Some(1_000)),
        ("paul", DocumentKind::Post, "linkedin", Some(2_000)),
        ("maxime", DocumentKind::Article, "substack", Some(3_000)),
        ("paul", DocumentKind::Repository, "github", None),
        ("maxime", DocumentKind::Article, "medium", Some(4_000)),
    ]
    .into_iter()
    .enumerate()
    {
        let mut doc = raw(&format!("lib-{i}"), &format!("Document {i}."));
        doc.author.id = author.into();
        doc.kind = kind;
        doc.platform = platform.into();
        doc.published_at = published;
        let mut its_chunks = chunks(&doc.id, &["first", "second", "third"][..=i % 3]);
        for chunk in &mut its_chunks {
            chunk.author.id = author.into();
            chunk.kind = kind;
            chunk.platform = platform.into();
            chunk.published_at = published;
        }
        let position = at(10 + i as u64);
        w.put_raw(&doc, position).await.expect("raw");
        w.put_cleaned(&cleaned(&doc), position)
            .await
            .expect("cleaned");
        w.replace_chunks(&doc.id, &its_chunks, position)
            .await
            .expect("chunks");
        docs.push(doc);
    }
    docs
}

async fn raw_ids(w: &Handle, filter: DocumentFilter) -> Vec<String> {
    scan_raw(w.as_ref(), AsOf::Latest, filter)
        .map_ok(|s| s.value.id)
        .try_collect()
        .await
        .expect("scan raw")
}

async fn scans_filter_by_author_kind_platform_time_and_ids(w: Handle) {
    library(&w).await;
    assert_eq!(
        raw_ids(&w, DocumentFilter::all()).await,
        ["lib-0", "lib-1", "lib-2", "lib-3", "lib-4"]
    );
    let by_author = DocumentFilter {
        author_id: Some("maxime".into()),
        ..Default::default()
    };
    assert_eq!(raw_ids(&w, by_author).await, ["lib-2", "lib-4"]);
    let articles_on_substack = DocumentFilter {
        kind: Some(DocumentKind::Article),
        platform: Some("substack".into()),
        ..Default::default()
    };
    assert_eq!(raw_ids(&w, articles_on_substack).await, ["lib-0", "lib-2"]);
    let published = DocumentFilter {
        published_from: Some(2_000),
        published_until: Some(4_000),
        ..Default::default()
    };
    assert_eq!(raw_ids(&w, published).await, ["lib-1", "lib-2"]);
    let some = DocumentFilter::documents(["lib-3", "lib-0", "missing"]);
    assert_eq!(raw_ids(&w, some.clone()).await, ["lib-0", "lib-3"]);
    let cleaned_ids: Vec<String> = scan_cleaned(w.as_ref(), AsOf::Latest, some.clone())
        .map_ok(|s| s.value.id)
        .try_collect()
        .await
        .expect("scan cleaned");
    assert_eq!(cleaned_ids, ["lib-0", "lib-3"]);
    let chunk_keys: Vec<(String, i32)> = scan_chunks(w.as_ref(), AsOf::Latest, some)
        .map_ok(|s| (s.value.document_id, s.value.position))
        .try_collect()
        .await
        .expect("scan chunks");
    assert_eq!(
        chunk_keys,
        [("lib-0".to_string(), 0), ("lib-3".to_string(), 0)],
        "chunks of the selected documents, by document then position"
    );
    let none = DocumentFilter::documents(Vec::<String>::new());
    assert!(raw_ids(&w, none).await.is_empty());
}

async fn scans_page_through_everything_once_in_order_with_positions(w: Handle) {
    let docs = library(&w).await;
    // Pages of two: every document once, in id order, each with its event's position.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = w
            .raw_page(&AsOf::Latest, &DocumentFilter::all(), after.as_deref(), 2)
            .await
            .expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        after = page.last().map(|s| s.value.id.clone());
        seen.extend(page.into_iter().map(|s| (s.value.id, s.position)));
    }
    let want: Vec<(String, Position)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.clone(), at(10 + i as u64)))
        .collect();
    assert_eq!(seen, want);
    // Chunk pages of one resume exactly after the cursor.
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page = w
            .chunk_page(&AsOf::Latest, &DocumentFilter::all(), cursor.as_ref(), 1)
            .await
            .expect("chunk page");
        let Some(last) = page.last() else { break };
        cursor = Some(twin_warehouse::ChunkCursor {
            document_id: last.value.document_id.clone(),
            position: last.value.position,
        });
        keys.extend(
            page.iter()
                .map(|s| (s.value.document_id.clone(), s.value.position)),
        );
    }
    let total: usize = (0..5).map(|i| i % 3 + 1).sum();
    assert_eq!(keys.len(), total, "every live chunk once");
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "in document, then position order");
}

async fn retired_rows_are_not_read(w: Handle) {
    library(&w).await;
    w.delete_document("lib-1", at(40)).await.expect("delete");
    w.replace_chunks("lib-2", &chunks("lib-2", &["only"]), at(41))
        .await
        .expect("replace");
    assert_eq!(
        raw_ids(&w, DocumentFilter::all()).await,
        ["lib-0", "lib-2", "lib-3", "lib-4"]
    );
    let lib2: Vec<String> = scan_chunks(
        w.as_ref(),
        AsOf::Latest,
        DocumentFilter::documents(["lib-2"]),
    )
    .map_ok(|s| s.value.text)
    .try_collect()
    .await
    .expect("scan");
    assert_eq!(lib2, ["only"]);
}

async fn counts_follow_the_filter(w: Handle) {
    library(&w).await;
    let all = w
        .counts(&AsOf::Latest, &DocumentFilter::all())
        .await
        .expect("counts");
    assert_eq!(
        (all.raw, all.cleaned, all.chunks),
        (5, 5, 1 + 2 + 3 + 1 + 2)
    );
    let paul = DocumentFilter {
        author_id: Some("paul".into()),
        ..Default::default()
    };
    let counts = w.counts(&AsOf::Latest, &paul).await.expect("counts");
    assert_eq!(
        (counts.raw, counts.cleaned, counts.chunks),
        (3, 3, 1 + 2 + 1)
    );
}

async fn applied_positions_keep_the_furthest_per_partition(w: Handle) {
    assert!(w.applied().await.expect("applied").is_empty());
    let p = |partition, offset| Position { partition, offset };
    w.record_applied(&[p(0, 4), p(2, 9)]).await.expect("record");
    w.record_applied(&[p(0, 7)]).await.expect("record");
    // A late, older record does not move a partition back.
    w.record_applied(&[p(2, 3)]).await.expect("record");
    assert_eq!(w.applied().await.expect("applied"), [p(0, 7), p(2, 9)]);
    w.drop_all().await.expect("drop");
    w.ensure_schema().await.expect("schema");
    assert!(
        w.applied().await.expect("applied").is_empty(),
        "a rebuild starts from nothing"
    );
}

fn pos(partition: u32, offset: u64) -> Position {
    Position { partition, offset }
}

/// Everything a read `as_of` sees, to compare two reads whole.
#[derive(Debug, PartialEq)]
struct View {
    raw: Vec<(String, String, Position)>,
    cleaned: Vec<(String, String)>,
    chunks: Vec<(String, i32, String, Position)>,
    counts: Counts,
    breakdown: Vec<Breakdown>,
}

async fn view(w: &Handle, as_of: &AsOf) -> View {
    let all = DocumentFilter::all;
    let raw = scan_raw(w.as_ref(), as_of.clone(), all())
        .map_ok(|s| (s.value.id, s.value.content_hash, s.position))
        .try_collect()
        .await
        .expect("raw");
    let cleaned = scan_cleaned(w.as_ref(), as_of.clone(), all())
        .map_ok(|s| (s.value.id, s.value.title))
        .try_collect()
        .await
        .expect("cleaned");
    let chunks = scan_chunks(w.as_ref(), as_of.clone(), all())
        .map_ok(|s| {
            (
                s.value.document_id,
                s.value.position,
                s.value.text,
                s.position,
            )
        })
        .try_collect()
        .await
        .expect("chunks");
    View {
        raw,
        cleaned,
        chunks,
        counts: w.counts(as_of, &all()).await.expect("counts"),
        breakdown: w.breakdown(as_of).await.expect("breakdown"),
    }
}

/// A document, its cleaned form and its chunks, as the stream worker writes them for one event.
async fn project(w: &Handle, doc: &RawDocument, texts: &[&str], at: Position) {
    w.put_raw(doc, at).await.expect("raw");
    w.put_cleaned(&cleaned(doc), at).await.expect("cleaned");
    w.replace_chunks(&doc.id, &chunks(&doc.id, texts), at)
        .await
        .expect("chunks");
    w.record_applied(&[at]).await.expect("applied");
}

async fn a_snapshot_reads_what_was_applied_at_its_positions(w: Handle) {
    project(&w, &raw("doc-a", "Alpha one."), &["a1", "a2"], pos(0, 1)).await;
    project(&w, &raw("doc-b", "Beta one."), &["b1"], pos(1, 1)).await;
    project(&w, &raw("doc-c", "Gamma one."), &["c1"], pos(1, 2)).await;
    let snapshot = Snapshot::new(w.applied().await.expect("applied"), Some("s".into()), 1);
    assert_eq!(snapshot.positions, [pos(0, 1), pos(1, 2)]);
    let before = view(&w, &snapshot.as_of()).await;
    assert_eq!(before, view(&w, &AsOf::Latest).await, "nothing newer yet");
    assert_eq!(before.counts.chunks, 4);
    assert_eq!(
        before.breakdown,
        [Breakdown {
            author_id: "paul".into(),
            kind: "article".into(),
            platform: "substack".into(),
            documents: 3,
            chunks: 4
        }]
    );

    // Afterwards: an edit, a tombstone, a new document, a document cleaned again by an event
    // of another partition, and a redelivery of an old event.
    let mut edited = raw("doc-a", "Alpha two.");
    edited.title = "Edited".into();
    project(&w, &edited, &["a1", "a2 changed", "a3"], pos(0, 5)).await;
    w.delete_document("doc-b", pos(1, 6)).await.expect("delete");
    project(&w, &raw("doc-d", "Delta."), &["d1"], pos(1, 7)).await;
    let mut recleaned = cleaned(&raw("doc-c", "Gamma one."));
    recleaned.title = "Cleaned again".into();
    w.put_cleaned(&recleaned, pos(0, 8)).await.expect("reclean");
    w.replace_chunks("doc-c", &chunks("doc-c", &["c1 again"]), pos(0, 8))
        .await
        .expect("reclean chunks");
    project(&w, &raw("doc-a", "Alpha one."), &["a1", "a2"], pos(0, 1)).await;

    assert_eq!(
        view(&w, &snapshot.as_of()).await,
        before,
        "the snapshot did not move"
    );
    let now = view(&w, &AsOf::Latest).await;
    let ids: Vec<&str> = now.raw.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, ["doc-a", "doc-c", "doc-d"]);
    let titles: Vec<&str> = now.cleaned.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(titles, ["Edited", "Cleaned again", "Title of doc-d"]);
    let texts: Vec<&str> = now.chunks.iter().map(|c| c.2.as_str()).collect();
    assert_eq!(texts, ["a1", "a2 changed", "a3", "c1 again", "d1"]);
    // An unchanged chunk keeps the version (and position) every snapshot saw.
    assert_eq!(now.chunks[0].3, pos(0, 1));

    // A snapshot of no partition sees nothing; one of partition 1 only sees its documents.
    assert_eq!(
        view(&w, &AsOf::Positions(vec![])).await.counts,
        Counts::default()
    );
    let one = view(&w, &AsOf::Positions(vec![pos(1, 1)])).await;
    assert_eq!(one.raw.len(), 1);
    assert_eq!(one.raw[0].0, "doc-b");
}

async fn the_newest_cleaning_again_wins_and_earlier_snapshots_keep_theirs(w: Handle) {
    project(&w, &raw("doc-a", "One."), &["a1", "a2"], pos(0, 1)).await;
    let pinned = AsOf::Positions(vec![pos(0, 1), pos(1, 2)]);
    let before = view(&w, &pinned).await;
    let again = |title: &str| CleanedDocument {
        title: title.into(),
        ..cleaned(&raw("doc-a", "One."))
    };
    let titles = |v: &View| v.cleaned.iter().map(|c| c.1.clone()).collect::<Vec<_>>();
    let texts = |v: &View| v.chunks.iter().map(|c| c.2.clone()).collect::<Vec<_>>();
    w.put_recleaned(
        &again("First"),
        &chunks("doc-a", &["a1", "a2 first"]),
        pos(1, 5),
    )
    .await
    .expect("reclean");
    // A batch redelivered after a crash cleans again with what it has seen since, its cause
    // possibly earlier: the newest cleaning wins all the same.
    w.put_recleaned(
        &again("Second"),
        &chunks("doc-a", &["a1", "a2 second"]),
        pos(1, 3),
    )
    .await
    .expect("reclean");
    let now = view(&w, &AsOf::Latest).await;
    assert_eq!(titles(&now), ["Second"]);
    assert_eq!(texts(&now), ["a1", "a2 second"]);
    w.put_recleaned(
        &again("Third"),
        &chunks("doc-a", &["a1", "a2 first"]),
        pos(1, 5),
    )
    .await
    .expect("same cause");
    let now = view(&w, &AsOf::Latest).await;
    assert_eq!(titles(&now), ["Third"]);
    assert_eq!(texts(&now), ["a1", "a2 first"]);
    // The raw document did not change; what was pinned before the cleaning did not move.
    assert_eq!(now.raw, before.raw);
    assert_eq!(view(&w, &pinned).await, before);
}

async fn compaction_keeps_what_kept_snapshots_see(w: Handle) {
    project(&w, &raw("doc-a", "One."), &["a1", "a2"], pos(0, 1)).await;
    project(&w, &raw("doc-b", "Bee."), &["b1"], pos(0, 2)).await;
    project(&w, &raw("doc-a", "Two."), &["a1", "a2 two"], pos(0, 3)).await;
    w.delete_document("doc-b", pos(0, 4)).await.expect("delete");
    w.record_applied(&[pos(0, 4)]).await.expect("applied");
    let kept = AsOf::Positions(vec![pos(0, 4)]);
    project(&w, &raw("doc-a", "Three."), &["a1", "a2 three"], pos(0, 5)).await;
    let older = AsOf::Positions(vec![pos(0, 2)]);
    assert_eq!(view(&w, &older).await.counts.raw, 2);

    let (at_kept, latest) = (view(&w, &kept).await, view(&w, &AsOf::Latest).await);
    let removed = w.compact(&[pos(0, 4)]).await.expect("compact");
    // doc-a: raw and cleaned at offset 1; doc-b: raw and cleaned at 2 and their retirements.
    assert_eq!(removed.documents, 6, "{removed:?}");
    // doc-a: a2 at 1 and its retirement at 3 (a1 is unchanged and kept); doc-b: b1 and its
    // retirement.
    assert_eq!(removed.chunks, 4, "{removed:?}");
    assert_eq!(view(&w, &kept).await, at_kept);
    assert_eq!(view(&w, &AsOf::Latest).await, latest);
    assert_eq!(
        w.compact(&[pos(0, 4)]).await.expect("again"),
        Compaction::default(),
        "nothing left to remove"
    );
}

async fn snapshots_and_datasets_are_kept_across_a_rebuild(w: Handle) {
    let first = Snapshot::new(vec![pos(0, 3)], Some("first".into()), 10);
    let second = Snapshot::new(vec![pos(0, 9), pos(1, 2)], None, 20);
    w.put_snapshot(&second).await.expect("put");
    w.put_snapshot(&first).await.expect("put");
    assert_eq!(
        w.snapshots().await.expect("list"),
        [first.clone(), second.clone()]
    );
    assert_eq!(
        find_snapshot(w.as_ref(), "first").await.expect("find"),
        Some(first.clone())
    );

    let dataset = DatasetRecord {
        id: "d-1".into(),
        name: Some("small".into()),
        kind: "instruct".into(),
        snapshot_id: Some(first.id.clone()),
        created_at: 30,
        metadata: r#"{"seed":1}"#.into(),
    };
    let sample = |split: &str, index: u32, body: &str| SampleRow {
        split: split.into(),
        index,
        body: body.into(),
    };
    w.put_dataset(
        &dataset,
        &[
            sample("train", 0, "a"),
            sample("train", 1, "b"),
            sample("test", 0, "c"),
        ],
    )
    .await
    .expect("dataset");
    // Built again: the new samples replace the old, never mix with them.
    w.put_dataset(&dataset, &[sample("train", 0, "x"), sample("test", 0, "y")])
        .await
        .expect("again");
    w.drop_all().await.expect("drop");
    w.ensure_schema().await.expect("schema");
    assert_eq!(w.datasets().await.expect("datasets"), [dataset]);
    assert_eq!(
        w.dataset_samples("d-1").await.expect("samples"),
        [sample("test", 0, "y"), sample("train", 0, "x")]
    );
    assert_eq!(w.snapshots().await.expect("list").len(), 2);

    assert!(w.delete_dataset("d-1").await.expect("delete"));
    assert!(!w.delete_dataset("d-1").await.expect("again"));
    assert!(w.datasets().await.expect("datasets").is_empty());
    assert!(w.dataset_samples("d-1").await.expect("samples").is_empty());
    assert!(w.delete_snapshot(&first.id).await.expect("delete"));
    assert_eq!(w.snapshots().await.expect("list"), [second]);
}

async fn runs_keep_their_newest_record_and_a_step_written_again_replaces_the_old(w: Handle) {
    let mut run = RunRecord {
        id: "r-0001".into(),
        name: Some("first".into()),
        status: "running".into(),
        created_at: 10,
        updated_at: 10,
        body: r#"{"method":"lora"}"#.into(),
    };
    w.put_run(&run).await.expect("put");
    run.status = "finished".into();
    run.updated_at = 20;
    w.put_run(&run).await.expect("update");
    let metric = |kind: &str, step: u64, loss: f64| MetricRow {
        run_id: "r-0001".into(),
        kind: kind.into(),
        step,
        body: format!(r#"{{"loss":{loss}}}"#),
    };
    w.put_run_metrics(&[
        metric("train", 1, 3.0),
        metric("train", 2, 2.5),
        metric("eval", 2, 2.9),
    ])
    .await
    .expect("metrics");
    // A resumed run writes step 2 again: the new value replaces the old.
    w.put_run_metrics(&[metric("train", 2, 2.4), metric("train", 3, 2.0)])
        .await
        .expect("again");
    w.drop_all().await.expect("drop");
    w.ensure_schema().await.expect("schema");
    assert_eq!(w.runs().await.expect("runs"), [run.clone()]);
    assert_eq!(
        find_run(w.as_ref(), "first").await.expect("find"),
        Some(run.clone())
    );
    assert_eq!(
        w.run_metrics("r-0001").await.expect("metrics"),
        [
            metric("eval", 2, 2.9),
            metric("train", 1, 3.0),
            metric("train", 2, 2.4),
            metric("train", 3, 2.0)
        ]
    );
    assert!(w.delete_run("r-0001").await.expect("delete"));
    assert!(!w.delete_run("r-0001").await.expect("again"));
    assert!(w.runs().await.expect("runs").is_empty());
    assert!(w.run_metrics("r-0001").await.expect("metrics").is_empty());
}

async fn traces_are_kept_newest_first_and_survive_a_rebuild(w: Handle) {
    let trace = |id: &str, at: i64| TraceRow {
        id: id.into(),
        created_at: at,
        route: "/rag".into(),
        model: "twin@v1".into(),
        body: format!(r#"{{"query":"q{id}"}}"#),
    };
    w.put_traces(&[trace("t-1", 100), trace("t-2", 200), trace("t-3", 300)])
        .await
        .expect("put");
    // Stored again (a retried write): no duplicate.
    w.put_traces(&[trace("t-2", 200)]).await.expect("again");
    w.drop_all().await.expect("drop");
    w.ensure_schema().await.expect("schema");
    assert_eq!(
        w.traces(0, 10).await.expect("traces"),
        [trace("t-3", 300), trace("t-2", 200), trace("t-1", 100)]
    );
    assert_eq!(w.traces(150, 1).await.expect("since"), [trace("t-3", 300)]);
    assert_eq!(
        find_trace(w.as_ref(), "t-1").await.expect("find"),
        Some(trace("t-1", 100))
    );
    assert_eq!(find_trace(w.as_ref(), "t-").await.expect("ambiguous"), None);
}

twin_testkit::contract_suite! {
    backends: [embedded, clickhouse],
    tests: [
        documents_round_trip_with_their_log_position,
        writes_are_idempotent,
        a_changed_document_leaves_no_stale_chunk,
        a_tombstone_removes_the_document_and_its_chunks,
        drop_all_empties_the_warehouse_for_a_rebuild,
        scans_filter_by_author_kind_platform_time_and_ids,
        scans_page_through_everything_once_in_order_with_positions,
        retired_rows_are_not_read,
        counts_follow_the_filter,
        applied_positions_keep_the_furthest_per_partition,
        a_snapshot_reads_what_was_applied_at_its_positions,
        compaction_keeps_what_kept_snapshots_see,
        snapshots_and_datasets_are_kept_across_a_rebuild,
        the_newest_cleaning_again_wins_and_earlier_snapshots_keep_theirs,
        runs_keep_their_newest_record_and_a_step_written_again_replaces_the_old,
        traces_are_kept_newest_first_and_survive_a_rebuild,
    ],
}

#[tokio::test]
async fn a_warehouse_of_an_older_layout_asks_for_a_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("warehouse.sqlite");
    // The layout before versions were kept: no author column, no user_version.
    old_layout(&path);
    let warehouse = SqliteWarehouse::open(&path).expect("open");
    let err = warehouse.ensure_schema().await.expect_err("refused");
    assert!(
        matches!(err, WarehouseError::SchemaVersion { found: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("twin stream --rebuild"), "{err}");
    // After a rebuild's drop, the new layout is made.
    warehouse.drop_all().await.expect("drop");
    warehouse.ensure_schema().await.expect("schema");
}

fn old_layout(path: &std::path::Path) {
    let connection = rusqlite::Connection::open(path).expect("sqlite");
    connection
        .execute_batch("CREATE TABLE raw_documents (id TEXT PRIMARY KEY, body TEXT)")
        .expect("old table");
}
