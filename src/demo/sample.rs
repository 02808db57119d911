//! The sample author that ships with the project (`src/demo/sample/`, compiled into the binary so
//! that the demo runs anywhere, offline): her articles, posts and code, and the HTML the fake
//! platforms serve them as.

use anyhow::{anyhow, bail, Context, Result};

/// The sample author's stable id.
pub const AUTHOR_ID: &str = "nora";
/// The sample author's name.
pub const AUTHOR_NAME: &str = "Nora Castellan";
/// Her GitHub repository's name.
pub const REPOSITORY: &str = "tiny-ledger";

const MEDIUM: [&str; 5] = [
    include_str!("sample/medium/the-log-is-the-database.md"),
    include_str!("sample/medium/chunking-is-a-product-decision.md"),
    include_str!("sample/medium/small-models-honest-benchmarks.md"),
    include_str!("sample/medium/dead-letters-are-mail-too.md"),
    include_str!("sample/medium/reproducible-training-data.md"),
];

const SUBSTACK: [&str; 4] = [
    include_str!("sample/substack/backpressure-explained-with-a-coffee-shop.md"),
    include_str!("sample/substack/idempotent-writes-or-bust.md"),
    include_str!("sample/substack/replaying-two-years-of-events.md"),
    include_str!("sample/substack/the-quiet-crawler.md"),
];

const LINKEDIN_POSTS: &str = include_str!("sample/linkedin/posts.txt");

const REPOSITORY_FILES: [(&str, &str); 3] = [
    (
        "README.md",
        include_str!("sample/github/tiny-ledger/README.md"),
    ),
    (
        "ledger.py",
        include_str!("sample/github/tiny-ledger/ledger.py"),
    ),
    (
        "test_ledger.py",
        include_str!("sample/github/tiny-ledger/test_ledger.py"),
    ),
];

/// One article or newsletter post.
#[derive(Debug, Clone)]
pub struct Article {
    pub title: String,
    pub subtitle: String,
    /// RFC 3339.
    pub date: String,
    pub slug: String,
    /// Markdown.
    pub body: String,
}

impl Article {
    /// The publication time.
    pub fn published(&self) -> Result<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(&self.date)
            .map(|t| t.with_timezone(&chrono::Utc))
            .with_context(|| format!("sample article {:?}: date {:?}", self.slug, self.date))
    }

    /// The body as HTML.
    pub fn html(&self) -> String {
        to_html(&self.body)
    }
}

/// One LinkedIn post.
#[derive(Debug, Clone)]
pub struct Post {
    /// `YYYY-MM-DD HH:MM:SS`, as LinkedIn's export writes it.
    pub date: String,
    pub text: String,
}

/// Her Medium articles.
pub fn medium() -> Result<Vec<Article>> {
    MEDIUM.iter().map(|text| parse_article(text)).collect()
}

/// Her newsletter's posts.
pub fn substack() -> Result<Vec<Article>> {
    SUBSTACK.iter().map(|text| parse_article(text)).collect()
}

/// Her LinkedIn posts, oldest first.
pub fn linkedin_posts() -> Result<Vec<Post>> {
    LINKEDIN_POSTS
        .split("\n===\n")
        .enumerate()
        .map(|(i, block)| {
            let (first, text) = block
                .split_once('\n')
                .ok_or_else(|| anyhow!("sample post {i}: no text after its date"))?;
            let date = first
                .strip_prefix("date: ")
                .ok_or_else(|| anyhow!("sample post {i}: the first line is not `date: ...`"))?;
            Ok(Post {
                date: date.trim().to_string(),
                text: text.trim().to_string(),
            })
        })
        .collect()
}

/// Her repository's files: (path, text).
pub fn repository_files() -> &'static [(&'static str, &'static str)] {
    &REPOSITORY_FILES
}

