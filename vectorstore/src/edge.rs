//! Qdrant Edge: Qdrant's storage and search engine in-process, one shard (a WAL and segments on
//! disk) per collection under `DATA_DIR/vectors/COLLECTION`. Its calls are blocking; they run on
//! tokio's blocking pool.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::external::uuid::Uuid;
use qdrant_edge::{
    Condition, CountRequest, CreateIndex, Distance, EdgeConfigBuilder, EdgeShard,
    EdgeVectorParamsBuilder, FieldCondition, FieldIndexOperations, Filter, JsonPath, Match,
    NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations,
    PointOperations, PointStruct, QueryEnum, Range, SearchRequest, UpdateOperation, ValueVariants,
    WithPayloadInterface,
};
use twin_schemas::{DocumentKind, EmbeddedChunk};

use crate::{
    collection, point_uuid, ChunkPayload, Hit, SearchFilter, VectorStore, VectorStoreError, KINDS,
};

/// Payload fields retrieval filters on, indexed as keywords.
const KEYWORD_FIELDS: [&str; 3] = ["document_id", "author_id", "platform"];

/// The embedded vector store.
pub struct EdgeVectorStore {
    root: PathBuf,
    prefix: String,
    shards: Mutex<HashMap<String, Arc<EdgeShard>>>,
    /// The open lock file: its exclusive lock keeps other processes out while this store lives.
    _lock: std::fs::File,
}

/// The lock file under the store's folder.
const LOCK_FILE: &str = ".lock";

fn edge_err(
    operation: impl Into<String>,
) -> impl FnOnce(qdrant_edge::OperationError) -> VectorStoreError {
    let operation = operation.into();
    move |e| VectorStoreError::Store {
        backend: "edge",
        operation,
        retryable: false,
        source: Box::new(e),
    }
}

/// A payload field's path (our field names are plain identifiers).
fn payload_path(field: &str) -> Result<JsonPath, VectorStoreError> {
    field
        .parse()
        .map_err(|_| VectorStoreError::Invalid(format!("{field:?} is not a payload path")))
}

fn filter_of(filter: &SearchFilter) -> Result<Option<Filter>, VectorStoreError> {
    let mut must = filter
        .conditions()
        .iter()
        .map(|(field, value)| {
            Ok(Condition::Field(FieldCondition::new_match(
                payload_path(field)?,
                Match::new_value(ValueVariants::String(value.clone())),
            )))
        })
        .collect::<Result<Vec<Condition>, VectorStoreError>>()?;
    if let Some((after, before)) = filter.published() {
        let bound = |v: Option<i64>| v.map(|v| OrderedFloat(v as f64));
        must.push(Condition::Field(FieldCondition::new_range(
            payload_path("published_at")?,
            Range {
                gte: bound(after),
                lte: bound(before),
                lt: None,
                gt: None,
            },
        )));
    }
    Ok((!must.is_empty()).then(|| Filter {
        must: Some(must),
        ..Default::default()
    }))
}

