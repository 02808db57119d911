//! Medium: the profile's RSS feed carries the latest articles with their full HTML; article
//! pages serve the rest: articles the feed truncates ("Continue reading on Medium"), older
//! articles the feed no longer lists (those crawled before, and those the configuration names).
//!
//! The feed lists only the latest articles, so a listing is never complete: an article is gone
//! only when its page answers 404 or 410.

use async_trait::async_trait;
use feed_rs::model::Entry;
use twin_schemas::DocumentKind;
use url::Url;

use crate::crawler::{Crawler, FetchInfo, Listing, SourceRun};
use crate::document::{canonical_url, Draft};
use crate::error::{IngestError, Result};
use crate::extract;
use crate::http::{Fetched, Request};
use crate::sources::pages::{self, Page};

/// A Medium profile (or publication).
pub struct Medium {
    feed_url: String,
    articles: Vec<String>,
}

impl Medium {
    /// The profile at `url`: `medium.com/@user` has its feed at `medium.com/feed/@user`,
    /// `user.medium.com` at `user.medium.com/feed`.
    pub fn new(url: &Url, articles: Vec<String>) -> Self {
        let origin = url.origin().ascii_serialization();
        let path = url.path().trim_end_matches('/');
        let host = url.host_str().unwrap_or("");
        let feed_url = if host.ends_with(".medium.com") && host != "www.medium.com" {
            format!("{origin}/feed")
        } else {
            format!("{origin}/feed{path}")
        };
        Self { feed_url, articles }
    }

    /// Where the feed is read.
    pub fn feed_url(&self) -> &str {
        &self.feed_url
    }
}

#[async_trait]
impl Crawler for Medium {
    async fn crawl(&self, run: &SourceRun<'_>) -> Result<Listing> {
        let mut pages = Vec::new();
        let page = |url: String| Page {
            url,
            platform: "medium",
            kind: DocumentKind::Article,
        };
        match read_feed(run, &self.feed_url).await {
            Ok(entries) => {
                run.expect(entries.len() as u64);
                for entry in entries {
                    let Some(link) = entry.links.first().map(|l| canonical_url(&l.href)) else {
                        run.failed(
                            &self.feed_url,
                            &IngestError::malformed(
                                &self.feed_url,
                                format!("item {:?} has no link", entry.id),
                            ),
                        );
                        continue;
                    };
                    if !run.claim(&link) {
                        continue;
                    }
                    match draft_from_entry(&entry, &link) {
                        Some(draft) => {
                            let fetch = FetchInfo {
                                version: Some(pages::FROM_FEED.into()),
                                ..FetchInfo::default()
                            };
                            if let Err(e) = run.emit(draft, fetch).await {
                                run.failed(&link, &e);
                            }
                        }
                        // Truncated in the feed: the page has it whole.
                        None => pages.push(page(link)),
                    }
                }
            }
            Err(error) => run.failed(&self.feed_url, &error),
        }
        for url in &self.articles {
            if run.claim(url) {
                pages.push(page(url.clone()));
            }
        }
        for known in run.known()? {
            if run.claim(&known.fetch_url) {
                pages.push(page(known.fetch_url));
            }
        }
        pages::crawl(run, pages).await;
        Ok(Listing::Partial)
    }
}

/// Fetch and parse a feed; a feed that does not parse (cut off, not XML) is an error naming it.
pub async fn read_feed(run: &SourceRun<'_>, url: &str) -> Result<Vec<Entry>> {
    match run.fetcher().get(Request::page(url)).await? {
        Fetched::Body(response) => feed_rs::parser::parse(response.body.as_slice())
            .map(|feed| feed.entries)
            .map_err(|e| IngestError::malformed(url, format!("feed does not parse: {e}"))),
        Fetched::NotModified => Ok(Vec::new()),
    }
}

/// The article from its feed item, or `None` when the feed truncates it.
fn draft_from_entry(entry: &Entry, link: &str) -> Option<Draft> {
    let html = entry.content.as_ref().and_then(|c| c.body.as_deref())?;
    if is_truncated(html) {
        return None;
    }
    let mut blocks = extract::fragment(html);
    let title = entry.title.as_ref().map(|t| t.content.trim().to_string());
    // Medium's feed HTML opens with the title (and often the subtitle) again.
    if let (Some(title), Some(first)) = (&title, blocks.first()) {
        if first.kind == twin_schemas::BlockKind::Heading && first.text == *title {
            blocks.remove(0);
        }
    }
    let mut draft = Draft::new(DocumentKind::Article, "medium", link);
    draft.title = title.unwrap_or_default();
    draft.published_at = entry
        .published
        .or(entry.updated)
        .map(|t| t.timestamp_millis());
    let tags: Vec<&str> = entry.categories.iter().map(|c| c.term.as_str()).collect();
    draft.meta("tags", Some(tags.join(",")));
    draft.content = blocks;
    Some(draft)
}

fn is_truncated(html: &str) -> bool {
    html.contains("medium-feed-snippet")
        || html.contains("medium-feed-link")
        || html.contains("Continue reading on Medium")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_urls_follow_medium_conventions() {
        let at = |u: &str| Medium::new(&Url::parse(u).expect("url"), Vec::new()).feed_url;
        assert_eq!(
            at("https://medium.com/@paul"),
            "https://medium.com/feed/@paul"
        );
        assert_eq!(
            at("https://paul.medium.com/"),
            "https://paul.medium.com/feed"
        );
        assert_eq!(
            at("https://medium.com/decodingml"),
            "https://medium.com/feed/decodingml"
        );
        assert_eq!(
            at("http://127.0.0.1:8080/@paul"),
            "http://127.0.0.1:8080/feed/@paul"
        );
    }
}
