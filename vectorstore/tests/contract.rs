//! The vector store contract: one suite, run against Qdrant Edge and against a real Qdrant
//! server (started by `twin_testkit::qdrant` from the official binary; where no binary is found,
//! the server half says it is skipped and why, except under CI, where it must run).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use twin_config::QdrantConfig;
use twin_schemas::{Author, Chunk, ChunkId, DocumentKind, EmbeddedChunk};
use twin_testkit::Backend;
use twin_vectorstore::{
    EdgeVectorStore, QdrantVectorStore, SearchFilter, VectorStore, VectorStoreError,
};

fn chunk_id(document: &str, position: i32) -> String {
    ChunkId::new(document, position, "").into()
}

const DIM: usize = 8;

type Handle = Arc<dyn VectorStore>;

fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}_{}_",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn edge() -> Option<Backend<Handle>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EdgeVectorStore::open(dir.path().join("vectors"), &unique()).expect("open");
    store.ensure_collections(DIM).await.expect("collections");
    Some(Backend::with_guard(Arc::new(store), dir))
}

async fn qdrant() -> Option<Backend<Handle>> {
    let server = twin_testkit::qdrant::qdrant_or_skip(
        "the Qdrant server half of the vector-store contract",
    )?;
    let config = QdrantConfig {
        url: server.grpc_url.clone(),
        api_key: String::new(),
    };
    let store = QdrantVectorStore::connect(&config, &unique()).expect("connect");
    store.ensure_collections(DIM).await.expect("collections");
    Some(Backend::new(Arc::new(store)))
}

/// A unit vector pointing mostly along axis `axis`.
fn unit(axis: usize, wobble: f32) -> Vec<f32> {
    let mut v = [wobble; DIM];
    v[axis % DIM] = 1.0;
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

fn point(
    document: &str,
    position: i32,
    author: &str,
    platform: &str,
    axis: usize,
) -> EmbeddedChunk {
    EmbeddedChunk {
        chunk: Chunk {
            id: chunk_id(document, position),
            document_id: document.into(),
            kind: DocumentKind::Article,
            platform: platform.into(),
            author: Author {
                id: author.into(),
                full_name: format!("{author} full"),
            },
            url: format!("https://{platform}.example/{document}"),
            title: format!("title {document}"),
            published_at: Some(1_700_000_000_000),
            position,
            text: format!("text {document} {position}"),
            token_count: 4,
            document_hash: "h".into(),
            chunked_at: 1,
        },
        model_id: "test-model".into(),
        dimension: DIM as i32,
        embedding: unit(axis, 0.05),
        embedded_at: 1,
    }
}

fn only(document: &str) -> SearchFilter {
    SearchFilter {
        document_id: Some(document.into()),
        ..Default::default()
    }
}

async fn points_are_searchable_with_their_payload(s: Arc<dyn VectorStore>) {
    s.replace_document(
        DocumentKind::Article,
        "d1",
        &[
            point("d1", 0, "paul", "medium", 0),
            point("d1", 1, "paul", "medium", 1),
        ],
    )
    .await
    .expect("replace");
    let hits = s
        .search(
            DocumentKind::Article,
            &unit(1, 0.0),
            5,
            &SearchFilter::default(),
        )
        .await
        .expect("search");
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].payload.text, "text d1 1", "nearest first");
    assert!(hits[0].score > 0.95 && hits[0].score > hits[1].score);
    let p = &hits[0].payload;
    assert_eq!(
        (
            p.document_id.as_str(),
            p.author_id.as_str(),
            p.platform.as_str(),
            p.position
        ),
        ("d1", "paul", "medium", 1)
    );
    assert_eq!(p.url, "https://medium.example/d1");
    assert_eq!(p.published_at, Some(1_700_000_000_000));
    // Other kinds have their own collections.
    assert!(s
        .search(
            DocumentKind::Post,
            &unit(1, 0.0),
            5,
            &SearchFilter::default()
        )
        .await
        .expect("posts")
        .is_empty());
}