impl EdgeVectorStore {
    /// The store with its collections under `root`, named with `prefix`. Qdrant Edge's shards
    /// are not safe to open from two processes, so the folder is locked (an exclusive lock on
    /// `root/.lock`, released when the store is dropped or the process dies); a second process
    /// gets [`VectorStoreError::Locked`].
    pub fn open(root: PathBuf, prefix: &str) -> Result<Self, VectorStoreError> {
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| VectorStoreError::Io { path, source }
        };
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let lock_path = root.join(LOCK_FILE);
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&lock_path)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "unknown".into());
                return Err(VectorStoreError::Locked { path: root, holder });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        // Who holds it, for the message another process gets.
        use std::io::{Seek, Write};
        lock.set_len(0)
            .and_then(|_| lock.seek(std::io::SeekFrom::Start(0)))
            .and_then(|_| write!(lock, "{}", std::process::id()))
            .map_err(io(&lock_path))?;
        Ok(Self {
            root,
            prefix: prefix.to_string(),
            shards: Mutex::new(HashMap::new()),
            _lock: lock,
        })
    }

    /// The shard of a collection, opened (or created for `dimension`) on first use.
    fn shard(
        &self,
        name: &str,
        dimension: Option<usize>,
    ) -> Result<Arc<EdgeShard>, VectorStoreError> {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shard) = shards.get(name) {
            return Ok(shard.clone());
        }
        let path = self.root.join(name);
        let config = dimension.map(|dimension| {
            EdgeConfigBuilder::new()
                .vector(
                    "",
                    EdgeVectorParamsBuilder::new(dimension, Distance::Cosine).build(),
                )
                .build()
        });
        let shard = if path.join("segments").exists() {
            // With the configuration at hand, a shard whose creation a crash cut short (its
            // folders made, no segment finished) loads as an empty one instead of failing.
            EdgeShard::load(&path, config).map_err(edge_err(format!("open {}", path.display())))?
        } else {
            let config = config.ok_or_else(|| {
                VectorStoreError::Invalid(format!("collection {name} does not exist yet"))
            })?;
            std::fs::create_dir_all(&path).map_err(|source| VectorStoreError::Io {
                path: path.clone(),
                source,
            })?;
            EdgeShard::new(&path, config).map_err(edge_err(format!("create {}", path.display())))?
        };
        if dimension.is_some() {
            // Again on every start: a crash may have come between the shard and its indexes.
            for field in KEYWORD_FIELDS {
                shard
                    .update(UpdateOperation::FieldIndexOperation(
                        FieldIndexOperations::CreateIndex(CreateIndex {
                            field_name: payload_path(field)?,
                            field_schema: Some(PayloadFieldSchema::FieldType(
                                PayloadSchemaType::Keyword,
                            )),
                        }),
                    ))
                    .map_err(edge_err(format!("index {field} of {name}")))?;
            }
        }
        let shard = Arc::new(shard);
        shards.insert(name.to_string(), shard.clone());
        Ok(shard)
    }

    /// Run a blocking call on a collection's shard.
    async fn on_shard<T: Send + 'static>(
        &self,
        name: String,
        f: impl FnOnce(&EdgeShard) -> Result<T, VectorStoreError> + Send + 'static,
    ) -> Result<T, VectorStoreError> {
        let shard = self.shard(&name, None)?;
        tokio::task::spawn_blocking(move || f(&shard))
            .await
            .map_err(|e| VectorStoreError::Invalid(format!("vector store task failed: {e}")))?
    }
}

