//! Crawl state: what each source has emitted, so that a second run emits only what is new or
//! changed, sends conditional GETs, and notices what vanished. It lives under the data folder
//! (`DATA_DIR/ingest/state.sqlite`), next to the embedded log and warehouse.
//!
//! A row is written only after its event is durable on the log: a crash between the two makes
//! the next run emit the document again (harmless: downstream writes are idempotent), never
//! lose it. SQLite runs with `synchronous = NORMAL` (WAL): a power cut may lose the last rows,
//! which only makes the next run emit those documents again.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{IngestError, Result};
use crate::http::Validators;

/// What the state knows of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownDocument {
    /// Document id.
    pub id: String,
    /// The source that emitted it.
    pub source: String,
    /// Its canonical url.
    pub url: String,
    /// The url it is fetched from, when it differs (an API endpoint, a tarball).
    pub fetch_url: String,
    /// `article`, `post` or `repository`.
    pub kind: twin_schemas::DocumentKind,
    /// Its platform.
    pub platform: String,
    /// Hash of what was emitted (content, title, publication time).
    pub fingerprint: String,
    /// A source-specific version that changes when the document may have (GitHub: branch and
    /// push time), letting a crawler skip a download.
    pub version: Option<String>,
    /// Validators of the last fetch.
    pub validators: Validators,
    /// A tombstone was emitted for it.
    pub deleted: bool,
}

/// The state database.
pub struct CrawlState {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl CrawlState {
    /// Open (or create) the state file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| IngestError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let path = path.to_path_buf();
        let connection = Connection::open(&path).map_err(|source| IngestError::State {
            path: path.clone(),
            source,
        })?;
        let state = Self {
            path,
            connection: Mutex::new(connection),
        };
        state.with(|c| {
            c.execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA busy_timeout = 5000;
                 CREATE TABLE IF NOT EXISTS documents (
                     id TEXT PRIMARY KEY,
                     source TEXT NOT NULL,
                     url TEXT NOT NULL,
                     fetch_url TEXT NOT NULL,
                     kind TEXT NOT NULL,
                     platform TEXT NOT NULL,
                     fingerprint TEXT NOT NULL,
                     version TEXT,
                     etag TEXT,
                     last_modified TEXT,
                     deleted INTEGER NOT NULL DEFAULT 0,
                     updated_at INTEGER NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS documents_by_source ON documents (source);
                 CREATE INDEX IF NOT EXISTS documents_by_fetch_url ON documents (fetch_url);",
            )
        })?;
        Ok(state)
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        f(&connection).map_err(|source| IngestError::State {
            path: self.path.clone(),
            source,
        })
    }

    /// The documents of a source that are not deleted.
    pub fn documents_of(&self, source: &str) -> Result<Vec<KnownDocument>> {
        self.with(|c| {
            let mut statement = c.prepare(&format!(
                "SELECT {COLUMNS} FROM documents WHERE source = ?1 AND deleted = 0 ORDER BY url"
            ))?;
            let rows = statement.query_map([source], row)?;
            rows.collect()
        })
    }

    /// One document by id, deleted or not.
    pub fn get(&self, id: &str) -> Result<Option<KnownDocument>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM documents WHERE id = ?1"),
                [id],
                row,
            )
            .optional()
        })
    }

    /// The live document fetched from `fetch_url`, if any.
    pub fn by_fetch_url(&self, fetch_url: &str) -> Result<Option<KnownDocument>> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT {COLUMNS} FROM documents WHERE fetch_url = ?1 AND deleted = 0 LIMIT 1"
                ),
                [fetch_url],
                row,
            )
            .optional()
        })
    }

    /// Record a document as emitted (or re-validated), clearing any deletion.
    pub fn record(&self, document: &KnownDocument) -> Result<()> {
        let kind = kind_name(document.kind);
        self.with(|c| {
            c.execute(
                "INSERT INTO documents (id, source, url, fetch_url, kind, platform, fingerprint,
                     version, etag, last_modified, deleted, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (id) DO UPDATE SET source = ?2, url = ?3, fetch_url = ?4, kind = ?5,
                     platform = ?6, fingerprint = ?7, version = ?8, etag = ?9,
                     last_modified = ?10, deleted = ?11, updated_at = ?12",
                params![
                    document.id,
                    document.source,
                    document.url,
                    document.fetch_url,
                    kind,
                    document.platform,
                    document.fingerprint,
                    document.version,
                    document.validators.etag,
                    document.validators.last_modified,
                    document.deleted,
                    now_ms(),
                ],
            )
            .map(|_| ())
        })
    }

    /// Mark a document deleted (its tombstone is on the log).
    pub fn mark_deleted(&self, id: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE documents SET deleted = 1, updated_at = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )
            .map(|_| ())
        })
    }
}

const COLUMNS: &str =
    "id, source, url, fetch_url, kind, platform, fingerprint, version, etag, last_modified, deleted";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KnownDocument> {
    let kind: String = r.get(4)?;
    Ok(KnownDocument {
        id: r.get(0)?,
        source: r.get(1)?,
        url: r.get(2)?,
        fetch_url: r.get(3)?,
        kind: match kind.as_str() {
            "post" => twin_schemas::DocumentKind::Post,
            "repository" => twin_schemas::DocumentKind::Repository,
            _ => twin_schemas::DocumentKind::Article,
        },
        platform: r.get(5)?,
        fingerprint: r.get(6)?,
        version: r.get(7)?,
        validators: Validators {
            etag: r.get(8)?,
            last_modified: r.get(9)?,
        },
        deleted: r.get(10)?,
    })
}

fn kind_name(kind: twin_schemas::DocumentKind) -> &'static str {
    match kind {
        twin_schemas::DocumentKind::Article => "article",
        twin_schemas::DocumentKind::Post => "post",
        twin_schemas::DocumentKind::Repository => "repository",
    }
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_deletions_hide_documents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = CrawlState::open(&dir.path().join("state.sqlite")).expect("open");
        let document = KnownDocument {
            id: "abc".into(),
            source: "medium:@me".into(),
            url: "https://medium.com/@me/a".into(),
            fetch_url: "https://medium.com/@me/a".into(),
            kind: twin_schemas::DocumentKind::Article,
            platform: "medium".into(),
            fingerprint: "f1".into(),
            version: None,
            validators: Validators {
                etag: Some("\"v1\"".into()),
                last_modified: None,
            },
            deleted: false,
        };
        state.record(&document).expect("record");
        assert_eq!(state.get("abc").expect("get"), Some(document.clone()));
        assert_eq!(state.documents_of("medium:@me").expect("list").len(), 1);
        assert!(state
            .by_fetch_url(&document.fetch_url)
            .expect("by url")
            .is_some());
        state.mark_deleted("abc").expect("delete");
        assert!(state.documents_of("medium:@me").expect("list").is_empty());
        assert!(state.get("abc").expect("get").expect("kept").deleted);
        drop(state);
        // Reopening keeps everything.
        let state = CrawlState::open(&dir.path().join("state.sqlite")).expect("reopen");
        assert!(state.get("abc").expect("get").expect("kept").deleted);
    }
}
