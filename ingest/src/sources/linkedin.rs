//! LinkedIn: logged-in scraping is not allowed (and breaks), so the source is the data export a
//! member downloads from LinkedIn (Settings, Data privacy, Get a copy of your data): a ZIP with
//! `Shares.csv` (posts) and `Articles/Articles/*.html` (articles). Public post urls are crawled
//! as plain pages where they are reachable.
//!
//! An export holds everything the member wrote, so a complete export is a complete listing: a
//! post missing from a newer export was deleted.

use std::io::Read;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use scraper::{Html, Selector};
use twin_schemas::{ContentBlock, DocumentKind};

use crate::crawler::{Crawler, FetchInfo, Listing, SourceRun};
use crate::document::{canonical_url, Draft};
use crate::error::{IngestError, Result};
use crate::extract;
use crate::sources::pages::{self, first_line, Page};

/// How an export is read.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Read posts whose `Visibility` is not public too (connections only, say): the author's
    /// choice, as the export holds them all.
    pub include_non_public: bool,
    /// Largest file read out of the export (a ZIP bomb guard).
    pub max_entry_bytes: u64,
    /// Most bytes read out of the export in all.
    pub max_total_bytes: u64,
    /// Most entries an export may have.
    pub max_entries: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            include_non_public: false,
            max_entry_bytes: 256 * 1024 * 1024,
            max_total_bytes: 1024 * 1024 * 1024,
            max_entries: 100_000,
        }
    }
}

/// A LinkedIn export and/or public post urls.
pub struct Linkedin {
    export: Option<PathBuf>,
    posts: Vec<String>,
    options: ExportOptions,
}

impl Linkedin {
    /// The export at `export`, and public `posts`.
    pub fn new(export: Option<PathBuf>, posts: Vec<String>, options: ExportOptions) -> Self {
        Self {
            export,
            posts,
            options,
        }
    }
}

/// Whether a `Visibility` value is public. Exports without the column (older ones) or with it
/// empty hold posts of the default audience, which is anyone.
fn is_public(visibility: &str) -> bool {
    let v = visibility.trim();
    v.is_empty() || v.eq_ignore_ascii_case("PUBLIC") || v.eq_ignore_ascii_case("ANYONE")
}

/// What an export held.
#[derive(Debug, Default)]
pub struct Export {
    /// Documents found.
    pub drafts: Vec<Draft>,
    /// Parts that could not be read: (where, why).
    pub problems: Vec<(String, String)>,
    /// Whether the export had every part (posts and articles) readable.
    pub complete: bool,
    /// Posts left out because they are not public.
    pub non_public: u64,
}

#[async_trait]
impl Crawler for Linkedin {
    async fn crawl(&self, run: &SourceRun<'_>) -> Result<Listing> {
        let mut complete = true;
        if let Some(path) = &self.export {
            let path_for_read = path.clone();
            let options = self.options.clone();
            let export = tokio::task::spawn_blocking(move || read_export(&path_for_read, &options))
                .await
                .map_err(|e| {
                    IngestError::malformed(
                        path.display().to_string(),
                        format!("reading the export panicked: {e}"),
                    )
                })??;
            complete &= export.complete;
            if export.non_public > 0 {
                tracing::info!(
                    source = run.label(),
                    posts = export.non_public,
                    "posts not public left out (include_non_public = true reads them)"
                );
                metrics::counter!("twin_ingest_non_public_skipped_total", "source" => run.label().to_string())
                    .increment(export.non_public);
            }
            for (location, reason) in &export.problems {
                run.failed(location, &IngestError::malformed(location, reason));
            }
            run.expect(export.drafts.len() as u64);
            for draft in export.drafts {
                if run.stopping() {
                    return Ok(Listing::Partial);
                }
                let url = draft.url.clone();
                if !run.claim(&url) {
                    continue;
                }
                if let Err(e) = run.emit(draft, FetchInfo::default()).await {
                    run.failed(&url, &e);
                }
            }
        }
        let pages = self
            .posts
            .iter()
            .filter(|url| run.claim(url))
            .map(|url| Page {
                url: url.clone(),
                platform: "linkedin",
                kind: DocumentKind::Post,
            })
            .collect();
        pages::crawl(run, pages).await;
        Ok(if complete && self.export.is_some() {
            Listing::Complete
        } else {
            Listing::Partial
        })
    }
}

