//! The embedded warehouse: SQLite, one file under the data folder.
//!
//! Every write adds a version row, keyed by the row's key and the log position that caused it;
//! a read takes, per key, the version with the greatest version number among those it may see
//! (a correlated `MAX` over an index on key and version). The table layout's version is SQLite's
//! `user_version`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use twin_schemas::{Chunk, CleanedDocument, RawDocument};

use crate::filter::{self, Conditions, SqlValue};
use crate::{
    breakdowns, from_json, to_json, AsOf, Breakdown, ChunkCursor, ChunkRow, Compaction, Counts,
    DatasetRecord, DocumentFilter, DocumentRow, MetricRow, Position, Result, RunRecord, SampleRow,
    Snapshot, Stored, StoredChunk, TraceRow, Warehouse, WarehouseError, CHUNK_COLUMNS,
    DOCUMENT_COLUMNS, SCHEMA_VERSION,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS raw_documents (
    id TEXT NOT NULL, kind TEXT NOT NULL, platform TEXT NOT NULL, author_id TEXT NOT NULL,
    published_at INTEGER, url TEXT NOT NULL, content_hash TEXT NOT NULL, body TEXT NOT NULL,
    log_partition INTEGER NOT NULL, log_offset INTEGER NOT NULL, version INTEGER NOT NULL,
    deleted INTEGER NOT NULL, PRIMARY KEY (id, log_partition, log_offset));
CREATE INDEX IF NOT EXISTS raw_documents_versions ON raw_documents (id, version);
CREATE TABLE IF NOT EXISTS cleaned_documents (
    id TEXT NOT NULL, kind TEXT NOT NULL, platform TEXT NOT NULL, author_id TEXT NOT NULL,
    published_at INTEGER, url TEXT NOT NULL, content_hash TEXT NOT NULL, body TEXT NOT NULL,
    log_partition INTEGER NOT NULL, log_offset INTEGER NOT NULL, version INTEGER NOT NULL,
    deleted INTEGER NOT NULL, PRIMARY KEY (id, log_partition, log_offset));
CREATE INDEX IF NOT EXISTS cleaned_documents_versions ON cleaned_documents (id, version);
CREATE TABLE IF NOT EXISTS chunks (
    id TEXT NOT NULL, document_id TEXT NOT NULL, position INTEGER NOT NULL, kind TEXT NOT NULL,
    platform TEXT NOT NULL, author_id TEXT NOT NULL, published_at INTEGER, text TEXT NOT NULL,
    token_count INTEGER NOT NULL, body TEXT NOT NULL,
    log_partition INTEGER NOT NULL, log_offset INTEGER NOT NULL, version INTEGER NOT NULL,
    deleted INTEGER NOT NULL, PRIMARY KEY (document_id, id, log_partition, log_offset));
CREATE INDEX IF NOT EXISTS chunks_versions ON chunks (document_id, id, version);
CREATE INDEX IF NOT EXISTS chunks_in_order ON chunks (document_id, position);
CREATE TABLE IF NOT EXISTS applied (
    log_partition INTEGER PRIMARY KEY, log_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY, name TEXT, created_at INTEGER NOT NULL, positions TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY, name TEXT, kind TEXT NOT NULL, snapshot_id TEXT,
    created_at INTEGER NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dataset_samples (
    dataset_id TEXT NOT NULL, split TEXT NOT NULL, idx INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (dataset_id, split, idx));
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS run_metrics (
    run_id TEXT NOT NULL, kind TEXT NOT NULL, step INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (run_id, kind, step));
CREATE TABLE IF NOT EXISTS traces (
    id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, route TEXT NOT NULL, model TEXT NOT NULL,
    body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS traces_by_time ON traces (created_at);
";

/// The projection's tables: what a rebuild drops.
const PROJECTION: [&str; 4] = ["raw_documents", "cleaned_documents", "chunks", "applied"];

/// The condition that a row of `table` is the newest version of its key seen `as_of`.
fn newest(table: &str, as_of: &AsOf) -> Conditions {
    let key = if table == "chunks" {
        "v.document_id = chunks.document_id AND v.id = chunks.id"
    } else {
        "v.id = {table}.id"
    }
    .replace("{table}", table);
    let visible = as_of.visible();
    let mut c = Conditions::default();
    c.push(
        &format!(
            "{table}.version = (SELECT MAX(v.version) FROM {table} AS v WHERE {key}{})",
            visible.sql
        ),
        visible.values,
    );
    c
}

fn document_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DocumentRow> {
    Ok(DocumentRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        platform: r.get(2)?,
        author_id: r.get(3)?,
        published_at: r.get(4)?,
        url: r.get(5)?,
        content_hash: r.get(6)?,
        body: r.get(7)?,
        log_partition: r.get(8)?,
        log_offset: r.get::<_, i64>(9)? as u64,
        version: r.get::<_, i64>(10)? as u64,
        deleted: r.get(11)?,
    })
}

fn chunk_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChunkRow> {
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
        version: r.get::<_, i64>(12)? as u64,
        deleted: r.get(13)?,
    })
}