fn parse_article(text: &str) -> Result<Article> {
    let (header, body) = text
        .split_once("\n---\n")
        .ok_or_else(|| anyhow!("sample article without a `---` after its header"))?;
    let field = |name: &str| -> Result<String> {
        header
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| anyhow!("sample article without `{name}`:\n{header}"))
    };
    let article = Article {
        title: field("title")?,
        subtitle: field("subtitle")?,
        date: field("date")?,
        slug: field("slug")?,
        body: body.trim().to_string(),
    };
    article.published()?;
    if article.body.is_empty() {
        bail!("sample article {:?} has no body", article.slug);
    }
    Ok(article)
}

/// The little Markdown the sample uses: paragraphs, `##` sections, `-` lists, fenced code.
pub fn to_html(markdown: &str) -> String {
    let mut html = String::new();
    let mut in_code = false;
    for block in markdown.split("\n\n") {
        let block = block.trim_matches('\n');
        if in_code || block.starts_with("```") {
            // Fenced code may hold blank lines: keep it whole until the closing fence.
            if !in_code {
                html.push_str("<pre><code>");
            } else {
                html.push_str("\n\n");
            }
            let lines: Vec<&str> = block.lines().filter(|l| !l.starts_with("```")).collect();
            html.push_str(&escape(&lines.join("\n")));
            let fences = block.lines().filter(|l| l.starts_with("```")).count();
            in_code = (in_code as usize + fences) % 2 == 1;
            if !in_code {
                html.push_str("</code></pre>");
            }
        } else if let Some(heading) = block.strip_prefix("## ") {
            html.push_str(&format!("<h3>{}</h3>", escape(heading)));
        } else if block.lines().all(|l| l.starts_with("- ")) {
            html.push_str("<ul>");
            for item in block.lines() {
                html.push_str(&format!("<li>{}</li>", escape(&item[2..])));
            }
            html.push_str("</ul>");
        } else {
            html.push_str(&format!("<p>{}</p>", escape(&block.replace('\n', " "))));
        }
    }
    html
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Passages of her own prose (the opening paragraphs of each article and post, about 400
/// characters each, no headings or code): what the demo scores the answers beside.
pub fn passages() -> Vec<String> {
    let articles = medium()
        .into_iter()
        .chain(substack())
        .flatten()
        .map(|a| a.body);
    let posts = linkedin_posts().into_iter().flatten().map(|p| p.text);
    articles
        .chain(posts)
        .map(|body| {
            let mut passage = String::new();
            for paragraph in body.split("\n\n").map(str::trim) {
                if passage.len() >= 400 {
                    break;
                }
                if paragraph.is_empty()
                    || paragraph.starts_with('#')
                    || paragraph.starts_with("```")
                {
                    continue;
                }
                if !passage.is_empty() {
                    passage.push_str("\n\n");
                }
                passage.push_str(paragraph);
            }
            passage
        })
        .filter(|p| p.len() >= 200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_parses_whole() {
        let medium = medium().unwrap_or_default();
        let substack = substack().unwrap_or_default();
        assert_eq!((medium.len(), substack.len()), (5, 4));
        assert!(medium.iter().chain(&substack).all(|a| !a.title.is_empty()
            && a.body.len() > 1000
            && a.body.ends_with("Ship small. Measure twice.")));
        let posts = linkedin_posts().unwrap_or_default();
        assert_eq!(posts.len(), 8);
        assert!(posts
            .iter()
            .all(|p| p.date.starts_with("2025-") && !p.text.is_empty()));
    }

    #[test]
    fn markdown_becomes_the_html_a_platform_serves() {
        let html = to_html("Intro & more.\n\n## A section\n\n- one\n- two\n\n```python\nx = 1\n\ny = 2\n```\n\nEnd.");
        assert_eq!(
            html,
            "<p>Intro &amp; more.</p><h3>A section</h3><ul><li>one</li><li>two</li></ul>\
             <pre><code>x = 1\n\ny = 2</code></pre><p>End.</p>"
        );
    }
}