async fn filters_select_by_author_platform_and_document(s: Arc<dyn VectorStore>) {
    s.replace_document(
        DocumentKind::Article,
        "a",
        &[point("a", 0, "paul", "medium", 2)],
    )
    .await
    .expect("a");
    s.replace_document(
        DocumentKind::Article,
        "b",
        &[point("b", 0, "maxime", "substack", 2)],
    )
    .await
    .expect("b");
    let by_author = SearchFilter {
        author_id: Some("maxime".into()),
        ..Default::default()
    };
    let hits = s
        .search(DocumentKind::Article, &unit(2, 0.0), 10, &by_author)
        .await
        .expect("search");
    assert_eq!(
        hits.iter()
            .map(|h| h.payload.document_id.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    let by_platform = SearchFilter {
        platform: Some("medium".into()),
        ..Default::default()
    };
    assert_eq!(
        s.count(DocumentKind::Article, &by_platform)
            .await
            .expect("count"),
        1
    );
    assert_eq!(
        s.count(DocumentKind::Article, &SearchFilter::default())
            .await
            .expect("count"),
        2
    );
    // Publication range: `b` published a day after `a`.
    let mut later = point("b", 1, "maxime", "substack", 3);
    later.chunk.published_at = Some(1_700_086_400_000);
    s.replace_document(DocumentKind::Article, "b", &[later])
        .await
        .expect("b again");
    let published = |after: Option<i64>, before: Option<i64>| SearchFilter {
        published_after: after,
        published_before: before,
        ..Default::default()
    };
    let found = |filter: SearchFilter| {
        let s = s.clone();
        async move {
            let mut ids: Vec<String> = s
                .search(DocumentKind::Article, &unit(2, 0.0), 10, &filter)
                .await
                .expect("search")
                .into_iter()
                .map(|h| h.payload.document_id)
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(found(published(Some(1_700_000_000_001), None)).await, ["b"]);
    assert_eq!(found(published(None, Some(1_700_000_000_000))).await, ["a"]);
    assert_eq!(
        found(published(Some(1_700_000_000_000), Some(1_700_086_400_000))).await,
        ["a", "b"]
    );
    assert!(found(published(Some(1_800_000_000_000), None))
        .await
        .is_empty());
}

async fn replacing_a_document_leaves_no_stale_point(s: Arc<dyn VectorStore>) {
    let v1: Vec<_> = (0..4)
        .map(|i| point("doc", i, "paul", "medium", i as usize))
        .collect();
    s.replace_document(DocumentKind::Article, "doc", &v1)
        .await
        .expect("v1");
    let v2: Vec<_> = (10..12)
        .map(|i| point("doc", i, "paul", "medium", i as usize))
        .collect();
    s.replace_document(DocumentKind::Article, "doc", &v2)
        .await
        .expect("v2");
    assert_eq!(
        s.count(DocumentKind::Article, &only("doc"))
            .await
            .expect("count"),
        2
    );
    // Idempotent: the same replacement again changes nothing.
    s.replace_document(DocumentKind::Article, "doc", &v2)
        .await
        .expect("again");
    assert_eq!(
        s.count(DocumentKind::Article, &only("doc"))
            .await
            .expect("count"),
        2
    );
    let hits = s
        .search(DocumentKind::Article, &unit(0, 0.0), 10, &only("doc"))
        .await
        .expect("search");
    assert!(
        hits.iter().all(|h| h.payload.position >= 10),
        "no chunk of the old version"
    );
}

async fn a_tombstone_removes_every_point_of_the_document(s: Arc<dyn VectorStore>) {
    s.replace_document(
        DocumentKind::Article,
        "gone",
        &[point("gone", 0, "paul", "medium", 3)],
    )
    .await
    .expect("a");
    let mut post = point("gone", 1, "paul", "linkedin", 4);
    post.chunk.kind = DocumentKind::Post;
    s.replace_document(DocumentKind::Post, "gone", &[post])
        .await
        .expect("post");
    s.replace_document(
        DocumentKind::Article,
        "kept",
        &[point("kept", 0, "paul", "medium", 3)],
    )
    .await
    .expect("kept");
    s.delete_document("gone").await.expect("delete");
    assert_eq!(
        s.count(DocumentKind::Article, &only("gone"))
            .await
            .expect("count"),
        0
    );
    assert_eq!(
        s.count(DocumentKind::Post, &only("gone"))
            .await
            .expect("count"),
        0
    );
    assert_eq!(
        s.count(DocumentKind::Article, &only("kept"))
            .await
            .expect("count"),
        1
    );
}

async fn drop_all_empties_the_store_for_a_rebuild(s: Arc<dyn VectorStore>) {
    s.replace_document(
        DocumentKind::Article,
        "x",
        &[point("x", 0, "paul", "medium", 5)],
    )
    .await
    .expect("x");
    s.drop_all().await.expect("drop");
    s.ensure_collections(DIM).await.expect("again");
    assert_eq!(
        s.count(DocumentKind::Article, &SearchFilter::default())
            .await
            .expect("count"),
        0
    );
}

twin_testkit::contract_suite! {
    backends: [edge, qdrant],
    tests: [
        points_are_searchable_with_their_payload,
        filters_select_by_author_platform_and_document,
        replacing_a_document_leaves_no_stale_point,
        a_tombstone_removes_every_point_of_the_document,
        drop_all_empties_the_store_for_a_rebuild,
    ],
}

#[tokio::test]
async fn the_embedded_store_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = EdgeVectorStore::open(dir.path().to_path_buf(), "p_").expect("open");
        store.ensure_collections(DIM).await.expect("collections");
        store
            .replace_document(
                DocumentKind::Article,
                "d",
                &[point("d", 0, "paul", "medium", 6)],
            )
            .await
            .expect("write");
    }
    let store = EdgeVectorStore::open(dir.path().to_path_buf(), "p_").expect("open");
    store.ensure_collections(DIM).await.expect("reopen");
    let hits = store
        .search(
            DocumentKind::Article,
            &unit(6, 0.0),
            1,
            &SearchFilter::default(),
        )
        .await
        .expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].payload.document_id, "d");
}

