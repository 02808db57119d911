//! One crawl pass over the configured sources: the [`Crawler`] trait every source implements,
//! the [`SourceRun`] through which a crawler reports what it found (which publishes, compares
//! with the crawl state and counts), and the per-source [`SourceReport`].

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use twin_eventlog::EventLog;
use twin_schemas::{Author, DocumentDeleted, Event};

use crate::document::{fingerprint, Draft};
use crate::error::{IngestError, Result};
use crate::http::{Fetcher, Validators};
use crate::progress::Progress;
use crate::state::{now_ms, CrawlState, KnownDocument};

/// Whether a crawler saw everything its source holds. Only a complete listing lets documents
/// that were not seen be declared gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Every document of the source was listed.
    Complete,
    /// Only some were (a feed of the latest articles, a failed part).
    Partial,
}

/// A source: lists its documents and reports each through the [`SourceRun`].
#[async_trait]
pub trait Crawler: Send + Sync {
    /// Crawl everything. Documents that fail are reported through [`SourceRun::failed`] and
    /// the crawl goes on; an error returned here means the source as a whole failed.
    async fn crawl(&self, run: &SourceRun<'_>) -> Result<Listing>;
}

/// Everything one pass shares between its sources.
pub struct Context {
    /// HTTP, to public addresses only.
    pub fetcher: Arc<Fetcher>,
    /// HTTP for local sources, which may reach loopback and private addresses.
    pub local_fetcher: Arc<Fetcher>,
    /// What earlier runs emitted.
    pub state: Arc<CrawlState>,
    /// Where events go.
    pub log: Arc<dyn EventLog>,
    /// The raw-documents topic.
    pub topic: String,
    /// Whose documents these are.
    pub author: Author,
    /// Cancelled on SIGINT/SIGTERM.
    pub stop: CancellationToken,
    /// Progress bars (hidden off a terminal).
    pub progress: Progress,
}

/// Where a document was fetched from, and what to send next time.
#[derive(Debug, Clone, Default)]
pub struct FetchInfo {
    /// The url fetched (an article page, an API endpoint, a tarball); empty: the document's url.
    pub url: String,
    /// Validators the server gave.
    pub validators: Validators,
    /// A source-specific version (see [`KnownDocument::version`]).
    pub version: Option<String>,
}

/// Counts of one source's pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Documents never emitted before (or emitted, then deleted).
    pub new: u64,
    /// Documents whose content, title or date changed.
    pub changed: u64,
    /// Documents as they were.
    pub unchanged: u64,
    /// Tombstones emitted.
    pub deleted: u64,
    /// Documents (or parts of the source) that failed.
    pub failed: u64,
    /// Secrets taken out of documents before they were published (see [`crate::redact`]).
    pub redacted: u64,
}

/// The outcome of one source in one pass.
#[derive(Debug, Clone)]
pub struct SourceReport {
    /// The source's label (platform and where).
    pub source: String,
    /// Counts.
    pub tally: Tally,
    /// What failed, each with where and why.
    pub errors: Vec<String>,
}

impl SourceReport {
    /// Whether anything failed.
    pub fn failed(&self) -> bool {
        !self.errors.is_empty()
    }
}

impl fmt::Display for SourceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.tally;
        write!(
            f,
            "{}: {} new, {} changed, {} unchanged, {} deleted, {} failed",
            self.source, t.new, t.changed, t.unchanged, t.deleted, t.failed
        )?;
        if t.redacted > 0 {
            write!(f, ", {} secrets redacted", t.redacted)?;
        }
        Ok(())
    }
}

/// One source's pass: crawlers report documents here.
pub struct SourceRun<'a> {
    context: &'a Context,
    local: bool,
    key: &'a str,
    label: &'a str,
    touched_ids: Mutex<HashSet<String>>,
    touched_urls: Mutex<HashSet<String>>,
    tally: Mutex<Tally>,
    errors: Mutex<Vec<String>>,
    bar: ProgressBar,
}

impl<'a> SourceRun<'a> {
    /// A pass of the source `key` (its state key) shown as `label`; a `local` one may reach
    /// loopback and private addresses.
    pub fn new(context: &'a Context, key: &'a str, label: &'a str, local: bool) -> Self {
        Self {
            context,
            local,
            key,
            label,
            touched_ids: Mutex::new(HashSet::new()),
            touched_urls: Mutex::new(HashSet::new()),
            tally: Mutex::new(Tally::default()),
            errors: Mutex::new(Vec::new()),
            bar: context.progress.bar(label),
        }
    }

