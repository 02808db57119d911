//! Retrieval over the vector store: the query embedded with the model that filled the store
//! (checked), searched in every kind's collection at once with the filters, merged by score,
//! and re-ranked: by a cross-encoder when one is configured, else by maximal marginal relevance
//! so that the context is not five copies of one paragraph. An author named in the query becomes
//! a filter (self-query); rewrites of the query are searched in parallel and fused by reciprocal
//! rank.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use twin_embedding::{CrossEncoder, Embedder};
use twin_schemas::DocumentKind;
use twin_vectorstore::{Hit, SearchFilter, VectorStore, KINDS};
use twin_warehouse::{AsOf, DocumentFilter, Warehouse};

use crate::ServingError;

/// What to search.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    /// An author's id or full name (any case).
    pub author: Option<String>,
    /// A platform (`medium`, `substack`, `linkedin`, `github`, ...).
    pub platform: Option<String>,
    /// Kinds of document; empty: all.
    pub kinds: Vec<DocumentKind>,
    /// Published at or after (ms since the epoch).
    pub published_after: Option<i64>,
    /// Published at or before (ms since the epoch).
    pub published_before: Option<i64>,
}

/// A retrieved chunk and where it comes from: what an answer cites.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Source {
    /// The chunk.
    pub chunk_id: String,
    /// Its document.
    pub document_id: String,
    /// `article`, `post` or `repository`.
    pub kind: String,
    /// The platform.
    pub platform: String,
    /// The author's name.
    pub author: String,
    /// The document's title.
    pub title: String,
    /// The document's url.
    pub url: String,
    /// The chunk's place in its document.
    pub position: i32,
    /// When the document was published (ms since the epoch).
    pub published_at: Option<i64>,
    /// Cosine similarity to the query (or the fused score of rewrites).
    pub score: f32,
    /// The cross-encoder's score for the query and this chunk, when it re-ranked them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerank_score: Option<f32>,
    /// The chunk's text.
    pub text: String,
}

/// What a search found, and how.
#[derive(Debug, Clone, Serialize)]
pub struct Retrieval {
    /// The sources, best first.
    pub sources: Vec<Source>,
    /// The author the query named (self-query), when it named one and no filter did.
    pub author_from_query: Option<String>,
    /// Milliseconds spent embedding, searching and re-ranking.
    pub millis: f64,
}

/// One author the warehouse knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownAuthor {
    /// Id.
    pub id: String,
    /// Full name.
    pub name: String,
}

/// How retrieval ranks.
#[derive(Debug, Clone, Copy)]
pub struct RetrievalSettings {
    /// Candidates fetched per collection.
    pub candidates: usize,
    /// Maximal marginal relevance's balance: 1 is relevance only.
    pub mmr_lambda: f32,
    /// Longest query, in characters.
    pub max_query_chars: usize,
}

/// How the candidates are re-ranked before the best `k` are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rerank {
    /// Not: by the search's own score.
    None,
    /// Maximal marginal relevance over the embeddings.
    Mmr,
    /// The configured cross-encoder.
    CrossEncoder,
}

impl Rerank {
    /// Parse a request's `rerank` (`none`, `mmr`, `cross-encoder`).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim() {
            "none" => Some(Rerank::None),
            "mmr" => Some(Rerank::Mmr),
            "cross-encoder" => Some(Rerank::CrossEncoder),
            _ => None,
        }
    }
}

/// The retriever.
pub struct Retriever {
    embedder: Arc<Embedder>,
    store: Arc<dyn VectorStore>,
    authors: Vec<KnownAuthor>,
    settings: RetrievalSettings,
    reranker: Option<Arc<CrossEncoder>>,
}

impl Retriever {
    /// A retriever over `store`, with the authors `warehouse` knows.
    pub async fn new(
        embedder: Arc<Embedder>,
        store: Arc<dyn VectorStore>,
        warehouse: &dyn Warehouse,
        settings: RetrievalSettings,
    ) -> Result<Self, ServingError> {
        let authors = known_authors(warehouse).await?;
        Ok(Self {
            embedder,
            store,
            authors,
            settings,
            reranker: None,
        })
    }

    /// Re-rank with `reranker` wherever re-ranking is asked for.
    pub fn with_reranker(mut self, reranker: Arc<CrossEncoder>) -> Self {
        self.reranker = Some(reranker);
        self
    }

