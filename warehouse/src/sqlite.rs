//! The embedded warehouse: SQLite, one file under the data folder.
//!
//! Rows keep the version (log offset) of the event that wrote them, and an upsert only replaces
//! a row with an older or equal version, as ClickHouse's `ReplacingMergeTree` does: the two
//! implementations agree even when events are redelivered out of order. The table layout's
//! version is SQLite's `user_version`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use twin_schemas::{Chunk, CleanedDocument, RawDocument};

use crate::filter::{self, Conditions, SqlValue};
use crate::{
    from_json, ChunkCursor, ChunkRow, Counts, DocumentFilter, DocumentRow, Position, Result,
    Stored, StoredChunk, Warehouse, WarehouseError, CHUNK_COLUMNS, DOCUMENT_COLUMNS,
    SCHEMA_VERSION,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS raw_documents (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, platform TEXT NOT NULL, author_id TEXT NOT NULL,
    published_at INTEGER, url TEXT NOT NULL, content_hash TEXT NOT NULL, body TEXT NOT NULL,
    log_partition INTEGER NOT NULL, log_offset INTEGER NOT NULL, deleted INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cleaned_documents (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, platform TEXT NOT NULL, author_id TEXT NOT NULL,
    published_at INTEGER, url TEXT NOT NULL, content_hash TEXT NOT NULL, body TEXT NOT NULL,
    log_partition INTEGER NOT NULL, log_offset INTEGER NOT NULL, deleted INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id TEXT NOT NULL, document_id TEXT NOT NULL, position INTEGER NOT NULL, kind TEXT NOT NULL,
    platform TEXT NOT NULL, author_id TEXT NOT NULL, published_at INTEGER, text TEXT NOT NULL,
    token_count INTEGER NOT NULL, body TEXT NOT NULL,
    log_partition INTEGER NOT NULL, log_offset INTEGER NOT NULL, deleted INTEGER NOT NULL,
    PRIMARY KEY (document_id, id));
CREATE INDEX IF NOT EXISTS chunks_in_order ON chunks (document_id, position);
CREATE TABLE IF NOT EXISTS applied (
    log_partition INTEGER PRIMARY KEY, log_offset INTEGER NOT NULL);
";

const TABLES: [&str; 4] = ["raw_documents", "cleaned_documents", "chunks", "applied"];

/// The SQLite warehouse.
pub struct SqliteWarehouse {
    connection: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> WarehouseError + '_ {
    move |source| WarehouseError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn bind(values: Vec<SqlValue>) -> Vec<Value> {
    values
        .into_iter()
        .map(|v| match v {
            SqlValue::Text(t) => Value::Text(t),
            SqlValue::Int(i) => Value::Integer(i),
        })
        .collect()
}

impl SqliteWarehouse {
    /// Open (or create) the warehouse file.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| WarehouseError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let connection = Connection::open(path).map_err(sql_err(path))?;
        // WAL: readers do not block the writer; NORMAL sync is durable across process crashes.
        // A reader in another process (a test, `twin snapshot`) may hold the file briefly.
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
            )
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
    ) -> Result<T> {
        let connection = self.connection.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut connection).map_err(sql_err(&path))
        })
        .await
        .map_err(|e| WarehouseError::Task(e.to_string()))?
    }

    async fn put_document(&self, table: &'static str, row: DocumentRow) -> Result<()> {
        self.with(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO {table} ({DOCUMENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0)
                     ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, platform = excluded.platform,
                       author_id = excluded.author_id, published_at = excluded.published_at,
                       url = excluded.url, content_hash = excluded.content_hash, body = excluded.body,
                       log_partition = excluded.log_partition, log_offset = excluded.log_offset, deleted = 0
                     WHERE excluded.log_offset >= {table}.log_offset"
                ),
                params![
                    row.id,
                    row.kind,
                    row.platform,
                    row.author_id,
                    row.published_at,
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

    async fn document_body(&self, table: &'static str, id: &str) -> Result<Option<String>> {
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

    async fn document_page<T: for<'de> serde::Deserialize<'de>>(
        &self,
        table: &'static str,
        filter: &DocumentFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Stored<T>>> {
        let conditions = filter::document_page(filter, after);
        let Conditions { sql, values } = conditions;
        let rows: Vec<(String, u32, i64)> = self
            .with(move |c| {
                let mut statement = c.prepare(&format!(
                    "SELECT body, log_partition, log_offset FROM {table} WHERE deleted = 0{sql} ORDER BY id LIMIT {limit}"
                ))?;
                let rows = statement.query_map(params_from_iter(bind(values)), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(body, partition, offset)| {
                Ok(Stored {
                    value: from_json(table, &body)?,
                    position: Position {
                        partition,
                        offset: offset as u64,
                    },
                })
            })
            .collect()
    }

    async fn chunk_rows(&self, conditions: Conditions, tail: String) -> Result<Vec<ChunkRow>> {
        let Conditions { sql, values } = conditions;
        self.with(move |c| {
            let mut statement = c.prepare(&format!(
                "SELECT {CHUNK_COLUMNS} FROM chunks WHERE deleted = 0{sql} {tail}"
            ))?;
            let rows = statement.query_map(params_from_iter(bind(values)), |r| {
                Ok(ChunkRow {
                    id: r.get(0)?,
                    document_id: r.get(1)?,
                    position: r.get(2)?,
                    kind: r.get(3)?,
                    platform: r.get(4)?,
                    author_id: r.get(5)?,
                    published_at: r.get(6)?,
                    text: r.get(7)?,
                    token_count: r.get(8)?,
                    body: r.get(9)?,
                    log_partition: r.get(10)?,
                    log_offset: r.get::<_, i64>(11)? as u64,
                    deleted: r.get(12)?,
                })
            })?;
            rows.collect()
        })
        .await
    }
}

#[async_trait]
impl Warehouse for SqliteWarehouse {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ensure_schema(&self) -> Result<()> {
        let found: (u32, bool) = self
            .with(|c| {
                let version: u32 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
                let tables: i64 = c.query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'raw_documents'",
                    [],
                    |r| r.get(0),
                )?;
                Ok((version, tables > 0))
            })
            .await?;
        match found {
            (0, false) => {}
            (v, _) if v == SCHEMA_VERSION => {}
            // Tables without a version were made before versions were kept: layout 1.
            (v, _) => {
                return Err(WarehouseError::SchemaVersion {
                    found: v.max(1),
                    expected: SCHEMA_VERSION,
                })
            }
        }
        self.with(|c| {
            c.execute_batch(SCHEMA)?;
            c.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
        })
        .await
    }

    async fn put_raw(&self, doc: &RawDocument, at: Position) -> Result<()> {
        self.put_document("raw_documents", DocumentRow::raw(doc, at)?)
            .await
    }

    async fn put_cleaned(&self, doc: &CleanedDocument, at: Position) -> Result<()> {
        self.put_document("cleaned_documents", DocumentRow::cleaned(doc, at)?)
            .await
    }

    async fn replace_chunks(
        &self,
        document_id: &str,
        chunks: &[Chunk],
        at: Position,
    ) -> Result<()> {
        let document_id = document_id.to_string();
        let rows: Vec<ChunkRow> = chunks
            .iter()
            .map(|c| ChunkRow::new(c, at))
            .collect::<Result<_>>()?;
        self.with(move |c| {
            let tx = c.transaction()?;
            // An older event arriving late must not undo a newer one.
            let newest: Option<i64> = tx.query_row(
                "SELECT MAX(log_offset) FROM chunks WHERE document_id = ?1",
                params![document_id],
                |r| r.get(0),
            )?;
            if newest.is_some_and(|n| n > at.offset as i64) {
                return tx.commit();
            }
            tx.execute(
                "UPDATE chunks SET deleted = 1, log_partition = ?2, log_offset = ?3 WHERE document_id = ?1",
                params![document_id, at.partition, at.offset as i64],
            )?;
            for row in &rows {
                tx.execute(
                    &format!(
                        "INSERT INTO chunks ({CHUNK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0)
                         ON CONFLICT(document_id, id) DO UPDATE SET position = excluded.position,
                           kind = excluded.kind, platform = excluded.platform, author_id = excluded.author_id,
                           published_at = excluded.published_at, text = excluded.text,
                           token_count = excluded.token_count, body = excluded.body,
                           log_partition = excluded.log_partition, log_offset = excluded.log_offset, deleted = 0"
                    ),
                    params![
                        row.id,
                        document_id,
                        row.position,
                        row.kind,
                        row.platform,
                        row.author_id,
                        row.published_at,
                        row.text,
                        row.token_count,
                        row.body,
                        row.log_partition,
                        row.log_offset as i64
                    ],
                )?;
            }
            tx.commit()
        })
        .await
    }

    async fn delete_document(&self, document_id: &str, at: Position) -> Result<()> {
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

    async fn record_applied(&self, positions: &[Position]) -> Result<()> {
        let positions = positions.to_vec();
        self.with(move |c| {
            let tx = c.transaction()?;
            for p in &positions {
                tx.execute(
                    "INSERT INTO applied (log_partition, log_offset) VALUES (?1, ?2)
                     ON CONFLICT(log_partition) DO UPDATE SET log_offset = max(log_offset, excluded.log_offset)",
                    params![p.partition, p.offset as i64],
                )?;
            }
            tx.commit()
        })
        .await
    }

    async fn applied(&self) -> Result<Vec<Position>> {
        self.with(|c| {
            let mut statement =
                c.prepare("SELECT log_partition, log_offset FROM applied ORDER BY log_partition")?;
            let rows = statement.query_map([], |r| {
                Ok(Position {
                    partition: r.get(0)?,
                    offset: r.get::<_, i64>(1)? as u64,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn raw(&self, id: &str) -> Result<Option<RawDocument>> {
        self.document_body("raw_documents", id)
            .await?
            .map(|b| from_json("raw_documents", &b))
            .transpose()
    }

    async fn cleaned(&self, id: &str) -> Result<Option<CleanedDocument>> {
        self.document_body("cleaned_documents", id)
            .await?
            .map(|b| from_json("cleaned_documents", &b))
            .transpose()
    }

    async fn chunks(&self, document_id: &str) -> Result<Vec<StoredChunk>> {
        let mut conditions = Conditions::default();
        conditions.push("document_id = ?", [SqlValue::Text(document_id.to_string())]);
        self.chunk_rows(conditions, "ORDER BY position".into())
            .await?
            .iter()
            .map(ChunkRow::stored)
            .collect()
    }

    async fn raw_page(
        &self,
        filter: &DocumentFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Stored<RawDocument>>> {
        self.document_page("raw_documents", filter, after, limit)
            .await
    }

    async fn cleaned_page(
        &self,
        filter: &DocumentFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Stored<CleanedDocument>>> {
        self.document_page("cleaned_documents", filter, after, limit)
            .await
    }

    async fn chunk_page(
        &self,
        filter: &DocumentFilter,
        after: Option<&ChunkCursor>,
        limit: usize,
    ) -> Result<Vec<StoredChunk>> {
        let conditions = filter::chunk_page(filter, after);
        let tail = format!("ORDER BY document_id, position LIMIT {limit}");
        self.chunk_rows(conditions, tail)
            .await?
            .iter()
            .map(ChunkRow::stored)
            .collect()
    }

    async fn counts(&self, filter: &DocumentFilter) -> Result<Counts> {
        let filter = filter.clone();
        self.with(move |c| {
            let count = |table: &str, id_column: &str| -> Result<u64, rusqlite::Error> {
                let Conditions { sql, values } = filter.conditions(id_column);
                c.query_row(
                    &format!("SELECT COUNT(*) FROM {table} WHERE deleted = 0{sql}"),
                    params_from_iter(bind(values)),
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as u64)
            };
            Ok(Counts {
                raw: count("raw_documents", "id")?,
                cleaned: count("cleaned_documents", "id")?,
                chunks: count("chunks", "document_id")?,
            })
        })
        .await
    }

    async fn drop_all(&self) -> Result<()> {
        self.with(|c| {
            for table in TABLES {
                c.execute_batch(&format!("DROP TABLE IF EXISTS {table};"))?;
            }
            c.execute_batch("PRAGMA user_version = 0")
        })
        .await
    }
}
