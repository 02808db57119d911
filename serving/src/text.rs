//! Tokens to text as they are generated: never half a character, never part of a stop sequence.
//!
//! [`Detokenizer`] decodes incrementally the way text-generation-inference does: the text of the
//! last few tokens with and without the new one, and the difference is emitted only once it no
//! longer ends in U+FFFD (a byte-level token that holds half of a multi-byte character).
//! [`StopText`] holds back what could be the start of a stop sequence until it is clear, and
//! cuts the text where one appears.

use tokenizers::Tokenizer;

/// Incremental decoding of one sequence.
#[derive(Debug, Clone)]
pub struct Detokenizer {
    prefix_offset: usize,
    read_offset: usize,
}

/// Tokens of the prompt decoded with the first new ones, so that a tokenizer that drops a
/// leading space at the start of a text (SentencePiece) still gives the right first word.
const CONTEXT_TOKENS: usize = 5;

impl Detokenizer {
    /// For a sequence whose first `prompt_len` tokens are the prompt.
    pub fn new(prompt_len: usize) -> Self {
        Self {
            prefix_offset: prompt_len.saturating_sub(CONTEXT_TOKENS),
            read_offset: prompt_len,
        }
    }

    /// The text the last token of `tokens` completes, if any is complete.
    pub fn next(&mut self, tokenizer: &Tokenizer, tokens: &[u32]) -> String {
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).unwrap_or_default();
        let before = decode(&tokens[self.prefix_offset..self.read_offset]);
        let after = decode(&tokens[self.prefix_offset..]);
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            if let Some(new) = after.get(before.len()..) {
                self.prefix_offset = self.read_offset;
                self.read_offset = tokens.len();
                return new.to_string();
            }
        }
        String::new()
    }

    /// What is left when the sequence ends (an unfinished character comes out as U+FFFD).
    pub fn finish(&mut self, tokenizer: &Tokenizer, tokens: &[u32]) -> String {
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).unwrap_or_default();
        let before = decode(&tokens[self.prefix_offset..self.read_offset]);
        let after = decode(&tokens[self.prefix_offset..]);
        self.prefix_offset = tokens.len();
        self.read_offset = tokens.len();
        after.get(before.len()..).unwrap_or_default().to_string()
    }
}

/// The generated text of one sequence, with its stop sequences applied.
#[derive(Debug, Clone, Default)]
pub struct StopText {
    stops: Vec<String>,
    text: String,
    /// Bytes of `text` already handed out.
    sent: usize,
    stopped: bool,
}

impl StopText {
    /// Text that ends at the first of `stops`.
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            ..Self::default()
        }
    }

    /// Add decoded text; returns what may be handed out now, and whether a stop sequence was
    /// reached (then nothing after it is handed out, and it is not itself).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.text.push_str(piece);
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        // A stop sequence can only start where it could not have been seen before.
        let mut from = self.sent.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|at| from + at))
            .min();
        if let Some(at) = found {
            let out = self.text.get(self.sent..at).unwrap_or_default().to_string();
            self.text.truncate(at);
            self.sent = at;
            self.stopped = true;
            return (out, true);
        }
        let safe = self.text.len() - self.held_back();
        let out = self.text[self.sent..safe].to_string();
        self.sent = safe;
        (out, false)
    }

    /// Bytes at the end of the text that begin some stop sequence.
    fn held_back(&self) -> usize {
        let mut held = 0;
        for stop in &self.stops {
            for (end, _) in stop.char_indices().skip(1) {
                if end > held && self.text.ends_with(&stop[..end]) {
                    held = end;
                }
            }
        }
        held.min(self.text.len() - self.sent)
    }

    /// Hand out whatever was held back (the sequence ended without a stop sequence).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        out
    }

    /// The text so far, stop sequence excluded.
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequences_cut_the_text_and_partial_matches_wait() {
        let mut t = StopText::new(vec!["\n\nUser:".into(), "END".into()]);
        assert_eq!(t.push("Hello"), ("Hello".into(), false));
        assert_eq!(t.push(" world\n"), (" world".into(), false));
        assert_eq!(t.push("\nUs"), (String::new(), false));
        assert_eq!(t.push("ually"), ("\n\nUsually".into(), false));
        assert_eq!(t.push(" EN"), (" ".into(), false));
        assert_eq!(t.push("Dless"), (String::new(), true));
        assert_eq!(t.text(), "Hello world\n\nUsually ");
        assert_eq!(t.push("more"), (String::new(), true));
    }

    #[test]
    fn a_stop_sequence_split_over_many_pieces_is_found() {
        let mut t = StopText::new(vec!["<|im_end|>".into()]);
        let mut out = String::new();
        for piece in ["Sure", "<|", "im", "_", "end", "|>", "after"] {
            let (text, stopped) = t.push(piece);
            out.push_str(&text);
            if stopped {
                break;
            }
        }
        assert_eq!(out, "Sure");
    }

    #[test]
    fn without_stop_sequences_everything_goes_out_at_once() {
        let mut t = StopText::new(vec![]);
        assert_eq!(t.push("é a"), ("é a".into(), false));
        assert_eq!(t.flush(), "");
    }
}
