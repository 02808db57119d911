//! A checkpoint folder's tokenizer (`tokenizer.json`, fast tokenizers only), its special tokens
//! and the chat template to use with it.

use std::path::Path;

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::template::{special_token, Builtin, ChatTemplate, Message};
use crate::{ChatError, Result};

/// The token that ends a text in tokenizers twin trains (and the fallback end of a turn).
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// A checkpoint folder's `tokenizer.json`.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Err(ChatError::Config {
            path,
            reason: "no tokenizer.json: twin reads fast (tokenizers) tokenizers only".into(),
        });
    }
    Tokenizer::from_file(&path).map_err(|e| ChatError::Config {
        path,
        reason: format!("not a tokenizer: {e}"),
    })
}

/// The chat template of the checkpoint in `dir`: `name` (a built-in) if given, else the
/// checkpoint's own (`tokenizer_config.json`), else `fallback`. Its `bos_token` and `eos_token`
/// come from `tokenizer_config.json`, else from the config's ids decoded.
pub fn template_for(
    dir: &Path,
    tokenizer: &Tokenizer,
    bos_token_id: Option<i64>,
    eos_token_id: Option<i64>,
    name: Option<&str>,
    fallback: Builtin,
) -> Result<ChatTemplate> {
    let path = dir.join("tokenizer_config.json");
    let tokenizer_config: Option<Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let special = |id: Option<i64>, key: &str| {
        tokenizer_config
            .as_ref()
            .and_then(|c| special_token(c, key))
            .or_else(|| tokenizer.id_to_token(u32::try_from(id?).ok()?))
    };
    let eos = special(eos_token_id, "eos_token").unwrap_or_else(|| END_OF_TEXT.into());
    let bos = special(bos_token_id, "bos_token").unwrap_or_default();
    if let Some(name) = name {
        let builtin = Builtin::parse(name).ok_or_else(|| {
            ChatError::Invalid(format!(
                "unknown chat template `{name}`: use alpaca, chatml or llama3"
            ))
        })?;
        return Ok(ChatTemplate::builtin(builtin, &bos, &eos));
    }
    if path.exists() {
        if let Some(template) = ChatTemplate::from_tokenizer_config(&path)? {
            return Ok(template);
        }
    }
    Ok(ChatTemplate::builtin(fallback, &bos, &eos))
}

/// The special tokens the tokenizer's post-processor puts before a text (Llama's BOS), found by
/// encoding a text with and without them.
pub fn opening_tokens(tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let with = encode(tokenizer, "a", true)?;
    let without = encode(tokenizer, "a", false)?;
    if without.is_empty() {
        return Ok(Vec::new());
    }
    Ok(
        match with.windows(without.len()).position(|w| w == without) {
            Some(at) => with[..at].to_vec(),
            None => Vec::new(),
        },
    )
}

/// A rendered prompt as tokens: `opening` (see [`opening_tokens`]) first unless the template
/// already wrote it, as training saw its prompts.
pub fn encode_prompt(tokenizer: &Tokenizer, text: &str, opening: &[u32]) -> Result<Vec<u32>> {
    let mut ids = encode(tokenizer, text, false)?;
    if !opening.is_empty() && !ids.starts_with(opening) {
        ids.splice(0..0, opening.iter().copied());
    }
    Ok(ids)
}

/// A conversation as the model sees it: rendered by `template` and tokenised so that only the
/// template's own special tokens are special. A message's text (a user's question, a retrieved
/// document) that holds a special token's text, say `<|im_start|>system`, is tokenised as plain
/// text, so it cannot forge a turn. Messages without such text are tokenised exactly as the
/// whole rendering would be (the common case costs one scan).
pub fn encode_chat(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[Message],
    opening: &[u32],
) -> Result<Vec<u32>> {
    let specials: Vec<String> = tokenizer
        .get_added_tokens_decoder()
        .into_values()
        .filter(|t| t.special && !t.content.is_empty())
        .map(|t| t.content)
        .collect();
    let forged = |text: &str| specials.iter().any(|s| text.contains(s.as_str()));
    if !messages.iter().any(|m| forged(&m.content)) {
        return encode_prompt(tokenizer, &template.render(messages, true)?, opening);
    }
    // Render with a marker in place of each message's text, then tokenise the template's text
    // with special tokens and each message's text without.
    let marker = |i: usize| format!("\u{F8F0}{i}\u{F8F1}");
    let marked: Vec<Message> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| Message::new(&m.role, marker(i)))
        .collect();
    let rendered = template.render(&marked, true)?;
    let mut plain = tokenizer.clone();
    plain.set_encode_special_tokens(true);
    let mut ids = Vec::new();
    let mut rest = rendered.as_str();
    let mut seen = Vec::new();
    while let Some(start) = rest.find('\u{F8F0}') {
        let Some(len) = rest[start..].find('\u{F8F1}') else {
            break;
        };
        let index: Option<usize> = rest[start + '\u{F8F0}'.len_utf8()..start + len]
            .parse()
            .ok();
        let Some(message) = index.and_then(|i| messages.get(i)) else {
            break;
        };
        ids.extend(encode(tokenizer, &rest[..start], false)?);
        ids.extend(encode(&plain, &message.content, false)?);
        seen.push(index);
        rest = &rest[start + len + '\u{F8F1}'.len_utf8()..];
    }
    ids.extend(encode(tokenizer, rest, false)?);
    if seen.len() != messages.len() {
        // A template that reshapes a message's text (splits it, say) loses the markers: take
        // the special tokens' text apart instead, with a zero-width space after its first
        // character, so that it no longer matches.
        let defused: Vec<Message> = messages
            .iter()
            .map(|m| {
                let mut content = m.content.clone();
                for s in &specials {
                    let mut chars = s.chars();
                    if let Some(first) = chars.next() {
                        let broken = format!("{first}\u{200B}{}", chars.as_str());
                        content = content.replace(s.as_str(), &broken);
                    }
                }
                Message::new(&m.role, content)
            })
            .collect();
        return encode_prompt(tokenizer, &template.render(&defused, true)?, opening);
    }
    if !opening.is_empty() && !ids.starts_with(opening) {
        ids.splice(0..0, opening.iter().copied());
    }
    Ok(ids)
}

/// `text` as token ids, with or without the post-processor's special tokens.
pub fn encode(tokenizer: &Tokenizer, text: &str, special: bool) -> Result<Vec<u32>> {
    tokenizer
        .encode(text, special)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| ChatError::Invalid(format!("tokenizer: {e}")))
}
