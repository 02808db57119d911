//! HTML to content blocks: the main content of a page (not its navigation, footer, comments or
//! share buttons), in reading order, with headings, lists, quotes and code blocks kept; code
//! keeps its whitespace exactly.

use scraper::node::Node;
use scraper::{ElementRef, Html, Selector};
use twin_schemas::{BlockKind, ContentBlock};

/// What a page says about itself, and its content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    /// Title (og:title, the first `h1`, or `<title>`).
    pub title: Option<String>,
    /// Subtitle or description, when the page has one.
    pub subtitle: Option<String>,
    /// Publication time, milliseconds since the epoch, when the page says.
    pub published_at: Option<i64>,
    /// Canonical url (`<link rel="canonical">`), when given.
    pub canonical: Option<String>,
    /// The main content.
    pub blocks: Vec<ContentBlock>,
}

/// Containers that hold an article's body on the platforms we know, best first.
const MAIN_SELECTORS: &[&str] = &[
    "div.available-content div.body.markup", // Substack post page
    "div.body.markup",                       // Substack
    "[data-test-id=\"main-feed-activity-card__commentary\"]", // LinkedIn public post
    "[itemprop=\"articleBody\"]",
    ".entry-content",
    ".post-content",
    ".article-body",
    ".post-body",
    "article",
    "main",
    "[role=\"main\"]",
    "#content",
];

/// Elements that are never content.
const SKIPPED_TAGS: &[&str] = &[
    "script", "style", "noscript", "nav", "footer", "aside", "form", "button", "svg", "iframe",
    "template", "header", "canvas", "video", "audio", "select", "input", "textarea", "dialog",
];

/// Class or id words that mark page furniture rather than content.
const FURNITURE_WORDS: &[&str] = &[
    "comment",
    "comments",
    "footer",
    "nav",
    "navbar",
    "navigation",
    "menu",
    "share",
    "sharing",
    "social",
    "related",
    "recommended",
    "subscribe",
    "subscription",
    "newsletter",
    "sidebar",
    "cookie",
    "cookies",
    "popup",
    "modal",
    "promo",
    "advert",
    "ads",
    "byline",
    "breadcrumb",
    "breadcrumbs",
    "signup",
    "paywall",
];

/// Tags that start a new block (everything else is inline text).
const BLOCK_TAGS: &[&str] = &[
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "ul",
    "ol",
    "li",
    "blockquote",
    "div",
    "section",
    "article",
    "main",
    "figure",
    "figcaption",
    "table",
    "tr",
    "hr",
    "dl",
    "dt",
    "dd",
    "details",
    "summary",
    "body",
    "html",
];

/// Extract a whole page: metadata from its head, content from its main container.
pub fn page(html: &str) -> Extracted {
    let document = Html::parse_document(html);
    let container = main_container(&document);
    let mut blocks = Vec::new();
    if let Some(container) = container {
        walk(container, &mut Walker::default(), &mut blocks);
    }
    let title = meta(&document, "meta[property=\"og:title\"]")
        .or_else(|| first_text(&document, "h1"))
        .or_else(|| first_text(&document, "title"));
    // The page's own h1 repeats the title: keep it out of the body.
    if let (Some(title), Some(first)) = (&title, blocks.first()) {
        if first.kind == BlockKind::Heading && first.text.trim() == title.trim() {
            blocks.remove(0);
        }
    }
    let subtitle = first_text(&document, ".pw-subtitle-paragraph")
        .or_else(|| first_text(&document, "h3.subtitle"))
        .or_else(|| meta(&document, "meta[property=\"og:description\"]"))
        .or_else(|| meta(&document, "meta[name=\"description\"]"));
    let published_at = meta(&document, "meta[property=\"article:published_time\"]")
        .or_else(|| attribute(&document, "time[datetime]", "datetime"))
        .or_else(|| json_ld_date(&document))
        .and_then(|text| parse_time(&text));
    let canonical = attribute(&document, "link[rel=\"canonical\"]", "href");
    Extracted {
        title,
        subtitle,
        published_at,
        canonical,
        blocks,
    }
}

/// Extract an HTML fragment whole (a feed item's `content:encoded`, an API's `body_html`).
pub fn fragment(html: &str) -> Vec<ContentBlock> {
    let fragment = Html::parse_fragment(html);
    let mut blocks = Vec::new();
    walk(fragment.root_element(), &mut Walker::default(), &mut blocks);
    blocks
}

