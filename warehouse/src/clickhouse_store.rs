//! The ClickHouse warehouse, through the official `clickhouse` crate (HTTP, RowBinary).
//!
//! Tables are `ReplacingMergeTree(version)` with the log offset as version: rows of the same key
//! collapse to the newest, and reads use `FINAL` so they never see an older one. A retired row is
//! a newer version with `deleted = 1`. Servers older than 20.x (Debian's 18.16 among them)
//! refuse the row-validation settings the crate sends, so validation is switched on only for
//! newer servers, decided from `SELECT version()`.

use async_trait::async_trait;
use clickhouse::query::Query;
use clickhouse::Client;
use twin_config::ClickHouseConfig;
use twin_schemas::{Chunk, CleanedDocument, RawDocument};

use crate::filter::{self, Conditions, SqlValue};
use crate::{
    from_json, ChunkCursor, ChunkRow, Counts, DocumentFilter, DocumentRow, Position, Result,
    Stored, StoredChunk, Warehouse, WarehouseError, SCHEMA_VERSION,
};

/// The ClickHouse warehouse.
pub struct ClickHouseWarehouse {
    client: Client,
    database: String,
}

fn ch_err(context: &str) -> impl Fn(clickhouse::error::Error) -> WarehouseError + '_ {
    move |source| WarehouseError::ClickHouse {
        context: context.to_string(),
        source,
    }
}

/// Bind the conditions' values to their placeholders, in order.
fn bound(mut query: Query, values: Vec<SqlValue>) -> Query {
    for value in values {
        query = match value {
            SqlValue::Text(t) => query.bind(t),
            SqlValue::Int(i) => query.bind(i),
        };
    }
    query
}

/// A database name safe to splice into DDL.
fn identifier(name: &str) -> Result<&str> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(name)
    } else {
        Err(WarehouseError::Invalid(format!(
            "database name {name:?}: use letters, digits and _"
        )))
    }
}

const DOCUMENT_TABLE: &str = "id String, kind String, platform String, author_id String,
    published_at Nullable(Int64), url String, content_hash String, body String,
    log_partition UInt32, log_offset UInt64, deleted UInt8";

const TABLES: [(&str, &str, &str); 4] = [
    ("raw_documents", DOCUMENT_TABLE, "id"),
    ("cleaned_documents", DOCUMENT_TABLE, "id"),
    (
        "chunks",
        "id String, document_id String, position Int32, kind String, platform String,
         author_id String, published_at Nullable(Int64), text String, token_count Int32,
         body String, log_partition UInt32, log_offset UInt64, deleted UInt8",
        "(document_id, id)",
    ),
    (
        "applied",
        "log_partition UInt32, log_offset UInt64",
        "log_partition",
    ),
];

