//! An LLM as a judge: for each test sample, a model behind an OpenAI-compatible endpoint reads
//! the instruction, the author's answer and the model's answer, and scores the answer's accuracy
//! and style from 1 to 3 with a one-sentence reason each (the scheme of the LLM Engineer's
//! Handbook, with style judged against the author's own answer). The prompts are the files of
//! `evaluation/prompts/`, versioned together as [`PROMPT_VERSION`].
//!
//! An answer that is not the JSON asked for (or scores outside 1 to 3, or no reason) is asked
//! once more; twice unusable, the judgment fails with what was wrong, and so does the
//! evaluation: a score is never made up or left out silently.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use twin_chat::fill;
use twin_config::GeneratorConfig;
use twin_datasets::{ChatClient, Failure};

use crate::{EvalError, Result};

/// The judge's instructions: the criteria and the scales.
pub const SYSTEM_PROMPT: &str = include_str!("../prompts/judge-system.txt");
/// What the judge is shown of each sample: `{instruction}`, `{reference}` and `{answer}` are
/// filled in.
pub const USER_PROMPT: &str = include_str!("../prompts/judge-user.txt");
/// The version of the two prompts: recorded with each evaluation, changed with them.
pub const PROMPT_VERSION: &str = "judge-v1";

/// One criterion's score, from 1 (poor) to 3 (excellent), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Score {
    /// 1, 2 or 3.
    pub score: u8,
    /// Why, in one sentence.
    pub reason: String,
}

/// The judge's verdict on one answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// Is what it says correct and on the subject?
    pub accuracy: Score,
    /// Does it read as the author's writing?
    pub style: Score,
}

impl Verdict {
    fn check(&self) -> std::result::Result<(), String> {
        for (name, s) in [("accuracy", &self.accuracy), ("style", &self.style)] {
            if !(1..=3).contains(&s.score) {
                return Err(format!("{name} score {} is not 1, 2 or 3", s.score));
            }
            if s.reason.trim().is_empty() {
                return Err(format!("{name} has no reason"));
            }
        }
        Ok(())
    }
}

/// The judge: a chat endpoint and its model.
pub struct Judge {
    client: ChatClient,
}

impl Judge {
    /// A judge behind the endpoint `name` configured as `config` (its temperature is used as
    /// given: 0 makes the verdicts repeat).
    pub fn new(name: &str, config: &GeneratorConfig) -> Result<Self> {
        Ok(Self {
            client: ChatClient::new(name, config, None)?,
        })
    }

    /// `NAME:MODEL` and the prompts' version: what an evaluation records of its judge.
    pub fn name(&self) -> String {
        format!("{} ({PROMPT_VERSION})", self.client.name())
    }

    /// Requests to send at once.
    pub fn concurrency(&self) -> usize {
        self.client.config().concurrency.max(1)
    }

    /// Judge `answer` to `instruction` against the author's `reference`. `sample` is the test
    /// sample's index, for the error.
    pub async fn judge(
        &self,
        sample: usize,
        instruction: &str,
        reference: &str,
        answer: &str,
    ) -> Result<Verdict> {
        let user = fill(
            USER_PROMPT,
            &[
                ("instruction", instruction),
                ("reference", reference),
                ("answer", answer),
            ],
        );
        let body = self
            .client
            .body(SYSTEM_PROMPT, &user, "verdict", &verdict_schema());
        let fail = |reason: String| EvalError::Judge {
            judge: self.client.name(),
            sample,
            reason,
        };
        match self.client.ask(body, Verdict::check).await {
            Ok(mut verdict) => {
                for s in [&mut verdict.accuracy, &mut verdict.style] {
                    s.reason = one_line(&s.reason);
                }
                Ok(verdict)
            }
            Err(Failure::Dropped(reason)) => Err(fail(format!(
                "no usable verdict (asked twice, or the endpoint kept failing): {reason}"
            ))),
            Err(Failure::Fatal(reason)) => Err(fail(reason)),
        }
    }
}

/// The verdict's JSON schema (OpenAI's strict structured output accepts it).
fn verdict_schema() -> Value {
    let criterion = json!({
        "type": "object",
        "properties": {
            "score": { "type": "integer", "enum": [1, 2, 3] },
            "reason": { "type": "string" }
        },
        "required": ["score", "reason"],
        "additionalProperties": false
    });
    json!({
        "type": "object",
        "properties": { "accuracy": criterion, "style": criterion },
        "required": ["accuracy", "style"],
        "additionalProperties": false
    })
}

/// The first line, trimmed, at most 300 characters: a reason is one sentence.
fn one_line(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or_default().trim();
    line.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_fill_in_one_pass() {
        let filled = fill(
            USER_PROMPT,
            &[
                ("instruction", "Say {answer}"),
                ("reference", "ref {x}"),
                ("answer", "mine"),
            ],
        );
        assert!(filled.contains("Say {answer}"), "{filled}");
        assert!(filled.contains("ref {x}"));
        assert!(filled.trim_end().ends_with("mine"));
        assert!(SYSTEM_PROMPT.contains("\"accuracy\""));
    }

    #[test]
    fn verdicts_are_checked() {
        let verdict = |a: u8, reason: &str| Verdict {
            accuracy: Score {
                score: a,
                reason: reason.into(),
            },
            style: Score {
                score: 2,
                reason: "close".into(),
            },
        };
        assert!(verdict(3, "right").check().is_ok());
        assert!(verdict(4, "right").check().is_err());
        assert!(verdict(0, "right").check().is_err());
        assert!(verdict(1, " ").check().is_err());
        assert_eq!(one_line("  first\nsecond"), "first");
    }
}
