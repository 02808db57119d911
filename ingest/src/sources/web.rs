//! Any article url: the page's main content (not its navigation, footer or comments). Each url
//! still gets its platform from its host, so a Medium article or a LinkedIn post listed here
//! is attributed right.
//!
//! The configuration lists the urls, so a listing is never "complete" in the crawler's sense:
//! a page is gone only when it answers 404 or 410.

use async_trait::async_trait;
use twin_schemas::DocumentKind;
use url::Url;

use crate::crawler::{Crawler, Listing, SourceRun};
use crate::error::Result;
use crate::sources::pages::{self, Page};
use crate::sources::Platform;

/// A list of article urls.
pub struct Web {
    urls: Vec<String>,
}

impl Web {
    /// The articles at `urls`.
    pub fn new(urls: Vec<String>) -> Self {
        Self { urls }
    }
}

#[async_trait]
impl Crawler for Web {
    async fn crawl(&self, run: &SourceRun<'_>) -> Result<Listing> {
        let pages = self
            .urls
            .iter()
            .filter(|url| run.claim(url))
            .map(|url| {
                let platform = Url::parse(url)
                    .map(|u| Platform::of_url(&u))
                    .unwrap_or(Platform::Web);
                let kind = if platform == Platform::Linkedin {
                    DocumentKind::Post
                } else {
                    DocumentKind::Article
                };
                Page {
                    url: url.clone(),
                    platform: platform.name(),
                    kind,
                }
            })
            .collect();
        pages::crawl(run, pages).await;
        Ok(Listing::Partial)
    }
}
