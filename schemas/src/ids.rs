//! Deterministic identities: the same document crawled twice gets the same id, the same chunk
//! of it the same chunk id, and the same content the same hash, so that every write downstream
//! can be an idempotent upsert. Where an event sits on the log is its [`Position`].

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::types::ContentBlock;
use crate::SchemaError;

/// Where a record is on the log: its partition and offset within a topic. Projections keep the
/// position of the event each row came from; snapshots pin a set of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// Partition index.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
}

/// The id of a chunk: the first 32 hex digits of SHA-256 over its document id, its position and
/// its text, so that re-chunking unchanged text gives the same ids. The vector store uses it,
/// read as a UUID, as the point id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(String);

impl ChunkId {
    /// The id of the chunk at `position` of document `document_id`, holding `text`.
    pub fn new(document_id: &str, position: i32, text: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(document_id.as_bytes());
        hasher.update([0u8]);
        hasher.update(position.to_le_bytes());
        hasher.update([0u8]);
        hasher.update(text.as_bytes());
        Self(hex(&hasher.finalize()[..16]))
    }

    /// A chunk id as stored in an event; refused unless it is 32 lower-case hex digits.
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        if text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(text.to_string()))
        } else {
            Err(SchemaError::Identity(format!(
                "chunk id {text:?} is not 32 lower-case hex digits"
            )))
        }
    }

    /// The 32 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a UUID in its text form (8-4-4-4-12), as Qdrant takes point ids.
    pub fn uuid(&self) -> String {
        let h = &self.0;
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ChunkId> for String {
    fn from(id: ChunkId) -> Self {
        id.0
    }
}

/// The id of a document: the first 32 hex digits of SHA-256 over `platform`, a NUL byte and the
/// document's canonical url (or repository path). Callers canonicalise the url first.
pub fn document_id(platform: &str, canonical_locator: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(platform.as_bytes());
    hasher.update([0u8]);
    hasher.update(canonical_locator.as_bytes());
    let digest = hasher.finalize();
    hex(&digest[..16])
}

/// Hex SHA-256 over the content blocks: kind, level, language, path and text of each, each field
/// length-prefixed so that no two different contents hash alike.
pub fn content_hash(blocks: &[ContentBlock]) -> String {
    let mut hasher = Sha256::new();
    for block in blocks {
        let kind = format!("{:?}", block.kind);
        let level = block.level.to_string();
        let fields = [
            kind.as_str(),
            level.as_str(),
            block.language.as_deref().unwrap_or(""),
            block.path.as_deref().unwrap_or(""),
            block.text.as_str(),
        ];
        for field in fields {
            hasher.update((field.len() as u64).to_le_bytes());
            hasher.update(field.as_bytes());
        }
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::BlockKind;

    #[test]
    fn document_id_is_stable_and_separates_platforms() {
        let a = document_id("medium", "https://medium.com/@a/post-1");
        assert_eq!(a, document_id("medium", "https://medium.com/@a/post-1"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, document_id("substack", "https://medium.com/@a/post-1"));
    }

    #[test]
    fn chunk_ids_are_stable_and_read_as_uuids() {
        let id = ChunkId::new("doc", 0, "text");
        assert_eq!(id, ChunkId::new("doc", 0, "text"));
        assert_ne!(id, ChunkId::new("doc", 1, "text"));
        assert_ne!(id, ChunkId::new("doc", 0, "other"));
        assert_eq!(ChunkId::parse(id.as_str()).expect("parse"), id);
        let uuid = id.uuid();
        assert_eq!(uuid.len(), 36);
        assert_eq!(uuid.replace('-', ""), id.as_str());
        assert_eq!(
            ChunkId::parse("0123456789abcdef0123456789abcdef")
                .expect("parse")
                .uuid(),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
        for bad in [
            "short",
            "0123456789abcdef0123456789abcdeg",
            "0123456789ABCDEF0123456789ABCDEF",
        ] {
            assert!(ChunkId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_hash_sees_structure_not_just_text() {
        let para = vec![ContentBlock::paragraph("fn main() {}")];
        let code = vec![ContentBlock::new(BlockKind::Code, "fn main() {}")];
        assert_ne!(content_hash(&para), content_hash(&code));
        // Field boundaries matter: "ab" + "c" differs from "a" + "bc".
        let split_a = vec![ContentBlock::paragraph("ab"), ContentBlock::paragraph("c")];
        let split_b = vec![ContentBlock::paragraph("a"), ContentBlock::paragraph("bc")];
        assert_ne!(content_hash(&split_a), content_hash(&split_b));
        assert_eq!(content_hash(&para), content_hash(&para.clone()));
    }
}
