//! `tokenizer.json` and `tokenizer_config.json` from a GGUF file's `tokenizer.*` metadata.
//!
//! - `tokenizer.ggml.model = gpt2`: byte-level BPE with the file's vocabulary and merges, and the
//!   pre-tokenizer `tokenizer.ggml.pre` names, as the model's own `tokenizer.json` had it and
//!   llama.cpp applies it: `smollm` (digits one by one, then GPT-2's split), `llama-bpe` (Llama 3:
//!   numbers in runs of up to three, merges skipped for whole words of the vocabulary), `qwen2`
//!   (NFC, digits one by one), `gpt-2` and `default` (GPT-2's split).
//! - `tokenizer.ggml.model = llama`: SentencePiece's BPE as Hugging Face writes it: spaces as
//!   `▁`, a leading `▁` unless `add_space_prefix` is false, byte fallback, and merges made from
//!   the vocabulary ordered by the pieces' scores (what transformers' converter does).
//!
//! Tokens of type 3 (control) become special added tokens, of type 4 (user-defined) added ones.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value as Json};

use crate::file::{GgufFile, Value};
use crate::{GgufError, Result};

/// Token types of `tokenizer.ggml.token_type`.
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

/// Llama 3's split (`llama-bpe`), as its `tokenizer.json` writes it.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizers twin knows (`tokenizer.ggml.pre`).
pub const PRE_TOKENIZERS: &[&str] = &["smollm", "llama-bpe", "llama3", "qwen2", "gpt-2", "default"];

/// The tokenizer files of a checkpoint.
#[derive(Debug, Clone)]
pub struct TokenizerFiles {
    /// `tokenizer.json`.
    pub tokenizer: Json,
    /// `tokenizer_config.json`.
    pub config: Json,
    /// The beginning-of-text token's id, if any.
    pub bos_token_id: Option<u64>,
    /// The end-of-text token's id, if any.
    pub eos_token_id: Option<u64>,
    /// The padding token's id, if any.
    pub pad_token_id: Option<u64>,
}