/// What an insert does with a version of the same row and cause already there.
#[derive(Clone, Copy)]
enum OnConflict {
    /// Keep it (a redelivered event).
    Keep,
    /// Replace it (a document cleaned again: the newest cleaning wins).
    Replace,
}

impl OnConflict {
    fn sql(self) -> &'static str {
        match self {
            OnConflict::Keep => "INSERT OR IGNORE",
            OnConflict::Replace => "INSERT OR REPLACE",
        }
    }
}

fn insert_document(
    c: &Connection,
    table: &str,
    row: &DocumentRow,
    conflict: OnConflict,
) -> rusqlite::Result<()> {
    let insert = conflict.sql();
    c.execute(
        &format!(
            "{insert} INTO {table} ({DOCUMENT_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
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
            row.log_offset as i64,
            row.version as i64,
            row.deleted
        ],
    )
    .map(|_| ())
}

fn insert_chunk(c: &Connection, row: &ChunkRow, conflict: OnConflict) -> rusqlite::Result<()> {
    let insert = conflict.sql();
    c.execute(
        &format!(
            "{insert} INTO chunks ({CHUNK_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ),
        params![
            row.id,
            row.document_id,
            row.position,
            row.kind,
            row.platform,
            row.author_id,
            row.published_at,
            row.text,
            row.token_count,
            row.body,
            row.log_partition,
            row.log_offset as i64,
            row.version as i64,
            row.deleted
        ],
    )
    .map(|_| ())
}

/// Whether an event of `at`'s partition at or after `at` already wrote rows of the key: then
/// the event at `at` is a redelivery or arrives late, and must change nothing.
fn already_applied(
    c: &Connection,
    table: &str,
    key_column: &str,
    key: &str,
    at: Position,
) -> rusqlite::Result<bool> {
    c.query_row(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE {key_column} = ?1 AND log_partition = ?2 AND log_offset >= ?3)"
        ),
        params![key, at.partition, at.offset as i64],
        |r| r.get(0),
    )
}

/// The newest version of a document, deleted or not.
fn newest_document(c: &Connection, table: &str, id: &str) -> rusqlite::Result<Option<DocumentRow>> {
    c.query_row(
        &format!(
            "SELECT {DOCUMENT_COLUMNS} FROM {table} WHERE id = ?1 ORDER BY version DESC LIMIT 1"
        ),
        params![id],
        document_row,
    )
    .optional()
}

/// Make `rows` the document's live chunks: retire the live ones not among them, add versions of
/// the ones that changed. An unchanged chunk keeps its version: every snapshot that saw it still
/// does.
fn write_chunks(
    c: &Connection,
    document_id: &str,
    rows: &[ChunkRow],
    at: Position,
    conflict: OnConflict,
) -> rusqlite::Result<()> {
    let live = live_chunks(c, document_id)?;
    for old in &live {
        if !rows.iter().any(|r| r.id == old.id) {
            insert_chunk(c, &old.clone().retired(at), conflict)?;
        }
    }
    for row in rows {
        if !live
            .iter()
            .any(|old| old.id == row.id && old.body == row.body)
        {
            insert_chunk(c, row, conflict)?;
        }
    }
    Ok(())
}