/// The element holding the page's main content: a known container with text in it, else the
/// element whose own paragraphs hold the most text.
fn main_container(document: &Html) -> Option<ElementRef<'_>> {
    for selector in MAIN_SELECTORS {
        let Ok(selector) = Selector::parse(selector) else {
            continue;
        };
        let found = document
            .select(&selector)
            .filter(|e| !is_furniture(e))
            .max_by_key(|e| paragraph_text_len(e));
        if let Some(found) = found.filter(|e| paragraph_text_len(e) > 0) {
            return Some(found);
        }
    }
    // Readability's core idea: paragraphs vote for their parent.
    let paragraphs = Selector::parse("p").ok()?;
    let mut best: Option<(usize, ElementRef<'_>)> = None;
    let mut scores: Vec<(ego_tree::NodeId, usize)> = Vec::new();
    for paragraph in document.select(&paragraphs) {
        let Some(parent) = paragraph.parent().and_then(ElementRef::wrap) else {
            continue;
        };
        if is_furniture(&parent) {
            continue;
        }
        let len = text_of(paragraph).len();
        let score = match scores.iter_mut().find(|(id, _)| *id == parent.id()) {
            Some((_, score)) => {
                *score += len;
                *score
            }
            None => {
                scores.push((parent.id(), len));
                len
            }
        };
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, parent));
        }
    }
    best.map(|(_, e)| e).or_else(|| {
        let body = Selector::parse("body").ok()?;
        document.select(&body).next()
    })
}

fn paragraph_text_len(element: &ElementRef<'_>) -> usize {
    let Ok(selector) = Selector::parse("p, pre, li") else {
        return 0;
    };
    element.select(&selector).map(|p| text_of(p).len()).sum()
}

fn is_furniture(element: &ElementRef<'_>) -> bool {
    let value = element.value();
    if SKIPPED_TAGS.contains(&value.name()) {
        return true;
    }
    if value.attr("aria-hidden") == Some("true") || value.attr("hidden").is_some() {
        return true;
    }
    let words = value
        .attr("class")
        .into_iter()
        .chain(value.attr("id"))
        .flat_map(|a| a.split(|c: char| c.is_whitespace() || c == '-' || c == '_'));
    for word in words {
        if FURNITURE_WORDS.contains(&word.to_ascii_lowercase().as_str()) {
            return true;
        }
    }
    false
}

/// State of a walk: list depth, and the inline text gathered since the last block.
#[derive(Default)]
struct Walker {
    list_depth: i32,
    pending: String,
}

impl Walker {
    fn flush(&mut self, blocks: &mut Vec<ContentBlock>) {
        let text = tidy(&std::mem::take(&mut self.pending));
        if !text.is_empty() {
            blocks.push(ContentBlock::paragraph(text));
        }
    }
}

fn walk(element: ElementRef<'_>, walker: &mut Walker, blocks: &mut Vec<ContentBlock>) {
    for child in element.children() {
        match child.value() {
            Node::Text(text) => walker.pending.push_str(text),
            Node::Element(_) => {
                let Some(child) = ElementRef::wrap(child) else {
                    continue;
                };
                if is_furniture(&child) {
                    continue;
                }
                let name = child.value().name();
                if name == "br" {
                    walker.pending.push('\n');
                    continue;
                }
                if !BLOCK_TAGS.contains(&name) {
                    // Inline, unless it hides blocks inside (a `<span>` wrapping paragraphs).
                    if has_block_descendant(child) {
                        walk(child, walker, blocks);
                    } else {
                        inline_text(child, &mut walker.pending);
                    }
                    continue;
                }
                walker.flush(blocks);
                block(child, name, walker, blocks);
            }
            _ => {}
        }
    }
    walker.flush(blocks);
}

