//! Ingest: autonomous, scheduled crawlers that emit one `RawDocument` event per document (and a
//! `DocumentDeleted` tombstone per vanished one) to the raw-documents topic.
//!
//! - [`sources`]: the crawlers (Medium, Substack, LinkedIn export and posts, GitHub, any web
//!   article), each a [`Crawler`], picked by url from `[[ingest.sources]]`;
//! - [`crawler`]: one source's pass: compares with the crawl state, publishes, counts;
//! - [`http`]: polite, robust HTTP (robots.txt, per-host pace, retries, Retry-After, limits,
//!   conditional GETs);
//! - [`extract`]: HTML to content blocks (main content only, code kept exactly);
//! - [`repository`]: a repository tarball to file blocks, safely, by configurable rules;
//! - [`document`]: canonical urls, ids, fingerprints;
//! - [`redact`]: secrets (API keys, tokens, private keys) taken out of text before it is published;
//! - [`state`]: what was emitted, under the data folder;
//! - [`schedule`]: intervals and cron expressions;
//! - [`progress`]: a bar per source on a terminal;
//!
//! [`Ingest::run_once`] crawls every source once; [`Ingest::run_scheduled`] crawls each on its
//! schedule until stopped.

pub mod crawler;
pub mod document;
pub mod error;
pub mod extract;
pub mod http;
pub mod progress;
pub mod redact;
pub mod repository;
pub mod schedule;
pub mod sources;
pub mod state;

use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use twin_config::TwinConfig;
use twin_eventlog::EventLog;
use twin_schemas::Author;

pub use crawler::{Crawler, Listing, SourceReport, SourceRun, Tally};
pub use error::{IngestError, Result};
pub use progress::Progress;
pub use sources::Source;

/// The crawlers of one configuration, ready to run.
pub struct Ingest {
    sources: Vec<Source>,
    context: crawler::Context,
}

impl Ingest {
    /// Check the configuration and open the crawl state under `DATA_DIR/ingest`. `stop` is
    /// cancelled on SIGINT/SIGTERM: every source then finishes what it fetched and stops.
    pub fn new(
        config: &TwinConfig,
        log: Arc<dyn EventLog>,
        progress: Progress,
        stop: CancellationToken,
    ) -> Result<Self> {
        let sources = sources::from_config(&config.ingest)?;
        let state = state::CrawlState::open(&config.layout().ingest_state())?;
        let fetcher = http::Fetcher::new(&config.ingest.http, stop.clone())?;
        let local_fetcher =
            http::Fetcher::reaching(&config.ingest.http, stop.clone(), http::Addresses::Any)?;
        Ok(Self {
            sources,
            context: crawler::Context {
                fetcher: Arc::new(fetcher),
                local_fetcher: Arc::new(local_fetcher),
                state: Arc::new(state),
                log,
                topic: config.topics.raw_documents.clone(),
                author: Author {
                    id: config.author.id.clone(),
                    full_name: config.author.full_name.clone(),
                },
                stop,
                progress,
            },
        })
    }

    /// The configured sources.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Keep only the sources whose label contains `filter`; an error if none does.
    pub fn retain(&mut self, filter: &str) -> Result<()> {
        let labels: Vec<String> = self.sources.iter().map(|s| s.label.clone()).collect();
        self.sources.retain(|s| s.label.contains(filter));
        if self.sources.is_empty() {
            return Err(IngestError::Config(format!(
                "no source matches {filter:?}; the sources are: {}",
                labels.join(", ")
            )));
        }
        Ok(())
    }

    /// Crawl every source once, all at the same time; each reports on its own, and one that
    /// fails does not stop the others.
    pub async fn run_once(&self) -> Vec<SourceReport> {
        self.pass(self.sources.iter()).await
    }

    /// One pass of `sources`, all at the same time.
    async fn pass(&self, sources: impl Iterator<Item = &Source>) -> Vec<SourceReport> {
        // Kafka brokers need the topic before the first append; the embedded log makes it.
        let topic = self
            .context
            .log
            .ensure_topic(&self.context.topic)
            .await
            .err();
        let passes = sources.map(|source| async {
            let run = SourceRun::new(&self.context, &source.key, &source.label, source.local);
            if let Some(error) = &topic {
                run.failed(
                    &self.context.topic,
                    &IngestError::Config(format!("topic: {error}")),
                );
            }
            run.run(source.crawler.as_ref()).await
        });
        futures::future::join_all(passes).await
    }

    /// Crawl each source on its schedule, starting with a pass of every source now, until
    /// `stop` is cancelled. `on_pass` sees every source's report.
    pub async fn run_scheduled(&self, mut on_pass: impl FnMut(&SourceReport)) {
        let now = Utc::now();
        let mut due: Vec<_> = self.sources.iter().map(|_| Some(now)).collect();
        loop {
            let now = Utc::now();
            let ready: Vec<usize> = (0..self.sources.len())
                .filter(|&i| due[i].is_some_and(|t| t <= now))
                .collect();
            if !ready.is_empty() {
                let reports = self.pass(ready.iter().map(|&i| &self.sources[i])).await;
                let ended = Utc::now();
                for (&i, report) in ready.iter().zip(&reports) {
                    on_pass(report);
                    due[i] = self.sources[i].schedule.next_after(ended);
                    match due[i] {
                        Some(next) => {
                            info!(source = %self.sources[i].label, next = %next.to_rfc3339(), "next crawl")
                        }
                        None => {
                            warn!(source = %self.sources[i].label, "the schedule names no future time; not crawled again")
                        }
                    }
                }
            }
            if self.context.stop.is_cancelled() {
                return;
            }
            let Some(next) = due.iter().flatten().min().copied() else {
                info!("no source is scheduled again");
                self.context.stop.cancelled().await;
                return;
            };
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.context.stop.cancelled() => return,
            }
        }
    }
}

/// The summary table of a pass: one line per source, then totals.
pub fn summary(reports: &[SourceReport]) -> String {
    let width = reports
        .iter()
        .map(|r| r.source.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut text = format!(
        "{:width$}  {:>6} {:>8} {:>10} {:>8} {:>7}\n",
        "source", "new", "changed", "unchanged", "deleted", "failed"
    );
    let mut total = Tally::default();
    for report in reports {
        let t = &report.tally;
        text.push_str(&format!(
            "{:width$}  {:>6} {:>8} {:>10} {:>8} {:>7}\n",
            report.source, t.new, t.changed, t.unchanged, t.deleted, t.failed
        ));
        total.new += t.new;
        total.changed += t.changed;
        total.unchanged += t.unchanged;
        total.deleted += t.deleted;
        total.failed += t.failed;
    }
    text.push_str(&format!(
        "{:width$}  {:>6} {:>8} {:>10} {:>8} {:>7}\n",
        "total", total.new, total.changed, total.unchanged, total.deleted, total.failed
    ));
    text
}
