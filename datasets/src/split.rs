//! The train/test split, made by document so that no document's text is on both sides: the
//! documents are ordered by a hash of the seed and their id, and the first share goes to test.

use std::collections::BTreeSet;

use crate::Split;

/// A seeded order: the hash of the seed and a key.
pub fn seeded_rank(seed: u64, key: &str) -> String {
    crate::digest([seed.to_le_bytes().as_slice(), key.as_bytes()])
}

/// The documents whose samples go to test: `fraction` of them (rounded, at least one and at
/// most all but one when there are two or more and the fraction is above zero).
pub fn test_documents<'a>(
    documents: impl IntoIterator<Item = &'a str>,
    seed: u64,
    fraction: f64,
) -> BTreeSet<String> {
    let mut ranked: Vec<(String, &str)> = documents
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|d| (seeded_rank(seed, d), d))
        .collect();
    ranked.sort();
    let n = ranked.len();
    let mut take = (n as f64 * fraction.clamp(0.0, 1.0)).round() as usize;
    if fraction > 0.0 && n >= 2 {
        take = take.clamp(1, n - 1);
    }
    ranked
        .into_iter()
        .take(take)
        .map(|(_, d)| d.to_string())
        .collect()
}

/// The split of a document's samples.
pub fn split_of(test: &BTreeSet<String>, document_id: &str) -> Split {
    if test.contains(document_id) {
        Split::Test
    } else {
        Split::Train
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_a_seeded_share_of_documents() {
        let docs: Vec<String> = (0..100).map(|i| format!("doc-{i}")).collect();
        let ids = || docs.iter().map(String::as_str);
        let a = test_documents(ids(), 7, 0.2);
        assert_eq!(a.len(), 20);
        assert_eq!(a, test_documents(ids(), 7, 0.2), "deterministic");
        assert_ne!(a, test_documents(ids(), 8, 0.2), "the seed matters");
        assert_eq!(test_documents(["x", "y"], 1, 0.01).len(), 1);
        assert!(
            test_documents(["x"], 1, 0.5).is_empty() || test_documents(["x"], 1, 0.5).len() == 1
        );
        assert!(test_documents(ids(), 7, 0.0).is_empty());
    }
}
