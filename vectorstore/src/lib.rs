//! The vector store: embedded chunks that retrieval searches, one collection per kind of
//! document (articles, posts, repositories), each point carrying a payload retrieval can filter
//! on (document id, author, platform, url, title, chunk text and position, published_at).
//!
//! - [`VectorStore`]: the interface, with one contract test suite;
//! - [`edge::EdgeVectorStore`]: Qdrant Edge, Qdrant's engine in-process, under the data folder
//!   (the default), held by one process at a time (a lock file keeps a second one out);
//! - [`server::QdrantVectorStore`]: a Qdrant server through `qdrant-client` (gRPC).
//!
//! Point ids are the chunk ids read as UUIDs, so writes are idempotent upserts. Replacing a
//! document's points first deletes every point of the document, so no stale chunk stays
//! searchable; a tombstone deletes them all.

pub mod edge;
pub mod server;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use twin_config::{VectorStoreBackend, VectorStoreConfig};
use twin_schemas::{DocumentKind, EmbeddedChunk};

pub use edge::EdgeVectorStore;
pub use server::QdrantVectorStore;

/// What can go wrong in the vector store.
#[derive(Debug, thiserror::Error)]
pub enum VectorStoreError {
    /// The store refused or failed an operation.
    #[error("vector store ({backend}): {operation}: {source}")]
    Store {
        /// `edge` or `qdrant`.
        backend: &'static str,
        /// What was being done.
        operation: String,
        /// The engine's or client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
        /// Whether trying again later can help (a server that is unavailable or overloaded).
        retryable: bool,
    },
    /// The embedded store's folder is in use by another process.
    #[error(
        "vector store {path} is in use by another process (pid {holder}): Qdrant Edge opens its \
         store in one process at a time; stop the other `twin` first, or use a Qdrant server \
         (vectors.backend = \"qdrant\") to share one store"
    )]
    Locked {
        /// The store's folder.
        path: std::path::PathBuf,
        /// The process holding it, as it wrote in the lock file ("unknown" if unreadable).
        holder: String,
    },
    /// A file of the embedded store could not be read or written.
    #[error("vector store {path}: {source}")]
    Io {
        /// The file or folder.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A point does not fit the collection (wrong dimension, bad id).
    #[error("vector store: {0}")]
    Invalid(String),
}

impl VectorStoreError {
    /// Whether trying again later can help, as opposed to bad input, a lock held by another
    /// process, or a bug.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            VectorStoreError::Store {
                retryable: true,
                ..
            }
        )
    }
}

/// The payload of every point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkPayload {
    /// The chunk's id.
    pub chunk_id: String,
    /// The document it belongs to.
    pub document_id: String,
    /// Author id.
    pub author_id: String,
    /// Author's full name.
    pub author_name: String,
    /// Source platform.
    pub platform: String,
    /// Canonical url of the document.
    pub url: String,
    /// Title of the document.
    pub title: String,
    /// The chunk's text.
    pub text: String,
    /// Position of the chunk in its document.
    pub position: i32,
    /// When the document was published (ms since the epoch), if known.
    pub published_at: Option<i64>,
    /// The embedding model.
    pub model_id: String,
}

impl ChunkPayload {
    /// The payload of an embedded chunk.
    pub fn of(e: &EmbeddedChunk) -> Self {
        let c = &e.chunk;
        Self {
            chunk_id: c.id.clone(),
            document_id: c.document_id.clone(),
            author_id: c.author.id.clone(),
            author_name: c.author.full_name.clone(),
            platform: c.platform.clone(),
            url: c.url.clone(),
            title: c.title.clone(),
            text: c.text.clone(),
            position: c.position,
            published_at: c.published_at,
            model_id: e.model_id.clone(),
        }
    }
}

/// Filters on payload fields; unset fields do not filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchFilter {
    /// Only this author's chunks.
    pub author_id: Option<String>,
    /// Only this platform's chunks.
    pub platform: Option<String>,
    /// Only this document's chunks.
    pub document_id: Option<String>,
    /// Only chunks of documents published at or after this time (ms since the epoch); a
    /// document without a publication time does not match.
    pub published_after: Option<i64>,
    /// Only chunks of documents published at or before this time (ms since the epoch).
    pub published_before: Option<i64>,
}

impl SearchFilter {
    /// The set conditions as (field, value) pairs, all of which must match.
    pub fn conditions(&self) -> Vec<(&'static str, String)> {
        [
            ("author_id", &self.author_id),
            ("platform", &self.platform),
            ("document_id", &self.document_id),
        ]
        .into_iter()
        .filter_map(|(field, value)| value.clone().map(|v| (field, v)))
        .collect()
    }

