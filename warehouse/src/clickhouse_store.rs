//! The ClickHouse warehouse, through the official `clickhouse` crate (HTTP, RowBinary).
//!
//! History is append-only: every write inserts a version row; tables are
//! `ReplacingMergeTree(version)` ordered by key and causing log position, so only a repeated
//! insert of one version collapses. A read takes the newest version of each key among those it
//! may see (`ORDER BY key, version DESC LIMIT 1 BY key` over the visible rows), then filters.
//! Compaction deletes versions by number with `ALTER TABLE ... DELETE` and waits for the
//! mutation. Servers older than 20.x (Debian's 18.16 among them) refuse the row-validation
//! settings the crate sends, so validation is switched on only for newer servers, decided from
//! `SELECT version()`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use clickhouse::query::Query;
use clickhouse::Client;
use twin_config::ClickHouseConfig;
use twin_schemas::{Chunk, CleanedDocument, RawDocument};

use crate::filter::{self, Conditions, SqlValue};
use crate::{
    breakdowns, from_json, next_version, to_json, AsOf, Breakdown, ChunkCursor, ChunkRow,
    Compaction, Counts, DatasetRecord, DocumentFilter, DocumentRow, MetricRow, Position, Result,
    RunRecord, SampleRow, Snapshot, Stored, StoredChunk, TraceRow, Warehouse, WarehouseError,
    SCHEMA_VERSION,
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
    log_partition UInt32, log_offset UInt64, version UInt64, deleted UInt8";

/// The projection's tables (what a rebuild drops): name, columns, engine.
const PROJECTION: [(&str, &str, &str); 4] = [
    (
        "raw_documents",
        DOCUMENT_TABLE,
        "ReplacingMergeTree(version) ORDER BY (id, log_partition, log_offset)",
    ),
    (
        "cleaned_documents",
        DOCUMENT_TABLE,
        "ReplacingMergeTree(version) ORDER BY (id, log_partition, log_offset)",
    ),
    (
        "chunks",
        "id String, document_id String, position Int32, kind String, platform String,
         author_id String, published_at Nullable(Int64), text String, token_count Int32,
         body String, log_partition UInt32, log_offset UInt64, version UInt64, deleted UInt8",
        "ReplacingMergeTree(version) ORDER BY (document_id, id, log_partition, log_offset)",
    ),
    (
        "applied",
        "log_partition UInt32, log_offset UInt64",
        "ReplacingMergeTree(log_offset) ORDER BY log_partition",
    ),
];

/// Snapshots and datasets: kept by a rebuild. A record's newest version wins (`FINAL`); a
/// forgotten one is a version with `deleted = 1`. Samples are stored per build of a dataset
/// (its record's version), so a rebuilt dataset never mixes with its older samples.
const CATALOG: [(&str, &str, &str); 6] = [
    (
        "snapshots",
        "id String, name Nullable(String), created_at Int64, positions String, version UInt64, deleted UInt8",
        "ReplacingMergeTree(version) ORDER BY id",
    ),
    (
        "datasets",
        "id String, name Nullable(String), kind String, snapshot_id Nullable(String),
         created_at Int64, metadata String, version UInt64, deleted UInt8",
        "ReplacingMergeTree(version) ORDER BY id",
    ),
    (
        "dataset_samples",
        "dataset_id String, build UInt64, split String, idx UInt32, body String",
        "MergeTree ORDER BY (dataset_id, build, split, idx)",
    ),
    (
        "runs",
        "id String, name Nullable(String), status String, created_at Int64, updated_at Int64,
         body String, version UInt64, deleted UInt8",
        "ReplacingMergeTree(version) ORDER BY id",
    ),
    (
        "run_metrics",
        "run_id String, kind String, step UInt64, body String, version UInt64",
        "ReplacingMergeTree(version) ORDER BY (run_id, kind, step)",
    ),
    (
        "traces",
        "id String, created_at Int64, route String, model String, body String, version UInt64",
        "ReplacingMergeTree(version) ORDER BY (created_at, id)",
    ),
];

/// The key columns of a projection table.
fn key_of(table: &str) -> &'static str {
    if table == "chunks" {
        "document_id, id"
    } else {
        "id"
    }
}

