//! A Qdrant server through `qdrant-client` (gRPC, port 6334). Writes wait for the server to
//! apply them, so a committed offset never runs ahead of a searchable point.

use async_trait::async_trait;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, PointStruct, SearchPointsBuilder,
    UpsertPointsBuilder, VectorParamsBuilder,
};
use qdrant_client::{Payload, Qdrant};
use twin_config::QdrantConfig;
use twin_schemas::{DocumentKind, EmbeddedChunk};

use crate::{
    collection, point_uuid, ChunkPayload, Hit, SearchFilter, VectorStore, VectorStoreError, KINDS,
};

/// Payload fields retrieval filters on, indexed as keywords.
const KEYWORD_FIELDS: [&str; 3] = ["document_id", "author_id", "platform"];

/// The Qdrant server vector store.
pub struct QdrantVectorStore {
    client: Qdrant,
    prefix: String,
}

fn server_err(
    operation: impl Into<String>,
) -> impl FnOnce(qdrant_client::QdrantError) -> VectorStoreError {
    let operation = operation.into();
    move |e| VectorStoreError::Store {
        backend: "qdrant",
        operation,
        retryable: transient(&e),
        source: Box::new(e),
    }
}

/// Whether a Qdrant error may go away on its own: the server unreachable, overloaded or slow.
fn transient(e: &qdrant_client::QdrantError) -> bool {
    use qdrant_client::QdrantError;
    use tonic::Code;
    match e {
        QdrantError::ResourceExhaustedError { .. } => true,
        QdrantError::ResponseError { status } => {
            matches!(
                status.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::Unknown
            )
                // The client reports a server it cannot reach as Internal.
                || (status.code() == Code::Internal
                    && status.message().starts_with("Failed to connect"))
        }
        QdrantError::Io(_) => true,
        _ => false,
    }
}

fn filter_of(filter: &SearchFilter) -> Option<Filter> {
    let mut conditions: Vec<Condition> = filter
        .conditions()
        .into_iter()
        .map(|(field, value)| Condition::matches(field, value))
        .collect();
    if let Some((after, before)) = filter.published() {
        conditions.push(Condition::range(
            "published_at",
            qdrant_client::qdrant::Range {
                gte: after.map(|v| v as f64),
                lte: before.map(|v| v as f64),
                ..Default::default()
            },
        ));
    }
    (!conditions.is_empty()).then(|| Filter::must(conditions))
}

fn document_filter(document_id: &str) -> Filter {
    Filter::must([Condition::matches("document_id", document_id.to_string())])
}

impl QdrantVectorStore {
    /// A client for the server in `config` (the API key, if any, is sent and never logged).
    pub fn connect(config: &QdrantConfig, prefix: &str) -> Result<Self, VectorStoreError> {
        let mut builder = Qdrant::from_url(&config.url);
        if !config.api_key.is_empty() {
            builder = builder.api_key(config.api_key.clone());
        }
        let client = builder
            .build()
            .map_err(server_err(format!("connect to {}", config.url)))?;
        Ok(Self {
            client,
            prefix: prefix.to_string(),
        })
    }
}

impl QdrantVectorStore {
    /// Delete a document's points from one collection, waiting until the server applied it.
    async fn delete_points_of(
        &self,
        name: &str,
        document_id: &str,
    ) -> Result<(), VectorStoreError> {
        self.client
            .delete_points(
                DeletePointsBuilder::new(name)
                    .points(document_filter(document_id))
                    .wait(true),
            )
            .await
            .map_err(server_err(format!("delete the points of {document_id}")))?;
        Ok(())
    }
}