fn block(element: ElementRef<'_>, name: &str, walker: &mut Walker, blocks: &mut Vec<ContentBlock>) {
    match name {
        "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
            let level = name[1..].parse().unwrap_or(1);
            push(blocks, BlockKind::Heading, text_of(element), level);
        }
        "p" | "figcaption" | "dt" | "dd" | "summary" => {
            if has_block_descendant(element) {
                walk(element, walker, blocks);
            } else {
                push(blocks, BlockKind::Paragraph, text_of(element), 0);
            }
        }
        "pre" => {
            let mut code = String::new();
            raw_text(element, &mut code);
            let code = code.trim_matches('\n').to_string();
            if !code.trim().is_empty() {
                let mut block = ContentBlock::new(BlockKind::Code, code);
                block.language = code_language(element);
                blocks.push(block);
            }
        }
        "ul" | "ol" => {
            walker.list_depth += 1;
            for item in element.children().filter_map(ElementRef::wrap) {
                if item.value().name() == "li" {
                    list_item(item, walker, blocks);
                } else if !is_furniture(&item) {
                    walk(item, walker, blocks);
                }
            }
            walker.list_depth -= 1;
        }
        "li" => list_item(element, walker, blocks),
        "blockquote" => {
            let mut inner = Vec::new();
            walk(element, &mut Walker::default(), &mut inner);
            let text = inner
                .into_iter()
                .map(|b| b.text)
                .collect::<Vec<_>>()
                .join("\n\n");
            push(blocks, BlockKind::Quote, text, 0);
        }
        "tr" => {
            let cells: Vec<String> = element
                .children()
                .filter_map(ElementRef::wrap)
                .map(text_of)
                .filter(|t| !t.is_empty())
                .collect();
            push(blocks, BlockKind::Paragraph, cells.join(" | "), 0);
        }
        "hr" => {}
        _ => walk(element, walker, blocks),
    }
}

fn list_item(item: ElementRef<'_>, walker: &mut Walker, blocks: &mut Vec<ContentBlock>) {
    let mut own = String::new();
    let mut nested = Vec::new();
    for child in item.children() {
        match child.value() {
            Node::Text(text) => own.push_str(text),
            Node::Element(element) => {
                let Some(child) = ElementRef::wrap(child) else {
                    continue;
                };
                match element.name() {
                    "ul" | "ol" | "pre" | "blockquote" => nested.push(child),
                    "br" => own.push('\n'),
                    _ if is_furniture(&child) => {}
                    _ => inline_text(child, &mut own),
                }
            }
            _ => {}
        }
    }
    push(
        blocks,
        BlockKind::ListItem,
        tidy(&own),
        walker.list_depth.max(1),
    );
    for child in nested {
        let name = child.value().name();
        block(child, name, walker, blocks);
    }
}

fn push(blocks: &mut Vec<ContentBlock>, kind: BlockKind, text: String, level: i32) {
    let text = tidy(&text);
    if text.is_empty() {
        return;
    }
    let mut block = ContentBlock::new(kind, text);
    block.level = level;
    blocks.push(block);
}

fn has_block_descendant(element: ElementRef<'_>) -> bool {
    element
        .descendants()
        .filter_map(ElementRef::wrap)
        .skip(1)
        .any(|e| BLOCK_TAGS.contains(&e.value().name()))
}

/// Text of inline content: `<br>` is a line break, furniture is dropped.
fn inline_text(element: ElementRef<'_>, out: &mut String) {
    collect_text(element, out, true);
}

/// Text of a code block, exactly: every text node as it is, `<br>` as a newline.
fn raw_text(element: ElementRef<'_>, out: &mut String) {
    collect_text(element, out, false);
}

fn collect_text(element: ElementRef<'_>, out: &mut String, drop_furniture: bool) {
    for child in element.children() {
        match child.value() {
            Node::Text(text) => out.push_str(text),
            Node::Element(e) if e.name() == "br" => out.push('\n'),
            Node::Element(_) => {
                if let Some(child) = ElementRef::wrap(child) {
                    if !(drop_furniture && is_furniture(&child)) {
                        collect_text(child, out, drop_furniture);
                    }
                }
            }
            _ => {}
        }
    }
}

fn text_of(element: ElementRef<'_>) -> String {
    let mut text = String::new();
    inline_text(element, &mut text);
    tidy(&text)
}

