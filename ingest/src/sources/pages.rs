//! Article pages: fetched conditionally (ETag / Last-Modified), several at a time, main content
//! extracted; a 404 or 410 for a known page is a tombstone.

use futures::StreamExt;
use twin_schemas::DocumentKind;

use crate::crawler::{FetchInfo, SourceRun};
use crate::document::Draft;
use crate::error::{IngestError, Result};
use crate::extract;
use crate::http::{Fetched, Request};

/// One page to crawl.
#[derive(Debug, Clone)]
pub struct Page {
    /// Its url (canonical).
    pub url: String,
    /// Platform name for the event.
    pub platform: &'static str,
    /// What kind of document it is.
    pub kind: DocumentKind,
}

/// Crawl `pages`, `ingest.http.concurrency` at a time; each failure is reported and the rest
/// go on.
pub async fn crawl(run: &SourceRun<'_>, pages: Vec<Page>) {
    let concurrency = run.fetcher().settings().concurrency.max(1);
    run.expect(pages.len() as u64);
    futures::stream::iter(pages)
        .for_each_concurrent(concurrency, |page| async move {
            if run.stopping() {
                return;
            }
            if let Err(error) = crawl_one(run, &page).await {
                run.failed(&page.url, &error);
            }
        })
        .await;
}

async fn crawl_one(run: &SourceRun<'_>, page: &Page) -> Result<()> {
    let id = twin_schemas::document_id(page.platform, &page.url);
    // Deleted ones too: a page that is gone stays gone without failing every run.
    let known = match run.known_at(&page.url)? {
        Some(known) => Some(known),
        None => run.known_by_id(&id)?,
    };
    let live = known.as_ref().filter(|k| !k.deleted);
    let request = Request::page(&page.url).if_changed(live.map(|k| &k.validators));
    match run.fetcher().get(request).await {
        Ok(Fetched::NotModified) => match live {
            Some(known) => {
                run.unchanged(known);
                Ok(())
            }
            None => Err(IngestError::malformed(
                &page.url,
                "the server answered 304 Not Modified to an unconditional GET",
            )),
        },
        Ok(Fetched::Body(response)) => {
            let draft = draft_from_page(&response.text(), page);
            let fetch = FetchInfo {
                url: page.url.clone(),
                validators: response.validators,
                version: None,
            };
            if live.is_some_and(|k| k.version.as_deref() == Some(FROM_FEED)) {
                // First look at the page of an article the feed carried: same article, other
                // markup. Not a change.
                run.adopt(draft, fetch).await
            } else {
                run.emit(draft, fetch).await
            }
        }
        Err(error) if error.is_gone() => match &known {
            Some(known) => run.gone(known, &error.to_string()).await,
            None => Err(error),
        },
        Err(error) => Err(error),
    }
}

/// The version of a document taken from a feed item rather than its page.
pub const FROM_FEED: &str = "feed";

/// A document from a whole page.
pub fn draft_from_page(html: &str, page: &Page) -> Draft {
    let extracted = extract::page(html);
    let mut draft = Draft::new(page.kind, page.platform, page.url.clone());
    draft.title = extracted
        .title
        .clone()
        .or_else(|| first_line(&extracted.blocks))
        .unwrap_or_default();
    draft.published_at = extracted.published_at;
    draft.meta("subtitle", extracted.subtitle);
    draft.content = extracted.blocks;
    draft
}

/// A title for a post that has none: its first line, cut at a word near 100 characters.
pub fn first_line(blocks: &[twin_schemas::ContentBlock]) -> Option<String> {
    let text = blocks.first()?.text.lines().next()?.trim();
    if text.chars().count() <= 100 {
        return Some(text.to_string());
    }
    let cut: String = text.chars().take(100).collect();
    let cut = cut.rsplit_once(' ').map(|(head, _)| head).unwrap_or(&cut);
    Some(format!("{cut}…"))
}
