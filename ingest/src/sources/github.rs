//! GitHub: a user's or organisation's public repositories through the REST API (a token, if
//! any, from `ingest.github.token` or `GITHUB_TOKEN`), each fetched at its default branch as a
//! tarball and emitted as one document: README, then source files, text exact.
//!
//! A repository whose default branch and last push are what the state remembers is not
//! downloaded again. The repository list is complete: a repository it no longer lists (deleted,
//! renamed or made private) is gone.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use twin_config::GithubConfig;
use twin_schemas::DocumentKind;

use crate::crawler::{Crawler, FetchInfo, Listing, SourceRun};
use crate::document::{canonical_url, Draft};
use crate::error::{IngestError, Result};
use crate::extract;
use crate::http::{next_link, Fetched, Request};
use crate::repository::FileRules;

/// A repository list longer than this many pages is not a user's.
const MAX_PAGES: usize = 1_000;
const ACCEPT: &str = "application/vnd.github+json";

/// A GitHub user or organisation.
pub struct Github {
    owner: String,
    api: String,
    token: Option<String>,
    include_forks: bool,
    include_archived: bool,
    rules: Arc<FileRules>,
}

impl Github {
    /// The repositories of `owner`.
    pub fn new(owner: &str, config: &GithubConfig) -> Result<Self, String> {
        let token = Some(config.token.trim().to_string())
            .filter(|t| !t.is_empty())
            .or_else(|| {
                std::env::var("GITHUB_TOKEN")
                    .ok()
                    .filter(|t| !t.trim().is_empty())
            });
        Ok(Self {
            owner: owner.to_string(),
            api: config.api_url.trim_end_matches('/').to_string(),
            token,
            include_forks: config.include_forks,
            include_archived: config.include_archived,
            rules: Arc::new(FileRules::new(config).map_err(|e| e.to_string())?),
        })
    }

    fn request<'a>(&'a self, url: &'a str) -> Request<'a> {
        Request {
            bearer: self.token.as_deref(),
            accept: Some(ACCEPT),
            ..Request::api(url)
        }
    }
}

/// A repository as the REST API lists it.
#[derive(Debug, Clone, Deserialize)]
struct Repository {
    name: String,
    full_name: String,
    html_url: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    fork: bool,
    #[serde(default)]
    archived: bool,
    default_branch: String,
    #[serde(default)]
    pushed_at: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    stargazers_count: Option<u64>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    topics: Vec<String>,
}

#[async_trait]
impl Crawler for Github {
    async fn crawl(&self, run: &SourceRun<'_>) -> Result<Listing> {
        let repositories = self.list(run).await?;
        let repositories: Vec<Repository> = repositories
            .into_iter()
            .filter(|r| (self.include_forks || !r.fork) && (self.include_archived || !r.archived))
            .collect();
        run.expect(repositories.len() as u64);
        let concurrency = run.fetcher().settings().concurrency.max(1);
        futures::stream::iter(repositories)
            .for_each_concurrent(concurrency, |repository| async move {
                let url = canonical_url(&repository.html_url);
                if run.stopping() || !run.claim(&url) {
                    return;
                }
                if let Err(error) = self.crawl_repository(run, &repository, &url).await {
                    run.failed(&url, &error);
                }
            })
            .await;
        Ok(if run.stopping() {
            Listing::Partial
        } else {
            Listing::Complete
        })
    }
}

impl Github {
    /// Every public repository of the owner, following `Link: rel="next"`.
    async fn list(&self, run: &SourceRun<'_>) -> Result<Vec<Repository>> {
        let mut url = format!(
            "{}/users/{}/repos?type=owner&sort=full_name&per_page=100",
            self.api, self.owner
        );
        let mut repositories = Vec::new();
        for _ in 0..MAX_PAGES {
            let response = match run.fetcher().get(self.request(&url)).await? {
                Fetched::Body(response) => response,
                Fetched::NotModified => break,
            };
            let page: Vec<Repository> = serde_json::from_slice(&response.body).map_err(|e| {
                IngestError::malformed(&url, format!("not a list of repositories: {e}"))
            })?;
            repositories.extend(page);
            match response.link.as_deref().and_then(next_link) {
                Some(next) => url = next,
                None => return Ok(repositories),
            }
        }
        Err(IngestError::malformed(
            url,
            format!("more than {MAX_PAGES} pages of repositories"),
        ))
    }

    async fn crawl_repository(
        &self,
        run: &SourceRun<'_>,
        repository: &Repository,
        url: &str,
    ) -> Result<()> {
        let version = format!(
            "{}@{}",
            repository.default_branch,
            repository.pushed_at.as_deref().unwrap_or("")
        );
        let tarball = format!(
            "{}/repos/{}/tarball/{}",
            self.api, repository.full_name, repository.default_branch
        );
        let known = run.known_at(&tarball)?;
        if let Some(known) = known
            .as_ref()
            .filter(|k| k.version.as_deref() == Some(&version))
        {
            run.unchanged(known);
            return Ok(());
        }
        let request = self
            .request(&tarball)
            .if_changed(known.as_ref().map(|k| &k.validators));
        let response = match run.fetcher().get(request).await {
            Ok(Fetched::Body(response)) => response,
            Ok(Fetched::NotModified) => {
                if let Some(known) = &known {
                    run.unchanged(known);
                }
                return Ok(());
            }
            Err(error) if error.is_gone() => {
                return match &known {
                    Some(known) => run.gone(known, &error.to_string()).await,
                    None => Err(error),
                };
            }
            Err(error) => return Err(error),
        };
        let body = response.body;
        let location = format!("{} (tarball of {})", url, repository.default_branch);
        // Decompressing is CPU work: off the async threads.
        let rules = self.rules.clone();
        let files = tokio::task::spawn_blocking(move || rules.read_tar_gz(&body, &location))
            .await
            .map_err(|e| {
                IngestError::malformed(url, format!("reading the tarball panicked: {e}"))
            })??;
        let location = format!("{} (tarball of {})", url, repository.default_branch);
        if files.blocks.is_empty() {
            return Err(IngestError::malformed(
                &location,
                format!(
                    "no file is left once the rules are applied ({} skipped)",
                    files.skipped.len()
                ),
            ));
        }
        let mut draft = Draft::new(DocumentKind::Repository, "github", url);
        draft.title = repository.name.clone();
        draft.published_at = repository
            .created_at
            .as_deref()
            .and_then(extract::parse_time);
        draft.meta("full_name", Some(repository.full_name.clone()));
        draft.meta("description", repository.description.clone());
        draft.meta("default_branch", Some(repository.default_branch.clone()));
        draft.meta("pushed_at", repository.pushed_at.clone());
        draft.meta("language", repository.language.clone());
        draft.meta("stars", repository.stargazers_count.map(|s| s.to_string()));
        draft.meta("topics", Some(repository.topics.join(",")));
        draft.meta("files", Some(files.blocks.len().to_string()));
        draft.metadata.extend(files.skipped_counts());
        draft.content = files.blocks;
        run.emit(
            draft,
            FetchInfo {
                url: tarball,
                validators: response.validators,
                version: Some(version),
            },
        )
        .await
    }
}
