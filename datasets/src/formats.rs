//! Datasets as JSONL files in the common formats, one file per split (`train.jsonl`,
//! `test.jsonl`), and back:
//!
//! - **Alpaca**: `{"instruction", "input", "output"}` (and `"system"` when a sample has one);
//! - **ChatML** (OpenAI `messages`): `{"messages": [system?, user, assistant]}` for instruct data,
//!   and TRL's conversational preference layout `{"prompt": [system?, user], "chosen":
//!   [assistant], "rejected": [assistant]}` for preference data;
//! - **TRL** preference: `{"prompt", "chosen", "rejected"}` as strings.
//!
//! Import reads any of them, as JSONL or as one JSON array, and tells the format from each
//! record's fields. A record that is not a sample is reported with its file and line, and then
//! nothing is imported.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{DatasetError, DatasetKind, Result, Sample, Split};

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Alpaca: instruction, input, output.
    Alpaca,
    /// OpenAI/ChatML `messages` (TRL's conversational layout for preference data).
    ChatMl,
    /// TRL's preference layout: prompt, chosen, rejected.
    Trl,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 3] = [Format::Alpaca, Format::ChatMl, Format::Trl];

    /// Whether this format holds datasets of `kind`.
    pub fn holds(self, kind: DatasetKind) -> bool {
        matches!(
            (self, kind),
            (Format::Alpaca | Format::ChatMl, DatasetKind::Instruct)
                | (Format::ChatMl | Format::Trl, DatasetKind::Preference)
        )
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Alpaca => "alpaca",
            Format::ChatMl => "chatml",
            Format::Trl => "trl",
        })
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "alpaca" => Ok(Format::Alpaca),
            "chatml" | "messages" | "openai" => Ok(Format::ChatMl),
            "trl" => Ok(Format::Trl),
            other => Err(format!(
                "unknown format {other:?}: use alpaca, chatml or trl"
            )),
        }
    }
}

/// A chat message; a struct, so that its fields are written in this order whatever serde_json's
/// features.
#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: &'a str,
}

fn message<'a>(role: &'a str, content: &'a str) -> Message<'a> {
    Message { role, content }
}

#[derive(Serialize)]
struct ChatLine<'a> {
    messages: Vec<Message<'a>>,
}

#[derive(Serialize)]
struct ChatPreferenceLine<'a> {
    prompt: Vec<Message<'a>>,
    chosen: [Message<'a>; 1],
    rejected: [Message<'a>; 1],
}

fn prompt_messages<'a>(sample: &'a Sample, prompt: &'a str) -> Vec<Message<'a>> {
    let mut messages = Vec::new();
    if let Some(system) = &sample.system {
        messages.push(message("system", system));
    }
    messages.push(message("user", prompt));
    messages
}

#[derive(Serialize)]
struct AlpacaLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    instruction: &'a str,
    input: &'a str,
    output: &'a str,
}

#[derive(Serialize)]
struct TrlLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a str>,
    prompt: String,
    chosen: &'a str,
    rejected: &'a str,
}

