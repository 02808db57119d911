//! Tokenizers: a checkpoint's `tokenizer.json` (the tokenizers crate), its chat template, and a
//! byte-level BPE tokenizer trained from text for a model that starts from scratch.

use std::path::Path;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::architecture::ModelConfig;
use crate::{Result, TrainingError};
use twin_chat::{Builtin, ChatTemplate};

pub use twin_chat::checkpoint::END_OF_TEXT;

/// A checkpoint folder's `tokenizer.json`.
pub fn load(dir: &Path) -> Result<Tokenizer> {
    Ok(twin_chat::load_tokenizer(dir)?)
}

/// The chat template to train with: `name` (a built-in) if given, else the checkpoint's own
/// (`tokenizer_config.json`), else ChatML for Qwen2 and Alpaca for the rest.
pub fn template(
    dir: &Path,
    config: &ModelConfig,
    tokenizer: &Tokenizer,
    name: Option<&str>,
) -> Result<ChatTemplate> {
    Ok(twin_chat::template_for(
        dir,
        tokenizer,
        config.bos_token_id,
        config.eos_token_id,
        name,
        Builtin::for_model_type(config.family.model_type()),
    )?)
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
        "chat_template": twin_chat::template::CHATML,
    });
    crate::weights::write_json(&dir.join("tokenizer_config.json"), &config)
}