/// The newest version of each key of `table` seen `as_of`, as a subquery, with its values.
fn newest(table: &str, as_of: &AsOf) -> (String, Vec<SqlValue>) {
    let Conditions { sql, values } = as_of.visible();
    let key = key_of(table);
    (
        format!(
            "(SELECT * FROM {table} WHERE 1 = 1{sql} ORDER BY {key}, version DESC LIMIT 1 BY {key})"
        ),
        values,
    )
}

/// How long a compaction waits for ClickHouse to apply its deletions.
const MUTATION_WAIT: Duration = Duration::from_secs(120);

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

    async fn insert<R>(&self, table: &str, rows: &[R]) -> Result<()>
    where
        R: clickhouse::Row + serde::Serialize + for<'a> clickhouse::RowWrite<Value<'a> = R>,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .client
            .insert::<R>(table)
            .await
            .map_err(ch_err(table))?;
        for row in rows {
            insert.write(row).await.map_err(ch_err(table))?;
        }
        insert.end().await.map_err(ch_err(table))
    }

    /// Whether an event of `at`'s partition at or after `at` already wrote rows of the key.
    async fn already_applied(
        &self,
        table: &str,
        key_column: &str,
        key: &str,
        at: Position,
    ) -> Result<bool> {
        let n: u64 = self
            .client
            .query(&format!(
                "SELECT count() FROM {table} WHERE {key_column} = ? AND log_partition = ? AND log_offset >= ?"
            ))
            .bind(key)
            .bind(at.partition)
            .bind(at.offset)
            .fetch_one()
            .await
            .map_err(ch_err(table))?;
        Ok(n > 0)
    }

    async fn put_document(&self, table: &str, row: DocumentRow) -> Result<()> {
        if self
            .already_applied(table, "id", &row.id, row.position())
            .await?
        {
            return Ok(());
        }
        self.insert(table, &[row]).await
    }

    async fn document_rows(
        &self,
        table: &'static str,
        as_of: &AsOf,
        conditions: Conditions,
        tail: &str,
    ) -> Result<Vec<DocumentRow>> {
        let (from, mut values) = newest(table, as_of);
        let Conditions { sql, values: more } = conditions;
        values.extend(more);
        bound(
            self.client.query(&format!(
                "SELECT ?fields FROM {from} WHERE deleted = 0{sql} {tail}"
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
        self.document_rows(table, &AsOf::Latest, conditions, "")
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
            &format!("ORDER BY id LIMIT {limit}"),
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
        tail: &str,
    ) -> Result<Vec<ChunkRow>> {
        let (from, mut values) = newest("chunks", as_of);
        let Conditions { sql, values: more } = conditions;
        values.extend(more);
        bound(
            self.client.query(&format!(
                "SELECT ?fields FROM {from} WHERE deleted = 0{sql} {tail}"
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
        self.chunk_rows(&AsOf::Latest, conditions, "ORDER BY position")
            .await
    }

    /// The newest version of a document, deleted or not.
    async fn newest_document(&self, table: &str, id: &str) -> Result<Option<DocumentRow>> {
        let rows: Vec<DocumentRow> = self
            .client
            .query(&format!(
                "SELECT ?fields FROM {table} WHERE id = ? ORDER BY version DESC LIMIT 1"
            ))
            .bind(id)
            .fetch_all()
            .await
            .map_err(ch_err(table))?;
        Ok(rows.into_iter().next())
    }

    /// Make `chunks` the document's live chunks: retire the live ones not among them, add
    /// versions of the ones that changed. An unchanged chunk keeps its version: every snapshot
    /// that saw it still does.
    async fn write_chunks(&self, document_id: &str, chunks: &[Chunk], at: Position) -> Result<()> {
        let live = self.live_chunks(document_id).await?;
        let mut rows = Vec::new();
        for old in &live {
            if !chunks.iter().any(|c| c.id == old.id) {
                rows.push(old.clone().retired(at));
            }
        }
        for chunk in chunks {
            let row = ChunkRow::new(chunk, at)?;
            if !live
                .iter()
                .any(|old| old.id == row.id && old.body == row.body)
            {
                rows.push(row);
            }
        }
        self.insert("chunks", &rows).await
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

    /// Delete rows by version number, and wait until ClickHouse has applied it.
    async fn delete_versions(&self, table: &str, versions: &[u64]) -> Result<()> {
        for batch in versions.chunks(10_000) {
            let list: Vec<String> = batch.iter().map(u64::to_string).collect();
            self.client
                .query(&format!(
                    "ALTER TABLE {table} DELETE WHERE version IN ({})",
                    list.join(", ")
                ))
                .execute()
                .await
                .map_err(ch_err(table))?;
        }
        self.wait_for_mutations(table).await
    }

    async fn wait_for_mutations(&self, table: &str) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            let pending: u64 = self
                .client
                .query("SELECT count() FROM system.mutations WHERE database = ? AND table = ? AND is_done = 0")
                .bind(&self.database)
                .bind(table)
                .fetch_one()
                .await
                .map_err(ch_err("system.mutations"))?;
            if pending == 0 {
                return Ok(());
            }
            if started.elapsed() > MUTATION_WAIT {
                return Err(WarehouseError::Invalid(format!(
                    "{table}: ClickHouse has not applied a deletion after {}s",
                    MUTATION_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The version of the live record `id` of a catalog table.
    async fn record_version(&self, table: &str, id: &str) -> Result<Option<u64>> {
        let rows: Vec<u64> = self
            .client
            .query(&format!(
                "SELECT version FROM {table} FINAL WHERE id = ? AND deleted = 0"
            ))
            .bind(id)
            .fetch_all()
            .await
            .map_err(ch_err(table))?;
        Ok(rows.into_iter().next())
    }
}

#[derive(Debug, clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct AppliedRow {
    log_partition: u32,
    log_offset: u64,
}

#[derive(Debug, clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct SnapshotRow {
    id: String,
    name: Option<String>,
    created_at: i64,
    positions: String,
    version: u64,
    deleted: u8,
}

#[derive(Debug, clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct DatasetRow {
    id: String,
    name: Option<String>,
    kind: String,
    snapshot_id: Option<String>,
    created_at: i64,
    metadata: String,
    version: u64,
    deleted: u8,
}

#[derive(Debug, clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct RunRow {
    id: String,
    name: Option<String>,
    status: String,
    created_at: i64,
    updated_at: i64,
    body: String,
    version: u64,
    deleted: u8,
}

#[derive(Debug, clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct TraceTableRow {
    id: String,
    created_at: i64,
    route: String,
    model: String,
    body: String,
    version: u64,
}

#[derive(Debug, clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct RunMetricRow {
    run_id: String,
    kind: String,
    step: u64,
    body: String,
    version: u64,
}

#[derive(Debug, clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct DatasetSampleRow {
    dataset_id: String,
    build: u64,
    split: String,
    idx: u32,
    body: String,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct GroupRow {
    author_id: String,
    kind: String,
    platform: String,
    n: u64,
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct KeyVersions {
    versions: Vec<u64>,
    newest: u64,
    newest_deleted: u8,
}

#[async_trait]
impl Warehouse for ClickHouseWarehouse {
    fn backend(&self) -> &'static str {
        "clickhouse"
    }

    async fn ensure_schema(&self) -> Result<()> {
        // Tables of an older layout: no author column (1), no version column (2).
        let exists: u64 = self
            .client
            .query(
                "SELECT count() FROM system.tables WHERE database = ? AND name = 'raw_documents'",
            )
            .bind(&self.database)
            .fetch_one()
            .await
            .map_err(ch_err("system.tables"))?;
        if exists > 0 {
            let found = if !self.has_column("raw_documents", "author_id").await? {
                Some(1)
            } else if !self.has_column("raw_documents", "version").await? {
                Some(2)
            } else {
                None
            };
            if let Some(found) = found {
                return Err(WarehouseError::SchemaVersion {
                    found,
                    expected: SCHEMA_VERSION,
                });
            }
        }
        for (table, columns, engine) in PROJECTION.iter().chain(CATALOG.iter()) {
            self.client
                .query(&format!(
                    "CREATE TABLE IF NOT EXISTS {table} ({columns}) ENGINE = {engine}"
                ))
                .execute()
                .await
                .map_err(ch_err(table))?;
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
        if self
            .already_applied("chunks", "document_id", document_id, at)
            .await?
        {
            return Ok(());
        }
        self.write_chunks(document_id, chunks, at).await
    }

    async fn put_recleaned(
        &self,
        doc: &CleanedDocument,
        chunks: &[Chunk],
        at: Position,
    ) -> Result<()> {
        // A version of the same cause is superseded by its larger version number.
        let row = DocumentRow::cleaned(doc, at)?;
        let newest = self.newest_document("cleaned_documents", &doc.id).await?;
        if !newest.is_some_and(|n| n.deleted == 0 && n.body == row.body) {
            self.insert("cleaned_documents", &[row]).await?;
        }
        self.write_chunks(&doc.id, chunks, at).await
    }

    async fn superseded(&self, document_id: &str, at: Position) -> Result<bool> {
        let next = Position {
            partition: at.partition,
            offset: at.offset + 1,
        };
        self.already_applied("raw_documents", "id", document_id, next)
            .await
    }

    async fn delete_document(&self, document_id: &str, at: Position) -> Result<()> {
        for table in ["raw_documents", "cleaned_documents"] {
            if self.already_applied(table, "id", document_id, at).await? {
                continue;
            }
            if let Some(newest) = self.newest_document(table, document_id).await? {
                if newest.deleted == 0 {
                    self.insert(table, &[newest.retired(at)]).await?;
                }
            }
        }
        if self
            .already_applied("chunks", "document_id", document_id, at)
            .await?
        {
            return Ok(());
        }
        let retired: Vec<ChunkRow> = self
            .live_chunks(document_id)
            .await?
            .into_iter()
            .map(|old| old.retired(at))
            .collect();
        self.insert("chunks", &retired).await
    }

    async fn record_applied(&self, positions: &[Position]) -> Result<()> {
        let rows: Vec<AppliedRow> = positions
            .iter()
            .map(|p| AppliedRow {
                log_partition: p.partition,
                log_offset: p.offset,
            })
            .collect();
        self.insert("applied", &rows).await
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
        self.chunk_rows(
            as_of,
            conditions,
            &format!("ORDER BY document_id, position LIMIT {limit}"),
        )
        .await?
        .iter()
        .map(ChunkRow::stored)
        .collect()
    }

    async fn counts(&self, as_of: &AsOf, filter: &DocumentFilter) -> Result<Counts> {
        let mut counts = [0u64; 3];
        for (slot, (table, id_column)) in counts.iter_mut().zip([
            ("raw_documents", "id"),
            ("cleaned_documents", "id"),
            ("chunks", "document_id"),
        ]) {
            let (from, mut values) = newest(table, as_of);
            let Conditions { sql, values: more } = filter.conditions(id_column);
            values.extend(more);
            *slot = bound(
                self.client.query(&format!(
                    "SELECT count() FROM {from} WHERE deleted = 0{sql}"
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

    async fn breakdown(&self, as_of: &AsOf) -> Result<Vec<Breakdown>> {
        let mut groups: BTreeMap<(String, String, String), (u64, u64)> = BTreeMap::new();
        for table in ["cleaned_documents", "chunks"] {
            let (from, values) = newest(table, as_of);
            let rows: Vec<GroupRow> = bound(
                self.client.query(&format!(
                    "SELECT author_id, kind, platform, count() AS n FROM {from} WHERE deleted = 0
                     GROUP BY author_id, kind, platform"
                )),
                values,
            )
            .fetch_all()
            .await
            .map_err(ch_err(table))?;
            for row in rows {
                let slot = groups
                    .entry((row.author_id, row.kind, row.platform))
                    .or_default();
                if table == "chunks" {
                    slot.1 = row.n;
                } else {
                    slot.0 = row.n;
                }
            }
        }
        Ok(breakdowns(groups))
    }

    async fn compact(&self, floor: &[Position]) -> Result<Compaction> {
        let floor = AsOf::Positions(floor.to_vec());
        let mut removed = Compaction::default();
        for table in ["raw_documents", "cleaned_documents", "chunks"] {
            let Conditions { sql, values } = floor.visible();
            let key = key_of(table);
            let groups: Vec<KeyVersions> = bound(
                self.client.query(&format!(
                    "SELECT groupArray(version) AS versions, max(version) AS newest,
                            argMax(deleted, version) AS newest_deleted
                     FROM {table} WHERE 1 = 1{sql} GROUP BY {key}"
                )),
                values,
            )
            .fetch_all()
            .await
            .map_err(ch_err(table))?;
            // Seen at the floor, and either not the newest seen there or a retirement.
            let doomed: Vec<u64> = groups
                .iter()
                .flat_map(|g| {
                    g.versions
                        .iter()
                        .copied()
                        .filter(move |v| *v != g.newest || g.newest_deleted == 1)
                })
                .collect();
            self.delete_versions(table, &doomed).await?;
            if table == "chunks" {
                removed.chunks += doomed.len() as u64;
            } else {
                removed.documents += doomed.len() as u64;
            }
        }
        Ok(removed)
    }

    async fn drop_all(&self) -> Result<()> {
        for (table, _, _) in PROJECTION {
            self.client
                .query(&format!("DROP TABLE IF EXISTS {}.{table}", self.database))
                .execute()
                .await
                .map_err(ch_err(table))?;
        }
        Ok(())
    }

    async fn put_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let row = SnapshotRow {
            id: snapshot.id.clone(),
            name: snapshot.name.clone(),
            created_at: snapshot.created_at,
            positions: to_json("snapshots", &snapshot.positions)?,
            version: next_version(),
            deleted: 0,
        };
        self.insert("snapshots", &[row]).await
    }

    async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let rows: Vec<SnapshotRow> = self
            .client
            .query("SELECT ?fields FROM snapshots FINAL WHERE deleted = 0 ORDER BY created_at, id")
            .fetch_all()
            .await
            .map_err(ch_err("snapshots"))?;
        rows.into_iter()
            .map(|r| {
                Ok(Snapshot {
                    id: r.id,
                    name: r.name,
                    created_at: r.created_at,
                    positions: from_json("snapshots", &r.positions)?,
                })
            })
            .collect()
    }

    async fn delete_snapshot(&self, id: &str) -> Result<bool> {
        let Some(snapshot) = self.snapshots().await?.into_iter().find(|s| s.id == id) else {
            return Ok(false);
        };
        let row = SnapshotRow {
            id: snapshot.id,
            name: snapshot.name,
            created_at: snapshot.created_at,
            positions: String::new(),
            version: next_version(),
            deleted: 1,
        };
        self.insert("snapshots", &[row]).await?;
        Ok(true)
    }

    async fn put_dataset(&self, dataset: &DatasetRecord, samples: &[SampleRow]) -> Result<()> {
        let build = next_version();
        let rows: Vec<DatasetSampleRow> = samples
            .iter()
            .map(|s| DatasetSampleRow {
                dataset_id: dataset.id.clone(),
                build,
                split: s.split.clone(),
                idx: s.index,
                body: s.body.clone(),
            })
            .collect();
        // Samples first: the record that points at them is written once they are all in.
        self.insert("dataset_samples", &rows).await?;
        let record = DatasetRow {
            id: dataset.id.clone(),
            name: dataset.name.clone(),
            kind: dataset.kind.clone(),
            snapshot_id: dataset.snapshot_id.clone(),
            created_at: dataset.created_at,
            metadata: dataset.metadata.clone(),
            version: build,
            deleted: 0,
        };
        self.insert("datasets", &[record]).await
    }

    async fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        let rows: Vec<DatasetRow> = self
            .client
            .query("SELECT ?fields FROM datasets FINAL WHERE deleted = 0 ORDER BY created_at, id")
            .fetch_all()
            .await
            .map_err(ch_err("datasets"))?;
        Ok(rows
            .into_iter()
            .map(|r| DatasetRecord {
                id: r.id,
                name: r.name,
                kind: r.kind,
                snapshot_id: r.snapshot_id,
                created_at: r.created_at,
                metadata: r.metadata,
            })
            .collect())
    }

    async fn dataset_samples(&self, id: &str) -> Result<Vec<SampleRow>> {
        let Some(build) = self.record_version("datasets", id).await? else {
            return Ok(Vec::new());
        };
        let rows: Vec<DatasetSampleRow> = self
            .client
            .query("SELECT ?fields FROM dataset_samples WHERE dataset_id = ? AND build = ? ORDER BY split, idx")
            .bind(id)
            .bind(build)
            .fetch_all()
            .await
            .map_err(ch_err("dataset_samples"))?;
        Ok(rows
            .into_iter()
            .map(|r| SampleRow {
                split: r.split,
                index: r.idx,
                body: r.body,
            })
            .collect())
    }

    async fn delete_dataset(&self, id: &str) -> Result<bool> {
        let Some(dataset) = self.datasets().await?.into_iter().find(|d| d.id == id) else {
            return Ok(false);
        };
        let tombstone = DatasetRow {
            id: dataset.id,
            name: dataset.name,
            kind: dataset.kind,
            snapshot_id: dataset.snapshot_id,
            created_at: dataset.created_at,
            metadata: String::new(),
            version: next_version(),
            deleted: 1,
        };
        self.insert("datasets", &[tombstone]).await?;
        // The samples go in the background: nothing reads a forgotten build.
        self.client
            .query("ALTER TABLE dataset_samples DELETE WHERE dataset_id = ?")
            .bind(id)
            .execute()
            .await
            .map_err(ch_err("dataset_samples"))?;
        Ok(true)
    }

    async fn put_run(&self, run: &RunRecord) -> Result<()> {
        let row = RunRow {
            id: run.id.clone(),
            name: run.name.clone(),
            status: run.status.clone(),
            created_at: run.created_at,
            updated_at: run.updated_at,
            body: run.body.clone(),
            version: next_version(),
            deleted: 0,
        };
        self.insert("runs", &[row]).await
    }

    async fn runs(&self) -> Result<Vec<RunRecord>> {
        let rows: Vec<RunRow> = self
            .client
            .query("SELECT ?fields FROM runs FINAL WHERE deleted = 0 ORDER BY created_at, id")
            .fetch_all()
            .await
            .map_err(ch_err("runs"))?;
        Ok(rows
            .into_iter()
            .map(|r| RunRecord {
                id: r.id,
                name: r.name,
                status: r.status,
                created_at: r.created_at,
                updated_at: r.updated_at,
                body: r.body,
            })
            .collect())
    }

    async fn delete_run(&self, id: &str) -> Result<bool> {
        let Some(run) = self.runs().await?.into_iter().find(|r| r.id == id) else {
            return Ok(false);
        };
        let tombstone = RunRow {
            id: run.id,
            name: run.name,
            status: run.status,
            created_at: run.created_at,
            updated_at: run.updated_at,
            body: String::new(),
            version: next_version(),
            deleted: 1,
        };
        self.insert("runs", &[tombstone]).await?;
        self.client
            .query("ALTER TABLE run_metrics DELETE WHERE run_id = ?")
            .bind(id)
            .execute()
            .await
            .map_err(ch_err("run_metrics"))?;
        // A mutation runs in the background: wait, so that the run's metrics are gone when
        // this returns.
        self.wait_for_mutations("run_metrics").await?;
        Ok(true)
    }

    async fn put_run_metrics(&self, rows: &[MetricRow]) -> Result<()> {
        let rows: Vec<RunMetricRow> = rows
            .iter()
            .map(|r| RunMetricRow {
                run_id: r.run_id.clone(),
                kind: r.kind.clone(),
                step: r.step,
                body: r.body.clone(),
                version: next_version(),
            })
            .collect();
        self.insert("run_metrics", &rows).await
    }

    async fn run_metrics(&self, run_id: &str) -> Result<Vec<MetricRow>> {
        let rows: Vec<RunMetricRow> = self
            .client
            .query("SELECT ?fields FROM run_metrics FINAL WHERE run_id = ? ORDER BY kind, step")
            .bind(run_id)
            .fetch_all()
            .await
            .map_err(ch_err("run_metrics"))?;
        Ok(rows
            .into_iter()
            .map(|r| MetricRow {
                run_id: r.run_id,
                kind: r.kind,
                step: r.step,
                body: r.body,
            })
            .collect())
    }

    async fn put_traces(&self, rows: &[TraceRow]) -> Result<()> {
        let rows: Vec<TraceTableRow> = rows
            .iter()
            .map(|r| TraceTableRow {
                id: r.id.clone(),
                created_at: r.created_at,
                route: r.route.clone(),
                model: r.model.clone(),
                body: r.body.clone(),
                version: next_version(),
            })
            .collect();
        self.insert("traces", &rows).await
    }

    async fn traces(&self, since: i64, limit: usize) -> Result<Vec<TraceRow>> {
        let rows: Vec<TraceTableRow> = self
            .client
            .query(
                "SELECT ?fields FROM traces FINAL WHERE created_at >= ? \
                 ORDER BY created_at DESC, id DESC LIMIT ?",
            )
            .bind(since)
            .bind(limit as u64)
            .fetch_all()
            .await
            .map_err(ch_err("traces"))?;
        Ok(rows
            .into_iter()
            .map(|r| TraceRow {
                id: r.id,
                created_at: r.created_at,
                route: r.route,
                model: r.model,
                body: r.body,
            })
            .collect())
    }
}
