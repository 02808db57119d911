//! The clean stage: a raw document's text made uniform for chunking and training.
//!
//! - Unicode: NFKC, which also folds the "bold" and "italic" mathematical letters of LinkedIn
//!   posts (𝗯𝗼𝗹𝗱 → bold), full-width forms and ligatures; zero-width characters, soft hyphens
//!   and control characters go.
//! - Whitespace: runs collapse to one space inside paragraphs, headings, list items and quotes.
//! - Links: tracking parameters (`utm_*`, `fbclid`, Medium's `source`...) are removed, by the
//!   one rule the crawlers use too ([`twin_schemas::strip_tracking`]).
//! - Boilerplate: short blocks that are platform chrome ("Subscribe now", "Share this post",
//!   "Originally published at"...) are dropped.
//! - Templates: blocks a source repeats on nearly every page (see [`crate::template`]) are
//!   dropped when the worker passes them to [`clean_without`].
//! - Code and repository files are kept byte for byte: whitespace is content there.

use twin_schemas::{
    content_hash, strip_tracking, BlockKind, CleanedDocument, ContentBlock, RawDocument,
};
use unicode_normalization::UnicodeNormalization;

/// Lowercase beginnings of blocks that are platform chrome, not the author's writing.
const BOILERPLATE_PREFIXES: &[&str] = &[
    "subscribe now",
    "subscribe to",
    "thanks for reading",
    "share this post",
    "leave a comment",
    "originally published",
    "this post is public so feel free to share it",
    "if you enjoyed this",
    "sign up for",
    "get the app",
    "open in app",
    "follow me on",
    "clap for",
];

/// Short standalone blocks that are buttons.
const BOILERPLATE_BLOCKS: &[&str] = &[
    "share",
    "subscribe",
    "like",
    "comment",
    "restack",
    "follow",
    "listen",
    "save",
];

/// Blocks longer than this are never taken for boilerplate.
const BOILERPLATE_MAX_CHARS: usize = 200;

/// Clean a raw document.
pub fn clean(raw: &RawDocument, cleaned_at: i64) -> CleanedDocument {
    clean_without(raw, cleaned_at, &[])
}

/// Clean a raw document and drop its blocks that `template` marks (one flag per block of
/// `raw.content`, as [`crate::template::Templates::template_blocks`] gives them).
pub fn clean_without(raw: &RawDocument, cleaned_at: i64, template: &[bool]) -> CleanedDocument {
    let kept: Vec<ContentBlock> = raw
        .content
        .iter()
        .enumerate()
        .filter(|(i, _)| !template.get(*i).copied().unwrap_or(false))
        .map(|(_, b)| b.clone())
        .collect();
    let content = clean_blocks(&kept);
    CleanedDocument {
        id: raw.id.clone(),
        kind: raw.kind,
        platform: raw.platform.clone(),
        author: raw.author.clone(),
        url: strip_tracking(&raw.url),
        title: clean_text(&raw.title),
        published_at: raw.published_at,
        cleaned_at,
        content_hash: content_hash(&content),
        content,
        raw_content_hash: raw.content_hash.clone(),
        metadata: raw.metadata.clone(),
    }
}

/// Clean every block; drop the empty and the boilerplate ones.
pub fn clean_blocks(blocks: &[ContentBlock]) -> Vec<ContentBlock> {
    blocks
        .iter()
        .filter_map(|block| {
            let text = match block.kind {
                BlockKind::Code | BlockKind::File => block.text.clone(),
                _ => clean_text(&block.text),
            };
            let keep = match block.kind {
                BlockKind::Code | BlockKind::File => !text.trim().is_empty(),
                _ => !text.is_empty() && !is_boilerplate(&text),
            };
            keep.then(|| ContentBlock {
                text,
                ..block.clone()
            })
        })
        .collect()
}

/// Normalise one run of prose: NFKC, invisible characters out, tracking out of links,
/// whitespace collapsed.
pub fn clean_text(text: &str) -> String {
    let normalised: String = text
        .nfkc()
        .filter(|c| {
            !matches!(
                c,
                '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}'
            )
        })
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    normalised
        .split_whitespace()
        .map(|word| {
            if word.contains("://") {
                strip_tracking_in_word(word)
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A word holding a url, possibly wrapped in punctuation: `(https://a.b/?utm_source=x).`
fn strip_tracking_in_word(word: &str) -> String {
    let Some(start) = word.find("http") else {
        return word.to_string();
    };
    let end = word[start..]
        .find([')', ']', '>', '"', '\'', ','])
        .map(|i| start + i)
        .unwrap_or(word.len());
    let (url, trailing) = word[start..end].split_at(
        word[start..end]
            .trim_end_matches(['.', ';', ':', '!', '?'])
            .len(),
    );
    format!(
        "{}{}{}{}",
        &word[..start],
        strip_tracking(url),
        trailing,
        &word[end..]
    )
}

fn is_boilerplate(text: &str) -> bool {
    if text.chars().count() > BOILERPLATE_MAX_CHARS {
        return false;
    }
    let lower = text.to_lowercase();
    let bare = lower.trim_matches(|c: char| !c.is_alphanumeric());
    BOILERPLATE_BLOCKS.contains(&bare) || BOILERPLATE_PREFIXES.iter().any(|p| bare.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linkedin_letters_fold_and_whitespace_collapses() {
        assert_eq!(
            clean_text("𝗕𝗼𝗹𝗱\u{00A0}and  𝘪𝘵𝘢𝘭𝘪𝘤\t\u{200B}text\n"),
            "Bold and italic text"
        );
        assert_eq!(clean_text("ﬁne ｗｉｄｅ"), "fine wide");
        assert_eq!(clean_text("soft\u{00AD}hyphen"), "softhyphen");
    }

    #[test]
    fn tracking_parameters_leave_links_inside_text() {
        assert_eq!(
            clean_text("Read (https://medium.com/p/1?source=rss----1). Then https://a.io/x?id=2."),
            "Read (https://medium.com/p/1). Then https://a.io/x?id=2."
        );
        assert_eq!(
            clean_text("See https://x.substack.com/p/a?utm_source=x, then stop."),
            "See https://x.substack.com/p/a, then stop."
        );
    }

    #[test]
    fn boilerplate_goes_and_writing_stays() {
        let blocks = vec![
            ContentBlock::paragraph(
                "Thanks for reading Decoding ML! Subscribe for free to receive new posts.",
            ),
            ContentBlock::paragraph("Share"),
            ContentBlock::paragraph("Subscribe now"),
            ContentBlock::paragraph("   "),
            ContentBlock::paragraph("Subscribers of a Kafka topic read it at their own pace."),
            ContentBlock::new(BlockKind::Code, "    indented();\n\n\ttabbed();  \n"),
        ];
        let cleaned = clean_blocks(&blocks);
        assert_eq!(cleaned.len(), 2);
        assert_eq!(
            cleaned[0].text,
            "Subscribers of a Kafka topic read it at their own pace."
        );
        assert_eq!(
            cleaned[1].text, "    indented();\n\n\ttabbed();  \n",
            "code is kept byte for byte"
        );
    }
}
