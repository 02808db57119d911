//! The chunk stage: a cleaned document cut into pieces the embedding model reads whole.
//!
//! Lengths are counted with the embedding model's own tokenizer. Prose is cut between sentences
//! (Unicode sentence boundaries), code and repository files between lines, and a new section
//! (a heading) starts a new chunk once the current one holds a fair share. Consecutive chunks
//! overlap by up to `overlap_tokens` of whole sentences. A single sentence or line longer than a
//! chunk is the only thing ever cut inside, at token boundaries. Every chunk's token count,
//! plus the model's two special tokens, fits the model's window: this is checked by
//! re-tokenising each chunk, whatever the tokenizer.

use tokenizers::Tokenizer;
use twin_config::{ChunkRule, ChunkingConfig};
use twin_schemas::{BlockKind, Chunk, ChunkId, CleanedDocument, DocumentKind};
use unicode_segmentation::UnicodeSegmentation;

use crate::StreamError;

/// Tokens the model adds around every input (`[CLS]` and `[SEP]` for BERT).
const SPECIAL_TOKENS: usize = 2;

/// Cuts documents into chunks.
#[derive(Clone)]
pub struct Chunker {
    tokenizer: Tokenizer,
    rules: ChunkingConfig,
    model_max_tokens: usize,
}

/// A piece a chunk is built from: a sentence, a heading, or a line of code.
#[derive(Debug, Clone)]
struct Unit {
    text: String,
    tokens: usize,
    /// What joins it to the unit before it in a chunk.
    separator: &'static str,
    /// A heading: a good place to start a chunk.
    starts_section: bool,
}

impl Chunker {
    /// A chunker counting with `tokenizer` (its truncation and padding are turned off here) for a
    /// model whose window is `model_max_tokens`, special tokens included.
    pub fn new(
        mut tokenizer: Tokenizer,
        rules: ChunkingConfig,
        model_max_tokens: usize,
    ) -> Result<Self, StreamError> {
        tokenizer
            .with_truncation(None)
            .map_err(StreamError::Tokenizer)?;
        tokenizer.with_padding(None);
        Ok(Self {
            tokenizer,
            rules,
            model_max_tokens,
        })
    }

    /// The rule for a kind of document, its budget clamped to the model's window.
    fn rule(&self, kind: DocumentKind) -> (usize, usize) {
        let rule: &ChunkRule = match kind {
            DocumentKind::Article => &self.rules.article,
            DocumentKind::Post => &self.rules.post,
            DocumentKind::Repository => &self.rules.repository,
        };
        let budget = rule
            .max_tokens
            .min(self.model_max_tokens.saturating_sub(SPECIAL_TOKENS))
            .max(1);
        (budget, rule.overlap_tokens.min(budget / 2))
    }