/// Build the tokenizer files of `file`; `max_length` is the model's context.
pub fn build(file: &GgufFile, max_length: u64) -> Result<TokenizerFiles> {
    let err = |reason: String| GgufError::Tokenizer {
        path: file.path().to_path_buf(),
        reason,
    };
    let model = string(file, "tokenizer.ggml.model")?;
    let tokens: Vec<&str> = file
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .ok_or_else(|| err("no `tokenizer.ggml.tokens` array".into()))?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| err(format!("`tokenizer.ggml.tokens[{i}]` is not a string")))
        })
        .collect::<Result<_>>()?;
    let types: Vec<u64> = match file
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
    {
        Some(types) => types.iter().map(|t| t.as_u64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let id = |key: &str| -> Result<Option<u64>> {
        match file.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(id) if (id as usize) < tokens.len() => Ok(Some(id)),
                _ => Err(err(format!(
                    "`{key}` is {v:?}, not a token id below {}",
                    tokens.len()
                ))),
            },
        }
    };
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = id("tokenizer.ggml.eos_token_id")?;
    let unk = id("tokenizer.ggml.unknown_token_id")?;
    let pad = id("tokenizer.ggml.padding_token_id")?;
    let flag = |key: &str, default: bool| file.get(key).and_then(Value::as_bool).unwrap_or(default);

    let mut vocab = serde_json::Map::new();
    for (i, token) in tokens.iter().enumerate() {
        // A name seen twice keeps its first id, as llama.cpp's lookup does.
        vocab.entry(token.to_string()).or_insert(json!(i));
    }
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, t))| **t == CONTROL || **t == USER_DEFINED)
        .map(|(i, (content, t))| {
            json!({
                "id": i, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *t == CONTROL,
            })
        })
        .collect();
    let name = |id: Option<u64>| id.map(|i| tokens[i as usize].to_string());

    let (add_bos_default, tokenizer) = match model.as_str() {
        "gpt2" => {
            let pre = file
                .get("tokenizer.ggml.pre")
                .and_then(Value::as_str)
                .unwrap_or("default");
            let merges = merges_of(file, &err)?;
            let byte_level = |use_regex: bool| {
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
            };
            let split = |pattern: &str| {
                json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
            };
            let (normalizer, pre_tokenizer, ignore_merges) = match pre {
                "smollm" => (
                    Json::Null,
                    json!({"type": "Sequence", "pretokenizers": [
                        {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
                    false,
                ),
                "llama-bpe" | "llama3" => (
                    Json::Null,
                    json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]}),
                    true,
                ),
                "qwen2" => (
                    json!({"type": "NFC"}),
                    json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]}),
                    false,
                ),
                "gpt-2" | "default" => (Json::Null, byte_level(true), false),
                other => {
                    return Err(err(format!(
                        "pre-tokenizer `tokenizer.ggml.pre = {other}` is not one twin knows ({})",
                        PRE_TOKENIZERS.join(", ")
                    )))
                }
            };
            let tokenizer = json!({
                "version": "1.0",
                "truncation": null,
                "padding": null,
                "added_tokens": added,
                "normalizer": normalizer,
                "pre_tokenizer": pre_tokenizer,
                "post_processor": Json::Null,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {
                    "type": "BPE", "dropout": null, "unk_token": null,
                    "continuing_subword_prefix": null, "end_of_word_suffix": null,
                    "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                    "vocab": vocab, "merges": merges,
                },
            });
            (false, tokenizer)
        }
        "llama" => {
            let scores: Vec<f64> = match file.get("tokenizer.ggml.scores").and_then(Value::as_array) {
                Some(s) => s.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
                None => return Err(err("a SentencePiece (`llama`) tokenizer without `tokenizer.ggml.scores`".into())),
            };
            if scores.len() != tokens.len() {
                return Err(err(format!(
                    "{} scores for {} tokens",
                    scores.len(),
                    tokens.len()
                )));
            }
            let merges = match file.get("tokenizer.ggml.merges") {
                Some(_) => merges_of(file, &err)?,
                None => sentencepiece_merges(&tokens, &scores),
            };
            let prefix = flag("tokenizer.ggml.add_space_prefix", true);
            let mut normalizers = Vec::new();
            if prefix {
                normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
            }
            normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            let tokenizer = json!({
                "version": "1.0",
                "truncation": null,
                "padding": null,
                "added_tokens": added,
                "normalizer": {"type": "Sequence", "normalizers": normalizers},
                "pre_tokenizer": null,
                "post_processor": Json::Null,
                "decoder": {"type": "Sequence", "decoders": decoders},
                "model": {
                    "type": "BPE", "dropout": null, "unk_token": name(unk),
                    "continuing_subword_prefix": null, "end_of_word_suffix": null,
                    "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                    "vocab": vocab, "merges": merges,
                },
            });
            (true, tokenizer)
        }
        other => {
            return Err(err(format!(
                "tokenizer model `tokenizer.ggml.model = {other}`: twin builds `gpt2` (byte-level BPE) and `llama` (SentencePiece) tokenizers"
            )))
        }
    };
    let mut tokenizer = tokenizer;
    let add_bos = flag("tokenizer.ggml.add_bos_token", add_bos_default);
    let add_eos = flag("tokenizer.ggml.add_eos_token", false);
    tokenizer["post_processor"] = post_processor(
        add_bos
            .then_some(bos)
            .flatten()
            .map(|i| (tokens[i as usize], i)),
        add_eos
            .then_some(eos)
            .flatten()
            .map(|i| (tokens[i as usize], i)),
        model == "gpt2",
    );
    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": false,
        "bos_token": name(bos),
        "eos_token": name(eos),
        "unk_token": name(unk),
        "pad_token": name(pad),
    });
    if let Some(template) = file.get("tokenizer.chat_template").and_then(Value::as_str) {
        config["chat_template"] = json!(template);
    }
    // Check what we wrote is a tokenizer the tokenizers crate loads.
    tokenizers::Tokenizer::from_bytes(tokenizer.to_string().as_bytes()).map_err(|e| {
        err(format!(
            "the tokenizer built from the metadata does not load: {e}"
        ))
    })?;
    Ok(TokenizerFiles {
        tokenizer,
        config,
        bos_token_id: bos,
        eos_token_id: eos,
        pad_token_id: pad,
    })
}

