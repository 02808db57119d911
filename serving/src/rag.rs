//! Retrieval-augmented prompts: the retrieved chunks packed into the system turn of the
//! model's chat template, whole and best first, numbered so that the answer can cite them,
//! as many as fit the model's context beside the conversation and the tokens asked for.
//! The prompt is `serving/prompts/rag-system.txt`.

use twin_chat::Message;

use crate::engine::{Engine, Prompt};
use crate::retrieval::Source;
use crate::ServingError;

/// The system prompt: `{author}` and `{context}` are filled in.
pub const SYSTEM_PROMPT: &str = include_str!("../prompts/rag-system.txt");

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
    engine: &Engine,
    author: &str,
    conversation: &[Message],
    sources: &[Source],
    max_tokens: usize,
) -> Result<Packed, ServingError> {
    let context = engine.info().context_length;
    let build = |used: &[Source]| -> Vec<Message> {
        let listed: Vec<String> = used
            .iter()
            .enumerate()
            .map(|(i, s)| format!("[{}] {} ({})\n{}", i + 1, s.title, s.url, s.text.trim()))
            .collect();
        let system = fill(SYSTEM_PROMPT, author, &listed.join("\n\n"));
        let mut messages = vec![Message::new("system", system.trim_end().to_string())];
        messages.extend(conversation.iter().cloned());
        messages
    };
    let fits = |messages: &[Message]| -> Result<Option<usize>, ServingError> {
        let tokens = engine.tokenize(&Prompt::Chat(messages.to_vec()))?.len();
        Ok((tokens + max_tokens <= context).then_some(tokens))
    };
    let mut used: Vec<Source> = Vec::new();
    let mut messages = build(&used);
    let Some(mut prompt_tokens) = fits(&messages)? else {
        let tokens = engine.tokenize(&Prompt::Chat(messages))?.len();
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

/// The prompt with `{author}` and `{context}` filled in, in one pass.
fn fill(template: &str, author: &str, context: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("{author}") {
            out.push_str(author);
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("{context}") {
            out.push_str(context);
            rest = tail;
        } else {
            out.push('{');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_is_filled_once() {
        let filled = fill(SYSTEM_PROMPT, "Ada {context}", "[1] a text");
        assert!(filled.contains("twin of Ada {context}"), "{filled}");
        assert!(filled.trim_end().ends_with("[1] a text"));
    }
}
