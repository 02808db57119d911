//! The one error type of the crawlers.

use std::path::PathBuf;

/// What can go wrong while crawling. Every variant names where (source, url or file) and why;
/// none of them ever holds a token or a request header.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The `[ingest]` configuration is wrong.
    #[error("ingest configuration: {0}")]
    Config(String),
    /// A request failed for good (after its retries, where a retry could help).
    #[error("GET {url}: {reason}")]
    Http {
        /// The url requested (never with credentials).
        url: String,
        /// HTTP status, if the server answered.
        status: Option<u16>,
        /// What went wrong, including how many attempts were made.
        reason: String,
    },
    /// robots.txt forbids the url for our user agent.
    #[error("GET {url}: disallowed by {robots}")]
    Disallowed {
        /// The url that was not fetched.
        url: String,
        /// The robots.txt that forbids it.
        robots: String,
    },
    /// A page, feed, API answer or export entry could not be understood.
    #[error("{location}: {reason}")]
    Malformed {
        /// Where: a url, or a file inside an export.
        location: String,
        /// What was wrong.
        reason: String,
    },
    /// A local file (an export, the crawl state) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The crawl state database failed.
    #[error("crawl state {path}: {source}")]
    State {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// Publishing to the event log failed.
    #[error("event log: {0}")]
    Log(#[from] twin_eventlog::LogError),
    /// The crawl was stopped (SIGINT/SIGTERM) before this work started.
    #[error("stopped")]
    Stopped,
}

impl IngestError {
    /// A [`IngestError::Malformed`] at `location`.
    pub fn malformed(location: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Malformed {
            location: location.into(),
            reason: reason.into(),
        }
    }

    /// Whether the server said the document is gone (404 or 410): a tombstone, not a failure.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            Self::Http {
                status: Some(404 | 410),
                ..
            }
        )
    }
}

/// Result of the crawlers.
pub type Result<T, E = IngestError> = std::result::Result<T, E>;
