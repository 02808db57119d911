//! Answers by request hash, in a SQLite file under the data folder: a build that is stopped and
//! started again asks the LLM only what it had not answered yet. An answer that was invalid
//! twice is remembered too (as invalid), so a resumed build does not pay for it again.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::{DatasetError, Result};

/// What was answered to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// A valid answer's content.
    Answer(String),
    /// The request gave no valid answer; why.
    Invalid(String),
}

/// The cache.
pub struct AnswerCache {
    connection: Mutex<Connection>,
    path: PathBuf,
}

impl AnswerCache {
    /// Open (or create) the cache file.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| DatasetError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let err = |source| DatasetError::Cache {
            path: path.to_path_buf(),
            source,
        };
        let connection = Connection::open(path).map_err(err)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;
                 CREATE TABLE IF NOT EXISTS answers (
                     request TEXT PRIMARY KEY, valid INTEGER NOT NULL, body TEXT NOT NULL);",
            )
            .map_err(err)?;
        Ok(Self {
            connection: Mutex::new(connection),
            path: path.to_path_buf(),
        })
    }

    fn err(&self, source: rusqlite::Error) -> DatasetError {
        DatasetError::Cache {
            path: self.path.clone(),
            source,
        }
    }

    /// What was answered to `request`, if anything.
    pub fn get(&self, request: &str) -> Result<Option<Cached>> {
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let row: Option<(bool, String)> = connection
            .query_row(
                "SELECT valid, body FROM answers WHERE request = ?1",
                params![request],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(row.map(|(valid, body)| {
            if valid {
                Cached::Answer(body)
            } else {
                Cached::Invalid(body)
            }
        }))
    }

    /// Remember what was answered to `request`.
    pub fn put(&self, request: &str, answer: &Cached) -> Result<()> {
        let (valid, body) = match answer {
            Cached::Answer(body) => (true, body),
            Cached::Invalid(reason) => (false, reason),
        };
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        connection
            .execute(
                "INSERT OR REPLACE INTO answers (request, valid, body) VALUES (?1, ?2, ?3)",
                params![request, valid, body],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}
