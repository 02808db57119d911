//! The ClickHouse warehouse, through the official `clickhouse` crate (HTTP, RowBinary).
//!
//! Tables are `ReplacingMergeTree(version)` with the log offset as version: rows of the same key
//! collapse to the newest, and reads use `FINAL` so they never see an older one. A retired row is
//! a newer version with `deleted = 1`. Servers older than 20.x (Debian's 18.16 among them)
//! refuse the row-validation settings the crate sends, so validation is switched on only for
//! newer servers, decided from `SELECT version()`.

use async_trait::async_trait;
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use twin_config::ClickHouseConfig;
use twin_schemas::{Chunk, CleanedDocument, RawDocument};

use super::{from_json, to_json, Counts, DocumentRow, LogPosition, StoredChunk, Warehouse};
use crate::StreamError;

/// The ClickHouse warehouse.
pub struct ClickHouseWarehouse {
    client: Client,
    database: String,
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct ChunkRow {
    id: String,
    document_id: String,
    position: i32,
    text: String,
    token_count: i32,
    body: String,
    log_partition: u32,
    log_offset: u64,
    deleted: u8,
}

#[derive(Debug, Row, Deserialize)]
struct ChunkKey {
    id: String,
    position: i32,
    text: String,
    token_count: i32,
    body: String,
}

impl ChunkKey {
    /// The row that retires this chunk: a newer version marked deleted.
    fn retired(self, document_id: &str, at: LogPosition) -> ChunkRow {
        ChunkRow {
            id: self.id,
            document_id: document_id.to_string(),
            position: self.position,
            text: self.text,
            token_count: self.token_count,
            body: self.body,
            log_partition: at.partition,
            log_offset: at.offset,
            deleted: 1,
        }
    }
}

fn ch_err(context: &str) -> impl Fn(clickhouse::error::Error) -> StreamError + '_ {
    move |e| StreamError::Warehouse(format!("clickhouse: {context}: {e}"))
}

impl ClickHouseWarehouse {
    /// Connect, create the database if missing, and pick the row-validation mode by version.
    pub async fn connect(config: &ClickHouseConfig) -> Result<Self, StreamError> {
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

    async fn put_document(&self, table: &str, row: DocumentRow) -> Result<(), StreamError> {
        let mut insert = self
            .client
            .insert::<DocumentRow>(table)
            .await
            .map_err(ch_err(table))?;
        insert.write(&row).await.map_err(ch_err(table))?;
        insert.end().await.map_err(ch_err(table))
    }

    async fn document_body(&self, table: &str, id: &str) -> Result<Option<String>, StreamError> {
        let rows: Vec<String> = self
            .client
            .query(&format!(
                "SELECT body FROM {table} FINAL WHERE id = ? AND deleted = 0"
            ))
            .bind(id)
            .fetch_all()
            .await
            .map_err(ch_err(table))?;
        Ok(rows.into_iter().next())
    }

    async fn live_chunks(&self, document_id: &str) -> Result<Vec<ChunkKey>, StreamError> {
        self.client
            .query("SELECT id, position, text, token_count, body FROM chunks FINAL WHERE document_id = ? AND deleted = 0 ORDER BY position")
            .bind(document_id)
            .fetch_all()
            .await
            .map_err(ch_err("chunks"))
    }

    async fn newest_chunk_offset(&self, document_id: &str) -> Result<Option<u64>, StreamError> {
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

    async fn write_chunks(&self, rows: &[ChunkRow]) -> Result<(), StreamError> {
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
}

/// A database name safe to splice into DDL.
fn identifier(name: &str) -> Result<&str, StreamError> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(name)
    } else {
        Err(StreamError::Warehouse(format!(
            "database name {name:?}: use letters, digits and _"
        )))
    }
}

const TABLES: [(&str, &str); 3] = [
    (
        "raw_documents",
        "id String, kind String, platform String, url String, content_hash String, body String,
         log_partition UInt32, log_offset UInt64, deleted UInt8",
    ),
    (
        "cleaned_documents",
        "id String, kind String, platform String, url String, content_hash String, body String,
         log_partition UInt32, log_offset UInt64, deleted UInt8",
    ),
    (
        "chunks",
        "id String, document_id String, position Int32, text String, token_count Int32, body String,
         log_partition UInt32, log_offset UInt64, deleted UInt8",
    ),
];

#[async_trait]
impl Warehouse for ClickHouseWarehouse {
    fn backend(&self) -> &'static str {
        "clickhouse"
    }

    async fn ensure_schema(&self) -> Result<(), StreamError> {
        for (table, columns) in TABLES {
            let order = if table == "chunks" {
                "(document_id, id)"
            } else {
                "id"
            };
            self.client
                .query(&format!(
                    "CREATE TABLE IF NOT EXISTS {table} ({columns}) ENGINE = ReplacingMergeTree(log_offset) ORDER BY {order}"
                ))
                .execute()
                .await
                .map_err(ch_err(table))?;
        }
        Ok(())
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
                rows.push(old.retired(document_id, at));
            }
        }
        for chunk in chunks {
            rows.push(ChunkRow {
                id: chunk.id.clone(),
                document_id: document_id.to_string(),
                position: chunk.position,
                text: chunk.text.clone(),
                token_count: chunk.token_count,
                body: to_json(chunk)?,
                log_partition: at.partition,
                log_offset: at.offset,
                deleted: 0,
            });
        }
        self.write_chunks(&rows).await
    }

    async fn delete_document(&self, document_id: &str, at: LogPosition) -> Result<(), StreamError> {
        for table in ["raw_documents", "cleaned_documents"] {
            let rows: Vec<DocumentRow> = self
                .client
                .query(&format!("SELECT ?fields FROM {table} FINAL WHERE id = ? AND deleted = 0 AND log_offset <= ?"))
                .bind(document_id)
                .bind(at.offset)
                .fetch_all()
                .await
                .map_err(ch_err(table))?;
            for row in rows {
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
            .map(|old| old.retired(document_id, at))
            .collect();
        self.write_chunks(&retired).await
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
        let rows: Vec<ChunkRow> = self
            .client
            .query("SELECT ?fields FROM chunks FINAL WHERE document_id = ? AND deleted = 0 ORDER BY position")
            .bind(document_id)
            .fetch_all()
            .await
            .map_err(ch_err("chunks"))?;
        rows.into_iter()
            .map(|row| {
                Ok(StoredChunk {
                    chunk: from_json(&row.body)?,
                    position: LogPosition {
                        partition: row.log_partition,
                        offset: row.log_offset,
                    },
                })
            })
            .collect()
    }

    async fn counts(&self) -> Result<Counts, StreamError> {
        let mut counts = [0u64; 3];
        for (slot, (table, _)) in counts.iter_mut().zip(TABLES) {
            *slot = self
                .client
                .query(&format!(
                    "SELECT count() FROM {table} FINAL WHERE deleted = 0"
                ))
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

    async fn drop_all(&self) -> Result<(), StreamError> {
        for (table, _) in TABLES {
            self.client
                .query(&format!("DROP TABLE IF EXISTS {}.{table}", self.database))
                .execute()
                .await
                .map_err(ch_err(table))?;
        }
        Ok(())
    }
}