/// One sample as one line of `format` (no newline).
pub fn line(kind: DatasetKind, sample: &Sample, format: Format) -> Result<String> {
    if !format.holds(kind) {
        return Err(DatasetError::Invalid(format!(
            "{format} cannot hold a {kind} dataset: use {}",
            Format::ALL
                .iter()
                .filter(|f| f.holds(kind))
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    let rejected = || {
        sample.rejected.as_deref().ok_or_else(|| {
            DatasetError::Invalid("a preference sample has no rejected answer".into())
        })
    };
    let prompt = sample.prompt();
    let value = match (format, kind) {
        (Format::Alpaca, _) => serde_json::to_string(&AlpacaLine {
            system: sample.system.as_deref(),
            instruction: &sample.instruction,
            input: &sample.input,
            output: &sample.output,
        }),
        (Format::ChatMl, DatasetKind::Instruct) => {
            let mut messages = prompt_messages(sample, &prompt);
            messages.push(message("assistant", &sample.output));
            serde_json::to_string(&ChatLine { messages })
        }
        (Format::ChatMl, DatasetKind::Preference) => serde_json::to_string(&ChatPreferenceLine {
            prompt: prompt_messages(sample, &prompt),
            chosen: [message("assistant", &sample.output)],
            rejected: [message("assistant", rejected()?)],
        }),
        (Format::Trl, _) => serde_json::to_string(&TrlLine {
            system: sample.system.as_deref(),
            prompt: sample.prompt(),
            chosen: &sample.output,
            rejected: rejected()?,
        }),
    };
    value.map_err(|e| DatasetError::Invalid(format!("sample: {e}")))
}

/// Write `samples` as `DIR/SPLIT.jsonl` in `format`; the files written and their line counts.
/// A split without samples gets no file.
pub fn export(
    kind: DatasetKind,
    samples: &[(Split, Sample)],
    format: Format,
    dir: &Path,
) -> Result<Vec<(PathBuf, usize)>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DatasetError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = Vec::new();
    for split in Split::ALL {
        let lines: Vec<String> = samples
            .iter()
            .filter(|(s, _)| *s == split)
            .map(|(_, sample)| line(kind, sample, format))
            .collect::<Result<_>>()?;
        if lines.is_empty() {
            continue;
        }
        let path = dir.join(format!("{split}.jsonl"));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io(&path))?);
        for line in &lines {
            writeln!(file, "{line}").map_err(io(&path))?;
        }
        file.flush().map_err(io(&path))?;
        written.push((path, lines.len()));
    }
    Ok(written)
}

/// A dataset read from files.
#[derive(Debug, Clone)]
pub struct Imported {
    /// Its kind (every record must be of one kind).
    pub kind: DatasetKind,
    /// Its samples, by split, in file order.
    pub samples: Vec<(Split, Sample)>,
    /// Each file read: its path, split, format and record count.
    pub files: Vec<String>,
}

/// What to import: files (or folders of `.json`/`.jsonl` files), each with its split, or
/// `None` to tell it from the file name (`test`, `valid`, `eval` in it: test; else train).
pub fn import(inputs: &[(Option<Split>, PathBuf)]) -> Result<Imported> {
    let mut files = Vec::new();
    for (split, path) in inputs {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| DatasetError::Io {
                    path: path.clone(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl" || x == "json"))
                .collect();
            inside.sort();
            if inside.is_empty() {
                return Err(DatasetError::Invalid(format!(
                    "{}: no .json or .jsonl file in this folder",
                    path.display()
                )));
            }
            files.extend(inside.into_iter().map(|p| (*split, p)));
        } else {
            files.push((*split, path.clone()));
        }
    }
    let mut kind: Option<(DatasetKind, PathBuf, usize)> = None;
    let mut samples = Vec::new();
    let mut report = Vec::new();
    for (split, path) in files {
        let split = split.unwrap_or_else(|| split_from_name(&path));
        let text = std::fs::read_to_string(&path).map_err(|source| DatasetError::Io {
            path: path.clone(),
            source,
        })?;
        let records = records(&path, &text)?;
        let mut formats = std::collections::BTreeSet::new();
        for (line, value) in &records {
            let malformed = |reason: String| DatasetError::Malformed {
                path: path.clone(),
                line: *line,
                reason,
            };
            let (this_kind, format, sample) = parse(value).map_err(malformed)?;
            match &kind {
                None => kind = Some((this_kind, path.clone(), *line)),
                Some((first, first_path, first_line)) if *first != this_kind => {
                    return Err(malformed(format!(
                        "a {this_kind} sample, but {}:{first_line} is a {first} sample: a \
                         dataset holds one kind",
                        first_path.display()
                    )))
                }
                Some(_) => {}
            }
            formats.insert(format.to_string());
            samples.push((split, sample));
        }
        report.push(format!(
            "{} ({split}, {}, {} samples)",
            path.display(),
            formats.into_iter().collect::<Vec<_>>().join("+"),
            records.len()
        ));
    }
    let Some((kind, _, _)) = kind else {
        return Err(DatasetError::Invalid(
            "nothing to import: the files hold no samples".into(),
        ));
    };
    samples.sort_by_key(|(split, _)| *split);
    Ok(Imported {
        kind,
        samples,
        files: report,
    })
}

fn split_from_name(path: &Path) -> Split {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if ["test", "valid", "eval"].iter().any(|w| stem.contains(w)) {
        Split::Test
    } else {
        Split::Train
    }
}

/// The records of a JSONL file or of a JSON array, with their line numbers.
fn records(path: &Path, text: &str) -> Result<Vec<(usize, Value)>> {
    let malformed = |line: usize, reason: String| DatasetError::Malformed {
        path: path.to_path_buf(),
        line,
        reason,
    };
    if text.trim_start().starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(text)
            .map_err(|e| malformed(e.line(), format!("not a JSON array of samples: {e}")))?;
        // Line numbers of an array's items are not kept: report each by its place instead.
        return Ok(values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i + 1, v))
            .collect());
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|v| (i + 1, v))
                .map_err(|e| malformed(i + 1, format!("not JSON: {e}")))
        })
        .collect()
}