    /// The cross-encoder's model, when one is configured.
    pub fn reranker(&self) -> Option<&str> {
        self.reranker.as_ref().map(|r| r.model_id())
    }

    /// The re-ranking a request gets when it does not say: the cross-encoder when one is
    /// configured; else, for an answer's context, maximal marginal relevance, and for a search
    /// alone, none.
    pub fn default_rerank(&self, for_context: bool) -> Rerank {
        match (&self.reranker, for_context) {
            (Some(_), _) => Rerank::CrossEncoder,
            (None, true) => Rerank::Mmr,
            (None, false) => Rerank::None,
        }
    }

    /// The embedder.
    pub fn embedder(&self) -> &Arc<Embedder> {
        &self.embedder
    }

    /// The authors the warehouse knew at start.
    pub fn authors(&self) -> &[KnownAuthor] {
        &self.authors
    }

    /// Check that the store was filled by the embedder's model: a query embedded by another
    /// model would find nonsense, silently. An empty store passes.
    pub async fn check_model(&self) -> Result<(), ServingError> {
        let probe = vec![0.0f32; self.embedder.dimension()];
        for kind in KINDS {
            let hits = self
                .store
                .search(kind, &probe, 1, &SearchFilter::default())
                .await
                .map_err(|e| ServingError::Store(e.to_string()))?;
            if let Some(hit) = hits.first() {
                if hit.payload.model_id != self.embedder.model_id() {
                    return Err(ServingError::Store(format!(
                        "the vector store was filled with embeddings of `{}`, but queries would be \
                         embedded with `{}`: set [embedding] model to the store's model, or \
                         rebuild the store (twin stream --rebuild)",
                        hit.payload.model_id,
                        self.embedder.model_id()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The `k` best chunks for `query` and its `rewrites` (searched in parallel and fused by
    /// reciprocal rank), re-ranked as `rerank` says.
    pub async fn search(
        &self,
        query: &str,
        rewrites: &[String],
        filters: &Filters,
        k: usize,
        rerank: Rerank,
    ) -> Result<Retrieval, ServingError> {
        let reranker = match (rerank, &self.reranker) {
            (Rerank::CrossEncoder, None) => {
                return Err(ServingError::InvalidParameter {
                    name: "rerank".into(),
                    reason: "no cross-encoder is configured ([serving.reranker] model)".into(),
                })
            }
            (Rerank::CrossEncoder, Some(r)) => Some(r.clone()),
            _ => None,
        };
        let started = Instant::now();
        let query = query.trim();
        if query.is_empty() {
            return Err(ServingError::InvalidParameter {
                name: "query".into(),
                reason: "is empty".into(),
            });
        }
        let chars = query.chars().count();
        if chars > self.settings.max_query_chars {
            return Err(ServingError::InvalidParameter {
                name: "query".into(),
                reason: format!(
                    "is {chars} characters long; the most is {}",
                    self.settings.max_query_chars
                ),
            });
        }
        if k == 0 || k > 100 {
            return Err(ServingError::InvalidParameter {
                name: "k".into(),
                reason: format!("must be between 1 and 100, not {k}"),
            });
        }
        let (author_id, author_from_query) = match &filters.author {
            Some(author) => (Some(self.author_id(author)?), None),
            None => match self.author_in(query) {
                Some(a) => (Some(a.id.clone()), Some(a.name.clone())),
                None => (None, None),
            },
        };
        let filter = SearchFilter {
            author_id,
            platform: filters.platform.clone(),
            document_id: None,
            published_after: filters.published_after,
            published_before: filters.published_before,
        };
        let kinds: Vec<DocumentKind> = if filters.kinds.is_empty() {
            KINDS.to_vec()
        } else {
            filters.kinds.clone()
        };
        let mut texts: Vec<String> = vec![query.to_string()];
        texts.extend(rewrites.iter().filter(|r| !r.trim().is_empty()).cloned());
        let vectors = self.embedder.embed_async(texts).await?;
        let fetch = self.settings.candidates.max(k);
        // Every (query, kind) pair at once.
        let searches = vectors.iter().flat_map(|vector| {
            kinds.iter().map(|kind| {
                let store = self.store.clone();
                let filter = filter.clone();
                let vector = vector.clone();
                let kind = *kind;
                async move { store.search(kind, &vector, fetch, &filter).await }
            })
        });
        let results = futures::future::try_join_all(searches)
            .await
            .map_err(|e| ServingError::Store(e.to_string()))?;
        let kind_of: HashMap<String, DocumentKind> = results
            .iter()
            .enumerate()
            .flat_map(|(i, hits)| {
                let kind = kinds[i % kinds.len()];
                hits.iter().map(move |h| (h.payload.chunk_id.clone(), kind))
            })
            .collect();
        // One ranked list per query (its kinds merged by score), then fused.
        let per_query: Vec<Vec<Hit>> = results
            .chunks(kinds.len())
            .map(|lists| {
                let mut merged: Vec<Hit> = lists.iter().flatten().cloned().collect();
                merged.sort_by(|a, b| b.score.total_cmp(&a.score));
                merged
            })
            .collect();
        let mut candidates = if per_query.len() == 1 {
            per_query.into_iter().next().unwrap_or_default()
        } else {
            reciprocal_rank_fusion(&per_query)
        };
        candidates.truncate(fetch);
        let sources: Vec<Source> = candidates
            .into_iter()
            .map(|hit| {
                let kind = kind_of
                    .get(&hit.payload.chunk_id)
                    .copied()
                    .unwrap_or(DocumentKind::Article);
                source(hit, kind)
            })
            .collect();
        let sources = if let Some(reranker) = reranker {
            let texts: Vec<String> = sources.iter().map(|s| s.text.clone()).collect();
            let scores = reranker.score_async(query.to_string(), texts).await?;
            let mut scored: Vec<(f32, Source)> = scores.into_iter().zip(sources).collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            scored
                .into_iter()
                .take(k)
                .map(|(score, source)| Source {
                    rerank_score: Some(score),
                    ..source
                })
                .collect()
        } else if rerank == Rerank::Mmr && sources.len() > k {
            let texts: Vec<String> = sources.iter().map(|s| s.text.clone()).collect();
            let embedded = self.embedder.embed_async(texts).await?;
            let order = mmr(&vectors[0], &embedded, k, self.settings.mmr_lambda);
            order.into_iter().map(|i| sources[i].clone()).collect()
        } else {
            sources.into_iter().take(k).collect()
        };
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        metrics::histogram!("twin_serve_retrieval_seconds").record(millis / 1000.0);
        Ok(Retrieval {
            sources,
            author_from_query,
            millis,
        })
    }

    /// The id of an author given by id or name.
    fn author_id(&self, author: &str) -> Result<String, ServingError> {
        let wanted = author.trim().to_lowercase();
        self.authors
            .iter()
            .find(|a| a.id.to_lowercase() == wanted || a.name.to_lowercase() == wanted)
            .map(|a| a.id.clone())
            .ok_or_else(|| ServingError::InvalidParameter {
                name: "author".into(),
                reason: format!(
                    "no author `{author}` in the warehouse (known: {})",
                    self.authors
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    /// The known author whose full name the query contains (the longest, if several).
    fn author_in(&self, query: &str) -> Option<&KnownAuthor> {
        let query = query.to_lowercase();
        self.authors
            .iter()
            .filter(|a| !a.name.trim().is_empty() && contains_words(&query, &a.name.to_lowercase()))
            .max_by_key(|a| a.name.len())
    }
}

/// Whether `text` holds `words` as whole words.
fn contains_words(text: &str, words: &str) -> bool {
    text.match_indices(words).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + words.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

fn source(hit: Hit, kind: DocumentKind) -> Source {
    let p = hit.payload;
    Source {
        kind: kind_name(kind).into(),
        chunk_id: p.chunk_id,
        document_id: p.document_id,
        platform: p.platform,
        author: p.author_name,
        title: p.title,
        url: p.url,
        position: p.position,
        published_at: p.published_at,
        score: hit.score,
        rerank_score: None,
        text: p.text,
    }
}

/// A kind's name, as requests give it.
pub fn kind_name(kind: DocumentKind) -> &'static str {
    match kind {
        DocumentKind::Article => "article",
        DocumentKind::Post => "post",
        DocumentKind::Repository => "repository",
    }
}

/// A kind by its name (`article`, `post`, `repository`, or their plurals).
pub fn parse_kind(name: &str) -> Option<DocumentKind> {
    match name.trim().to_lowercase().trim_end_matches('s') {
        "article" => Some(DocumentKind::Article),
        "post" => Some(DocumentKind::Post),
        "repository" | "repositorie" | "repo" => Some(DocumentKind::Repository),
        _ => None,
    }
}

/// The authors of the warehouse's documents: ids from its breakdown, names from a document of
/// each.
async fn known_authors(warehouse: &dyn Warehouse) -> Result<Vec<KnownAuthor>, ServingError> {
    let store = |e: twin_warehouse::WarehouseError| ServingError::Store(e.to_string());
    let mut ids: Vec<String> = warehouse
        .breakdown(&AsOf::Latest)
        .await
        .map_err(store)?
        .into_iter()
        .map(|b| b.author_id)
        .collect();
    ids.sort();
    ids.dedup();
    let mut authors = Vec::new();
    for id in ids {
        let filter = DocumentFilter {
            author_id: Some(id.clone()),
            ..DocumentFilter::default()
        };
        let page = warehouse
            .cleaned_page(&AsOf::Latest, &filter, None, 1)
            .await
            .map_err(store)?;
        let name = page
            .first()
            .map(|d| d.value.author.full_name.clone())
            .unwrap_or_default();
        authors.push(KnownAuthor { id, name });
    }
    Ok(authors)
}

/// Reciprocal rank fusion (Cormack et al., 2009) of ranked lists, `k` = 60: a chunk's score is
/// the sum of `1 / (60 + rank)` over the lists it is in.
pub fn reciprocal_rank_fusion(lists: &[Vec<Hit>]) -> Vec<Hit> {
    let mut fused: HashMap<String, (f32, Hit)> = HashMap::new();
    for list in lists {
        for (rank, hit) in list.iter().enumerate() {
            let add = 1.0 / (60.0 + rank as f32 + 1.0);
            fused
                .entry(hit.payload.chunk_id.clone())
                .and_modify(|(score, _)| *score += add)
                .or_insert((add, hit.clone()));
        }
    }
    let mut out: Vec<Hit> = fused
        .into_values()
        .map(|(score, mut hit)| {
            hit.score = score;
            hit
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.payload.chunk_id.cmp(&b.payload.chunk_id))
    });
    out
}

/// Maximal marginal relevance (Carbonell and Goldstein, 1998): `k` of `candidates` (unit
/// vectors, relevance order), each next one maximising `lambda * sim(query) - (1 - lambda) *
/// max sim(chosen)`. Returns their indices in the order chosen.
pub fn mmr(query: &[f32], candidates: &[Vec<f32>], k: usize, lambda: f32) -> Vec<usize> {
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let relevance: Vec<f32> = candidates.iter().map(|c| dot(query, c)).collect();
    let mut chosen: Vec<usize> = Vec::new();
    while chosen.len() < k.min(candidates.len()) {
        let next = (0..candidates.len())
            .filter(|i| !chosen.contains(i))
            .map(|i| {
                let redundancy = chosen
                    .iter()
                    .map(|&j| dot(&candidates[i], &candidates[j]))
                    .fold(f32::NEG_INFINITY, f32::max);
                let redundancy = if chosen.is_empty() { 0.0 } else { redundancy };
                (i, lambda * relevance[i] - (1.0 - lambda) * redundancy)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.cmp(&a.0)));
        match next {
            Some((i, _)) => chosen.push(i),
            None => break,
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmr_skips_a_copy_of_what_it_chose() {
        let query = [1.0, 0.0];
        let s = std::f32::consts::FRAC_1_SQRT_2;
        // Two copies of one paragraph, then a different one slightly less relevant.
        let candidates = vec![vec![1.0, 0.0], vec![1.0, 0.0], vec![s, s]];
        // At 0.3 the copy's redundancy outweighs its relevance: the different one comes next.
        assert_eq!(mmr(&query, &candidates, 2, 0.3), [0, 2]);
        assert_eq!(mmr(&query, &candidates, 2, 1.0), [0, 1]);
        assert_eq!(mmr(&query, &candidates, 5, 0.7).len(), 3);
    }

    #[test]
    fn author_names_match_whole_words() {
        assert!(contains_words(
            "what does paul iusztin think",
            "paul iusztin"
        ));
        assert!(!contains_words("what does pauline think", "paul"));
        assert!(contains_words("paul", "paul"));
    }
}
