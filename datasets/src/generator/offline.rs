//! A generator that needs no LLM, so that the whole pipeline runs air-gapped. Instructions come
//! from the document's structure: its title, the heading a passage sits under, and the
//! passage's topic sentence; the rule is picked by a hash of the passage, so a build is
//! deterministic. Answers are always the author's own text. The rejected side of a preference
//! pair is a plain, generic answer assembled from the same topic: a stand-in with the wrong
//! style, until an LLM or our own base model answers instead.

use async_trait::async_trait;

use super::{Counter, Generated, Generator, GeneratorStats, Pair, Written};
use crate::source::{sentences, Passage};

const INSTRUCTION: &str = "offline/structure-v1";
const PAIRS: &str = "offline/extract-v1";
const PLAIN: &str = "offline/plain-v1";

/// The offline generator.
#[derive(Debug, Default)]
pub struct OfflineGenerator {
    stats: GeneratorStats,
}

impl OfflineGenerator {
    /// A new one.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A number from the passage, to pick one of several rules.
fn pick(passage: &Passage, n: usize) -> usize {
    let hash = crate::digest([passage.id.as_bytes()]);
    usize::from_str_radix(&hash[..8], 16).unwrap_or(0) % n.max(1)
}

/// `text` as a clause inside a sentence: no final stop, first letter lower-cased unless it
/// looks like a name or an acronym.
fn clause(text: &str) -> String {
    let text = text.trim().trim_end_matches(['.', '!', '?', ':', ';']);
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_uppercase() && second.is_lowercase() => {
            first.to_lowercase().chain(text.chars().skip(1)).collect()
        }
        _ => text.to_string(),
    }
}

fn instruction_for(passage: &Passage) -> String {
    let title = &passage.title;
    let topic = passage.topic_sentence();
    match (&passage.heading, pick(passage, 3)) {
        (Some(heading), 0) => {
            format!("Write the section \"{heading}\" of the article \"{title}\".")
        }
        (Some(heading), 1) => format!(
            "For the article \"{title}\", write a few paragraphs on {}.",
            clause(heading)
        ),
        (_, 2) | (None, 0) => format!(
            "Write a passage of the article \"{title}\" that starts from this idea: {}.",
            clause(&topic)
        ),
        _ => format!(
            "In the voice of {}, write about {} for the article \"{title}\".",
            passage.author,
            clause(&topic)
        ),
    }
}

#[async_trait]
impl Generator for OfflineGenerator {
    fn name(&self) -> String {
        "offline".into()
    }

    fn fingerprint(&self) -> String {
        format!("offline {INSTRUCTION} {PAIRS} {PLAIN}")
    }

    fn concurrency(&self) -> usize {
        64
    }

    fn stats(&self) -> &GeneratorStats {
        &self.stats
    }

    async fn instruction(&self, passage: &Passage) -> Generated<String> {
        self.stats.add(Counter::Requests, 1);
        Ok(Written {
            value: instruction_for(passage),
            prompt: INSTRUCTION,
        })
    }

    async fn pairs(&self, passage: &Passage) -> Generated<Vec<Pair>> {
        self.stats.add(Counter::Requests, 1);
        let about = passage.heading.as_deref().unwrap_or(&passage.title);
        let question = format!("What does {} say about {}?", passage.author, clause(about));
        // A long passage gives two pairs that do not overlap: its first half answers the
        // question, and its second half continues the first half's last sentence.
        let all = sentences(&passage.text);
        let pairs = match all.len() {
            n if n >= 4 => {
                let second = passage.text.find(all[n / 2]).unwrap_or(passage.text.len());
                vec![
                    Pair {
                        instruction: question,
                        answer: passage.text[..second].trim().to_string(),
                    },
                    Pair {
                        instruction: format!(
                            "Continue this thought from \"{}\": {}",
                            passage.title,
                            all[n / 2 - 1]
                        ),
                        answer: passage.text[second..].trim().to_string(),
                    },
                ]
            }
            _ => vec![Pair {
                instruction: question,
                answer: passage.text.clone(),
            }],
        };
        Ok(Written {
            value: pairs,
            prompt: PAIRS,
        })
    }

    async fn plain_answer(&self, _instruction: &str, passage: &Passage) -> Generated<String> {
        self.stats.add(Counter::Requests, 1);
        let about = clause(passage.heading.as_deref().unwrap_or(&passage.title));
        Ok(Written {
            value: format!(
                "Here is a general overview of {about}. {} There are several factors to \
                 consider, and the right approach depends on your specific situation and goals. \
                 In summary, {about} is a broad topic, and it is worth consulting additional \
                 resources to learn more.",
                passage.topic_sentence()
            ),
            prompt: PLAIN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(heading: Option<&str>) -> Passage {
        Passage {
            id: "p1".into(),
            document_id: "d".into(),
            title: "Logs All the Way Down".into(),
            heading: heading.map(str::to_string),
            author: "Ann Writer".into(),
            text: "Logs keep order. Offsets say where a reader is. Replays rebuild. That is all."
                .into(),
            chunk_ids: vec!["c".into()],
        }
    }

    #[tokio::test]
    async fn instructions_come_from_the_structure_and_answers_are_the_authors_text() {
        let g = OfflineGenerator::new();
        let p = passage(Some("Why logs"));
        let instruction = g.instruction(&p).await.expect("instruction").value;
        assert!(
            instruction.contains("Logs All the Way Down"),
            "{instruction}"
        );
        assert_eq!(instruction, g.instruction(&p).await.expect("again").value);
        let pairs = g.pairs(&p).await.expect("pairs").value;
        assert_eq!(pairs.len(), 2);
        assert_eq!(
            pairs[0].answer,
            "Logs keep order. Offsets say where a reader is."
        );
        assert_eq!(pairs[1].answer, "Replays rebuild. That is all.");
        assert!(pairs[1]
            .instruction
            .ends_with(": Offsets say where a reader is."));
        let plain = g.plain_answer(&instruction, &p).await.expect("plain").value;
        assert!(plain.contains("why logs"), "{plain}");
        assert_eq!(g.stats().counts().requests, 4);
    }
}