fn text_field(object: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("`{key}` must be a string, not {}", kind_of(other))),
    }
}

fn required(object: &Map<String, Value>, key: &str) -> Result<String, String> {
    match text_field(object, key)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(format!("`{key}` is empty")),
        None => Err(format!("`{key}` is missing")),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Messages as (role, content) pairs.
fn messages(value: &Value, key: &str) -> Result<Vec<(String, String)>, String> {
    let items = value
        .as_array()
        .ok_or_else(|| format!("`{key}` must be an array of messages"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let object = m
                .as_object()
                .ok_or_else(|| format!("`{key}[{i}]` must be an object with role and content"))?;
            let role = required(object, "role").map_err(|e| format!("`{key}[{i}]`: {e}"))?;
            let content = required(object, "content").map_err(|e| format!("`{key}[{i}]`: {e}"))?;
            Ok((role, content))
        })
        .collect()
}

/// A prompt's messages: an optional system message, then one user message.
fn prompt_of(messages: &[(String, String)], key: &str) -> Result<(Option<String>, String), String> {
    match messages {
        [(user, content)] if user == "user" => Ok((None, content.clone())),
        [(system, s), (user, content)] if system == "system" && user == "user" => {
            Ok((Some(s.clone()), content.clone()))
        }
        _ => Err(format!(
            "`{key}` must be one user message, after an optional system message (multi-turn \
             conversations are not supported), found roles [{}]",
            messages
                .iter()
                .map(|(r, _)| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn one_assistant(value: &Value, key: &str) -> Result<String, String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
        Value::String(_) => Err(format!("`{key}` is empty")),
        Value::Array(_) => match messages(value, key)?.as_slice() {
            [(role, content)] if role == "assistant" => Ok(content.clone()),
            _ => Err(format!("`{key}` must be one assistant message")),
        },
        other => Err(format!(
            "`{key}` must be a string or messages, not {}",
            kind_of(other)
        )),
    }
}

/// One record: its kind, format and sample.
fn parse(value: &Value) -> Result<(DatasetKind, Format, Sample), String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("a sample must be a JSON object, not {}", kind_of(value)))?;
    let sample = |system, instruction, input, output, rejected| Sample {
        system,
        instruction,
        input,
        output,
        rejected,
        origin: crate::sample::Origin {
            generator: "import".into(),
            ..Default::default()
        },
    };
    if let Some(list) = object.get("messages") {
        let all = messages(list, "messages")?;
        let Some(((role, output), prompt)) = all.split_last() else {
            return Err("`messages` is empty".into());
        };
        if role != "assistant" {
            return Err(format!(
                "the last message must be the assistant's answer, not {role:?}"
            ));
        }
        let (system, instruction) = prompt_of(prompt, "messages")?;
        return Ok((
            DatasetKind::Instruct,
            Format::ChatMl,
            sample(system, instruction, String::new(), output.clone(), None),
        ));
    }
    if object.contains_key("chosen") || object.contains_key("rejected") {
        let field = |key: &str| {
            object.get(key).ok_or_else(|| {
                format!("`{key}` is missing (a preference sample has prompt, chosen and rejected)")
            })
        };
        let chosen = one_assistant(field("chosen")?, "chosen")?;
        let rejected = one_assistant(field("rejected")?, "rejected")?;
        return match field("prompt")? {
            Value::String(prompt) if !prompt.trim().is_empty() => Ok((
                DatasetKind::Preference,
                Format::Trl,
                sample(
                    text_field(object, "system")?,
                    prompt.clone(),
                    String::new(),
                    chosen,
                    Some(rejected),
                ),
            )),
            list @ Value::Array(_) => {
                let (system, instruction) = prompt_of(&messages(list, "prompt")?, "prompt")?;
                Ok((
                    DatasetKind::Preference,
                    Format::ChatMl,
                    sample(system, instruction, String::new(), chosen, Some(rejected)),
                ))
            }
            _ => Err("`prompt` must be a non-empty string or messages".into()),
        };
    }
    if object.contains_key("instruction") || object.contains_key("output") {
        return Ok((
            DatasetKind::Instruct,
            Format::Alpaca,
            sample(
                text_field(object, "system")?,
                required(object, "instruction")?,
                text_field(object, "input")?.unwrap_or_default(),
                required(object, "output")?,
                None,
            ),
        ));
    }
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort();
    Err(format!(
        "not a sample of a known format: expected Alpaca (instruction, input, output), ChatML \
         (messages) or TRL preference (prompt, chosen, rejected) fields, found [{}]",
        keys.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rejected: Option<&str>) -> Sample {
        Sample {
            system: None,
            instruction: "Explain logs.".into(),
            input: String::new(),
            output: "A log is an ordered list.".into(),
            rejected: rejected.map(str::to_string),
            origin: Default::default(),
        }
    }

    #[test]
    fn lines_follow_each_format() {
        let instruct = sample(None);
        assert_eq!(
            line(DatasetKind::Instruct, &instruct, Format::Alpaca).expect("alpaca"),
            r#"{"instruction":"Explain logs.","input":"","output":"A log is an ordered list."}"#
        );
        assert_eq!(
            line(DatasetKind::Instruct, &instruct, Format::ChatMl).expect("chatml"),
            r#"{"messages":[{"role":"user","content":"Explain logs."},{"role":"assistant","content":"A log is an ordered list."}]}"#
        );
        let preference = sample(Some("Logs are things."));
        assert_eq!(
            line(DatasetKind::Preference, &preference, Format::Trl).expect("trl"),
            r#"{"prompt":"Explain logs.","chosen":"A log is an ordered list.","rejected":"Logs are things."}"#
        );
        let err = line(DatasetKind::Instruct, &instruct, Format::Trl).expect_err("no rejected");
        assert!(err.to_string().contains("use alpaca or chatml"), "{err}");
    }

    #[test]
    fn records_are_told_apart_and_bad_ones_explained() {
        let parsed = |text: &str| parse(&serde_json::from_str(text).expect("json"));
        assert_eq!(
            parsed(r#"{"instruction":"a","output":"b"}"#)
                .expect("alpaca")
                .1,
            Format::Alpaca
        );
        let (kind, format, s) = parsed(
            r#"{"prompt":[{"role":"system","content":"s"},{"role":"user","content":"u"}],
                "chosen":[{"role":"assistant","content":"c"}],"rejected":"r"}"#,
        )
        .expect("conversational");
        assert_eq!((kind, format), (DatasetKind::Preference, Format::ChatMl));
        assert_eq!(s.system.as_deref(), Some("s"));
        let err = parsed(r#"{"question":"a","answer":"b"}"#).expect_err("unknown");
        assert!(err.contains("found [answer, question]"), "{err}");
        let err = parsed(r#"{"instruction":"a","output":7}"#).expect_err("number");
        assert!(
            err.contains("`output` must be a string, not a number"),
            "{err}"
        );
        let err = parsed(r#"{"messages":[{"role":"user","content":"a"}]}"#).expect_err("no answer");
        assert!(err.contains("assistant"), "{err}");
        let err = parsed(r#"{"prompt":"p","chosen":"c"}"#).expect_err("no rejected");
        assert!(err.contains("`rejected` is missing"), "{err}");
    }
}