#[async_trait]
impl VectorStore for QdrantVectorStore {
    fn backend(&self) -> &'static str {
        "qdrant"
    }

    async fn ensure_collections(&self, dimension: usize) -> Result<(), VectorStoreError> {
        for kind in KINDS {
            let name = collection(&self.prefix, kind);
            let exists = self
                .client
                .collection_exists(&name)
                .await
                .map_err(server_err(format!("look up {name}")))?;
            if exists {
                continue;
            }
            let created =
                self.client
                    .create_collection(CreateCollectionBuilder::new(&name).vectors_config(
                        VectorParamsBuilder::new(dimension as u64, Distance::Cosine),
                    ))
                    .await;
            if let Err(e) = created {
                // Another process starting at the same time (a serve replica, a stream worker)
                // may have created it since the look-up: that is what was wanted.
                let exists_now = self
                    .client
                    .collection_exists(&name)
                    .await
                    .map_err(server_err(format!("look up {name}")))?;
                if !exists_now {
                    return Err(server_err(format!("create {name}"))(e));
                }
            }
            for field in KEYWORD_FIELDS {
                self.client
                    .create_field_index(
                        CreateFieldIndexCollectionBuilder::new(&name, field, FieldType::Keyword)
                            .wait(true),
                    )
                    .await
                    .map_err(server_err(format!("index {field} of {name}")))?;
            }
        }
        Ok(())
    }

    async fn replace_document(
        &self,
        kind: DocumentKind,
        document_id: &str,
        points: &[EmbeddedChunk],
    ) -> Result<(), VectorStoreError> {
        let name = collection(&self.prefix, kind);
        self.delete_points_of(&name, document_id).await?;
        if points.is_empty() {
            return Ok(());
        }
        let mut structs = Vec::with_capacity(points.len());
        for p in points {
            let payload = Payload::try_from(
                serde_json::to_value(ChunkPayload::of(p))
                    .map_err(|e| VectorStoreError::Invalid(format!("payload: {e}")))?,
            )
            .map_err(|e| VectorStoreError::Invalid(format!("payload: {e}")))?;
            structs.push(PointStruct::new(
                point_uuid(&p.chunk.id)?,
                p.embedding.clone(),
                payload,
            ));
        }
        self.client
            .upsert_points(UpsertPointsBuilder::new(&name, structs).wait(true))
            .await
            .map_err(server_err(format!("upsert the points of {document_id}")))?;
        Ok(())
    }

    async fn delete_document(&self, document_id: &str) -> Result<(), VectorStoreError> {
        for kind in KINDS {
            let name = collection(&self.prefix, kind);
            self.delete_points_of(&name, document_id).await?;
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
        let name = collection(&self.prefix, kind);
        let mut request =
            SearchPointsBuilder::new(&name, vector.to_vec(), limit as u64).with_payload(true);
        if let Some(filter) = filter_of(filter) {
            request = request.filter(filter);
        }
        let response = self
            .client
            .search_points(request)
            .await
            .map_err(server_err(format!("search {name}")))?;
        response
            .result
            .into_iter()
            .map(|point| {
                let payload: ChunkPayload = Payload::from(point.payload)
                    .deserialize()
                    .map_err(|e| VectorStoreError::Invalid(format!("a point's payload: {e}")))?;
                Ok(Hit {
                    score: point.score,
                    payload,
                })
            })
            .collect()
    }

    async fn count(
        &self,
        kind: DocumentKind,
        filter: &SearchFilter,
    ) -> Result<u64, VectorStoreError> {
        let name = collection(&self.prefix, kind);
        let mut request = CountPointsBuilder::new(&name).exact(true);
        if let Some(filter) = filter_of(filter) {
            request = request.filter(filter);
        }
        let response = self
            .client
            .count(request)
            .await
            .map_err(server_err(format!("count {name}")))?;
        Ok(response.result.map(|r| r.count).unwrap_or(0))
    }

    async fn drop_all(&self) -> Result<(), VectorStoreError> {
        for kind in KINDS {
            let name = collection(&self.prefix, kind);
            if self
                .client
                .collection_exists(&name)
                .await
                .map_err(server_err(format!("look up {name}")))?
            {
                self.client
                    .delete_collection(&name)
                    .await
                    .map_err(server_err(format!("delete {name}")))?;
            }
        }
        Ok(())
    }
}