fn string(file: &GgufFile, key: &str) -> Result<String> {
    file.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: key.into(),
            reason: "is missing or not a string".into(),
        })
}

/// `tokenizer.ggml.merges` ("left right" strings) as pairs.
fn merges_of(file: &GgufFile, err: &dyn Fn(String) -> GgufError) -> Result<Vec<Json>> {
    let list = file
        .get("tokenizer.ggml.merges")
        .and_then(Value::as_array)
        .ok_or_else(|| err("a BPE tokenizer without `tokenizer.ggml.merges`".into()))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let text = m
                .as_str()
                .ok_or_else(|| err(format!("`tokenizer.ggml.merges[{i}]` is not a string")))?;
            let (left, right) = text.split_once(' ').ok_or_else(|| {
                err(format!(
                    "`tokenizer.ggml.merges[{i}]` = {text:?} is not two tokens"
                ))
            })?;
            Ok(json!([left, right]))
        })
        .collect()
}

/// The merges of a SentencePiece vocabulary, as transformers' GGUF converter makes them: every
/// split of each piece into two pieces of the vocabulary, the pieces' splits ordered by the
/// halves' scores (highest first), then all of them by the piece's score (highest first, stable).
fn sentencepiece_merges(tokens: &[&str], scores: &[f64]) -> Vec<Json> {
    let mut score: HashMap<&str, f64> = HashMap::new();
    for (t, s) in tokens.iter().zip(scores) {
        score.insert(t, *s);
    }
    let known: HashSet<&str> = tokens.iter().copied().collect();
    let mut seen = HashSet::new();
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for token in tokens {
        if !seen.insert(*token) {
            continue;
        }
        let piece_score = score[token];
        let mut local: Vec<(&str, &str, f64)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| known.contains(l) && known.contains(r))
            .map(|(l, r)| (l, r, piece_score))
            .collect();
        local.sort_by(|a, b| {
            (score[b.0], score[b.1])
                .partial_cmp(&(score[a.0], score[a.1]))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
    merges.into_iter().map(|(l, r, _)| json!([l, r])).collect()
}

/// What is added around a text: the beginning and end tokens when the file says so.
fn post_processor(bos: Option<(&str, u64)>, eos: Option<(&str, u64)>, byte_level: bool) -> Json {
    if bos.is_none() && eos.is_none() {
        return if byte_level {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        } else {
            Json::Null
        };
    }
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = serde_json::Map::new();
    for (token, id) in bos.iter().chain(eos.iter()) {
        specials.insert(
            token.to_string(),
            json!({"id": token, "ids": [id], "tokens": [token]}),
        );
    }
    if let Some((token, _)) = bos {
        single.push(json!({"SpecialToken": {"id": token, "type_id": 0}}));
        pair.push(json!({"SpecialToken": {"id": token, "type_id": 0}}));
    }
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    pair.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    if let Some((token, _)) = eos {
        single.push(json!({"SpecialToken": {"id": token, "type_id": 0}}));
        pair.push(json!({"SpecialToken": {"id": token, "type_id": 0}}));
    }
    if let Some((token, _)) = bos {
        pair.push(json!({"SpecialToken": {"id": token, "type_id": 1}}));
    }
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    if let Some((token, _)) = eos {
        pair.push(json!({"SpecialToken": {"id": token, "type_id": 1}}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}