    /// HTTP, reaching what the source may reach.
    pub fn fetcher(&self) -> &Fetcher {
        if self.local {
            &self.context.local_fetcher
        } else {
            &self.context.fetcher
        }
    }

    /// Whether the crawl is being stopped: start nothing new.
    pub fn stopping(&self) -> bool {
        self.context.stop.is_cancelled()
    }

    /// The source's label.
    pub fn label(&self) -> &str {
        self.label
    }

    /// The documents earlier passes emitted for this source (not deleted).
    pub fn known(&self) -> Result<Vec<KnownDocument>> {
        self.context.state.documents_of(self.key)
    }

    /// The live document fetched from `fetch_url`, if an earlier pass emitted one.
    pub fn known_at(&self, fetch_url: &str) -> Result<Option<KnownDocument>> {
        self.context.state.by_fetch_url(fetch_url)
    }

    /// Claim `fetch_url` for this pass: false if it was already handled (listed twice).
    pub fn claim(&self, fetch_url: &str) -> bool {
        lock(&self.touched_urls).insert(fetch_url.to_string())
    }

    /// Tell the progress bar how many documents to expect (more may come).
    pub fn expect(&self, documents: u64) {
        self.bar.inc_length(documents);
    }

    /// A known document, deleted or not, by id.
    pub fn known_by_id(&self, id: &str) -> Result<Option<KnownDocument>> {
        self.context.state.get(id)
    }

    /// A document found: emitted if it is new or changed, and remembered either way.
    pub async fn emit(&self, draft: Draft, fetch: FetchInfo) -> Result<()> {
        self.emit_or_adopt(draft, fetch, false).await
    }

    /// A document read from another rendering of the same content (the article page of what the
    /// feed carried): remembered as it now reads, without an event, so that the next real
    /// change is compared with this rendering.
    pub async fn adopt(&self, draft: Draft, fetch: FetchInfo) -> Result<()> {
        self.emit_or_adopt(draft, fetch, true).await
    }

    async fn emit_or_adopt(&self, mut draft: Draft, fetch: FetchInfo, adopt: bool) -> Result<()> {
        self.redact(&mut draft);
        let event = draft.into_event(&self.context.author, now_ms());
        if event.content.is_empty() {
            return Err(IngestError::malformed(
                &event.url,
                "no content found (nothing that reads as the article body)",
            ));
        }
        let fingerprint = fingerprint(&event);
        let prior = self.context.state.get(&event.id)?;
        let fetch_url = if fetch.url.is_empty() {
            event.url.clone()
        } else {
            fetch.url
        };
        lock(&self.touched_ids).insert(event.id.clone());
        lock(&self.touched_urls).insert(fetch_url.clone());
        let known = KnownDocument {
            id: event.id.clone(),
            source: self.key.to_string(),
            url: event.url.clone(),
            fetch_url,
            kind: event.kind,
            platform: event.platform.clone(),
            fingerprint: fingerprint.clone(),
            version: fetch.version,
            validators: fetch.validators,
            deleted: false,
        };
        let outcome = match &prior {
            Some(p) if !p.deleted && (adopt || p.fingerprint == fingerprint) => Outcome::Unchanged,
            Some(p) if !p.deleted => Outcome::Changed,
            _ => Outcome::New,
        };
        if outcome != Outcome::Unchanged {
            let url = event.url.clone();
            twin_eventlog::publish(
                self.context.log.as_ref(),
                &self.context.topic,
                &[Event::Raw(event)],
            )
            .await?;
            info!(source = self.label, url = %url, outcome = outcome.name(), "document emitted");
        }
        // Only now: the event is durable, so the state may say it was emitted.
        self.context.state.record(&known)?;
        self.count(outcome, &known.platform);
        Ok(())
    }

    /// Take secrets out of the draft's title and blocks, counted per source and kind (the
    /// secret itself is never logged).
    fn redact(&self, draft: &mut Draft) {
        let mut kinds = Vec::new();
        let texts =
            std::iter::once(&mut draft.title).chain(draft.content.iter_mut().map(|b| &mut b.text));
        for text in texts {
            let (clean, found) = crate::redact::redact(text);
            if !found.is_empty() {
                *text = clean;
                kinds.extend(found);
            }
        }
        if kinds.is_empty() {
            return;
        }
        for kind in &kinds {
            metrics::counter!(
                "twin_ingest_secrets_redacted_total",
                "source" => self.label.to_string(),
                "kind" => *kind
            )
            .increment(1);
        }
        warn!(source = self.label, url = %draft.url, kinds = ?kinds, "secrets redacted before publishing");
        lock(&self.tally).redacted += kinds.len() as u64;
    }

