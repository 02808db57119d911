//! The warehouse: raw, cleaned and chunked documents, each row with the log position of the
//! event it came from. A projection of the event log, like the vector store: a replay rebuilds
//! it. One interface, two implementations with one contract test suite:
//!
//! - [`sqlite::SqliteWarehouse`]: SQLite under the data folder (the default);
//! - [`clickhouse_store::ClickHouseWarehouse`]: a ClickHouse server.
//!
//! The write side ([`Warehouse::put_raw`], [`Warehouse::replace_chunks`]...) is used by the
//! stream worker. Writes are idempotent upserts keyed by document or chunk id, versioned by the
//! log offset of the event that caused them, so a redelivered event changes nothing and a later
//! event of a document always wins. Replacing a document's chunks retires the chunks it no
//! longer has; a tombstone retires the document and all its chunks.
//!
//! The read side is for training and serving: point reads, streaming scans ([`scan_raw`],
//! [`scan_cleaned`], [`scan_chunks`]) filtered by author, kind, platform, publication time and
//! document ids ([`DocumentFilter`]), counts, and the log positions the warehouse has applied
//! ([`Warehouse::applied`]).
//!
//! History is append-only: every write adds a version of its row, stamped with the log position
//! of the event that caused it, and a read picks the newest version of each row that it may see
//! ([`AsOf`]): the newest of all (what the warehouse holds now), or the newest caused at or before
//! a set of log positions (what it held then). A [`catalog::Snapshot`] is such a set of positions
//! with a name: it costs one row, and what is read through it never changes, whatever is applied
//! afterwards. [`Warehouse::compact`] drops the versions no kept snapshot can see.
//!
//! - [`filter`]: the filters and the version a read sees, and their translation to SQL shared by
//!   both implementations.
//! - [`catalog`]: snapshots, and the datasets built from them, stored beside the projection.

pub mod catalog;
pub mod clickhouse_store;
pub mod filter;
pub mod sqlite;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use twin_config::{DataLayout, WarehouseBackend, WarehouseConfig};
use twin_schemas::{Chunk, CleanedDocument, DocumentKind, RawDocument};

pub use self::catalog::{DatasetRecord, MetricRow, RunRecord, SampleRow, Snapshot, TraceRow};
pub use self::clickhouse_store::ClickHouseWarehouse;
pub use self::filter::{AsOf, DocumentFilter};
pub use self::sqlite::SqliteWarehouse;
pub use twin_schemas::Position;

/// The layout of the tables this build writes. A warehouse made with another layout is refused
/// with a request to rebuild it from the log (`twin stream --rebuild`).
pub const SCHEMA_VERSION: u32 = 3;

/// What can go wrong in the warehouse.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// SQLite refused or failed a statement.
    #[error("warehouse {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The ClickHouse server refused or failed a request.
    #[error("clickhouse: {context}: {source}")]
    ClickHouse {
        /// What was being done.
        context: String,
        /// The client's error.
        source: clickhouse::error::Error,
    },
    /// A folder for the database could not be made.
    #[error("warehouse {path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A row's JSON body could not be written or read back.
    #[error("warehouse row of {table}: {source}")]
    Row {
        /// The table.
        table: &'static str,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The tables were made by a build with another layout.
    #[error(
        "the warehouse's tables have layout version {found}, this build needs {expected}: \
         rebuild it from the log with `twin stream --rebuild`"
    )]
    SchemaVersion {
        /// The layout found.
        found: u32,
        /// The layout this build writes.
        expected: u32,
    },
    /// A setting is not usable (a database name that is not an identifier...).
    #[error("warehouse: {0}")]
    Invalid(String),
    /// A blocking task of the warehouse was cancelled or panicked.
    #[error("warehouse task failed: {0}")]
    Task(String),
}

impl WarehouseError {
    /// Whether trying again later can help: a server that did not answer or timed out, a
    /// database that was busy. Bad input, a bad layout or a bug are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            WarehouseError::ClickHouse { source, .. } => matches!(
                source,
                clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut
            ),
            WarehouseError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            WarehouseError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }
}

/// Result of warehouse operations.
pub type Result<T, E = WarehouseError> = std::result::Result<T, E>;

/// Live rows per table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Live raw documents.
    pub raw: u64,
    /// Live cleaned documents.
    pub cleaned: u64,
    /// Live chunks.
    pub chunks: u64,
}

