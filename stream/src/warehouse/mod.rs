//! The warehouse: raw, cleaned and chunked documents, each row with the log position it came
//! from. One interface, two implementations with one contract test suite:
//!
//! - [`embedded::SqliteWarehouse`]: SQLite under the data folder (the default);
//! - [`clickhouse_warehouse::ClickHouseWarehouse`]: a ClickHouse server.
//!
//! Writes are idempotent upserts keyed by document or chunk id, and are versioned by the log
//! offset of the event that caused them, so that a redelivered event changes nothing and a later
//! event of a document always wins. Replacing a document's chunks retires the chunks it no
//! longer has; a tombstone retires the document and all its chunks.

pub mod clickhouse_warehouse;
pub mod embedded;
pub mod testkit;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use twin_config::{WarehouseBackend, WarehouseConfig};
use twin_schemas::{Chunk, CleanedDocument, RawDocument};

pub use self::clickhouse_warehouse::ClickHouseWarehouse;
pub use self::embedded::SqliteWarehouse;
use crate::StreamError;

/// Where on the log a row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogPosition {
    /// Partition of the event.
    pub partition: u32,
    /// Offset of the event.
    pub offset: u64,
}

/// Rows in each table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Live raw documents.
    pub raw: u64,
    /// Live cleaned documents.
    pub cleaned: u64,
    /// Live chunks.
    pub chunks: u64,
}

/// A chunk as stored, with the position of the event it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChunk {
    /// The chunk.
    pub chunk: Chunk,
    /// Where on the log it came from.
    pub position: LogPosition,
}

/// The warehouse interface.
#[async_trait]
pub trait Warehouse: Send + Sync {
    /// `embedded` or `clickhouse`.
    fn backend(&self) -> &'static str;

    /// Create the tables if missing.
    async fn ensure_schema(&self) -> Result<(), StreamError>;

    /// Upsert a raw document.
    async fn put_raw(&self, doc: &RawDocument, at: LogPosition) -> Result<(), StreamError>;

    /// Upsert a cleaned document.
    async fn put_cleaned(&self, doc: &CleanedDocument, at: LogPosition) -> Result<(), StreamError>;

    /// Make `chunks` the document's chunks: upsert them, retire the ones it had and no longer has.
    async fn replace_chunks(
        &self,
        document_id: &str,
        chunks: &[Chunk],
        at: LogPosition,
    ) -> Result<(), StreamError>;

    /// Retire a document: its raw and cleaned rows and all its chunks.
    async fn delete_document(&self, document_id: &str, at: LogPosition) -> Result<(), StreamError>;

    /// A live raw document.
    async fn raw(&self, id: &str) -> Result<Option<RawDocument>, StreamError>;

    /// A live cleaned document.
    async fn cleaned(&self, id: &str) -> Result<Option<CleanedDocument>, StreamError>;

    /// A document's live chunks, by position.
    async fn chunks(&self, document_id: &str) -> Result<Vec<StoredChunk>, StreamError>;

    /// Live rows per table.
    async fn counts(&self) -> Result<Counts, StreamError>;

    /// Drop every table (before a rebuild from the log).
    async fn drop_all(&self) -> Result<(), StreamError>;
}

/// Open the warehouse the configuration names.
pub async fn open(
    config: &WarehouseConfig,
    data_dir: &Path,
) -> Result<Arc<dyn Warehouse>, StreamError> {
    let warehouse: Arc<dyn Warehouse> = match config.backend {
        WarehouseBackend::Embedded => {
            Arc::new(SqliteWarehouse::open(&data_dir.join("warehouse.sqlite"))?)
        }
        WarehouseBackend::ClickHouse => {
            Arc::new(ClickHouseWarehouse::connect(&config.clickhouse).await?)
        }
    };
    warehouse.ensure_schema().await?;
    Ok(warehouse)
}

/// A document as a row: key columns to filter on, the whole document as JSON in `body`.
#[derive(Debug, Clone, clickhouse::Row, Serialize, Deserialize)]
pub(crate) struct DocumentRow {
    id: String,
    kind: String,
    platform: String,
    url: String,
    content_hash: String,
    body: String,
    log_partition: u32,
    log_offset: u64,
    deleted: u8,
}

impl DocumentRow {
    fn new<T: Serialize>(
        doc: &T,
        (id, kind, platform, url, content_hash): (
            &str,
            twin_schemas::DocumentKind,
            &str,
            &str,
            &str,
        ),
        at: LogPosition,
    ) -> Result<Self, StreamError> {
        Ok(Self {
            id: id.to_string(),
            kind: format!("{kind:?}").to_lowercase(),
            platform: platform.to_string(),
            url: url.to_string(),
            content_hash: content_hash.to_string(),
            body: to_json(doc)?,
            log_partition: at.partition,
            log_offset: at.offset,
            deleted: 0,
        })
    }

    fn raw(doc: &RawDocument, at: LogPosition) -> Result<Self, StreamError> {
        Self::new(
            doc,
            (
                &doc.id,
                doc.kind,
                &doc.platform,
                &doc.url,
                &doc.content_hash,
            ),
            at,
        )
    }

    fn cleaned(doc: &CleanedDocument, at: LogPosition) -> Result<Self, StreamError> {
        Self::new(
            doc,
            (
                &doc.id,
                doc.kind,
                &doc.platform,
                &doc.url,
                &doc.content_hash,
            ),
            at,
        )
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String, StreamError> {
    serde_json::to_string(value).map_err(|e| StreamError::Warehouse(format!("encode row: {e}")))
}

fn from_json<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, StreamError> {
    serde_json::from_str(text).map_err(|e| StreamError::Warehouse(format!("decode row: {e}")))
}
