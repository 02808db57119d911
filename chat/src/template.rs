//! Chat templates: how a checkpoint turns a conversation into the text it was trained on.
//!
//! A Hugging Face checkpoint carries its template in `tokenizer_config.json` (`chat_template`, a
//! Jinja string or a list of named ones). It is rendered with minijinja, configured as
//! transformers configures Jinja (`trim_blocks`, `lstrip_blocks`, Python string methods such as
//! `.strip()`, and `raise_exception` for the template's own errors), with `messages`,
//! `add_generation_prompt`, `bos_token` and `eos_token` in the context. Checkpoints without one
//! use a built-in template: Alpaca, ChatML or Llama-3.

use std::path::Path;

use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ChatError, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A turn of `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The built-in templates, for checkpoints that have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Alpaca's `### Instruction:` / `### Response:` layout.
    Alpaca,
    /// ChatML: `<|im_start|>role ... <|im_end|>`.
    ChatMl,
    /// Llama 3: `<|start_header_id|>role<|end_header_id|> ... <|eot_id|>`.
    Llama3,
}

const ALPACA: &str = "{% if messages[0]['role'] != 'system' %}Below is an instruction that \
describes a task. Write a response that appropriately completes the request.\n\n{% endif %}\
{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}\
{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}\
{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}\
{% else %}{{ raise_exception('Alpaca has no role ' + message['role']) }}{% endif %}{% endfor %}\
{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}";

/// ChatML, the template of Qwen2 and of the tokenizers twin trains.
pub const CHATML: &str =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + \
message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}\
{{ '<|im_start|>assistant\n' }}{% endif %}";

// Meta's template of Llama 3 Instruct.
const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}\
{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ \
message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + \
content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}\
{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

impl Builtin {
    /// The template of a model type's checkpoints that carry none: ChatML for Qwen2 (its
    /// instruct models' layout), Alpaca for the rest.
    pub fn for_model_type(model_type: &str) -> Self {
        match model_type {
            "qwen2" => Builtin::ChatMl,
            _ => Builtin::Alpaca,
        }
    }

    /// `alpaca`, `chatml` or `llama3`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "alpaca" => Some(Builtin::Alpaca),
            "chatml" => Some(Builtin::ChatMl),
            "llama3" | "llama-3" => Some(Builtin::Llama3),
            _ => None,
        }
    }
}

/// A compiled chat template with its special tokens.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compile `source` (Jinja), with the checkpoint's special tokens.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| ChatError::Template(describe(&e)))?;
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// A built-in template.
    pub fn builtin(template: Builtin, bos_token: &str, eos_token: &str) -> Self {
        let source = match template {
            Builtin::Alpaca => ALPACA,
            Builtin::ChatMl => CHATML,
            Builtin::Llama3 => LLAMA3,
        };
        // The built-in sources are fixed and tested: they always compile.
        Self::new(source, bos_token, eos_token).unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// The template of a checkpoint's `tokenizer_config.json`, or `None` when it has none.
    /// A list of named templates gives the one named `default`.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        let text = std::fs::read_to_string(path).map_err(|e| ChatError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let config: Value = serde_json::from_str(&text).map_err(|e| ChatError::Config {
            path: path.to_path_buf(),
            reason: format!("not JSON: {e}"),
        })?;
        let source = match config.get("chat_template") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(str::to_string)
                .ok_or_else(|| ChatError::Config {
                    path: path.to_path_buf(),
                    reason: "`chat_template` lists templates but none named \"default\"".into(),
                })?,
            Some(_) => {
                return Err(ChatError::Config {
                    path: path.to_path_buf(),
                    reason: "`chat_template` must be a string or a list of named templates".into(),
                })
            }
        };
        let token = |key: &str| special_token(&config, key).unwrap_or_default();
        Self::new(&source, &token("bos_token"), &token("eos_token"))
            .map(Some)
            .map_err(|e| ChatError::Config {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }

    /// The conversation as text; with `add_generation_prompt`, followed by what opens the
    /// assistant's turn.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| ChatError::Template(describe(&e)))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| ChatError::Template(describe(&e)))
    }
}

/// A special token of a `tokenizer_config.json` (`"eos_token": "</s>"`, or an object with its
/// `content`).
pub fn special_token(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// A minijinja error with its cause and line.
fn describe(e: &minijinja::Error) -> String {
    let mut text = e
        .detail()
        .map_or_else(|| e.kind().to_string(), str::to_string);
    if let Some(line) = e.line() {
        text.push_str(&format!(" (line {line})"));
    }
    text
}

/// A prompt of our own (`{name}` placeholders, not Jinja: the judge's, retrieval's) with each
/// `{key}` replaced by its value, in one pass: a value that holds `{answer}` stays as it is.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let found = values
            .iter()
            .find(|(key, _)| after.starts_with(key) && after[key.len()..].starts_with('}'));
        match found {
            Some((key, value)) => {
                out.push_str(value);
                rest = &after[key.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
