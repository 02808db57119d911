//! A stream worker killed with SIGKILL in the middle of a replay, then restarted, ends with
//! exactly the chunks and points of an uninterrupted run: none missing, none duplicated.
//!
//! The documents are the 76 real articles of `../shared/corpus/articles.json` when that file is
//! there (it is in CI), else 76 generated articles of the same shape, so the test also runs
//! outside this workplace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use twin_config::TwinConfig;
use twin_eventlog::{publish, EmbeddedLog};
use twin_schemas::{
    content_hash, document_id, Author, ContentBlock, DocumentKind, Event, RawDocument,
};
use twin_stream::warehouse::{SqliteWarehouse, Warehouse};
use twin_vectorstore::{EdgeVectorStore, SearchFilter, VectorStore, KINDS};

fn corpus() -> Vec<RawDocument> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/articles.json");
    let articles: Vec<serde_json::Value> = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).expect("corpus json"),
        Err(_) => (0..76)
            .map(|i| {
                let body: Vec<String> = (0..12)
                    .map(|p| format!("Paragraph {p} of article {i} explains streaming pipelines, vector search and fine-tuning in some detail."))
                    .collect();
                serde_json::json!({"content": {"Title": format!("Article {i}"), "Content": body.join("\n\n")},
                                   "platform": "generated", "author_full_name": "Generated Author", "link": format!("https://example.org/{i}")})
            })
            .collect(),
    };
    articles
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let text = a["content"]["Content"].as_str().unwrap_or_default();
            let content: Vec<ContentBlock> = text
                .split("\n\n")
                .filter(|p| !p.trim().is_empty())
                .map(ContentBlock::paragraph)
                .collect();
            let platform = a["platform"].as_str().unwrap_or("web").to_string();
            let url = a["link"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("https://example.org/{i}"));
            RawDocument {
                id: document_id(&platform, &url),
                kind: DocumentKind::Article,
                platform,
                author: Author {
                    id: "author".into(),
                    full_name: a["author_full_name"].as_str().unwrap_or("Author").into(),
                },
                url,
                title: a["content"]["Title"].as_str().unwrap_or("Untitled").into(),
                published_at: None,
                crawled_at: 1_764_000_000_000,
                content_hash: content_hash(&content),
                content,
                metadata: BTreeMap::new(),
            }
        })
        .collect()
}

/// A data folder whose raw-documents topic holds the corpus.
async fn prepared(docs: &[RawDocument]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TwinConfig::default();
    let log = EmbeddedLog::open(dir.path().join("log"), config.log.partitions, false).expect("log");
    let events: Vec<Event> = docs.iter().cloned().map(Event::Raw).collect();
    publish(&log, &config.topics.raw_documents, &events)
        .await
        .expect("publish");
    dir
}

fn stream(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twin"));
    cmd.args(["--data-dir"])
        .arg(data_dir)
        .args(["stream", "--once"])
        .env("RUST_LOG", "warn");
    for (key, _) in std::env::vars() {
        if key.starts_with("TWIN_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Chunk ids per document in the warehouse, and point counts per document in the vector store.
async fn projections(
    data_dir: &Path,
    docs: &[RawDocument],
) -> (BTreeMap<String, Vec<String>>, BTreeMap<String, u64>, u64) {
    let warehouse = SqliteWarehouse::open(&data_dir.join("warehouse.sqlite")).expect("warehouse");
    let vectors = EdgeVectorStore::new(data_dir.join("vectors"), "twin_");
    vectors.ensure_collections(384).await.expect("vectors");
    let mut chunks = BTreeMap::new();
    let mut points = BTreeMap::new();
    for doc in docs {
        let ids: Vec<String> = warehouse
            .chunks(&doc.id)
            .await
            .expect("chunks")
            .into_iter()
            .map(|c| c.chunk.id)
            .collect();
        chunks.insert(doc.id.clone(), ids);
        let filter = SearchFilter {
            document_id: Some(doc.id.clone()),
            ..Default::default()
        };
        points.insert(
            doc.id.clone(),
            vectors
                .count(DocumentKind::Article, &filter)
                .await
                .expect("count"),
        );
    }
    let mut total = 0;
    for kind in KINDS {
        total += vectors
            .count(kind, &SearchFilter::default())
            .await
            .expect("count");
    }
    (chunks, points, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_replay_resumes_to_the_same_result() {
    let docs = corpus();
    assert_eq!(docs.len(), 76);

    // The uninterrupted run.
    let reference = prepared(&docs).await;
    let out = stream(reference.path()).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The interrupted run: SIGKILL once some documents are projected, then a restart.
    let crashed = prepared(&docs).await;
    let mut child = stream(crashed.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let warehouse_file = crashed.path().join("warehouse.sqlite");
    let deadline = Instant::now() + Duration::from_secs(300);
    let projected_before_kill = loop {
        assert!(Instant::now() < deadline, "the worker made no progress");
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the worker finished ({status}) before it could be killed: make the corpus bigger"
            );
        }
        if warehouse_file.exists() {
            if let Ok(w) = SqliteWarehouse::open(&warehouse_file) {
                if let Ok(counts) = w.counts().await {
                    if counts.raw >= 10 {
                        break counts.raw;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(projected_before_kill < 76, "killed mid-replay");
    let out = stream(crashed.path()).output().expect("restart");
    assert!(
        out.status.success(),
        "restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (want_chunks, want_points, want_total) = projections(reference.path(), &docs).await;
    let (got_chunks, got_points, got_total) = projections(crashed.path(), &docs).await;
    assert!(
        want_chunks.values().all(|ids| !ids.is_empty()),
        "every document has chunks"
    );
    assert_eq!(
        got_chunks, want_chunks,
        "the same chunks, document by document"
    );
    assert_eq!(
        got_points, want_points,
        "the same points, document by document"
    );
    assert_eq!(got_total, want_total, "no extra point anywhere");
    let unique: BTreeSet<&String> = got_chunks.values().flatten().collect();
    assert_eq!(
        unique.len(),
        got_chunks.values().map(Vec::len).sum::<usize>(),
        "no duplicated chunk"
    );
    assert_eq!(got_total as usize, unique.len(), "one point per chunk");
}