/// Read an export ZIP: posts from `Shares.csv`, articles from `Articles/**.html`. A missing or
/// unreadable part is a problem reported with where and why; the rest is still read.
pub fn read_export(path: &Path, options: &ExportOptions) -> Result<Export> {
    let location = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| IngestError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| IngestError::malformed(&location, format!("not a readable ZIP: {e}")))?;
    if zip.len() > options.max_entries {
        return Err(IngestError::malformed(
            &location,
            format!(
                "the export has {} entries, more than the {} an export may have: refused",
                zip.len(),
                options.max_entries
            ),
        ));
    }
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let mut export = Export {
        complete: true,
        ..Export::default()
    };
    let mut budget = Budget {
        left: options.max_total_bytes,
        entry: options.max_entry_bytes,
    };
    let shares = names.iter().find(|n| {
        n.rsplit('/')
            .next()
            .is_some_and(|f| f.eq_ignore_ascii_case("Shares.csv"))
    });
    match shares {
        Some(name) => match read_entry(&mut zip, name, &mut budget) {
            Ok(bytes) => read_shares(
                &bytes,
                &format!("{location}!{name}"),
                options.include_non_public,
                &mut export,
            ),
            Err(reason) => {
                export.complete = false;
                export.problems.push((format!("{location}!{name}"), reason));
            }
        },
        None => {
            export.complete = false;
            export.problems.push((
                location.clone(),
                "the export has no Shares.csv, so no posts were read (request the export with \
                 'Posts' included)"
                    .into(),
            ));
        }
    }
    let articles: Vec<&String> = names
        .iter()
        .filter(|n| {
            let lower = n.to_ascii_lowercase();
            lower.contains("articles/") && (lower.ends_with(".html") || lower.ends_with(".htm"))
        })
        .collect();
    for name in articles {
        let entry_location = format!("{location}!{name}");
        match read_entry(&mut zip, name, &mut budget) {
            Ok(bytes) => match article(&String::from_utf8_lossy(&bytes), name) {
                Some(draft) => export.drafts.push(draft),
                None => {
                    export.complete = false;
                    export
                        .problems
                        .push((entry_location, "article has no content".into()));
                }
            },
            Err(reason) => {
                export.complete = false;
                export.problems.push((entry_location, reason));
            }
        }
    }
    Ok(export)
}

/// What may still be read out of an export: in all, and per entry.
struct Budget {
    left: u64,
    entry: u64,
}

/// An entry's bytes, within the budget. The sizes the ZIP declares are not trusted: reading
/// stops at the limit whatever they say.
fn read_entry(
    zip: &mut zip::ZipArchive<std::fs::File>,
    name: &str,
    budget: &mut Budget,
) -> Result<Vec<u8>, String> {
    let entry = zip.by_name(name).map_err(|e| format!("cannot open: {e}"))?;
    if entry.size() > budget.entry {
        return Err(format!(
            "{} bytes is too large to be an export file",
            entry.size()
        ));
    }
    let limit = budget.entry.min(budget.left);
    let mut bytes = Vec::new();
    entry
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        budget.left = 0;
        return Err(format!(
            "inflates past {limit} bytes, more than an export file may (a ZIP bomb?): not read"
        ));
    }
    budget.left -= bytes.len() as u64;
    Ok(bytes)
}

/// Posts from `Shares.csv` (`Date, ShareLink, ShareCommentary, SharedUrl, MediaUrl,
/// Visibility`). A row that does not parse is a problem; the other rows are read.
fn read_shares(bytes: &[u8], location: &str, include_non_public: bool, export: &mut Export) {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            export.complete = false;
            export
                .problems
                .push((location.into(), format!("no header row: {e}")));
            return;
        }
    };
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let (Some(date), Some(link), Some(commentary)) = (
        column("Date"),
        column("ShareLink"),
        column("ShareCommentary"),
    ) else {
        export.complete = false;
        export.problems.push((
            location.into(),
            format!(
                "expected the columns Date, ShareLink and ShareCommentary, found {:?}",
                headers.iter().collect::<Vec<_>>()
            ),
        ));
        return;
    };
    let shared_url = column("SharedUrl");
    let visibility = column("Visibility");
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                export.complete = false;
                export
                    .problems
                    .push((format!("{location} line {line}"), e.to_string()));
                continue;
            }
        };
        let get = |i: usize| record.get(i).unwrap_or("").trim();
        let text = get(commentary);
        let url = get(link);
        if text.is_empty() {
            continue; // a reshare without words of the author's own
        }
        if !include_non_public && !visibility.map(get).is_none_or(is_public) {
            // Left out, and so deleted from the twin when a post is made private later.
            export.non_public += 1;
            continue;
        }
        if url.is_empty() {
            export.complete = false;
            export.problems.push((
                format!("{location} line {line}"),
                "post has no ShareLink".into(),
            ));
            continue;
        }
        let mut draft = Draft::new(DocumentKind::Post, "linkedin", canonical_url(url));
        draft.content = post_blocks(text);
        draft.title = first_line(&draft.content).unwrap_or_default();
        draft.published_at = extract::parse_time(get(date));
        draft.meta("shared_url", shared_url.map(get));
        draft.meta("visibility", visibility.map(get));
        draft.meta("source", Some("export"));
        export.drafts.push(draft);
    }
}

/// A post's text: paragraphs between blank lines (the CSV reader already undid the quoting).
fn post_blocks(text: &str) -> Vec<ContentBlock> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .map(ContentBlock::paragraph)
        .collect()
}