impl ClickHouseWarehouse {
    /// Connect, create the database if missing, and pick the row-validation mode by version.
    pub async fn connect(config: &ClickHouseConfig) -> Result<Self> {
        let base = Client::default()
            .with_url(&config.url)
            .with_user(&config.user)
            .with_password(&config.password)
            .with_validation(false);
        let version: String = base
            .query("SELECT version()")
            .fetch_one()
            .await
            .map_err(ch_err(&format!("connect to {}", config.url)))?;
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        base.query(&format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            identifier(&config.database)?
        ))
        .execute()
        .await
        .map_err(ch_err("create database"))?;
        let client = base
            .with_database(&config.database)
            .with_validation(major >= 20);
        Ok(Self {
            client,
            database: config.database.clone(),
        })
    }

    async fn put_document(&self, table: &str, row: DocumentRow) -> Result<()> {
        let mut insert = self
            .client
            .insert::<DocumentRow>(table)
            .await
            .map_err(ch_err(table))?;
        insert.write(&row).await.map_err(ch_err(table))?;
        insert.end().await.map_err(ch_err(table))
    }

    async fn document_rows(
        &self,
        table: &'static str,
        conditions: Conditions,
        tail: &str,
    ) -> Result<Vec<DocumentRow>> {
        let Conditions { sql, values } = conditions;
        bound(
            self.client.query(&format!(
                "SELECT ?fields FROM {table} FINAL WHERE deleted = 0{sql} {tail}"
            )),
            values,
        )
        .fetch_all()
        .await
        .map_err(ch_err(table))
    }

    async fn document<T: for<'de> serde::Deserialize<'de>>(
        &self,
        table: &'static str,
        id: &str,
    ) -> Result<Option<T>> {
        let mut conditions = Conditions::default();
        conditions.push("id = ?", [SqlValue::Text(id.to_string())]);
        self.document_rows(table, conditions, "")
            .await?
            .first()
            .map(|row| from_json(table, &row.body))
            .transpose()
    }

    async fn document_page<T: for<'de> serde::Deserialize<'de>>(
        &self,
        table: &'static str,
        filter: &DocumentFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Stored<T>>> {
        let conditions = filter::document_page(filter, after);
        self.document_rows(table, conditions, &format!("ORDER BY id LIMIT {limit}"))
            .await?
            .iter()
            .map(|row| {
                Ok(Stored {
                    value: from_json(table, &row.body)?,
                    position: row.position(),
                })
            })
            .collect()
    }

    async fn chunk_rows(&self, conditions: Conditions, tail: &str) -> Result<Vec<ChunkRow>> {
        let Conditions { sql, values } = conditions;
        bound(
            self.client.query(&format!(
                "SELECT ?fields FROM chunks FINAL WHERE deleted = 0{sql} {tail}"
            )),
            values,
        )
        .fetch_all()
        .await
        .map_err(ch_err("chunks"))
    }

    async fn live_chunks(&self, document_id: &str) -> Result<Vec<ChunkRow>> {
        let mut conditions = Conditions::default();
        conditions.push("document_id = ?", [SqlValue::Text(document_id.to_string())]);
        self.chunk_rows(conditions, "ORDER BY position").await
    }

    async fn newest_chunk_offset(&self, document_id: &str) -> Result<Option<u64>> {
        let rows: Vec<u64> = self
            .client
            .query(
                "SELECT max(log_offset) FROM chunks FINAL WHERE document_id = ? HAVING count() > 0",
            )
            .bind(document_id)
            .fetch_all()
            .await
            .map_err(ch_err("chunks"))?;
        Ok(rows.into_iter().next())
    }

    async fn write_chunks(&self, rows: &[ChunkRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .client
            .insert::<ChunkRow>("chunks")
            .await
            .map_err(ch_err("chunks"))?;
        for row in rows {
            insert.write(row).await.map_err(ch_err("chunks"))?;
        }
        insert.end().await.map_err(ch_err("chunks"))
    }

    /// Whether a table of this database has a column.
    async fn has_column(&self, table: &str, column: &str) -> Result<bool> {
        let n: u64 = self
            .client
            .query(
                "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?",
            )
            .bind(&self.database)
            .bind(table)
            .bind(column)
            .fetch_one()
            .await
            .map_err(ch_err("system.columns"))?;
        Ok(n > 0)
    }
}

#[derive(Debug, clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct AppliedRow {
    log_partition: u32,
    log_offset: u64,
}

