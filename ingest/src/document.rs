//! Turning what a crawler found into a `RawDocument`: canonical urls, deterministic ids,
//! content hashes, and the fingerprint that decides "changed".

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use twin_schemas::{Author, ContentBlock, DocumentKind, RawDocument};
use url::Url;

/// Query parameters that, beyond the tracking ones ([`twin_schemas::urls`]), do not change
/// which document a url names: share and friend-link keys, referrers, the ids and tokens of
/// newsletter e-mail links. Dropped from canonical urls on every host.
const NOT_PART_OF_IDENTITY: &[&str] = &[
    "source",
    "sk",
    "ref",
    "r",
    "s",
    "triedredirect",
    "publication_id",
    "post_id",
    "isfreemail",
    "token",
];

/// A document as a crawler found it, before ids and hashes.
#[derive(Debug, Clone)]
pub struct Draft {
    /// What it is.
    pub kind: DocumentKind,
    /// Platform name.
    pub platform: &'static str,
    /// Its url (canonicalised when built).
    pub url: String,
    /// Title.
    pub title: String,
    /// Publication time, when known.
    pub published_at: Option<i64>,
    /// Content blocks.
    pub content: Vec<ContentBlock>,
    /// Source-specific fields.
    pub metadata: BTreeMap<String, String>,
}

impl Draft {
    /// A draft with no metadata.
    pub fn new(kind: DocumentKind, platform: &'static str, url: impl Into<String>) -> Self {
        Self {
            kind,
            platform,
            url: url.into(),
            title: String::new(),
            published_at: None,
            content: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// Set a metadata field when it has a value.
    pub fn meta(&mut self, key: &str, value: Option<impl Into<String>>) {
        if let Some(value) = value
            .map(Into::into)
            .filter(|v: &String| !v.trim().is_empty())
        {
            self.metadata.insert(key.to_string(), value);
        }
    }

    /// The document's id, from its platform and canonical url.
    pub fn id(&self) -> String {
        twin_schemas::document_id(self.platform, &canonical_url(&self.url))
    }

    /// The event.
    pub fn into_event(self, author: &Author, crawled_at: i64) -> RawDocument {
        let url = canonical_url(&self.url);
        RawDocument {
            id: twin_schemas::document_id(self.platform, &url),
            kind: self.kind,
            platform: self.platform.to_string(),
            author: author.clone(),
            url,
            title: self.title.trim().to_string(),
            published_at: self.published_at,
            crawled_at,
            content_hash: twin_schemas::content_hash(&self.content),
            content: self.content,
            metadata: self.metadata,
        }
    }
}

/// What decides that a document changed: its content, title and publication time (not its
/// volatile metadata, such as a repository's stars).
pub fn fingerprint(document: &RawDocument) -> String {
    let mut hasher = Sha256::new();
    for field in [
        document.content_hash.as_str(),
        document.title.as_str(),
        &document
            .published_at
            .map(|t| t.to_string())
            .unwrap_or_default(),
        document.url.as_str(),
    ] {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The canonical form of a url: no fragment, no tracking parameters, no trailing slash, host
/// in lower case. Not a url (an export path): returned as it is.
pub fn canonical_url(url: &str) -> String {
    let Ok(mut parsed) = Url::parse(url.trim()) else {
        return url.trim().to_string();
    };
    parsed.set_fragment(None);
    let host = parsed.host_str().unwrap_or("").to_string();
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| {
            !twin_schemas::urls::is_tracking_param(&host, k)
                && !NOT_PART_OF_IDENTITY.contains(&k.to_ascii_lowercase().as_str())
        })
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let mut text = parsed.to_string();
    if parsed.path() != "/" && parsed.query().is_none() && text.ends_with('/') {
        text.pop();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_urls_drop_tracking_and_fragments() {
        assert_eq!(
            canonical_url("https://Medium.com/@me/post-1?source=rss-abc------2#section"),
            "https://medium.com/@me/post-1"
        );
        assert_eq!(
            canonical_url("https://blog.example.com/?p=12&utm_source=x"),
            "https://blog.example.com/?p=12"
        );
        assert_eq!(
            canonical_url("https://x.substack.com/p/post/"),
            "https://x.substack.com/p/post"
        );
        assert_eq!(canonical_url("https://x.com/"), "https://x.com/");
        assert_eq!(
            canonical_url("linkedin-export:Articles/a.html"),
            "linkedin-export:Articles/a.html"
        );
    }

    #[test]
    fn the_same_page_gets_the_same_id_and_fingerprint() {
        let author = Author {
            id: "me".into(),
            full_name: "Me".into(),
        };
        let mut a = Draft::new(
            DocumentKind::Article,
            "medium",
            "https://medium.com/@me/a?source=rss",
        );
        a.title = "A".into();
        a.content = vec![ContentBlock::paragraph("text")];
        let mut b = a.clone();
        b.url = "https://medium.com/@me/a".into();
        let (a, b) = (a.into_event(&author, 1), b.into_event(&author, 2));
        assert_eq!(a.id, b.id);
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let mut c = b.clone();
        c.title = "A, revised".into();
        assert_ne!(fingerprint(&b), fingerprint(&c));
    }
}