/// Live documents and chunks of one author, kind and platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breakdown {
    /// The author's id.
    pub author_id: String,
    /// `article`, `post` or `repository`.
    pub kind: String,
    /// The platform.
    pub platform: String,
    /// Cleaned documents.
    pub documents: u64,
    /// Chunks.
    pub chunks: u64,
}

/// What a compaction removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Compaction {
    /// Versions of raw and cleaned documents.
    pub documents: u64,
    /// Versions of chunks.
    pub chunks: u64,
}

/// A row as stored: the value, and where on the log the event that wrote it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<T> {
    /// The document or chunk.
    pub value: T,
    /// The position of the event it came from.
    pub position: Position,
}

/// A chunk as stored.
pub type StoredChunk = Stored<Chunk>;

/// Where a chunk scan resumes: after this chunk (scans run in document id, then position order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkCursor {
    /// The last chunk's document.
    pub document_id: String,
    /// The last chunk's position in it.
    pub position: i32,
}

/// Rows a scan reads per round trip.
pub const SCAN_PAGE: usize = 256;

/// The warehouse interface.
#[async_trait]
pub trait Warehouse: Send + Sync {
    /// `embedded` or `clickhouse`.
    fn backend(&self) -> &'static str;

    /// Create the tables if missing; refuse tables of another layout.
    async fn ensure_schema(&self) -> Result<()>;

    /// Add a version of a raw document, caused by the event at `at`. An event of the document's
    /// partition at or before one already applied changes nothing (a redelivery, or an old
    /// event arriving late).
    async fn put_raw(&self, doc: &RawDocument, at: Position) -> Result<()>;

    /// Add a version of a cleaned document, as [`Warehouse::put_raw`] does.
    async fn put_cleaned(&self, doc: &CleanedDocument, at: Position) -> Result<()>;

    /// Make `chunks` the document's chunks: add versions of the ones that changed, retire the
    /// ones it had and no longer has.
    async fn replace_chunks(&self, document_id: &str, chunks: &[Chunk], at: Position)
        -> Result<()>;

    /// Add versions of a document cleaned again (its source's template changed) and of its
    /// chunks, caused by the event at `at` (the one that changed the template). Unlike an
    /// event's own writes these are not skipped when that event was applied before: cleaning
    /// again is derived from everything seen so far, so the newest cleaning wins (after a crash,
    /// the redelivered batch cleans again, with what it has seen). Unchanged rows stay as they are.
    async fn put_recleaned(
        &self,
        doc: &CleanedDocument,
        chunks: &[Chunk],
        at: Position,
    ) -> Result<()>;

    /// Retire a document: its raw and cleaned rows and all its chunks.
    async fn delete_document(&self, document_id: &str, at: Position) -> Result<()>;

    /// Whether an event after `at` (in its partition) already wrote the document, or deleted
    /// it: then a write for the event at `at` is stale, and the vector store must not get it
    /// (a worker that lost its partitions may still be finishing an old batch).
    async fn superseded(&self, document_id: &str, at: Position) -> Result<bool>;

    /// Remember that every event up to and including these positions is applied.
    async fn record_applied(&self, positions: &[Position]) -> Result<()>;

    /// The last position applied in each partition that has any, by partition.
    async fn applied(&self) -> Result<Vec<Position>>;

    /// A live raw document.
    async fn raw(&self, id: &str) -> Result<Option<RawDocument>>;

    /// A live cleaned document.
    async fn cleaned(&self, id: &str) -> Result<Option<CleanedDocument>>;

    /// A document's live chunks, by position.
    async fn chunks(&self, document_id: &str) -> Result<Vec<StoredChunk>>;