/// An article of the export: `<h1><a href=URL>Title</a></h1>`, `<p class="published">`, body.
fn article(html: &str, name: &str) -> Option<Draft> {
    let document = Html::parse_document(html);
    let select = |s: &str| Selector::parse(s).ok();
    let heading = select("h1").and_then(|s| document.select(&s).next());
    let title = heading
        .map(|h| h.text().collect::<String>().trim().to_string())
        .filter(|t| !t.is_empty());
    let url = heading
        .and_then(|h| select("a[href]").and_then(|s| h.select(&s).next()))
        .and_then(|a| a.value().attr("href"))
        .map(canonical_url)
        .unwrap_or_else(|| format!("linkedin-export:{name}"));
    let published = ["p.published", "p.created"].iter().find_map(|s| {
        let selector = select(s)?;
        let text: String = document.select(&selector).next()?.text().collect();
        let date = text
            .trim()
            .trim_start_matches("Published on")
            .trim_start_matches("Created on")
            .trim();
        extract::parse_time(date)
    });
    // The body is everything but the heading and the dates.
    let mut body_html = String::new();
    let body = select("body").and_then(|s| document.select(&s).next())?;
    for child in body.children().filter_map(scraper::ElementRef::wrap) {
        let name = child.value().name();
        let class = child.value().attr("class").unwrap_or("");
        if name == "h1"
            || (name == "p" && (class.contains("published") || class.contains("created")))
        {
            continue;
        }
        body_html.push_str(&child.html());
    }
    let blocks = extract::fragment(&body_html);
    if blocks.is_empty() {
        return None;
    }
    let mut draft = Draft::new(DocumentKind::Article, "linkedin", url);
    draft.title = title.or_else(|| first_line(&blocks)).unwrap_or_default();
    draft.published_at = published;
    draft.meta("source", Some("export"));
    draft.content = blocks;
    Some(draft)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn export(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join("export.zip");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).expect("zip"));
        let options = zip::write::SimpleFileOptions::default();
        for (name, data) in files {
            zip.start_file(*name, options).expect("entry");
            zip.write_all(data).expect("write");
        }
        zip.finish().expect("finish");
        path
    }

    const SHARES: &[u8] = b"Date,ShareLink,ShareCommentary,SharedUrl,MediaUrl,Visibility\n\
        2024-01-01 10:00:00,https://www.linkedin.com/feed/update/urn:li:share:1,For everyone.,,,PUBLIC\n\
        2024-01-02 10:00:00,https://www.linkedin.com/feed/update/urn:li:share:2,For my network.,,,MEMBER_NETWORK\n\
        2024-01-03 10:00:00,https://www.linkedin.com/feed/update/urn:li:share:3,Connections only.,,,CONNECTIONS\n";

    /// Security item 6: posts that are not public stay out unless the author opts in.
    #[test]
    fn posts_that_are_not_public_are_read_only_when_the_author_opts_in() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = export(dir.path(), &[("Shares.csv", SHARES)]);
        let public = read_export(&path, &ExportOptions::default()).expect("read");
        let urls: Vec<_> = public.drafts.iter().map(|d| d.url.as_str()).collect();
        assert_eq!(
            urls,
            vec!["https://www.linkedin.com/feed/update/urn:li:share:1"]
        );
        assert_eq!(public.non_public, 2);
        let all = ExportOptions {
            include_non_public: true,
            ..ExportOptions::default()
        };
        let everything = read_export(&path, &all).expect("read");
        assert_eq!((everything.drafts.len(), everything.non_public), (3, 0));
    }

    /// Security item 12: an export is capped by its entry count and by what it inflates to,
    /// whatever sizes its directory declares.
    #[test]
    fn exports_are_capped_by_entries_and_inflated_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let zeros = vec![b' '; 4 * 1024 * 1024];
        let path = export(
            dir.path(),
            &[
                ("Shares.csv", SHARES),
                ("Articles/Articles/a.html", &zeros),
                ("Articles/Articles/b.html", &zeros),
            ],
        );
        let capped = ExportOptions {
            max_total_bytes: 6 * 1024 * 1024,
            ..ExportOptions::default()
        };
        let read = read_export(&path, &capped).expect("read");
        assert!(!read.complete);
        assert_eq!(read.drafts.len(), 1, "the posts are still read");
        let problem = read
            .problems
            .iter()
            .find(|(_, why)| why.contains("inflates past"))
            .expect("the over-budget entry is reported");
        assert!(problem.0.ends_with("b.html"), "{problem:?}");

        let few = ExportOptions {
            max_entries: 2,
            ..ExportOptions::default()
        };
        let error = read_export(&path, &few).expect_err("refused").to_string();
        assert!(
            error.contains("3 entries") && error.contains("export.zip"),
            "{error}"
        );
    }
}