    /// The publication range, `(at or after, at or before)`, when one bound is set.
    pub fn published(&self) -> Option<(Option<i64>, Option<i64>)> {
        (self.published_after.is_some() || self.published_before.is_some())
            .then_some((self.published_after, self.published_before))
    }
}

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Cosine similarity to the query.
    pub score: f32,
    /// The chunk's payload.
    pub payload: ChunkPayload,
}

/// The vector store interface.
#[async_trait]
pub trait VectorStore: Send + Sync {
    /// `edge` or `qdrant`.
    fn backend(&self) -> &'static str;

    /// Create the collections (cosine distance, `dimension` values) where missing.
    async fn ensure_collections(&self, dimension: usize) -> Result<(), VectorStoreError>;

    /// Make `points` the document's points in its kind's collection: every earlier point of the
    /// document goes first.
    async fn replace_document(
        &self,
        kind: DocumentKind,
        document_id: &str,
        points: &[EmbeddedChunk],
    ) -> Result<(), VectorStoreError>;

    /// Delete every point of a document, whatever its kind.
    async fn delete_document(&self, document_id: &str) -> Result<(), VectorStoreError>;

    /// The `limit` points of a kind nearest to `vector` that match `filter`, best first.
    async fn search(
        &self,
        kind: DocumentKind,
        vector: &[f32],
        limit: usize,
        filter: &SearchFilter,
    ) -> Result<Vec<Hit>, VectorStoreError>;

    /// Points of a kind that match `filter`.
    async fn count(
        &self,
        kind: DocumentKind,
        filter: &SearchFilter,
    ) -> Result<u64, VectorStoreError>;

    /// Delete every collection (before a rebuild from the log).
    async fn drop_all(&self) -> Result<(), VectorStoreError>;

    /// Make what was written durable (on disk, not only in the process's buffers): the stream
    /// asks before it commits its offsets when `log.embedded.fsync` is on. The Qdrant server
    /// persists on its own: a no-op there.
    async fn flush(&self) -> Result<(), VectorStoreError> {
        Ok(())
    }

    /// Build the search index of what was written (HNSW, merged segments), so that a search
    /// does not scan every point. The Qdrant server does it in the background: a no-op there.
    /// Qdrant Edge does it only when asked: `twin stream` asks when it has caught up, `twin
    /// serve` at start. Returns whether anything was rebuilt.
    async fn optimize(&self) -> Result<bool, VectorStoreError> {
        Ok(false)
    }
}

/// The collection of a kind of document, under `prefix`.
pub fn collection(prefix: &str, kind: DocumentKind) -> String {
    let name = match kind {
        DocumentKind::Article => "articles",
        DocumentKind::Post => "posts",
        DocumentKind::Repository => "repositories",
    };
    format!("{prefix}{name}")
}

/// Every kind of document, one collection each.
pub const KINDS: [DocumentKind; 3] = [
    DocumentKind::Article,
    DocumentKind::Post,
    DocumentKind::Repository,
];

/// A chunk id as the UUID Qdrant takes for a point id.
pub fn point_uuid(chunk_id: &str) -> Result<String, VectorStoreError> {
    twin_schemas::ChunkId::parse(chunk_id)
        .map(|id| id.uuid())
        .map_err(|e| VectorStoreError::Invalid(e.to_string()))
}

/// Open the vector store the configuration names and create its collections.
pub async fn open(
    config: &VectorStoreConfig,
    data_dir: &Path,
    dimension: usize,
) -> Result<Arc<dyn VectorStore>, VectorStoreError> {
    let store: Arc<dyn VectorStore> = match config.backend {
        VectorStoreBackend::Edge => Arc::new(EdgeVectorStore::open(
            twin_config::DataLayout::new(data_dir).vectors(),
            &config.collection_prefix,
        )?),
        VectorStoreBackend::Qdrant => Arc::new(QdrantVectorStore::connect(
            &config.qdrant,
            &config.collection_prefix,
        )?),
    };
    store.ensure_collections(dimension).await?;
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_become_uuids_and_bad_ids_are_refused() {
        assert_eq!(
            point_uuid("0123456789abcdef0123456789abcdef").expect("uuid"),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
        assert!(point_uuid("short").is_err());
    }

    #[test]
    fn filters_list_only_what_is_set() {
        let filter = SearchFilter {
            author_id: Some("paul".into()),
            ..Default::default()
        };
        assert_eq!(filter.conditions(), vec![("author_id", "paul".to_string())]);
        assert!(SearchFilter::default().conditions().is_empty());
    }
}