    /// Up to `limit` raw documents seen `as_of`, matching `filter`, with ids after `after`, by id.
    async fn raw_page(
        &self,
        as_of: &AsOf,
        filter: &DocumentFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Stored<RawDocument>>>;

    /// Up to `limit` cleaned documents seen `as_of`, matching `filter`, with ids after `after`.
    async fn cleaned_page(
        &self,
        as_of: &AsOf,
        filter: &DocumentFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Stored<CleanedDocument>>>;

    /// Up to `limit` chunks seen `as_of` of documents matching `filter`, after `after`, by
    /// document id then position.
    async fn chunk_page(
        &self,
        as_of: &AsOf,
        filter: &DocumentFilter,
        after: Option<&ChunkCursor>,
        limit: usize,
    ) -> Result<Vec<StoredChunk>>;

    /// Rows seen `as_of` per table, of the documents matching `filter`.
    async fn counts(&self, as_of: &AsOf, filter: &DocumentFilter) -> Result<Counts>;

    /// Cleaned documents and chunks seen `as_of`, per author, kind and platform.
    async fn breakdown(&self, as_of: &AsOf) -> Result<Vec<Breakdown>>;

    /// Remove the versions that no read at or after `floor` (one position per partition) can
    /// see: every version but the newest caused at or before `floor`, and that one too when it
    /// is a retirement.
    async fn compact(&self, floor: &[Position]) -> Result<Compaction>;

    /// Drop the projection's tables (before a rebuild from the log). Snapshots and datasets
    /// stay: a snapshot names log positions, and a rebuild projects the same log.
    async fn drop_all(&self) -> Result<()>;

    /// Store a snapshot (replacing one with the same id).
    async fn put_snapshot(&self, snapshot: &Snapshot) -> Result<()>;

    /// Every snapshot, oldest first.
    async fn snapshots(&self) -> Result<Vec<Snapshot>>;

    /// Forget a snapshot; whether there was one.
    async fn delete_snapshot(&self, id: &str) -> Result<bool>;

    /// Store a dataset and its samples (replacing one with the same id).
    async fn put_dataset(&self, dataset: &DatasetRecord, samples: &[SampleRow]) -> Result<()>;

    /// Every dataset, oldest first.
    async fn datasets(&self) -> Result<Vec<DatasetRecord>>;

    /// A dataset's samples, by split then index.
    async fn dataset_samples(&self, id: &str) -> Result<Vec<SampleRow>>;

    /// Forget a dataset and its samples; whether there was one.
    async fn delete_dataset(&self, id: &str) -> Result<bool>;

    /// Store a training run's record (replacing an earlier one of the same id).
    async fn put_run(&self, run: &RunRecord) -> Result<()>;

    /// Every training run, oldest first.
    async fn runs(&self) -> Result<Vec<RunRecord>>;

    /// Forget a run and its metrics; false if there was none.
    async fn delete_run(&self, id: &str) -> Result<bool>;

    /// Store metrics of runs (a step stored again replaces the earlier one).
    async fn put_run_metrics(&self, rows: &[MetricRow]) -> Result<()>;

    /// A run's metrics, by kind, then step.
    async fn run_metrics(&self, run_id: &str) -> Result<Vec<MetricRow>>;

    /// Store traces of served requests (a trace stored again replaces the earlier one).
    async fn put_traces(&self, rows: &[TraceRow]) -> Result<()>;

    /// The newest `limit` traces made at or after `since` (ms), newest first.
    async fn traces(&self, since: i64, limit: usize) -> Result<Vec<TraceRow>>;
}

/// One trace by id, or by a unique prefix of it (among the newest 100,000).
pub async fn find_trace(warehouse: &dyn Warehouse, key: &str) -> Result<Option<TraceRow>> {
    let traces = warehouse.traces(0, 100_000).await?;
    Ok(catalog::find(traces, key, |t| (&t.id, None)))
}

/// One snapshot by id, or by a unique prefix of it, or by name.
pub async fn find_snapshot(warehouse: &dyn Warehouse, key: &str) -> Result<Option<Snapshot>> {
    let all = warehouse.snapshots().await?;
    Ok(catalog::find(all, key, |s| (&s.id, s.name.as_deref())))
}

/// One training run by id, or by a unique prefix of it, or by name.
pub async fn find_run(warehouse: &dyn Warehouse, key: &str) -> Result<Option<RunRecord>> {
    Ok(catalog::find(warehouse.runs().await?, key, |r| {
        (&r.id, r.name.as_deref())
    }))
}

/// One dataset by id, or by a unique prefix of it, or by name.
pub async fn find_dataset(warehouse: &dyn Warehouse, key: &str) -> Result<Option<DatasetRecord>> {
    let all = warehouse.datasets().await?;
    Ok(catalog::find(all, key, |d| (&d.id, d.name.as_deref())))
}

/// Every raw document seen `as_of` matching `filter`, by id, read a page at a time.
pub fn scan_raw(
    warehouse: &dyn Warehouse,
    as_of: AsOf,
    filter: DocumentFilter,
) -> BoxStream<'_, Result<Stored<RawDocument>>> {
    pages(move |after: Option<String>| {
        let (as_of, filter) = (as_of.clone(), filter.clone());
        async move {
            let page = warehouse
                .raw_page(&as_of, &filter, after.as_deref(), SCAN_PAGE)
                .await?;
            let next = page.last().map(|s| s.value.id.clone());
            Ok((page, next))
        }
    })
}

/// Every cleaned document seen `as_of` matching `filter`, by id, read a page at a time.
pub fn scan_cleaned(
    warehouse: &dyn Warehouse,
    as_of: AsOf,
    filter: DocumentFilter,
) -> BoxStream<'_, Result<Stored<CleanedDocument>>> {
    pages(move |after: Option<String>| {
        let (as_of, filter) = (as_of.clone(), filter.clone());
        async move {
            let page = warehouse
                .cleaned_page(&as_of, &filter, after.as_deref(), SCAN_PAGE)
                .await?;
            let next = page.last().map(|s| s.value.id.clone());
            Ok((page, next))
        }
    })
}

