//! Retrieval-augmented prompts: the retrieved chunks packed into the system turn of the
//! model's chat template, whole and best first, numbered so that the answer can cite them,
//! as many as fit the model's context beside the conversation and the tokens asked for.
//! The prompt is `serving/prompts/rag-system.txt`.

use twin_chat::{fill, Message};

use crate::backend::Backend;
use crate::engine::{GenerationRequest, Prompt};
use crate::retrieval::Source;
use crate::sampling::SamplingParams;
use crate::ServingError;

/// The system prompt: `{author}` and `{context}` are filled in.
pub const SYSTEM_PROMPT: &str = include_str!("../prompts/rag-system.txt");

/// The prompt that asks the model for rewrites of a query: `{n}` and `{query}` are filled in.
pub const EXPANSION_PROMPT: &str = include_str!("../prompts/query-expansion.txt");

/// Most rewrites a request may ask for.
pub const MAX_EXPANSIONS: usize = 5;

/// Up to `n` rewrites of `query` by the model (query expansion), greedy so that they repeat:
/// one per line of its answer, list marks stripped, blank lines and copies of the query left
/// out. A model that writes fewer gives fewer.
pub async fn rewrites(
    backend: &Backend,
    query: &str,
    n: usize,
) -> Result<Vec<String>, ServingError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if n > MAX_EXPANSIONS {
        return Err(ServingError::InvalidParameter {
            name: "expansions".into(),
            reason: format!("at most {MAX_EXPANSIONS} rewrites, not {n}"),
        });
    }
    let prompt = fill(EXPANSION_PROMPT, &[("n", &n.to_string()), ("query", query)]);
    let done = backend
        .generate(GenerationRequest {
            prompt: Prompt::Chat(vec![Message::new("user", prompt)]),
            params: SamplingParams {
                max_tokens: Some(48 * n),
                temperature: 0.0,
                ..SamplingParams::default()
            },
        })
        .await?;
    Ok(parse_rewrites(&done.text, query, n))
}

/// The rewrites in a model's answer.
fn parse_rewrites(text: &str, query: &str, n: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line
            .trim()
            .trim_start_matches(|c: char| c.is_ascii_digit() || matches!(c, '.' | ')' | '-' | '*'))
            .trim();
        if line.chars().filter(|c| c.is_alphanumeric()).count() < 3
            || line.eq_ignore_ascii_case(query.trim())
            || out.iter().any(|o| o.eq_ignore_ascii_case(line))
        {
            continue;
        }
        out.push(line.to_string());
        if out.len() == n {
            break;
        }
    }
    out
}

/// A conversation with its context, ready to generate from.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The messages: the system turn with the context, then the conversation.
    pub messages: Vec<Message>,
    /// The sources that fit, in the order they are numbered.
    pub sources: Vec<Source>,
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
}

/// Pack `sources` (best first) into a system turn before `conversation` (its own system turns
/// are kept after ours), leaving room for `max_tokens`. A source that does not fit whole is
/// left out, and so are those after it.
pub fn pack(
    backend: &Backend,
    author: &str,
    conversation: &[Message],
    sources: &[Source],
    max_tokens: usize,
) -> Result<Packed, ServingError> {
    let context = backend.context_length();
    let build = |used: &[Source]| -> Vec<Message> {
        let listed: Vec<String> = used
            .iter()
            .enumerate()
            .map(|(i, s)| format!("[{}] {} ({})\n{}", i + 1, s.title, s.url, s.text.trim()))
            .collect();
        let system = fill(
            SYSTEM_PROMPT,
            &[("author", author), ("context", &listed.join("\n\n"))],
        );
        let mut messages = vec![Message::new("system", system.trim_end().to_string())];
        messages.extend(conversation.iter().cloned());
        messages
    };
    let fits = |messages: &[Message]| -> Result<Option<usize>, ServingError> {
        let tokens = backend.count_tokens(&Prompt::Chat(messages.to_vec()))?;
        Ok((tokens + max_tokens <= context).then_some(tokens))
    };
    let mut used: Vec<Source> = Vec::new();
    let mut messages = build(&used);
    let Some(mut prompt_tokens) = fits(&messages)? else {
        let tokens = backend.count_tokens(&Prompt::Chat(messages))?;
        return Err(ServingError::ContextLength {
            prompt: tokens,
            max_tokens,
            context,
        });
    };
    for source in sources {
        used.push(source.clone());
        let candidate = build(&used);
        match fits(&candidate)? {
            Some(tokens) => {
                messages = candidate;
                prompt_tokens = tokens;
            }
            None => {
                used.pop();
                break;
            }
        }
    }
    Ok(Packed {
        messages,
        sources: used,
        prompt_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_are_read_one_per_line() {
        let text = "1. How do crawlers back off?\n\n2) how should a crawler retry?\n- What is backoff?\n- What is backoff?\nok";
        assert_eq!(
            parse_rewrites(text, "How should a crawler retry?", 5),
            ["How do crawlers back off?", "What is backoff?"]
        );
        assert_eq!(parse_rewrites(text, "x", 1), ["How do crawlers back off?"]);
    }

    #[test]
    fn the_prompt_is_filled_once() {
        let filled = fill(
            SYSTEM_PROMPT,
            &[("author", "Ada {context}"), ("context", "[1] a text")],
        );
        assert!(filled.contains("twin of Ada {context}"), "{filled}");
        assert!(filled.trim_end().ends_with("[1] a text"));
    }
}