    /// A document the source confirms is as it was (304, or an unchanged version).
    pub fn unchanged(&self, known: &KnownDocument) {
        lock(&self.touched_ids).insert(known.id.clone());
        lock(&self.touched_urls).insert(known.fetch_url.clone());
        self.count(Outcome::Unchanged, &known.platform);
    }

    /// A document that vanished at its source: a tombstone, once.
    pub async fn gone(&self, known: &KnownDocument, reason: &str) -> Result<()> {
        lock(&self.touched_ids).insert(known.id.clone());
        lock(&self.touched_urls).insert(known.fetch_url.clone());
        if known.deleted {
            return Ok(());
        }
        let tombstone = DocumentDeleted {
            document_id: known.id.clone(),
            kind: known.kind,
            platform: known.platform.clone(),
            url: known.url.clone(),
            deleted_at: now_ms(),
            reason: reason.to_string(),
        };
        twin_eventlog::publish(
            self.context.log.as_ref(),
            &self.context.topic,
            &[Event::Deleted(tombstone)],
        )
        .await?;
        self.context.state.mark_deleted(&known.id)?;
        info!(source = self.label, url = %known.url, reason, "document deleted at its source");
        self.count(Outcome::Deleted, &known.platform);
        Ok(())
    }

    /// A document or part of the source that failed; the pass goes on. A stop is not a failure.
    pub fn failed(&self, location: &str, error: &IngestError) {
        lock(&self.touched_urls).insert(location.to_string());
        if matches!(error, IngestError::Stopped) {
            return;
        }
        let message = if error.to_string().contains(location) {
            error.to_string()
        } else {
            format!("{location}: {error}")
        };
        warn!(source = self.label, error = %message, "failed");
        metrics::counter!("twin_ingest_failures_total", "source" => self.label.to_string())
            .increment(1);
        lock(&self.errors).push(message);
        lock(&self.tally).failed += 1;
        self.bar.inc(1);
    }

    fn count(&self, outcome: Outcome, platform: &str) {
        let mut tally = lock(&self.tally);
        match outcome {
            Outcome::New => tally.new += 1,
            Outcome::Changed => tally.changed += 1,
            Outcome::Unchanged => tally.unchanged += 1,
            Outcome::Deleted => tally.deleted += 1,
        }
        metrics::counter!(
            "twin_ingest_documents_total",
            "platform" => platform.to_string(),
            "outcome" => outcome.name()
        )
        .increment(1);
        self.bar.set_message(format!(
            "{} new, {} changed, {} unchanged, {} failed",
            tally.new, tally.changed, tally.unchanged, tally.failed
        ));
        if outcome != Outcome::Deleted {
            self.bar.inc(1);
        }
    }

    /// Declare gone every known document of the source that this pass did not see.
    async fn sweep(&self) -> Result<()> {
        for known in self.known()? {
            let seen = lock(&self.touched_ids).contains(&known.id)
                || lock(&self.touched_urls).contains(&known.fetch_url);
            if !seen {
                self.gone(&known, &format!("no longer listed by {}", self.label))
                    .await?;
            }
        }
        Ok(())
    }

    /// Run `crawler` to the end and report.
    pub async fn run(self, crawler: &dyn Crawler) -> SourceReport {
        let listing = crawler.crawl(&self).await;
        match listing {
            Ok(Listing::Complete) if !self.stopping() && lock(&self.errors).is_empty() => {
                if let Err(e) = self.sweep().await {
                    self.failed(self.label, &e);
                }
            }
            Ok(_) => {}
            Err(e) => self.failed(self.label, &e),
        }
        self.bar.finish();
        let report = SourceReport {
            source: self.label.to_string(),
            tally: lock(&self.tally).clone(),
            errors: lock(&self.errors).clone(),
        };
        info!(
            source = self.label,
            new = report.tally.new,
            changed = report.tally.changed,
            unchanged = report.tally.unchanged,
            deleted = report.tally.deleted,
            failed = report.tally.failed,
            "source crawled"
        );
        report
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    New,
    Changed,
    Unchanged,
    Deleted,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::New => "new",
            Outcome::Changed => "changed",
            Outcome::Unchanged => "unchanged",
            Outcome::Deleted => "deleted",
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