#[async_trait]
impl Warehouse for ClickHouseWarehouse {
    fn backend(&self) -> &'static str {
        "clickhouse"
    }

    async fn ensure_schema(&self) -> Result<()> {
        for (table, columns, order) in TABLES {
            self.client
                .query(&format!(
                    "CREATE TABLE IF NOT EXISTS {table} ({columns}) ENGINE = ReplacingMergeTree(log_offset) ORDER BY {order}"
                ))
                .execute()
                .await
                .map_err(ch_err(table))?;
        }
        // Tables made before layout 2 have no author column: they need a rebuild.
        if !self.has_column("raw_documents", "author_id").await? {
            return Err(WarehouseError::SchemaVersion {
                found: 1,
                expected: SCHEMA_VERSION,
            });
        }
        Ok(())
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
        // An older event arriving late must not undo a newer one.
        if self
            .newest_chunk_offset(document_id)
            .await?
            .is_some_and(|n| n > at.offset)
        {
            return Ok(());
        }
        let keep: std::collections::HashSet<&str> = chunks.iter().map(|c| c.id.as_str()).collect();
        let mut rows = Vec::new();
        for old in self.live_chunks(document_id).await? {
            if !keep.contains(old.id.as_str()) {
                rows.push(old.retired(at));
            }
        }
        for chunk in chunks {
            rows.push(ChunkRow::new(chunk, at)?);
        }
        self.write_chunks(&rows).await
    }

    async fn delete_document(&self, document_id: &str, at: Position) -> Result<()> {
        for table in ["raw_documents", "cleaned_documents"] {
            let mut conditions = Conditions::default();
            conditions.push("id = ?", [SqlValue::Text(document_id.to_string())]);
            conditions.push("log_offset <= ?", [SqlValue::Int(at.offset as i64)]);
            for row in self.document_rows(table, conditions, "").await? {
                self.put_document(
                    table,
                    DocumentRow {
                        log_partition: at.partition,
                        log_offset: at.offset,
                        deleted: 1,
                        ..row
                    },
                )
                .await?;
            }
        }
        let retired: Vec<ChunkRow> = self
            .live_chunks(document_id)
            .await?
            .into_iter()
            .map(|old| old.retired(at))
            .collect();
        self.write_chunks(&retired).await
    }

    async fn record_applied(&self, positions: &[Position]) -> Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .client
            .insert::<AppliedRow>("applied")
            .await
            .map_err(ch_err("applied"))?;
        for p in positions {
            insert
                .write(&AppliedRow {
                    log_partition: p.partition,
                    log_offset: p.offset,
                })
                .await
                .map_err(ch_err("applied"))?;
        }
        insert.end().await.map_err(ch_err("applied"))
    }

    async fn applied(&self) -> Result<Vec<Position>> {
        let rows: Vec<AppliedRow> = self
            .client
            .query("SELECT log_partition, max(log_offset) AS log_offset FROM applied GROUP BY log_partition ORDER BY log_partition")
            .fetch_all()
            .await
            .map_err(ch_err("applied"))?;
        Ok(rows
            .into_iter()
            .map(|r| Position {
                partition: r.log_partition,
                offset: r.log_offset,
            })
            .collect())
    }

    async fn raw(&self, id: &str) -> Result<Option<RawDocument>> {
        self.document("raw_documents", id).await
    }

    async fn cleaned(&self, id: &str) -> Result<Option<CleanedDocument>> {
        self.document("cleaned_documents", id).await
    }

    async fn chunks(&self, document_id: &str) -> Result<Vec<StoredChunk>> {
        self.live_chunks(document_id)
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
        self.chunk_rows(
            conditions,
            &format!("ORDER BY document_id, position LIMIT {limit}"),
        )
        .await?
        .iter()
        .map(ChunkRow::stored)
        .collect()
    }

    async fn counts(&self, filter: &DocumentFilter) -> Result<Counts> {
        let mut counts = [0u64; 3];
        for (slot, (table, id_column)) in counts.iter_mut().zip([
            ("raw_documents", "id"),
            ("cleaned_documents", "id"),
            ("chunks", "document_id"),
        ]) {
            let Conditions { sql, values } = filter.conditions(id_column);
            *slot = bound(
                self.client.query(&format!(
                    "SELECT count() FROM {table} FINAL WHERE deleted = 0{sql}"
                )),
                values,
            )
            .fetch_one()
            .await
            .map_err(ch_err(table))?;
        }
        Ok(Counts {
            raw: counts[0],
            cleaned: counts[1],
            chunks: counts[2],
        })
    }

    async fn drop_all(&self) -> Result<()> {
        for (table, _, _) in TABLES {
            self.client
                .query(&format!("DROP TABLE IF EXISTS {}.{table}", self.database))
                .execute()
                .await
                .map_err(ch_err(table))?;
        }
        Ok(())
    }
}