/// The newest live version of each of a document's chunks.
fn live_chunks(c: &Connection, document_id: &str) -> rusqlite::Result<Vec<ChunkRow>> {
    let Conditions { sql, values } = newest("chunks", &AsOf::Latest);
    let mut statement = c.prepare(&format!(
        "SELECT {CHUNK_COLUMNS} FROM chunks WHERE deleted = 0 AND document_id = ?{sql} ORDER BY position"
    ))?;
    let mut all = vec![Value::Text(document_id.to_string())];
    all.extend(bind(values));
    let rows = statement.query_map(params_from_iter(all), chunk_row)?;
    rows.collect()
}

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
        // WAL: readers do not block the writer. FULL sync: a transaction is on disk when it
        // commits, so a power cut cannot take rows whose events the stream then committed past
        // on the log (NORMAL would survive a process crash only). A reader in another process
        // (a test, `twin snapshot`) may hold the file briefly.
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
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
            let tx = c.transaction()?;
            if !already_applied(&tx, table, "id", &row.id, row.position())? {
                insert_document(&tx, table, &row, OnConflict::Keep)?;
            }
            tx.commit()
        })
        .await
    }

    async fn document_rows(
        &self,
        table: &'static str,
        as_of: &AsOf,
        conditions: Conditions,
        tail: String,
    ) -> Result<Vec<DocumentRow>> {
        let mut all = newest(table, as_of);
        all.extend(conditions);
        let Conditions { sql, values } = all;
        self.with(move |c| {
            let mut statement = c.prepare(&format!(
                "SELECT {DOCUMENT_COLUMNS} FROM {table} WHERE deleted = 0{sql} {tail}"
            ))?;
            let rows = statement.query_map(params_from_iter(bind(values)), document_row)?;
            rows.collect()
        })
        .await
    }

    async fn document<T: for<'de> serde::Deserialize<'de>>(
        &self,
        table: &'static str,
        id: &str,
    ) -> Result<Option<T>> {
        let mut conditions = Conditions::default();
        conditions.push("id = ?", [SqlValue::Text(id.to_string())]);
        self.document_rows(table, &AsOf::Latest, conditions, String::new())
            .await?
            .first()
            .map(|row| from_json(table, &row.body))
            .transpose()
    }

    async fn document_page<T: for<'de> serde::Deserialize<'de>>(
        &self,
        table: &'static str,
        as_of: &AsOf,
        filter: &DocumentFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Stored<T>>> {
        let conditions = filter::document_page(filter, after);
        self.document_rows(
            table,
            as_of,
            conditions,
            format!("ORDER BY id LIMIT {limit}"),
        )
        .await?
        .iter()
        .map(|row| row.stored(table))
        .collect()
    }

    async fn chunk_rows(
        &self,
        as_of: &AsOf,
        conditions: Conditions,
        tail: String,
    ) -> Result<Vec<ChunkRow>> {
        let mut all = newest("chunks", as_of);
        all.extend(conditions);
        let Conditions { sql, values } = all;
        self.with(move |c| {
            let mut statement = c.prepare(&format!(
                "SELECT {CHUNK_COLUMNS} FROM chunks WHERE deleted = 0{sql} {tail}"
            ))?;
            let rows = statement.query_map(params_from_iter(bind(values)), chunk_row)?;
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
        // One transaction (the version is part of it): a process killed half-way leaves either
        // no tables or all of them with their version, never tables that look older.
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute_batch(SCHEMA)?;
            tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
            tx.commit()
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
            if already_applied(&tx, "chunks", "document_id", &document_id, at)? {
                return tx.commit();
            }
            write_chunks(&tx, &document_id, &rows, at, OnConflict::Keep)?;
            tx.commit()
        })
        .await
    }

    async fn put_recleaned(
        &self,
        doc: &CleanedDocument,
        chunks: &[Chunk],
        at: Position,
    ) -> Result<()> {
        let row = DocumentRow::cleaned(doc, at)?;
        let rows: Vec<ChunkRow> = chunks
            .iter()
            .map(|c| ChunkRow::new(c, at))
            .collect::<Result<_>>()?;
        self.with(move |c| {
            let tx = c.transaction()?;
            let newest = newest_document(&tx, "cleaned_documents", &row.id)?;
            if !newest.is_some_and(|n| n.deleted == 0 && n.body == row.body) {
                insert_document(&tx, "cleaned_documents", &row, OnConflict::Replace)?;
            }
            write_chunks(&tx, &row.id, &rows, at, OnConflict::Replace)?;
            tx.commit()
        })
        .await
    }

    async fn superseded(&self, document_id: &str, at: Position) -> Result<bool> {
        let id = document_id.to_string();
        let next = Position {
            partition: at.partition,
            offset: at.offset + 1,
        };
        self.with(move |c| already_applied(c, "raw_documents", "id", &id, next))
            .await
    }

    async fn delete_document(&self, document_id: &str, at: Position) -> Result<()> {
        let id = document_id.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            for table in ["raw_documents", "cleaned_documents"] {
                if already_applied(&tx, table, "id", &id, at)? {
                    continue;
                }
                if let Some(newest) = newest_document(&tx, table, &id)? {
                    if newest.deleted == 0 {
                        insert_document(&tx, table, &newest.retired(at), OnConflict::Keep)?;
                    }
                }
            }
            if !already_applied(&tx, "chunks", "document_id", &id, at)? {
                for old in live_chunks(&tx, &id)? {
                    insert_chunk(&tx, &old.retired(at), OnConflict::Keep)?;
                }
            }
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
        self.document("raw_documents", id).await
    }

    async fn cleaned(&self, id: &str) -> Result<Option<CleanedDocument>> {
        self.document("cleaned_documents", id).await
    }

    async fn chunks(&self, document_id: &str) -> Result<Vec<StoredChunk>> {
        let mut conditions = Conditions::default();
        conditions.push("document_id = ?", [SqlValue::Text(document_id.to_string())]);
        self.chunk_rows(&AsOf::Latest, conditions, "ORDER BY position".into())
            .await?
            .iter()
            .map(ChunkRow::stored)
            .collect()
    }

    async fn raw_page(
        &self,
        as_of: &AsOf,
        filter: &DocumentFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Stored<RawDocument>>> {
        self.document_page("raw_documents", as_of, filter, after, limit)
            .await
    }

    async fn cleaned_page(
        &self,
        as_of: &AsOf,
        filter: &DocumentFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Stored<CleanedDocument>>> {
        self.document_page("cleaned_documents", as_of, filter, after, limit)
            .await
    }

    async fn chunk_page(
        &self,
        as_of: &AsOf,
        filter: &DocumentFilter,
        after: Option<&ChunkCursor>,
        limit: usize,
    ) -> Result<Vec<StoredChunk>> {
        let conditions = filter::chunk_page(filter, after);
        let tail = format!("ORDER BY document_id, position LIMIT {limit}");
        self.chunk_rows(as_of, conditions, tail)
            .await?
            .iter()
            .map(ChunkRow::stored)
            .collect()
    }

    async fn counts(&self, as_of: &AsOf, filter: &DocumentFilter) -> Result<Counts> {
        let (as_of, filter) = (as_of.clone(), filter.clone());
        self.with(move |c| {
            let count = |table: &str, id_column: &str| -> Result<u64, rusqlite::Error> {
                let mut all = newest(table, &as_of);
                all.extend(filter.conditions(id_column));
                let Conditions { sql, values } = all;
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

    async fn breakdown(&self, as_of: &AsOf) -> Result<Vec<Breakdown>> {
        let as_of = as_of.clone();
        self.with(move |c| {
            let mut groups: BTreeMap<(String, String, String), (u64, u64)> = BTreeMap::new();
            for table in ["cleaned_documents", "chunks"] {
                let Conditions { sql, values } = newest(table, &as_of);
                let mut statement = c.prepare(&format!(
                    "SELECT author_id, kind, platform, COUNT(*) FROM {table} WHERE deleted = 0{sql}
                     GROUP BY author_id, kind, platform"
                ))?;
                let rows = statement.query_map(params_from_iter(bind(values)), |r| {
                    Ok((
                        (r.get(0)?, r.get(1)?, r.get(2)?),
                        r.get::<_, i64>(3)? as u64,
                    ))
                })?;
                for row in rows {
                    let (key, n) = row?;
                    let slot = groups.entry(key).or_default();
                    if table == "chunks" {
                        slot.1 = n;
                    } else {
                        slot.0 = n;
                    }
                }
            }
            Ok(breakdowns(groups))
        })
        .await
    }

    async fn compact(&self, floor: &[Position]) -> Result<Compaction> {
        let floor = AsOf::Positions(floor.to_vec());
        self.with(move |c| {
            let tx = c.transaction()?;
            let mut removed = Compaction::default();
            for table in ["raw_documents", "cleaned_documents", "chunks"] {
                let visible = floor.visible();
                let Conditions { sql, values } = {
                    let mut all = visible;
                    // Seen at the floor, and either not the newest seen there or a retirement.
                    let newest = newest(table, &floor);
                    all.push(
                        &format!(
                            "(NOT ({}) OR deleted = 1)",
                            newest.sql.trim_start_matches(" AND ")
                        ),
                        newest.values,
                    );
                    all
                };
                let n = tx.execute(
                    &format!("DELETE FROM {table} WHERE 1 = 1{sql}"),
                    params_from_iter(bind(values)),
                )? as u64;
                if table == "chunks" {
                    removed.chunks += n;
                } else {
                    removed.documents += n;
                }
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn drop_all(&self) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            for table in PROJECTION {
                tx.execute_batch(&format!("DROP TABLE IF EXISTS {table};"))?;
            }
            tx.execute_batch("PRAGMA user_version = 0")?;
            tx.commit()
        })
        .await
    }

    async fn put_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let snapshot = snapshot.clone();
        let positions = to_json("snapshots", &snapshot.positions)?;
        self.with(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO snapshots (id, name, created_at, positions) VALUES (?1, ?2, ?3, ?4)",
                params![snapshot.id, snapshot.name, snapshot.created_at, positions],
            )
            .map(|_| ())
        })
        .await
    }

    async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let rows: Vec<(String, Option<String>, i64, String)> = self
            .with(|c| {
                let mut statement = c.prepare(
                    "SELECT id, name, created_at, positions FROM snapshots ORDER BY created_at, id",
                )?;
                let rows = statement
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(id, name, created_at, positions)| {
                Ok(Snapshot {
                    id,
                    name,
                    created_at,
                    positions: from_json("snapshots", &positions)?,
                })
            })
            .collect()
    }

    async fn delete_snapshot(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.with(move |c| c.execute("DELETE FROM snapshots WHERE id = ?1", params![id]))
            .await
            .map(|n| n > 0)
    }

    async fn put_dataset(&self, dataset: &DatasetRecord, samples: &[SampleRow]) -> Result<()> {
        let (dataset, samples) = (dataset.clone(), samples.to_vec());
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM dataset_samples WHERE dataset_id = ?1", params![dataset.id])?;
            tx.execute(
                "INSERT OR REPLACE INTO datasets (id, name, kind, snapshot_id, created_at, metadata)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    dataset.id,
                    dataset.name,
                    dataset.kind,
                    dataset.snapshot_id,
                    dataset.created_at,
                    dataset.metadata
                ],
            )?;
            {
                let mut insert = tx.prepare(
                    "INSERT INTO dataset_samples (dataset_id, split, idx, body) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for sample in &samples {
                    insert.execute(params![dataset.id, sample.split, sample.index, sample.body])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT id, name, kind, snapshot_id, created_at, metadata FROM datasets ORDER BY created_at, id",
            )?;
            let rows = statement.query_map([], |r| {
                Ok(DatasetRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    kind: r.get(2)?,
                    snapshot_id: r.get(3)?,
                    created_at: r.get(4)?,
                    metadata: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn dataset_samples(&self, id: &str) -> Result<Vec<SampleRow>> {
        let id = id.to_string();
        self.with(move |c| {
            let mut statement = c.prepare(
                "SELECT split, idx, body FROM dataset_samples WHERE dataset_id = ?1 ORDER BY split, idx",
            )?;
            let rows = statement.query_map(params![id], |r| {
                Ok(SampleRow {
                    split: r.get(0)?,
                    index: r.get(1)?,
                    body: r.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn delete_dataset(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM dataset_samples WHERE dataset_id = ?1",
                params![id],
            )?;
            let n = tx.execute("DELETE FROM datasets WHERE id = ?1", params![id])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_run(&self, run: &RunRecord) -> Result<()> {
        let run = run.clone();
        self.with(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO runs (id, name, status, created_at, updated_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    run.id,
                    run.name,
                    run.status,
                    run.created_at,
                    run.updated_at,
                    run.body
                ],
            )
        })
        .await
        .map(|_| ())
    }

    async fn runs(&self) -> Result<Vec<RunRecord>> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT id, name, status, created_at, updated_at, body FROM runs ORDER BY created_at, id",
            )?;
            let rows = statement.query_map([], |r| {
                Ok(RunRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    status: r.get(2)?,
                    created_at: r.get(3)?,
                    updated_at: r.get(4)?,
                    body: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn delete_run(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM run_metrics WHERE run_id = ?1", params![id])?;
            let n = tx.execute("DELETE FROM runs WHERE id = ?1", params![id])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_run_metrics(&self, rows: &[MetricRow]) -> Result<()> {
        let rows = rows.to_vec();
        self.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut insert = tx.prepare(
                    "INSERT OR REPLACE INTO run_metrics (run_id, kind, step, body) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for row in &rows {
                    insert.execute(params![row.run_id, row.kind, row.step as i64, row.body])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn run_metrics(&self, run_id: &str) -> Result<Vec<MetricRow>> {
        let run_id = run_id.to_string();
        self.with(move |c| {
            let mut statement = c.prepare(
                "SELECT run_id, kind, step, body FROM run_metrics WHERE run_id = ?1 ORDER BY kind, step",
            )?;
            let rows = statement.query_map(params![run_id], |r| {
                Ok(MetricRow {
                    run_id: r.get(0)?,
                    kind: r.get(1)?,
                    step: r.get::<_, i64>(2)? as u64,
                    body: r.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn put_traces(&self, rows: &[TraceRow]) -> Result<()> {
        let rows = rows.to_vec();
        self.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut insert = tx.prepare(
                    "INSERT OR REPLACE INTO traces (id, created_at, route, model, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for row in &rows {
                    insert.execute(params![row.id, row.created_at, row.route, row.model, row.body])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn traces(&self, since: i64, limit: usize) -> Result<Vec<TraceRow>> {
        self.with(move |c| {
            let mut statement = c.prepare(
                "SELECT id, created_at, route, model, body FROM traces WHERE created_at >= ?1 \
                 ORDER BY created_at DESC, id DESC LIMIT ?2",
            )?;
            let rows = statement.query_map(params![since, limit as i64], |r| {
                Ok(TraceRow {
                    id: r.get(0)?,
                    created_at: r.get(1)?,
                    route: r.get(2)?,
                    model: r.get(3)?,
                    body: r.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
    }
}
