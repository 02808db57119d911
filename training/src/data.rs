//! From samples to rows of tokens: each sample rendered with the chat template, tokenised, its
//! answer tokens marked for the loss; then packed into rows (several samples to a row, each
//! still seeing only itself) and ordered per epoch by a seeded shuffle, so that step `n` always
//! sees the same rows: what makes a resumed run follow the same curve.

use tokenizers::Tokenizer;
use twin_datasets::{Sample, Split};

use crate::{Result, TrainingError};
use twin_chat::{ChatTemplate, Message};

/// One sample as tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<i64>,
    /// Whether the loss predicts token `i` (from tokens before it).
    pub targets: Vec<bool>,
}

impl Example {
    /// Tokens the loss counts.
    pub fn target_count(&self) -> usize {
        self.targets.iter().filter(|t| **t).count()
    }
}

/// The tokenised dataset.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    /// The training split.
    pub train: Vec<Example>,
    /// The test split (for evaluation loss).
    pub test: Vec<Example>,
    /// Samples left out because they do not fit `max_seq_len`.
    pub too_long: usize,
    /// Samples whose answer came to no token.
    pub empty: usize,
}

/// How samples become tokens.
#[derive(Debug, Clone)]
pub struct Tokenising<'a> {
    /// The template that renders a conversation.
    pub template: &'a ChatTemplate,
    /// The checkpoint's tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// Longest example kept.
    pub max_seq_len: usize,
    /// Loss on the answer only (else on every token after the first).
    pub answer_only: bool,
}

impl Tokenising<'_> {
    /// The prompt (system and user turns, then the opening of the assistant's turn) and the
    /// answer that follows it, as text.
    pub fn texts(&self, sample: &Sample) -> Result<(String, String)> {
        let mut messages = Vec::new();
        if let Some(system) = &sample.system {
            messages.push(Message::new("system", system.clone()));
        }
        messages.push(Message::new("user", sample.prompt()));
        let prompt = self.template.render(&messages, true)?;
        messages.push(Message::new("assistant", sample.output.clone()));
        let full = self.template.render(&messages, false)?;
        let answer = full.strip_prefix(&prompt).ok_or_else(|| {
            TrainingError::Template(
                "the rendered prompt is not the start of the rendered conversation, so the \
                 answer tokens cannot be told apart; use a template whose generation prompt \
                 opens the assistant's turn"
                    .into(),
            )
        })?;
        Ok((prompt, answer.to_string()))
    }

    /// One sample as tokens; `None` when it is empty.
    pub fn example(&self, sample: &Sample) -> Result<Option<Example>> {
        self.example_opened(sample, &self.opening()?)
    }

    /// One sample as tokens, `opening` (what the tokenizer puts first in a text, Llama's BOS)
    /// before it unless the template wrote it.
    fn example_opened(&self, sample: &Sample, opening: &[i64]) -> Result<Option<Example>> {
        let (prompt, answer) = self.texts(sample)?;
        let mut prompt = self.encode(&prompt)?;
        if !opening.is_empty() && !prompt.starts_with(opening) {
            prompt.splice(0..0, opening.iter().copied());
        }
        let answer = self.encode(&answer)?;
        if answer.is_empty() {
            return Ok(None);
        }
        let mut targets = vec![!self.answer_only; prompt.len()];
        targets.extend(std::iter::repeat_n(true, answer.len()));
        targets[0] = false;
        let mut ids = prompt;
        ids.extend(answer);
        Ok(Some(Example { ids, targets }))
    }

    /// The special tokens the tokenizer's post-processor puts before a text.
    fn opening(&self) -> Result<Vec<i64>> {
        let ids = twin_chat::checkpoint::opening_tokens(self.tokenizer)?;
        Ok(ids.into_iter().map(i64::from).collect())
    }

    fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| TrainingError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().iter().map(|i| *i as i64).collect())
    }

    /// Every sample as tokens, by split. Too long ones are left out and counted; if that
    /// leaves no training example, the error says how long they are.
    pub fn examples(&self, samples: &[(Split, Sample)]) -> Result<Examples> {
        let mut out = Examples::default();
        let mut shortest: Option<usize> = None;
        let opening = self.opening()?;
        for (split, sample) in samples {
            let Some(example) = self.example_opened(sample, &opening)? else {
                out.empty += 1;
                continue;
            };
            if example.ids.len() > self.max_seq_len {
                out.too_long += 1;
                shortest = Some(shortest.map_or(example.ids.len(), |s| s.min(example.ids.len())));
                continue;
            }
            match split {
                Split::Train => out.train.push(example),
                Split::Test => out.test.push(example),
            }
        }
        if out.train.is_empty() {
            return Err(TrainingError::Invalid(match shortest {
                Some(shortest) => format!(
                    "every training sample is longer than the context: max_seq_len is {} \
                     tokens, the shortest sample has {shortest}; raise --max-seq-len (at most \
                     the model's positions) or use shorter samples",
                    self.max_seq_len
                ),
                None => "the dataset has no training sample".into(),
            }));
        }
        Ok(out)
    }
}

