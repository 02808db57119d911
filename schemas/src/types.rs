//! Rust mirror of the Avro schemas. Field names and order follow the `.avsc` files exactly;
//! timestamps are milliseconds since the Unix epoch (`timestamp-millis`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::registry::EventType;

/// What a document is; decides its vector collection and its chunking rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKind {
    /// A long-form article (Medium, Substack, a blog, a LinkedIn article).
    Article,
    /// A short post (a LinkedIn post or share).
    Post,
    /// A source code repository (GitHub).
    Repository,
}

/// The kind of one structural block of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Running text.
    Paragraph,
    /// A heading; `level` says which (1-6).
    Heading,
    /// A code block; whitespace is content.
    Code,
    /// One item of a list; `level` is its nesting depth.
    ListItem,
    /// A block quote.
    Quote,
    /// A whole file of a repository; `path` says which.
    File,
}

/// The person whose writing a document is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    /// Stable author id from the configuration (not the platform's).
    pub id: String,
    /// Full name as the user configured it.
    pub full_name: String,
}

/// One structural block of a document, in reading order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentBlock {
    /// What the block is.
    pub kind: BlockKind,
    /// Its text; for code and file blocks, exactly as in the source.
    pub text: String,
    /// Heading level or list depth; 0 otherwise.
    pub level: i32,
    /// Language of a code or file block, when known.
    pub language: Option<String>,
    /// Path inside a repository, for file blocks.
    pub path: Option<String>,
}

impl ContentBlock {
    /// A plain paragraph.
    pub fn paragraph(text: impl Into<String>) -> Self {
        Self::new(BlockKind::Paragraph, text)
    }

    /// A block of the given kind with no level, language or path.
    pub fn new(kind: BlockKind, text: impl Into<String>) -> Self {
        Self {
            kind,
            text: text.into(),
            level: 0,
            language: None,
            path: None,
        }
    }
}

/// A document as crawled from its source. Key on the log: `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawDocument {
    /// Deterministic id: see [`crate::document_id`].
    pub id: String,
    /// What the document is.
    pub kind: DocumentKind,
    /// Source platform: medium, substack, linkedin, github or web.
    pub platform: String,
    /// Whose writing it is.
    pub author: Author,
    /// Canonical url of the document.
    pub url: String,
    /// Title (repository name for repositories).
    pub title: String,
    /// When the author published it, if the source says.
    pub published_at: Option<i64>,
    /// When it was crawled.
    pub crawled_at: i64,
    /// The content, structure kept.
    pub content: Vec<ContentBlock>,
    /// Hex SHA-256 of `content`: see [`crate::content_hash`].
    pub content_hash: String,
    /// Source-specific fields (subtitle, tags, stars, default branch...).
    pub metadata: BTreeMap<String, String>,
}

/// A raw document after cleaning. Key on the log: `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanedDocument {
    /// Same id as the raw document.
    pub id: String,
    /// What the document is.
    pub kind: DocumentKind,
    /// Source platform.
    pub platform: String,
    /// Whose writing it is.
    pub author: Author,
    /// Canonical url.
    pub url: String,
    /// Cleaned title.
    pub title: String,
    /// When the author published it, if known.
    pub published_at: Option<i64>,
    /// When it was cleaned.
    pub cleaned_at: i64,
    /// The cleaned content.
    pub content: Vec<ContentBlock>,
    /// Hex SHA-256 of the cleaned content.
    pub content_hash: String,
    /// `content_hash` of the raw document it was cleaned from.
    pub raw_content_hash: String,
    /// Source-specific fields, carried over.
    pub metadata: BTreeMap<String, String>,
}

/// A piece of a cleaned document sized for the embedding model. Key on the log: `document_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Deterministic id from document id, position and text.
    pub id: String,
    /// The document it belongs to.
    pub document_id: String,
    /// What the document is.
    pub kind: DocumentKind,
    /// Source platform.
    pub platform: String,
    /// Whose writing it is.
    pub author: Author,
    /// Canonical url of the document.
    pub url: String,
    /// Title of the document.
    pub title: String,
    /// When the document was published, if known.
    pub published_at: Option<i64>,
    /// 0-based index of the chunk in its document.
    pub position: i32,
    /// The chunk's text.
    pub text: String,
    /// Its length in tokens of the embedding model's tokenizer.
    pub token_count: i32,
    /// `content_hash` of the cleaned document it came from.
    pub document_hash: String,
    /// When it was cut.
    pub chunked_at: i64,
}

/// A chunk with its embedding. Key on the log: `chunk.document_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddedChunk {
    /// The chunk embedded.
    pub chunk: Chunk,
    /// Embedding model id, e.g. `sentence-transformers/all-MiniLM-L6-v2`.
    pub model_id: String,
    /// Number of values in `embedding`.
    pub dimension: i32,
    /// The L2-normalised embedding.
    pub embedding: Vec<f32>,
    /// When it was embedded.
    pub embedded_at: i64,
}

/// Tombstone: the document disappeared at its source. Key on the log: `document_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentDeleted {
    /// The document that is gone.
    pub document_id: String,
    /// What it was.
    pub kind: DocumentKind,
    /// Source platform.
    pub platform: String,
    /// Its canonical url.
    pub url: String,
    /// When its disappearance was noticed.
    pub deleted_at: i64,
    /// Why it is considered gone, e.g. `HTTP 404 at source`.
    pub reason: String,
}

/// Any event on the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A crawled document.
    Raw(RawDocument),
    /// A cleaned document.
    Cleaned(CleanedDocument),
    /// A chunk.
    Chunk(Chunk),
    /// An embedded chunk.
    Embedded(EmbeddedChunk),
    /// A tombstone.
    Deleted(DocumentDeleted),
}

impl Event {
    /// The schema this event is written with.
    pub fn event_type(&self) -> EventType {
        match self {
            Event::Raw(_) => EventType::RawDocument,
            Event::Cleaned(_) => EventType::CleanedDocument,
            Event::Chunk(_) => EventType::Chunk,
            Event::Embedded(_) => EventType::EmbeddedChunk,
            Event::Deleted(_) => EventType::DocumentDeleted,
        }
    }

    /// The key the event is published under, so that all events of one document stay in order.
    pub fn key(&self) -> &str {
        match self {
            Event::Raw(d) => &d.id,
            Event::Cleaned(d) => &d.id,
            Event::Chunk(c) => &c.document_id,
            Event::Embedded(e) => &e.chunk.document_id,
            Event::Deleted(d) => &d.document_id,
        }
    }
}

impl From<RawDocument> for Event {
    fn from(d: RawDocument) -> Self {
        Event::Raw(d)
    }
}

impl From<CleanedDocument> for Event {
    fn from(d: CleanedDocument) -> Self {
        Event::Cleaned(d)
    }
}

impl From<Chunk> for Event {
    fn from(c: Chunk) -> Self {
        Event::Chunk(c)
    }
}

impl From<EmbeddedChunk> for Event {
    fn from(e: EmbeddedChunk) -> Self {
        Event::Embedded(e)
    }
}

impl From<DocumentDeleted> for Event {
    fn from(d: DocumentDeleted) -> Self {
        Event::Deleted(d)
    }
}
