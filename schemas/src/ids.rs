//! Deterministic identities: the same document crawled twice gets the same id, and the same
//! content the same hash, so that every write downstream can be an idempotent upsert.

use sha2::{Digest, Sha256};

use crate::types::ContentBlock;

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