/// A row of one or more examples: `(id, position, segment)` per token, and the loss targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The tokens.
    pub tokens: Vec<(i64, i64, i64)>,
    /// Whether the loss predicts each token.
    pub targets: Vec<bool>,
}

impl Row {
    /// Tokens the loss counts.
    pub fn target_count(&self) -> usize {
        self.targets.iter().filter(|t| **t).count()
    }
}

/// Examples into rows of at most `width` tokens: with `packing`, consecutive examples share a
/// row while they fit; without, one example per row.
pub fn rows(examples: &[Example], width: usize, packing: bool) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut current = Row {
        tokens: Vec::new(),
        targets: Vec::new(),
    };
    let mut segment = 0;
    for example in examples {
        let fits = current.tokens.len() + example.ids.len() <= width;
        if !current.tokens.is_empty() && (!packing || !fits) {
            rows.push(std::mem::replace(
                &mut current,
                Row {
                    tokens: Vec::new(),
                    targets: Vec::new(),
                },
            ));
            segment = 0;
        }
        segment += 1;
        current.tokens.extend(
            example
                .ids
                .iter()
                .enumerate()
                .map(|(i, id)| (*id, i as i64, segment)),
        );
        current.targets.extend(&example.targets);
    }
    if !current.tokens.is_empty() {
        rows.push(current);
    }
    rows
}

/// The order of `n` rows in `epoch`: a permutation drawn from `seed` and the epoch.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|i| splitmix64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ *i as u64));
    order
}

/// SplitMix64: a well-mixed 64-bit hash of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn ex(n: usize) -> Example {
        Example {
            ids: (0..n as i64).collect(),
            targets: (0..n).map(|i| i > 0).collect(),
        }
    }

    #[test]
    fn packing_fills_rows_and_restarts_positions() {
        let rows = rows(&[ex(3), ex(4), ex(2), ex(5)], 8, true);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].tokens.len(), 7);
        assert_eq!(rows[0].tokens[3], (0, 0, 2));
        assert_eq!(rows[1].tokens.len(), 7);
        let unpacked = super::rows(&[ex(3), ex(4)], 8, false);
        assert_eq!(unpacked.len(), 2);
    }

    /// Words as tokens, and `<s>` put before every text by the post-processor (as Llama's).
    fn word_tokenizer() -> Tokenizer {
        let json = r#"{
          "version": "1.0", "truncation": null, "padding": null, "normalizer": null,
          "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                            "rstrip": false, "normalized": false, "special": true}],
          "pre_tokenizer": {"type": "WhitespaceSplit"},
          "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
          "decoder": null,
          "model": {"type": "WordLevel", "unk_token": "<unk>",
                    "vocab": {"<s>": 0, "<unk>": 1, "Q:": 2, "A:": 3, "hi": 4, "there": 5, "friend": 6}}
        }"#;
        json.parse().unwrap()
    }

    #[test]
    fn the_answer_alone_is_the_target_and_the_tokenizers_opening_token_comes_first() {
        let tokenizer = word_tokenizer();
        let template = ChatTemplate::new(
            "Q: {{ messages[0]['content'] }} A:{% if not add_generation_prompt %} \
             {{ messages[1]['content'] }}{% endif %}",
            "<s>",
            "",
        )
        .unwrap();
        let sample = Sample {
            system: None,
            instruction: "hi".into(),
            input: String::new(),
            output: "there friend".into(),
            rejected: None,
            origin: Default::default(),
        };
        let tokenising = Tokenising {
            template: &template,
            tokenizer: &tokenizer,
            max_seq_len: 16,
            answer_only: true,
        };
        let example = tokenising.example(&sample).unwrap().unwrap();
        assert_eq!(example.ids, [0, 2, 4, 3, 5, 6]);
        assert_eq!(example.targets, [false, false, false, false, true, true]);
        let all = Tokenising {
            answer_only: false,
            ..tokenising.clone()
        };
        let example = all.example(&sample).unwrap().unwrap();
        assert_eq!(example.targets, [false, true, true, true, true, true]);
        let short = Tokenising {
            max_seq_len: 4,
            ..tokenising
        };
        let e = short
            .examples(&[(Split::Train, sample)])
            .expect_err("too long")
            .to_string();
        assert!(e.contains("max_seq_len is 4") && e.contains("has 6"), "{e}");
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(50, 1, 0);
        assert_eq!(a, epoch_order(50, 1, 0));
        assert_ne!(a, epoch_order(50, 1, 1));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }
}
