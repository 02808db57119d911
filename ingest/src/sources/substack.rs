//! Substack: the archive API (`/api/v1/archive`, paginated) lists a publication's whole history;
//! the feed (`/feed`) carries the latest posts' full HTML; the post API (`/api/v1/posts/SLUG`)
//! serves the body of every other post, conditionally.
//!
//! A complete archive is a complete listing: a post it no longer lists is gone.

use std::collections::HashMap;

use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use twin_schemas::DocumentKind;
use url::Url;

use crate::crawler::{Crawler, FetchInfo, Listing, SourceRun};
use crate::document::{canonical_url, Draft};
use crate::error::{IngestError, Result};
use crate::extract;
use crate::http::{Fetched, Request};
use crate::sources::medium::read_feed;

/// Posts per archive page (Substack's own page size).
const PAGE_SIZE: usize = 12;
/// A publication with more archive pages than this is not a publication.
const MAX_PAGES: usize = 2_000;

/// A Substack publication.
pub struct Substack {
    base: String,
}

impl Substack {
    /// The publication at `url` (its origin: `https://name.substack.com` or a custom domain).
    pub fn new(url: &Url) -> Self {
        Self {
            base: url.origin().ascii_serialization(),
        }
    }
}

/// One post as the archive and post APIs describe it.
#[derive(Debug, Clone, Deserialize)]
struct Post {
    slug: String,
    title: String,
    #[serde(default)]
    subtitle: Option<String>,
    #[serde(default)]
    post_date: Option<String>,
    canonical_url: String,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default, rename = "type")]
    post_type: Option<String>,
    #[serde(default)]
    body_html: Option<String>,
}

#[async_trait]
impl Crawler for Substack {
    async fn crawl(&self, run: &SourceRun<'_>) -> Result<Listing> {
        let feed_url = format!("{}/feed", self.base);
        let mut feed_bodies: HashMap<String, String> = HashMap::new();
        let mut feed_failed = false;
        match read_feed(run, &feed_url).await {
            Ok(entries) => {
                for entry in entries {
                    let link = entry.links.first().map(|l| canonical_url(&l.href));
                    let body = entry.content.and_then(|c| c.body);
                    if let (Some(link), Some(body)) = (link, body) {
                        feed_bodies.insert(link, body);
                    }
                }
            }
            Err(error) => {
                feed_failed = true;
                run.failed(&feed_url, &error);
            }
        }
        let (posts, complete) = self.archive(run).await;
        run.expect(posts.len() as u64);
        let concurrency = run.fetcher().settings().concurrency.max(1);
        let feed_bodies = &feed_bodies;
        futures::stream::iter(posts)
            .for_each_concurrent(concurrency, |post| async move {
                let url = canonical_url(&post.canonical_url);
                if run.stopping() || !run.claim(&url) {
                    return;
                }
                if let Err(error) = self.crawl_post(run, post, &url, feed_bodies).await {
                    run.failed(&url, &error);
                }
            })
            .await;
        Ok(if complete && !feed_failed {
            Listing::Complete
        } else {
            Listing::Partial
        })
    }
}

impl Substack {
    /// Every post the archive lists, and whether the listing got to its end.
    async fn archive(&self, run: &SourceRun<'_>) -> (Vec<Post>, bool) {
        let mut posts = Vec::new();
        for page in 0..MAX_PAGES {
            if run.stopping() {
                return (posts, false);
            }
            let url = format!(
                "{}/api/v1/archive?sort=new&search=&offset={}&limit={PAGE_SIZE}",
                self.base,
                page * PAGE_SIZE
            );
            let batch = match run.fetcher().get(Request::api(&url)).await {
                Ok(Fetched::Body(response)) => serde_json::from_slice::<Vec<Post>>(&response.body)
                    .map_err(|e| {
                        IngestError::malformed(
                            &url,
                            format!("archive page is not a list of posts: {e}"),
                        )
                    }),
                Ok(Fetched::NotModified) => Ok(Vec::new()),
                Err(error) => Err(error),
            };
            match batch {
                Ok(batch) => {
                    let last = batch.len() < PAGE_SIZE;
                    posts.extend(batch);
                    if last {
                        return (posts, true);
                    }
                }
                Err(error) => {
                    run.failed(&url, &error);
                    return (posts, false);
                }
            }
        }
        (posts, false)
    }

    async fn crawl_post(
        &self,
        run: &SourceRun<'_>,
        post: Post,
        url: &str,
        feed_bodies: &HashMap<String, String>,
    ) -> Result<()> {
        if let Some(html) = feed_bodies.get(url) {
            let draft = draft(&post, url, html);
            return run.emit(draft, FetchInfo::default()).await;
        }
        let api_url = format!("{}/api/v1/posts/{}", self.base, post.slug);
        let known = run.known_at(&api_url)?;
        let request = Request::api(&api_url).if_changed(known.as_ref().map(|k| &k.validators));
        match run.fetcher().get(request).await {
            Ok(Fetched::NotModified) => {
                if let Some(known) = known {
                    run.unchanged(&known);
                }
                Ok(())
            }
            Ok(Fetched::Body(response)) => {
                let full: Post = serde_json::from_slice(&response.body).map_err(|e| {
                    IngestError::malformed(
                        &api_url,
                        format!("post is not what the post API returns: {e}"),
                    )
                })?;
                let html = full.body_html.clone().unwrap_or_default();
                let draft = draft(&full, url, &html);
                run.emit(
                    draft,
                    FetchInfo {
                        url: api_url,
                        validators: response.validators,
                        version: None,
                    },
                )
                .await
            }
            Err(error) if error.is_gone() => match known {
                Some(known) => run.gone(&known, &error.to_string()).await,
                None => Err(error),
            },
            Err(error) => Err(error),
        }
    }
}

fn draft(post: &Post, url: &str, html: &str) -> Draft {
    let mut draft = Draft::new(DocumentKind::Article, "substack", url);
    draft.title = post.title.clone();
    draft.published_at = post.post_date.as_deref().and_then(extract::parse_time);
    draft.meta("subtitle", post.subtitle.clone());
    draft.meta("slug", Some(post.slug.clone()));
    draft.meta("audience", post.audience.clone());
    draft.meta("type", post.post_type.clone());
    if post.audience.as_deref() == Some("only_paid") {
        // Without a subscription, only the part before the paywall is served.
        draft.meta("paywalled", Some("true"));
    }
    draft.content = extract::fragment(html);
    draft
}