/// Collapse the source's layout whitespace, keeping explicit line breaks.
fn tidy(text: &str) -> String {
    text.split('\n')
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `language-rust` / `lang-rust` on the `pre` or its `code`.
fn code_language(pre: ElementRef<'_>) -> Option<String> {
    let code = Selector::parse("code").ok()?;
    std::iter::once(pre)
        .chain(pre.select(&code))
        .filter_map(|e| e.value().attr("class"))
        .flat_map(|classes| classes.split_whitespace())
        .find_map(|class| {
            class
                .strip_prefix("language-")
                .or_else(|| class.strip_prefix("lang-"))
                .map(str::to_string)
        })
        .or_else(|| pre.value().attr("data-language").map(str::to_string))
}

fn meta(document: &Html, selector: &str) -> Option<String> {
    attribute(document, selector, "content")
}

fn attribute(document: &Html, selector: &str, name: &str) -> Option<String> {
    let selector = Selector::parse(selector).ok()?;
    document
        .select(&selector)
        .filter_map(|e| e.value().attr(name))
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
}

fn first_text(document: &Html, selector: &str) -> Option<String> {
    let selector = Selector::parse(selector).ok()?;
    document
        .select(&selector)
        .map(text_of)
        .find(|t| !t.is_empty())
}

fn json_ld_date(document: &Html) -> Option<String> {
    let selector = Selector::parse("script[type=\"application/ld+json\"]").ok()?;
    document.select(&selector).find_map(|script| {
        let value: serde_json::Value = serde_json::from_str(&script.inner_html()).ok()?;
        value
            .get("datePublished")
            .and_then(|d| d.as_str())
            .map(str::to_string)
    })
}

/// An RFC 3339 / ISO 8601 time, or a plain date, as milliseconds since the epoch.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(time.timestamp_millis());
    }
    if let Ok(time) = chrono::DateTime::parse_from_rfc2822(text) {
        return Some(time.timestamp_millis());
    }
    for format in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(time) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Some(time.and_utc().timestamp_millis());
        }
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_content_without_furniture() {
        let html = r##"<html><head><title>T - Blog</title>
            <meta property="og:title" content="Real title">
            <meta property="article:published_time" content="2024-03-01T10:00:00Z"></head>
            <body><nav><a href="/">Home</a> <a href="/about">About</a></nav>
            <article><h1>Real title</h1>
              <p>First   paragraph with <a href="#">a link</a>.</p>
              <h2>Setup</h2>
              <ul><li>one<ul><li>nested</li></ul></li><li>two</li></ul>
              <pre><code class="language-rust">fn main() {
    println!("hi");
}</code></pre>
              <blockquote><p>Quoted.</p></blockquote>
              <div class="share-buttons">Share on X</div>
              <section id="comments"><p>Nice post!</p></section>
            </article>
            <footer><p>Copyright 2024</p></footer></body></html>"##;
        let page = page(html);
        assert_eq!(page.title.as_deref(), Some("Real title"));
        assert_eq!(page.published_at, Some(1_709_287_200_000));
        let kinds: Vec<_> = page
            .blocks
            .iter()
            .map(|b| (b.kind, b.level, b.text.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (BlockKind::Paragraph, 0, "First paragraph with a link."),
                (BlockKind::Heading, 2, "Setup"),
                (BlockKind::ListItem, 1, "one"),
                (BlockKind::ListItem, 2, "nested"),
                (BlockKind::ListItem, 1, "two"),
                (BlockKind::Code, 0, "fn main() {\n    println!(\"hi\");\n}"),
                (BlockKind::Quote, 0, "Quoted."),
            ]
        );
        assert_eq!(page.blocks[5].language.as_deref(), Some("rust"));
    }

    #[test]
    fn loose_text_and_line_breaks_become_paragraphs() {
        let blocks = fragment("<div>Line one<br>Line two<p>Para</p>tail</div>");
        let texts: Vec<_> = blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(texts, vec!["Line one\nLine two", "Para", "tail"]);
    }

    #[test]
    fn pages_without_a_known_container_use_the_densest_one() {
        let html = "<html><body><div class='menu'><p>Home</p></div><div id='x'><p>A long paragraph of real text.</p><p>Another one.</p></div><div><p>short</p></div></body></html>";
        let texts: Vec<_> = page(html).blocks.into_iter().map(|b| b.text).collect();
        assert_eq!(
            texts,
            vec!["A long paragraph of real text.", "Another one."]
        );
    }

    #[test]
    fn malformed_html_does_not_panic() {
        for html in [
            "<p>unclosed <b>bold",
            "<<<>>>",
            "",
            "<pre><code>x",
            "\u{0}\u{1}",
        ] {
            let _ = page(html);
            let _ = fragment(html);
        }
    }

    #[test]
    fn times_in_the_formats_platforms_use() {
        assert_eq!(parse_time("2024-03-01T10:00:00Z"), Some(1_709_287_200_000));
        assert_eq!(
            parse_time("2024-03-01T10:00:00.000Z"),
            Some(1_709_287_200_000)
        );
        assert_eq!(
            parse_time("Fri, 01 Mar 2024 10:00:00 GMT"),
            Some(1_709_287_200_000)
        );
        assert_eq!(parse_time("2024-03-01 10:00:00"), Some(1_709_287_200_000));
        assert_eq!(parse_time("2024-03-01"), Some(1_709_251_200_000));
        assert_eq!(parse_time("yesterday"), None);
    }
}
