//! Tokenizers: a checkpoint's `tokenizer.json` (the tokenizers crate), its chat template, and a
//! byte-level BPE tokenizer trained from text for a model that starts from scratch.

use std::path::Path;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::architecture::{Family, ModelConfig};
use crate::chat_template::{Builtin, ChatTemplate};
use crate::{Result, TrainingError};

/// The token that ends a text in tokenizers twin trains.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// A checkpoint folder's `tokenizer.json`.
pub fn load(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Err(TrainingError::Config {
            path,
            reason: "no tokenizer.json: twin reads fast (tokenizers) tokenizers only".into(),
        });
    }
    Tokenizer::from_file(&path).map_err(|e| TrainingError::Config {
        path,
        reason: format!("not a tokenizer: {e}"),
    })
}

/// The chat template to train with: `name` (a built-in) if given, else the checkpoint's own
/// (`tokenizer_config.json`), else ChatML for Qwen2 and Alpaca for the rest.
pub fn template(
    dir: &Path,
    config: &ModelConfig,
    tokenizer: &Tokenizer,
    name: Option<&str>,
) -> Result<ChatTemplate> {
    let path = dir.join("tokenizer_config.json");
    let tokenizer_config: Option<serde_json::Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let eos = special(
        tokenizer_config.as_ref(),
        tokenizer,
        config.eos_token_id,
        "eos_token",
    )
    .unwrap_or_else(|| END_OF_TEXT.into());
    let bos = special(
        tokenizer_config.as_ref(),
        tokenizer,
        config.bos_token_id,
        "bos_token",
    )
    .unwrap_or_default();
    if let Some(name) = name {
        let builtin = Builtin::parse(name).ok_or_else(|| {
            TrainingError::Invalid(format!(
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
    let builtin = match config.family {
        Family::Qwen2 => Builtin::ChatMl,
        _ => Builtin::Alpaca,
    };
    Ok(ChatTemplate::builtin(builtin, &bos, &eos))
}

/// A special token's text: from `tokenizer_config.json`, else the config's id decoded.
fn special(
    tokenizer_config: Option<&serde_json::Value>,
    tokenizer: &Tokenizer,
    id: Option<i64>,
    key: &str,
) -> Option<String> {
    tokenizer_config
        .and_then(|c| crate::chat_template::special_token(c, key))
        .or_else(|| tokenizer.id_to_token(id? as u32))
}

/// Train a byte-level BPE tokenizer of at most `vocab_size` tokens on `texts`, with
/// `<|endoftext|>`, `<|im_start|>` and `<|im_end|>` as its first (special) tokens.
pub fn train_bpe(texts: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let specials: Vec<AddedToken> = [END_OF_TEXT, "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::from(trainer);
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevel::new(false, true, true)));
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(|e| TrainingError::Tokenizer(e.to_string()))?;
    Ok(tokenizer)
}

/// Write a trained tokenizer and its `tokenizer_config.json` (ChatML template) into `dir`.
pub fn save_trained(tokenizer: &Tokenizer, dir: &Path, max_length: i64) -> Result<()> {
    let path = dir.join("tokenizer.json");
    tokenizer
        .save(&path, false)
        .map_err(|e| TrainingError::Tokenizer(format!("{}: {e}", path.display())))?;
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": END_OF_TEXT,
        "eos_token": END_OF_TEXT,
        "pad_token": END_OF_TEXT,
        "model_max_length": max_length,
        "chat_template": crate::chat_template::CHATML,
    });
    crate::weights::write_json(&dir.join("tokenizer_config.json"), &config)
}
