//! Samples, the kinds of dataset they make, and the splits they fall in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a dataset teaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// Instruction and answer, for supervised fine-tuning.
    Instruct,
    /// Prompt, chosen and rejected answers, for preference tuning (DPO).
    Preference,
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatasetKind::Instruct => "instruct",
            DatasetKind::Preference => "preference",
        })
    }
}

impl FromStr for DatasetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "instruct" => Ok(DatasetKind::Instruct),
            "preference" => Ok(DatasetKind::Preference),
            other => Err(format!(
                "unknown dataset kind {other:?}: use instruct or preference"
            )),
        }
    }
}

/// Which side of the split a sample is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Trained on.
    Train,
    /// Held out.
    Test,
}

impl Split {
    /// Both, in file order.
    pub const ALL: [Split; 2] = [Split::Train, Split::Test];

    /// `train` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "test" | "validation" | "eval" => Ok(Split::Test),
            other => Err(format!("unknown split {other:?}: use train or test")),
        }
    }
}

/// One sample. `output` is the answer in the author's voice (for preference data, the chosen
/// one); `rejected` is an answer to the same instruction without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// A system prompt given before the instruction (only imported datasets have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// What is asked.
    pub instruction: String,
    /// Context given with it (Alpaca's `input`); usually empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub input: String,
    /// The answer in the author's voice.
    pub output: String,
    /// An answer without the author's style (preference data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    /// Where it came from.
    #[serde(default)]
    pub origin: Origin,
}

/// Where a sample came from: its text's document and chunks, and what wrote the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The document whose text the answer is (none when imported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_id: Option<String>,
    /// The chunks the answer was taken from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunk_ids: Vec<String>,
    /// The generator (`offline`, or `NAME:MODEL`), or `import`.
    #[serde(default)]
    pub generator: String,
    /// The prompts (or offline rules) that wrote the instruction and, if any, the rejected
    /// answer, with their versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
}

impl Sample {
    /// The instruction as one user turn: the instruction, then the input if any.
    pub fn prompt(&self) -> String {
        if self.input.is_empty() {
            self.instruction.clone()
        } else {
            format!("{}\n\n{}", self.instruction, self.input)
        }
    }

    /// The fields every format carries, to compare samples without their origin.
    pub fn content(&self) -> (Option<&str>, &str, &str, &str, Option<&str>) {
        (
            self.system.as_deref(),
            &self.instruction,
            &self.input,
            &self.output,
            self.rejected.as_deref(),
        )
    }
}