#[tokio::test]
async fn a_second_opener_of_an_embedded_store_is_refused_until_the_first_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = EdgeVectorStore::open(dir.path().to_path_buf(), "p_").expect("open");
    first.ensure_collections(DIM).await.expect("collections");
    match EdgeVectorStore::open(dir.path().to_path_buf(), "p_") {
        Err(e @ VectorStoreError::Locked { .. }) => {
            let message = e.to_string();
            assert!(message.contains("in use by another process"), "{message}");
            assert!(
                message.contains(&std::process::id().to_string()),
                "names the holder: {message}"
            );
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a second store opened the same folder"),
    }
    drop(first);
    EdgeVectorStore::open(dir.path().to_path_buf(), "p_").expect("free again once dropped");
}

#[tokio::test]
async fn a_collection_whose_creation_a_crash_cut_short_opens_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    // What a kill between the shard's folders and its first segment leaves behind.
    std::fs::create_dir_all(dir.path().join("p_articles/segments")).expect("folders");
    let store = EdgeVectorStore::open(dir.path().to_path_buf(), "p_").expect("open");
    store
        .ensure_collections(DIM)
        .await
        .expect("opens as an empty collection");
    assert_eq!(
        store
            .count(DocumentKind::Article, &SearchFilter::default())
            .await
            .expect("count"),
        0
    );
    store
        .replace_document(
            DocumentKind::Article,
            "d",
            &[point("d", 0, "paul", "medium", 2)],
        )
        .await
        .expect("write");
    let filter = SearchFilter {
        author_id: Some("paul".into()),
        ..Default::default()
    };
    assert_eq!(
        store
            .count(DocumentKind::Article, &filter)
            .await
            .expect("count"),
        1,
        "writes and filtered reads work"
    );
}

/// Processes that start together (serve replicas beside a stream worker) each make sure the
/// collections exist, at the same moment: all of them succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_starting_together_on_one_qdrant_server_all_get_their_collections() {
    let Some(server) = twin_testkit::qdrant::qdrant_or_skip("concurrent collection creation")
    else {
        return;
    };
    let config = QdrantConfig {
        url: server.grpc_url.clone(),
        api_key: String::new(),
    };
    let prefix = unique();
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let store = QdrantVectorStore::connect(&config, &prefix).expect("connect");
            tokio::spawn(async move { store.ensure_collections(DIM).await })
        })
        .collect();
    for started in starts {
        started
            .await
            .expect("task")
            .expect("every store gets its collections");
    }
}
