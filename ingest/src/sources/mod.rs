//! The sources, each a [`Crawler`](crate::crawler::Crawler), picked by url:
//!
//! - [`medium`]: a profile's feed, and article pages for older or truncated articles;
//! - [`substack`]: a publication's feed and its archive API (the whole history);
//! - [`linkedin`]: the member's data export ZIP, and public post urls as pages;
//! - [`github`]: a user's or organisation's public repositories through the REST API;
//! - [`web`]: any other article url, by main-content extraction;
//! - [`pages`]: fetching article pages conditionally, shared by the others.

pub mod github;
pub mod linkedin;
pub mod medium;
pub mod pages;
pub mod substack;
pub mod web;

use std::fmt;
use std::path::Path;

use twin_config::{IngestConfig, SourceConfig};
use url::Url;

use crate::crawler::Crawler;
use crate::document::canonical_url;
use crate::error::{IngestError, Result};
use crate::schedule::Schedule;

/// The platforms the crawlers know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// medium.com.
    Medium,
    /// substack.com and its custom domains.
    Substack,
    /// linkedin.com (data export and public posts).
    Linkedin,
    /// github.com.
    Github,
    /// Any other site.
    Web,
}

impl Platform {
    /// The name used in configuration and in events.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Medium => "medium",
            Platform::Substack => "substack",
            Platform::Linkedin => "linkedin",
            Platform::Github => "github",
            Platform::Web => "web",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "medium" => Platform::Medium,
            "substack" => Platform::Substack,
            "linkedin" => Platform::Linkedin,
            "github" => Platform::Github,
            "web" => Platform::Web,
            _ => return None,
        })
    }

    /// The platform a url belongs to, from its host.
    pub fn of_url(url: &Url) -> Self {
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        let is = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
        if is("medium.com") {
            Platform::Medium
        } else if is("substack.com") {
            Platform::Substack
        } else if is("linkedin.com") {
            Platform::Linkedin
        } else if is("github.com") {
            Platform::Github
        } else {
            Platform::Web
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One configured source, ready to crawl.
pub struct Source {
    /// Key of its documents in the crawl state (platform and where).
    pub key: String,
    /// How it is shown in progress, logs and reports.
    pub label: String,
    /// Its platform.
    pub platform: Platform,
    /// When it is crawled again.
    pub schedule: Schedule,
    /// The crawler.
    pub crawler: Box<dyn Crawler>,
    /// Whether it may reach loopback and private addresses (see `SourceConfig::local`).
    pub local: bool,
}

/// Build every configured source; an error names the source (its position and url) and what
/// is wrong with it.
pub fn from_config(config: &IngestConfig) -> Result<Vec<Source>> {
    config
        .sources
        .iter()
        .enumerate()
        .map(|(index, source)| {
            build(source, config).map_err(|e| {
                let what = source
                    .url
                    .clone()
                    .or_else(|| source.export.as_ref().map(|p| p.display().to_string()))
                    .unwrap_or_default();
                IngestError::Config(format!("ingest.sources[{index}] {what}: {e}"))
            })
        })
        .collect()
}

fn build(source: &SourceConfig, config: &IngestConfig) -> Result<Source, String> {
    let url = source
        .url
        .as_deref()
        .map(|u| Url::parse(u.trim()).map_err(|e| format!("url is not valid: {e}")))
        .transpose()?;
    let platform = match (&source.platform, &url, &source.export) {
        (Some(name), _, _) => Platform::parse(name).ok_or_else(|| {
            format!("unknown platform {name:?}: expected medium, substack, linkedin, github or web")
        })?,
        (None, Some(url), _) => Platform::of_url(url),
        (None, None, Some(_)) => Platform::Linkedin,
        (None, None, None) => return Err("needs a url (or, for LinkedIn, an export)".into()),
    };
    if let Some(url) = &url {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url must be http or https, not {}", url.scheme()));
        }
    }
    for article in &source.articles {
        Url::parse(article)
            .map_err(|e| format!("articles: {article:?} is not a valid url: {e}"))?;
    }
    if source.export.is_some() && platform != Platform::Linkedin {
        return Err("`export` is only for LinkedIn sources".into());
    }
    if source.include_non_public && platform != Platform::Linkedin {
        return Err("`include_non_public` is only for LinkedIn sources".into());
    }
    let schedule_text = source.schedule.as_deref().unwrap_or(&config.schedule);
    let schedule = Schedule::parse(schedule_text)?;
    let articles: Vec<String> = source.articles.iter().map(|a| canonical_url(a)).collect();
    let need_url = || {
        url.clone()
            .ok_or_else(|| format!("a {platform} source needs a url"))
    };
    let (key, label, crawler): (String, String, Box<dyn Crawler>) = match platform {
        Platform::Medium => {
            let url = need_url()?;
            let crawler = medium::Medium::new(&url, articles);
            (
                format!("medium:{}", canonical_url(url.as_str())),
                format!("medium {}", short(&url)),
                Box::new(crawler),
            )
        }
        Platform::Substack => {
            let url = need_url()?;
            (
                format!("substack:{}", url.origin().ascii_serialization()),
                format!("substack {}", url.host_str().unwrap_or("")),
                Box::new(substack::Substack::new(&url)),
            )
        }
        Platform::Github => {
            let url = need_url()?;
            let owner = url
                .path_segments()
                .and_then(|mut s| s.next())
                .filter(|s| !s.is_empty())
                .ok_or("a GitHub source's url names the user or organisation, e.g. https://github.com/octocat")?
                .to_string();
            let crawler = github::Github::new(&owner, &config.github)?;
            (
                format!("github:{owner}"),
                format!("github {owner}"),
                Box::new(crawler),
            )
        }
        Platform::Linkedin => {
            let export = source.export.as_deref();
            let mut posts = articles;
            if let Some(url) = &url {
                // A profile url is not a post; a post url is.
                if url.path().starts_with("/posts/") || url.path().starts_with("/feed/update/") {
                    posts.insert(0, canonical_url(url.as_str()));
                }
            }
            if export.is_none() && posts.is_empty() {
                return Err("a LinkedIn source needs `export` (the data export ZIP) or public post urls in `articles`".into());
            }
            let key = match (export, &url) {
                (Some(path), _) => format!("linkedin:export:{}", file_name(path)),
                (None, Some(url)) => format!("linkedin:{}", canonical_url(url.as_str())),
                (None, None) => format!("linkedin:{}", posts[0]),
            };
            let label = match export {
                Some(path) => format!("linkedin {}", file_name(path)),
                None => "linkedin posts".to_string(),
            };
            (
                key,
                label,
                Box::new(linkedin::Linkedin::new(
                    export.map(Path::to_path_buf),
                    posts,
                    linkedin::ExportOptions {
                        include_non_public: source.include_non_public,
                        ..linkedin::ExportOptions::default()
                    },
                )),
            )
        }
        Platform::Web => {
            let mut urls = articles;
            if let Some(url) = &url {
                urls.insert(0, canonical_url(url.as_str()));
            }
            let first = urls.first().cloned().ok_or("a web source needs a url")?;
            let label = match Url::parse(&first) {
                Ok(u) => format!("web {}", short(&u)),
                Err(_) => "web".to_string(),
            };
            (format!("web:{first}"), label, Box::new(web::Web::new(urls)))
        }
    };
    // Local when configured so, or when the urls the user gave name a local host themselves
    // (a mirror on this machine): redirects and names found while crawling do not make it so.
    let api_url = (platform == Platform::Github).then_some(config.github.api_url.as_str());
    let local = source.local
        || source
            .url
            .iter()
            .chain(&source.articles)
            .map(String::as_str)
            .chain(api_url)
            .any(crate::http::names_local_host);
    Ok(Source {
        key,
        label,
        platform,
        schedule,
        crawler,
        local,
    })
}

fn short(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    let path = url.path().trim_end_matches('/');
    format!("{host}{path}")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