    fn count(&self, text: &str) -> Result<usize, StreamError> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(StreamError::Tokenizer)?
            .len())
    }

    /// Cut a document into chunks, in reading order.
    pub fn chunk(&self, doc: &CleanedDocument, chunked_at: i64) -> Result<Vec<Chunk>, StreamError> {
        let bytes: usize = doc.content.iter().map(|b| b.text.len()).sum();
        if bytes > self.rules.max_document_bytes {
            return Err(StreamError::TooLarge {
                document_id: doc.id.clone(),
                bytes,
                limit: self.rules.max_document_bytes,
            });
        }
        let (budget, overlap) = self.rule(doc.kind);
        let units = self.units(doc)?;
        let mut texts: Vec<String> = Vec::new();
        let mut current: Vec<Unit> = Vec::new();
        let mut current_tokens = 0;
        for unit in units {
            if unit.tokens > budget {
                self.flush(&mut current, &mut texts);
                current_tokens = 0;
                texts.extend(self.split_long(&unit.text, budget)?);
                continue;
            }
            let section_break = unit.starts_section && current_tokens >= budget / 4;
            if !current.is_empty() && (current_tokens + unit.tokens > budget || section_break) {
                let carried = if section_break {
                    Vec::new()
                } else {
                    tail(&current, overlap, budget - unit.tokens)
                };
                self.flush(&mut current, &mut texts);
                current = carried;
                current_tokens = current.iter().map(|u| u.tokens).sum();
            }
            current_tokens += unit.tokens;
            current.push(unit);
        }
        self.flush(&mut current, &mut texts);

        let mut chunks = Vec::with_capacity(texts.len());
        for text in texts {
            // The guarantee, whatever the tokenizer: re-count the joined text.
            for piece in self.fit(text, budget)? {
                let position = chunks.len() as i32;
                let token_count = self.count(&piece)? as i32;
                chunks.push(Chunk {
                    id: ChunkId::new(&doc.id, position, &piece).into(),
                    document_id: doc.id.clone(),
                    kind: doc.kind,
                    platform: doc.platform.clone(),
                    author: doc.author.clone(),
                    url: doc.url.clone(),
                    title: doc.title.clone(),
                    published_at: doc.published_at,
                    position,
                    text: piece,
                    token_count,
                    document_hash: doc.content_hash.clone(),
                    chunked_at,
                });
            }
        }
        Ok(chunks)
    }

    /// The document as a sequence of units.
    fn units(&self, doc: &CleanedDocument) -> Result<Vec<Unit>, StreamError> {
        let mut units = Vec::new();
        for block in &doc.content {
            let mut first = true;
            let block_separator = if units.is_empty() { "" } else { "\n\n" };
            let mut push = |text: String,
                            separator: &'static str,
                            starts_section: bool|
             -> Result<(), StreamError> {
                let tokens = self.count(&text)?;
                units.push(Unit {
                    text,
                    tokens,
                    separator,
                    starts_section,
                });
                Ok(())
            };
            match block.kind {
                BlockKind::Code | BlockKind::File => {
                    if let Some(path) = &block.path {
                        push(format!("// {path}"), block_separator, true)?;
                        first = false;
                    }
                    for line in block.text.lines() {
                        let separator = if first { block_separator } else { "\n" };
                        push(line.to_string(), separator, false)?;
                        first = false;
                    }
                }
                BlockKind::Heading => push(block.text.clone(), block_separator, true)?,
                _ => {
                    // Sentences keep their own trailing whitespace, so that joining them gives
                    // back the text exactly (a `?` inside a url is a sentence bound to UAX #29).
                    for sentence in block.text.split_sentence_bounds() {
                        if sentence.trim().is_empty() {
                            continue;
                        }
                        let separator = if first { block_separator } else { "" };
                        push(sentence.to_string(), separator, false)?;
                        first = false;
                    }
                }
            }
        }
        Ok(units)
    }

    fn flush(&self, current: &mut Vec<Unit>, texts: &mut Vec<String>) {
        if current.is_empty() {
            return;
        }
        let mut text = String::new();
        for (i, unit) in current.iter().enumerate() {
            // The first unit of a chunk needs no separator, whatever it followed.
            if i > 0 {
                text.push_str(unit.separator);
            }
            text.push_str(&unit.text);
        }
        // Prose keeps trailing spaces inside; a chunk does not end on them. Code lines keep
        // their leading whitespace, so only the end is trimmed.
        let text = text.trim_end();
        if !text.is_empty() {
            texts.push(text.to_string());
        }
        current.clear();
    }

    /// Cut a text at token boundaries into pieces of at most `budget` tokens.
    fn split_long(&self, text: &str, budget: usize) -> Result<Vec<String>, StreamError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(StreamError::Tokenizer)?;
        let offsets = encoding.get_offsets();
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < offsets.len() {
            let end = (start + budget).min(offsets.len());
            let (from, to) = (offsets[start].0, offsets[end - 1].1);
            if let Some(piece) = text.get(from..to) {
                if !piece.trim().is_empty() {
                    pieces.push(piece.to_string());
                }
            }
            start = end;
        }
        Ok(pieces)
    }

    /// The text if it fits the budget, else its token-boundary pieces.
    fn fit(&self, text: String, budget: usize) -> Result<Vec<String>, StreamError> {
        if self.count(&text)? <= budget {
            Ok(vec![text])
        } else {
            self.split_long(&text, budget)
        }
    }
}

/// The last units of a chunk, up to `overlap` tokens, that also leave room for `room` more.
fn tail(units: &[Unit], overlap: usize, room: usize) -> Vec<Unit> {
    let limit = overlap.min(room);
    let mut taken = 0;
    let mut start = units.len();
    while start > 0 && taken + units[start - 1].tokens <= limit && !units[start - 1].starts_section
    {
        start -= 1;
        taken += units[start].tokens;
    }
    units[start..].to_vec()
}
