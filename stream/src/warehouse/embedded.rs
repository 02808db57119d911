//! The embedded warehouse: SQLite, one file under the data folder.
//!
//! Rows keep the version (log offset) of the event that wrote them, and an upsert only replaces
//! a row with an older or equal version, as ClickHouse's `ReplacingMergeTree` does: the two
//! implementations agree even when events are redelivered out of order.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use twin_schemas::{Chunk, CleanedDocument, RawDocument};

use super::{from_json, to_json, Counts, DocumentRow, LogPosition, StoredChunk, Warehouse};
use crate::StreamError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS raw_documents (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, platform TEXT NOT NULL, url TEXT NOT NULL,
    content_hash TEXT NOT NULL, body TEXT NOT NULL,
    log_partition INTEGER NOT NULL, log_offset INTEGER NOT NULL, deleted INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cleaned_documents (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, platform TEXT NOT NULL, url TEXT NOT NULL,
    content_hash TEXT NOT NULL, body TEXT NOT NULL,
    log_partition INTEGER NOT NULL, log_offset INTEGER NOT NULL, deleted INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id TEXT NOT NULL, document_id TEXT NOT NULL, position INTEGER NOT NULL, text TEXT NOT NULL,
    token_count INTEGER NOT NULL, body TEXT NOT NULL,
    log_partition INTEGER NOT NULL, log_offset INTEGER NOT NULL, deleted INTEGER NOT NULL,
    PRIMARY KEY (document_id, id));
";

/// The SQLite warehouse.
pub struct SqliteWarehouse {
    connection: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> StreamError + '_ {
    move |e| StreamError::Warehouse(format!("{}: {e}", path.display()))
}

impl SqliteWarehouse {
    /// Open (or create) the warehouse file.
    pub fn open(path: &Path) -> Result<Self, StreamError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StreamError::Warehouse(format!("{}: {e}", dir.display())))?;
        }
        let connection = Connection::open(path).map_err(sql_err(path))?;
        // WAL: readers do not block the writer; NORMAL sync is durable across process crashes.
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .map_err(sql_err(path))?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            path: path.to_path_buf(),
        })
    }

    /// Run `f` on the connection, off the async runtime.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StreamError> {
        let connection = self.connection.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut connection).map_err(sql_err(&path))
        })
        .await
        .map_err(|e| StreamError::Warehouse(format!("warehouse task failed: {e}")))?
    }

    async fn put_document(&self, table: &'static str, row: DocumentRow) -> Result<(), StreamError> {
        self.with(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO {table} (id, kind, platform, url, content_hash, body, log_partition, log_offset, deleted)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0)
                     ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, platform = excluded.platform,
                       url = excluded.url, content_hash = excluded.content_hash, body = excluded.body,
                       log_partition = excluded.log_partition, log_offset = excluded.log_offset, deleted = 0
                     WHERE excluded.log_offset >= {table}.log_offset"
                ),
                params![
                    row.id,
                    row.kind,
                    row.platform,
                    row.url,
                    row.content_hash,
                    row.body,
                    row.log_partition,
                    row.log_offset as i64
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn document_body(
        &self,
        table: &'static str,
        id: &str,
    ) -> Result<Option<String>, StreamError> {
        let id = id.to_string();
        self.with(move |c| {
            c.query_row(
                &format!("SELECT body FROM {table} WHERE id = ?1 AND deleted = 0"),
                params![id],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }
}

#[async_trait]
impl Warehouse for SqliteWarehouse {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ensure_schema(&self) -> Result<(), StreamError> {
        self.with(|c| c.execute_batch(SCHEMA)).await
    }

    async fn put_raw(&self, doc: &RawDocument, at: LogPosition) -> Result<(), StreamError> {
        self.put_document("raw_documents", DocumentRow::raw(doc, at)?)
            .await
    }

    async fn put_cleaned(&self, doc: &CleanedDocument, at: LogPosition) -> Result<(), StreamError> {
        self.put_document("cleaned_documents", DocumentRow::cleaned(doc, at)?)
            .await
    }

    async fn replace_chunks(
        &self,
        document_id: &str,
        chunks: &[Chunk],
        at: LogPosition,
    ) -> Result<(), StreamError> {
        let document_id = document_id.to_string();
        let rows: Vec<(Chunk, String)> = chunks
            .iter()
            .map(|c| Ok((c.clone(), to_json(c)?)))
            .collect::<Result<_, StreamError>>()?;
        self.with(move |c| {
            let tx = c.transaction()?;
            // An older event arriving late must not undo a newer one.
            let newest: Option<i64> = tx
                .query_row("SELECT MAX(log_offset) FROM chunks WHERE document_id = ?1", params![document_id], |r| r.get(0))?;
            if newest.is_some_and(|n| n > at.offset as i64) {
                return tx.commit();
            }
            tx.execute(
                "UPDATE chunks SET deleted = 1, log_partition = ?2, log_offset = ?3 WHERE document_id = ?1",
                params![document_id, at.partition, at.offset as i64],
            )?;
            for (chunk, body) in &rows {
                tx.execute(
                    "INSERT INTO chunks (id, document_id, position, text, token_count, body, log_partition, log_offset, deleted)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0)
                     ON CONFLICT(document_id, id) DO UPDATE SET position = excluded.position, text = excluded.text,
                       token_count = excluded.token_count, body = excluded.body, log_partition = excluded.log_partition,
                       log_offset = excluded.log_offset, deleted = 0",
                    params![chunk.id, document_id, chunk.position, chunk.text, chunk.token_count, body, at.partition, at.offset as i64],
                )?;
            }
            tx.commit()
        })
        .await
    }

    async fn delete_document(&self, document_id: &str, at: LogPosition) -> Result<(), StreamError> {
        let id = document_id.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            for table in ["raw_documents", "cleaned_documents"] {
                tx.execute(
                    &format!("UPDATE {table} SET deleted = 1, log_partition = ?2, log_offset = ?3 WHERE id = ?1 AND log_offset <= ?3"),
                    params![id, at.partition, at.offset as i64],
                )?;
            }
            tx.execute(
                "UPDATE chunks SET deleted = 1, log_partition = ?2, log_offset = ?3 WHERE document_id = ?1 AND log_offset <= ?3",
                params![id, at.partition, at.offset as i64],
            )?;
            tx.commit()
        })
        .await
    }

    async fn raw(&self, id: &str) -> Result<Option<RawDocument>, StreamError> {
        self.document_body("raw_documents", id)
            .await?
            .map(|b| from_json(&b))
            .transpose()
    }

    async fn cleaned(&self, id: &str) -> Result<Option<CleanedDocument>, StreamError> {
        self.document_body("cleaned_documents", id)
            .await?
            .map(|b| from_json(&b))
            .transpose()
    }

    async fn chunks(&self, document_id: &str) -> Result<Vec<StoredChunk>, StreamError> {
        let id = document_id.to_string();
        let rows: Vec<(String, u32, i64)> = self
            .with(move |c| {
                let mut statement = c.prepare(
                    "SELECT body, log_partition, log_offset FROM chunks WHERE document_id = ?1 AND deleted = 0 ORDER BY position",
                )?;
                let rows = statement.query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(body, partition, offset)| {
                Ok(StoredChunk {
                    chunk: from_json(&body)?,
                    position: LogPosition {
                        partition,
                        offset: offset as u64,
                    },
                })
            })
            .collect()
    }

    async fn counts(&self) -> Result<Counts, StreamError> {
        self.with(|c| {
            let count = |table: &str| -> Result<u64, rusqlite::Error> {
                c.query_row(
                    &format!("SELECT COUNT(*) FROM {table} WHERE deleted = 0"),
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as u64)
            };
            Ok(Counts {
                raw: count("raw_documents")?,
                cleaned: count("cleaned_documents")?,
                chunks: count("chunks")?,
            })
        })
        .await
    }

    async fn drop_all(&self) -> Result<(), StreamError> {
        self.with(|c| c.execute_batch("DROP TABLE IF EXISTS raw_documents; DROP TABLE IF EXISTS cleaned_documents; DROP TABLE IF EXISTS chunks;"))
            .await
    }
}
