//! The warehouse contract: one suite, run against the embedded SQLite warehouse and against a
//! real ClickHouse server (started by `twin_stream::warehouse::testkit`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use twin_config::ClickHouseConfig;
use twin_schemas::{content_hash, Author, Chunk, ContentBlock, DocumentKind, RawDocument};
use twin_stream::warehouse::{ClickHouseWarehouse, LogPosition, SqliteWarehouse, Warehouse};
use twin_stream::{chunk_id, clean};

struct Backend {
    warehouse: Arc<dyn Warehouse>,
    _dir: Option<tempfile::TempDir>,
}

async fn embedded() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = SqliteWarehouse::open(&dir.path().join("warehouse.sqlite")).expect("open");
    warehouse.ensure_schema().await.expect("schema");
    Backend {
        warehouse: Arc::new(warehouse),
        _dir: Some(dir),
    }
}

async fn clickhouse() -> Backend {
    static N: AtomicU32 = AtomicU32::new(0);
    let server = twin_stream::warehouse::testkit::clickhouse().unwrap_or_else(|e| panic!("{e}"));
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
    Backend {
        warehouse: Arc::new(warehouse),
        _dir: None,
    }
}

fn raw(id: &str, text: &str) -> RawDocument {
    let content = vec![ContentBlock::paragraph(text)];
    RawDocument {
        id: id.into(),
        kind: DocumentKind::Article,
        platform: "substack".into(),
        author: Author {
            id: "paul".into(),
            full_name: "Paul".into(),
        },
        url: format!("https://x.substack.com/p/{id}"),
        title: format!("Title of {id}"),
        published_at: Some(1_700_000_000_000),
        crawled_at: 1_764_000_000_000,
        content_hash: content_hash(&content),
        content,
        metadata: BTreeMap::from([("subtitle".to_string(), "sub".to_string())]),
    }
}

fn chunks(document_id: &str, texts: &[&str]) -> Vec<Chunk> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| Chunk {
            id: chunk_id(document_id, i as i32, text),
            document_id: document_id.into(),
            kind: DocumentKind::Article,
            platform: "substack".into(),
            author: Author {
                id: "paul".into(),
                full_name: "Paul".into(),
            },
            url: format!("https://x.substack.com/p/{document_id}"),
            title: "t".into(),
            published_at: None,
            position: i as i32,
            text: text.to_string(),
            token_count: 3,
            document_hash: "h".into(),
            chunked_at: 1,
        })
        .collect()
}

fn at(offset: u64) -> LogPosition {
    LogPosition {
        partition: 1,
        offset,
    }
}

fn texts(stored: &[twin_stream::warehouse::StoredChunk]) -> Vec<String> {
    stored.iter().map(|s| s.chunk.text.clone()).collect()
}

async fn documents_round_trip_with_their_log_position(w: Arc<dyn Warehouse>) {
    let doc = raw("doc-a", "Hello 𝗯𝗼𝗹𝗱 world.");
    w.put_raw(&doc, at(5)).await.expect("put raw");
    assert_eq!(w.raw("doc-a").await.expect("get"), Some(doc.clone()));
    let cleaned = clean(&doc, 9);
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

async fn writes_are_idempotent(w: Arc<dyn Warehouse>) {
    let doc = raw("doc-b", "Same event twice.");
    for _ in 0..3 {
        w.put_raw(&doc, at(7)).await.expect("put");
        w.replace_chunks("doc-b", &chunks("doc-b", &["x", "y"]), at(7))
            .await
            .expect("chunks");
    }
    let counts = w.counts().await.expect("counts");
    assert_eq!((counts.raw, counts.chunks), (1, 2));
}

async fn a_changed_document_leaves_no_stale_chunk(w: Arc<dyn Warehouse>) {
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
    assert_eq!(w.counts().await.expect("counts").chunks, 2);
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

async fn a_tombstone_removes_the_document_and_its_chunks(w: Arc<dyn Warehouse>) {
    let doc = raw("doc-d", "Soon gone.");
    w.put_raw(&doc, at(3)).await.expect("raw");
    w.put_cleaned(&clean(&doc, 1), at(3))
        .await
        .expect("cleaned");
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
    let counts = w.counts().await.expect("counts");
    assert_eq!((counts.raw, counts.cleaned, counts.chunks), (1, 0, 0));
    // The document can come back later.
    w.put_raw(&doc, at(9)).await.expect("back");
    assert!(w.raw("doc-d").await.expect("raw").is_some());
}

async fn drop_all_empties_the_warehouse_for_a_rebuild(w: Arc<dyn Warehouse>) {
    w.put_raw(&raw("doc-f", "x"), at(1)).await.expect("raw");
    w.drop_all().await.expect("drop");
    w.ensure_schema().await.expect("schema again");
    assert_eq!(w.counts().await.expect("counts").raw, 0);
}

macro_rules! contract_suite {
    ($backend:ident: $($test:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let backend = super::$backend().await;
                    super::$test(backend.warehouse.clone()).await;
                }
            )*
        }
    };
}

macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        contract_suite!(embedded: $($test),*);
        contract_suite!(clickhouse: $($test),*);
    };
}

contract!(
    documents_round_trip_with_their_log_position,
    writes_are_idempotent,
    a_changed_document_leaves_no_stale_chunk,
    a_tombstone_removes_the_document_and_its_chunks,
    drop_all_empties_the_warehouse_for_a_rebuild,
);