#[async_trait]
impl VectorStore for EdgeVectorStore {
    fn backend(&self) -> &'static str {
        "edge"
    }

    async fn ensure_collections(&self, dimension: usize) -> Result<(), VectorStoreError> {
        for kind in KINDS {
            self.shard(&collection(&self.prefix, kind), Some(dimension))?;
        }
        Ok(())
    }

    async fn replace_document(
        &self,
        kind: DocumentKind,
        document_id: &str,
        points: &[EmbeddedChunk],
    ) -> Result<(), VectorStoreError> {
        let mut structs = Vec::with_capacity(points.len());
        for p in points {
            let uuid = Uuid::parse_str(&point_uuid(&p.chunk.id)?)
                .map_err(|e| VectorStoreError::Invalid(format!("chunk id {}: {e}", p.chunk.id)))?;
            let payload = serde_json::to_value(ChunkPayload::of(p))
                .map_err(|e| VectorStoreError::Invalid(format!("payload: {e}")))?;
            structs
                .push(PointStruct::new(PointId::Uuid(uuid), p.embedding.clone(), payload).into());
        }
        let filter = filter_of(&SearchFilter {
            document_id: Some(document_id.to_string()),
            ..SearchFilter::default()
        })?;
        let name = collection(&self.prefix, kind);
        self.on_shard(name, move |shard| {
            if let Some(filter) = filter {
                shard
                    .update(UpdateOperation::PointOperation(
                        PointOperations::DeletePointsByFilter(filter),
                    ))
                    .map_err(edge_err("delete a document's points"))?;
            }
            if !structs.is_empty() {
                shard
                    .update(UpdateOperation::PointOperation(
                        PointOperations::UpsertPoints(PointInsertOperations::PointsList(structs)),
                    ))
                    .map_err(edge_err("upsert points"))?;
            }
            Ok(())
        })
        .await
    }

    async fn delete_document(&self, document_id: &str) -> Result<(), VectorStoreError> {
        for kind in KINDS {
            let filter = filter_of(&SearchFilter {
                document_id: Some(document_id.to_string()),
                ..SearchFilter::default()
            })?;
            self.on_shard(collection(&self.prefix, kind), move |shard| {
                if let Some(filter) = filter {
                    shard
                        .update(UpdateOperation::PointOperation(
                            PointOperations::DeletePointsByFilter(filter),
                        ))
                        .map_err(edge_err("delete a document's points"))?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    async fn search(
        &self,
        kind: DocumentKind,
        vector: &[f32],
        limit: usize,
        filter: &SearchFilter,
    ) -> Result<Vec<Hit>, VectorStoreError> {
        let request = SearchRequest {
            query: QueryEnum::Nearest(NamedQuery::default_dense(vector.to_vec())),
            filter: filter_of(filter)?,
            params: None,
            limit,
            offset: 0,
            with_payload: Some(WithPayloadInterface::Bool(true)),
            with_vector: None,
            score_threshold: None,
        };
        self.on_shard(collection(&self.prefix, kind), move |shard| {
            let points = shard.search(request).map_err(edge_err("search"))?;
            points
                .into_iter()
                .map(|p| {
                    let payload = p
                        .payload
                        .map(|pl| serde_json::Value::Object(pl.0.into_iter().collect()));
                    let payload: ChunkPayload = serde_json::from_value(payload.unwrap_or_default())
                        .map_err(|e| {
                            VectorStoreError::Invalid(format!("a point's payload: {e}"))
                        })?;
                    Ok(Hit {
                        score: p.score,
                        payload,
                    })
                })
                .collect()
        })
        .await
    }

    async fn count(
        &self,
        kind: DocumentKind,
        filter: &SearchFilter,
    ) -> Result<u64, VectorStoreError> {
        let request = CountRequest {
            filter: filter_of(filter)?,
            exact: true,
        };
        self.on_shard(collection(&self.prefix, kind), move |shard| {
            shard
                .count(request)
                .map(|n| n as u64)
                .map_err(edge_err("count"))
        })
        .await
    }

    async fn flush(&self) -> Result<(), VectorStoreError> {
        let shards: Vec<Arc<EdgeShard>> = self
            .shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        tokio::task::spawn_blocking(move || shards.iter().for_each(|shard| shard.flush()))
            .await
            .map_err(|e| VectorStoreError::Store {
                backend: "edge",
                operation: "flush".into(),
                retryable: true,
                source: Box::new(e),
            })
    }

    async fn optimize(&self) -> Result<bool, VectorStoreError> {
        let mut any = false;
        for kind in KINDS {
            let name = collection(&self.prefix, kind);
            any |= self
                .on_shard(name, |shard| shard.optimize().map_err(edge_err("optimize")))
                .await?;
        }
        Ok(any)
    }

    async fn drop_all(&self) -> Result<(), VectorStoreError> {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        shards.clear();
        for kind in KINDS {
            let path = self.root.join(collection(&self.prefix, kind));
            if path.exists() {
                std::fs::remove_dir_all(&path)
                    .map_err(|e| VectorStoreError::Invalid(format!("{}: {e}", path.display())))?;
            }
        }
        Ok(())
    }
}