/// Every chunk seen `as_of` of the documents matching `filter`, by document then position, read a page
/// at a time.
pub fn scan_chunks(
    warehouse: &dyn Warehouse,
    as_of: AsOf,
    filter: DocumentFilter,
) -> BoxStream<'_, Result<StoredChunk>> {
    pages(move |after: Option<ChunkCursor>| {
        let (as_of, filter) = (as_of.clone(), filter.clone());
        async move {
            let page = warehouse
                .chunk_page(&as_of, &filter, after.as_ref(), SCAN_PAGE)
                .await?;
            let next = page.last().map(|s| ChunkCursor {
                document_id: s.value.document_id.clone(),
                position: s.value.position,
            });
            Ok((page, next))
        }
    })
}

/// A stream over pages: `fetch(cursor)` returns a page and the cursor after it; an empty page
/// ends the scan.
fn pages<'a, T, C, F, Fut>(fetch: F) -> BoxStream<'a, Result<T>>
where
    T: Send + 'a,
    C: Send + 'a,
    F: Fn(Option<C>) -> Fut + Send + 'a,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<C>)>> + Send + 'a,
{
    stream::try_unfold((fetch, None), |(fetch, cursor)| async move {
        let (page, next) = fetch(cursor).await?;
        if page.is_empty() {
            return Ok(None);
        }
        Ok(Some((page, (fetch, next))))
    })
    .map_ok(|page| stream::iter(page.into_iter().map(Ok)))
    .try_flatten()
    .boxed()
}

/// Open the warehouse the configuration names, its tables created.
pub async fn open(config: &WarehouseConfig, data_dir: &Path) -> Result<Arc<dyn Warehouse>> {
    let warehouse: Arc<dyn Warehouse> = match config.backend {
        WarehouseBackend::Embedded => Arc::new(SqliteWarehouse::open(
            &DataLayout::new(data_dir).warehouse(),
        )?),
        WarehouseBackend::ClickHouse => {
            Arc::new(ClickHouseWarehouse::connect(&config.clickhouse).await?)
        }
    };
    warehouse.ensure_schema().await?;
    Ok(warehouse)
}

/// The name a kind of document is stored and filtered under.
pub fn kind_name(kind: DocumentKind) -> &'static str {
    match kind {
        DocumentKind::Article => "article",
        DocumentKind::Post => "post",
        DocumentKind::Repository => "repository",
    }
}

/// A document as a row: the columns filters use, the whole document as JSON in `body`.
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
pub(crate) struct DocumentRow {
    id: String,
    kind: String,
    platform: String,
    author_id: String,
    published_at: Option<i64>,
    url: String,
    content_hash: String,
    body: String,
    log_partition: u32,
    log_offset: u64,
    version: u64,
    deleted: u8,
}

/// The columns of a document table, in [`DocumentRow`]'s order.
pub(crate) const DOCUMENT_COLUMNS: &str =
    "id, kind, platform, author_id, published_at, url, content_hash, body, log_partition, log_offset, version, deleted";

