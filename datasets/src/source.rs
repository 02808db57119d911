//! Passages: the author's own text that samples answer with. A passage is a chunk, or a run of
//! neighbouring chunks of one document joined up to a token budget (the overlap the chunker
//! repeats between neighbours is kept once), with what the document's structure says about it:
//! its title and the heading it sits under.

use serde::Serialize;
use twin_schemas::{BlockKind, Chunk, CleanedDocument};
use unicode_segmentation::UnicodeSegmentation;

/// A run of one document's text, with its structure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Passage {
    /// Derived from its chunks' ids.
    pub id: String,
    /// Its document.
    pub document_id: String,
    /// The document's title.
    pub title: String,
    /// The heading it sits under, if the document has one before it.
    pub heading: Option<String>,
    /// The author's name.
    pub author: String,
    /// The text.
    pub text: String,
    /// The chunks it joins, in order.
    pub chunk_ids: Vec<String>,
}

impl Passage {
    /// Its first sentence: what it is about.
    pub fn topic_sentence(&self) -> String {
        first_sentence(&self.text)
    }
}

/// The first sentence of `text`, trimmed, at most about 200 characters (cut at a word).
pub fn first_sentence(text: &str) -> String {
    let sentence = text
        .unicode_sentences()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or("");
    if sentence.chars().count() <= 200 {
        return sentence.to_string();
    }
    let mut cut = String::new();
    for word in sentence.split_whitespace() {
        if cut.chars().count() + word.chars().count() > 200 {
            break;
        }
        if !cut.is_empty() {
            cut.push(' ');
        }
        cut.push_str(word);
    }
    cut
}

/// The sentences of `text`, trimmed, without empty ones.
pub fn sentences(text: &str) -> Vec<&str> {
    text.unicode_sentences()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// The passages of one document: its chunks (in position order) joined while their token counts
/// add up to at most `max_tokens`; a chunk alone may be longer.
pub fn passages(doc: &CleanedDocument, chunks: &[Chunk], max_tokens: usize) -> Vec<Passage> {
    let mut out = Vec::new();
    let mut run: Vec<&Chunk> = Vec::new();
    let mut tokens = 0usize;
    for chunk in chunks {
        let n = chunk.token_count.max(0) as usize;
        if !run.is_empty() && tokens + n > max_tokens {
            out.push(passage(doc, &run));
            run.clear();
            tokens = 0;
        }
        run.push(chunk);
        tokens += n;
    }
    if !run.is_empty() {
        out.push(passage(doc, &run));
    }
    out
}

fn passage(doc: &CleanedDocument, run: &[&Chunk]) -> Passage {
    let mut text = String::new();
    for chunk in run {
        join_overlapping(&mut text, &chunk.text);
    }
    let chunk_ids: Vec<String> = run.iter().map(|c| c.id.clone()).collect();
    Passage {
        id: crate::digest(chunk_ids.iter().map(|c| c.as_bytes()))[..16].to_string(),
        document_id: doc.id.clone(),
        title: doc.title.trim().to_string(),
        heading: heading_before(doc, &run[0].text),
        author: doc.author.full_name.clone(),
        text,
        chunk_ids,
    }
}

/// Append `next` to `text`, leaving out the start of `next` that repeats the end of `text`
/// (neighbouring chunks overlap by whole sentences).
fn join_overlapping(text: &mut String, next: &str) {
    if text.is_empty() {
        text.push_str(next);
        return;
    }
    // The longest suffix of `text` that starts `next`, starting at a character boundary.
    let overlap = text
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| {
            let tail = &text[i..];
            tail.len() >= 16 && next.starts_with(tail)
        })
        .map(|i| text.len() - i)
        .unwrap_or(0);
    let rest = &next[overlap..];
    if overlap == 0 {
        text.push_str(if next.starts_with('\n') { "" } else { " " });
    }
    text.push_str(rest);
}

/// The heading under which `chunk_text` starts in the document: the last heading before the
/// first block the chunk begins in (or the heading the chunk starts with).
fn heading_before(doc: &CleanedDocument, chunk_text: &str) -> Option<String> {
    let start: String = chunk_text.trim().chars().take(48).collect();
    let mut heading: Option<&str> = None;
    for block in &doc.content {
        let text = block.text.trim();
        if text.is_empty() {
            continue;
        }
        if block.kind == BlockKind::Heading {
            if start.starts_with(&text.chars().take(48).collect::<String>()) {
                return Some(text.to_string());
            }
            heading = Some(text);
            continue;
        }
        let probe: String = text.chars().take(48).collect();
        if text.contains(&start) || start.starts_with(&probe) || chunk_text.contains(&probe) {
            return heading
                .filter(|h| *h != doc.title.trim())
                .map(str::to_string);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use twin_schemas::{Author, ContentBlock, DocumentKind};

    fn doc(blocks: Vec<ContentBlock>) -> CleanedDocument {
        CleanedDocument {
            id: "d".into(),
            kind: DocumentKind::Article,
            platform: "substack".into(),
            author: Author {
                id: "a".into(),
                full_name: "Ann".into(),
            },
            url: "https://x".into(),
            title: "The Title".into(),
            published_at: None,
            cleaned_at: 0,
            content: blocks,
            content_hash: "h".into(),
            raw_content_hash: "h".into(),
            metadata: Default::default(),
        }
    }

    fn heading(text: &str) -> ContentBlock {
        ContentBlock {
            level: 2,
            ..ContentBlock::new(BlockKind::Heading, text)
        }
    }

    fn chunk(position: i32, text: &str, tokens: i32) -> Chunk {
        Chunk {
            id: format!("c{position}"),
            document_id: "d".into(),
            kind: DocumentKind::Article,
            platform: "substack".into(),
            author: Author {
                id: "a".into(),
                full_name: "Ann".into(),
            },
            url: "https://x".into(),
            title: "The Title".into(),
            published_at: None,
            position,
            text: text.into(),
            token_count: tokens,
            document_hash: "h".into(),
            chunked_at: 0,
        }
    }

    #[test]
    fn neighbours_join_without_their_overlap_under_their_heading() {
        let d = doc(vec![
            heading("Why logs"),
            ContentBlock::paragraph("Logs keep order. Offsets say where a reader is."),
            heading("Replays"),
            ContentBlock::paragraph("A replay rebuilds every projection from offset zero."),
        ]);
        let chunks = [
            chunk(0, "Logs keep order. Offsets say where a reader is.", 10),
            chunk(1, "Offsets say where a reader is. Replays come next.", 10),
            chunk(
                2,
                "A replay rebuilds every projection from offset zero.",
                10,
            ),
        ];
        let ps = passages(&d, &chunks, 20);
        assert_eq!(ps.len(), 2);
        assert_eq!(
            ps[0].text,
            "Logs keep order. Offsets say where a reader is. Replays come next."
        );
        assert_eq!(ps[0].heading.as_deref(), Some("Why logs"));
        assert_eq!(ps[0].chunk_ids, ["c0", "c1"]);
        assert_eq!(ps[1].heading.as_deref(), Some("Replays"));
        assert_eq!(ps[0].topic_sentence(), "Logs keep order.");
    }
}