impl DocumentRow {
    fn raw(doc: &RawDocument, at: Position) -> Result<Self> {
        Ok(Self {
            id: doc.id.clone(),
            kind: kind_name(doc.kind).into(),
            platform: doc.platform.clone(),
            author_id: doc.author.id.clone(),
            published_at: doc.published_at,
            url: doc.url.clone(),
            content_hash: doc.content_hash.clone(),
            body: to_json("raw_documents", doc)?,
            log_partition: at.partition,
            log_offset: at.offset,
            version: next_version(),
            deleted: 0,
        })
    }

    fn cleaned(doc: &CleanedDocument, at: Position) -> Result<Self> {
        Ok(Self {
            id: doc.id.clone(),
            kind: kind_name(doc.kind).into(),
            platform: doc.platform.clone(),
            author_id: doc.author.id.clone(),
            published_at: doc.published_at,
            url: doc.url.clone(),
            content_hash: doc.content_hash.clone(),
            body: to_json("cleaned_documents", doc)?,
            log_partition: at.partition,
            log_offset: at.offset,
            version: next_version(),
            deleted: 0,
        })
    }

    fn position(&self) -> Position {
        Position {
            partition: self.log_partition,
            offset: self.log_offset,
        }
    }

    /// This document retired by the event at `at`: a newer version marked deleted.
    fn retired(self, at: Position) -> Self {
        Self {
            log_partition: at.partition,
            log_offset: at.offset,
            version: next_version(),
            deleted: 1,
            ..self
        }
    }

    /// The document it holds, read from `table`, with its position.
    fn stored<T: for<'de> Deserialize<'de>>(&self, table: &'static str) -> Result<Stored<T>> {
        Ok(Stored {
            value: from_json(table, &self.body)?,
            position: self.position(),
        })
    }
}

/// A chunk as a row: the columns filters use, the whole chunk as JSON in `body`.
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
pub(crate) struct ChunkRow {
    id: String,
    document_id: String,
    position: i32,
    kind: String,
    platform: String,
    author_id: String,
    published_at: Option<i64>,
    text: String,
    token_count: i32,
    body: String,
    log_partition: u32,
    log_offset: u64,
    version: u64,
    deleted: u8,
}

/// The columns of the chunk table, in [`ChunkRow`]'s order.
pub(crate) const CHUNK_COLUMNS: &str = "id, document_id, position, kind, platform, author_id, published_at, text, token_count, body, log_partition, log_offset, version, deleted";

impl ChunkRow {
    fn new(chunk: &Chunk, at: Position) -> Result<Self> {
        Ok(Self {
            id: chunk.id.clone(),
            document_id: chunk.document_id.clone(),
            position: chunk.position,
            kind: kind_name(chunk.kind).into(),
            platform: chunk.platform.clone(),
            author_id: chunk.author.id.clone(),
            published_at: chunk.published_at,
            text: chunk.text.clone(),
            token_count: chunk.token_count,
            body: to_json("chunks", chunk)?,
            log_partition: at.partition,
            log_offset: at.offset,
            version: next_version(),
            deleted: 0,
        })
    }

    /// This chunk retired by the event at `at`: a newer version marked deleted.
    fn retired(self, at: Position) -> Self {
        Self {
            log_partition: at.partition,
            log_offset: at.offset,
            version: next_version(),
            deleted: 1,
            ..self
        }
    }

    fn stored(&self) -> Result<StoredChunk> {
        Ok(Stored {
            value: from_json("chunks", &self.body)?,
            position: Position {
                partition: self.log_partition,
                offset: self.log_offset,
            },
        })
    }
}

fn to_json<T: Serialize>(table: &'static str, value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|source| WarehouseError::Row { table, source })
}

fn from_json<T: for<'de> Deserialize<'de>>(table: &'static str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|source| WarehouseError::Row { table, source })
}

/// A new version number: greater than every one this process gave before, and, across
/// processes, ordered by the time it was given (nanoseconds since the epoch). Versions order the
/// rows of one document or chunk; the log positions they carry say which snapshots see them.
pub(crate) fn next_version() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let previous = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(0);
    now.max(previous + 1)
}

/// Breakdown rows from (author, kind, platform) → (documents, chunks).
pub(crate) fn breakdowns(
    groups: std::collections::BTreeMap<(String, String, String), (u64, u64)>,
) -> Vec<Breakdown> {
    groups
        .into_iter()
        .map(
            |((author_id, kind, platform), (documents, chunks))| Breakdown {
                author_id,
                kind,
                platform,
                documents,
                chunks,
            },
        )
        .collect()
}
