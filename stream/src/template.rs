//! Page templates: the blocks a source repeats on (nearly) every page — share bars, "Ready for
//! more? Subscribe", footers, "Privacy ∙ Terms ∙ Collection notice" — which are not the author's
//! writing and must not be embedded or become training text.
//!
//! [`Templates`] counts, per source (a platform and a host: one publication), how many documents
//! hold each short block. A block is template when at least `min_documents` documents of the
//! source hold it and they are at least `min_share` of the source's documents; the thresholds
//! are high so that an author's own habits (a sign-off in half the posts, a "Conclusion"
//! heading) stay. Around template blocks, two kinds of chrome that vary per page go too: counters
//! (a like or comment count beside a share bar) and a block the page repeats caught between
//! template blocks (the title in the share cards above and below a post); the author's text
//! between template blocks stays.
//!
//! The counts change as documents arrive, so whether a block is template can change too; the
//! worker then cleans again the documents that hold it ([`Templates::observe`] says which), so
//! that every document is always cleaned with the counts of everything seen, whatever the order
//! and batching of the log: a replay gives the same result.

use std::collections::{BTreeSet, HashMap, HashSet};

use sha2::{Digest, Sha256};
use twin_config::TemplateConfig;
use twin_schemas::{BlockKind, ContentBlock, RawDocument};

use crate::clean::clean_text;

/// A block's text, hashed.
type Fingerprint = [u8; 16];

/// What one source holds.
#[derive(Debug, Default)]
struct Source {
    /// Documents of the source.
    documents: usize,
    /// The documents holding each block.
    holders: HashMap<Fingerprint, HashSet<String>>,
}

/// Block counts per source, and the blocks each document contributed.
#[derive(Debug)]
pub struct Templates {
    rules: TemplateConfig,
    sources: HashMap<String, Source>,
    /// Each document's source and distinct candidate blocks.
    documents: HashMap<String, (String, Vec<Fingerprint>)>,
}

impl Templates {
    /// No documents seen yet.
    pub fn new(rules: TemplateConfig) -> Self {
        Self {
            rules,
            sources: HashMap::new(),
            documents: HashMap::new(),
        }
    }

    /// Documents counted.
    pub fn documents(&self) -> usize {
        self.documents.len()
    }

    /// The source of a document: its platform and its url's host (one publication).
    pub fn source_of(doc: &RawDocument) -> String {
        let host = url::Url::parse(&doc.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .unwrap_or_default();
        format!("{}/{host}", doc.platform)
    }

    /// Count a document (again, if it changed: its earlier blocks are forgotten first), or
    /// forget it (`None`, a tombstone). Returns the other documents whose cleaning changes,
    /// because a block they hold became template or stopped being template.
    pub fn observe(&mut self, id: &str, doc: Option<&RawDocument>) -> BTreeSet<String> {
        let old_source = self.documents.get(id).map(|(s, _)| s.clone());
        let new_source = doc.map(Self::source_of);
        let touched: Vec<String> = old_source.iter().chain(&new_source).cloned().collect();
        let before: Vec<HashSet<Fingerprint>> =
            touched.iter().map(|s| self.template_set(s)).collect();
        if let Some((source, blocks)) = self.documents.remove(id) {
            if let Some(stats) = self.sources.get_mut(&source) {
                stats.documents = stats.documents.saturating_sub(1);
                for block in blocks {
                    if let Some(holders) = stats.holders.get_mut(&block) {
                        holders.remove(id);
                        if holders.is_empty() {
                            stats.holders.remove(&block);
                        }
                    }
                }
            }
        }
        if let (Some(doc), Some(source)) = (doc, new_source) {
            let blocks = self.candidates(doc);
            let stats = self.sources.entry(source.clone()).or_default();
            stats.documents += 1;
            for block in &blocks {
                stats
                    .holders
                    .entry(*block)
                    .or_default()
                    .insert(id.to_string());
            }
            self.documents.insert(id.to_string(), (source, blocks));
        }
        let mut affected = BTreeSet::new();
        for (source, before) in touched.iter().zip(before) {
            let after = self.template_set(source);
            let Some(stats) = self.sources.get(source) else {
                continue;
            };
            for changed in before.symmetric_difference(&after) {
                if let Some(holders) = stats.holders.get(changed) {
                    affected.extend(holders.iter().filter(|h| *h != id).cloned());
                }
            }
        }
        affected
    }

    /// Which blocks of `doc` are template, block by block.
    pub fn template_blocks(&self, doc: &RawDocument) -> Vec<bool> {
        let texts: Vec<Option<String>> = doc.content.iter().map(prose).collect();
        if !self.rules.enabled {
            return vec![false; texts.len()];
        }
        let source = self.sources.get(&Self::source_of(doc));
        let mut template: Vec<bool> = texts
            .iter()
            .map(|text| match (text, source) {
                (Some(text), Some(source)) => {
                    self.is_candidate(text) && self.holds_template(source, &fingerprint(text))
                }
                _ => false,
            })
            .collect();
        // Chrome that varies per page sits inside the template: counters beside it, and a block
        // the page repeats (the title in its share cards) caught between two template blocks.
        // The title's own heading appears once, and stays.
        let near_template = |template: &[bool], i: usize| -> (bool, bool) {
            let before = i > 0 && template[i - 1];
            let after = i + 1 < template.len() && template[i + 1];
            (before, after)
        };
        for i in 0..template.len() {
            if let Some(text) = &texts[i] {
                let (before, after) = near_template(&template, i);
                if !template[i] && is_counter(text) && (before || after) {
                    template[i] = true;
                }
            }
        }
        let repeated = |text: &str| texts.iter().flatten().filter(|t| *t == text).count() > 1;
        for i in 0..template.len() {
            if let Some(text) = &texts[i] {
                let (before, after) = near_template(&template, i);
                if !template[i] && before && after && repeated(text) {
                    template[i] = true;
                }
            }
        }
        template
    }

    fn is_candidate(&self, text: &str) -> bool {
        !text.is_empty() && text.chars().count() <= self.rules.max_block_chars
    }

    fn holds_template(&self, source: &Source, block: &Fingerprint) -> bool {
        let holders = source.holders.get(block).map_or(0, HashSet::len);
        holders >= self.rules.min_documents.max(1)
            && holders as f64 >= self.rules.min_share * source.documents as f64
    }

    fn template_set(&self, source: &str) -> HashSet<Fingerprint> {
        let Some(stats) = self.sources.get(source) else {
            return HashSet::new();
        };
        stats
            .holders
            .keys()
            .filter(|b| self.holds_template(stats, b))
            .copied()
            .collect()
    }

    /// The distinct fingerprints of a document's short prose blocks.
    fn candidates(&self, doc: &RawDocument) -> Vec<Fingerprint> {
        let distinct: BTreeSet<Fingerprint> = doc
            .content
            .iter()
            .filter_map(prose)
            .filter(|t| self.is_candidate(t))
            .map(|t| fingerprint(&t))
            .collect();
        distinct.into_iter().collect()
    }
}

/// A block's text as the clean stage leaves it; `None` for code and files, never template.
fn prose(block: &ContentBlock) -> Option<String> {
    match block.kind {
        BlockKind::Code | BlockKind::File => None,
        _ => Some(clean_text(&block.text)),
    }
}

fn fingerprint(text: &str) -> Fingerprint {
    let digest = Sha256::digest(text.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// A like or comment counter: a number, maybe abbreviated (`14`, `1.2K`).
fn is_counter(text: &str) -> bool {
    let bare = text.trim_end_matches(['K', 'k', 'M']);
    !bare.is_empty()
        && bare.len() <= 8
        && bare
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
        && bare.chars().any(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use twin_schemas::{content_hash, Author, DocumentKind};

    fn page(n: usize, host: &str, body: &[&str]) -> RawDocument {
        let content: Vec<ContentBlock> = body.iter().map(|t| ContentBlock::paragraph(*t)).collect();
        RawDocument {
            id: format!("{host}-{n}"),
            kind: DocumentKind::Article,
            platform: "substack".into(),
            author: Author {
                id: "a".into(),
                full_name: "A".into(),
            },
            url: format!("https://{host}/p/{n}"),
            title: format!("Post {n}"),
            published_at: None,
            crawled_at: 0,
            content_hash: content_hash(&content),
            content,
            metadata: BTreeMap::new(),
        }
    }

    fn rules() -> TemplateConfig {
        TemplateConfig {
            min_documents: 3,
            ..TemplateConfig::default()
        }
    }

    fn post(n: usize) -> RawDocument {
        let own = format!("The author's own paragraph number {n}, which no other post has.");
        let title = format!("Post {n}");
        let likes = format!("{}", 10 + n);
        page(
            n,
            "a.substack.com",
            &[
                "Share this post",
                &title,
                "Copy link",
                &own,
                &likes,
                "Share this post",
                &title,
                "Copy link",
                "Ready for more?",
            ],
        )
    }

    #[test]
    fn a_template_needs_enough_documents_and_then_takes_its_chrome_along() {
        let mut templates = Templates::new(rules());
        templates.observe("a.substack.com-0", Some(&post(0)));
        templates.observe("a.substack.com-1", Some(&post(1)));
        assert!(
            templates.template_blocks(&post(1)).iter().all(|t| !t),
            "two documents are not yet a template"
        );
        let affected = templates.observe("a.substack.com-2", Some(&post(2)));
        assert_eq!(
            affected.into_iter().collect::<Vec<_>>(),
            ["a.substack.com-0", "a.substack.com-1"],
            "the earlier documents are cleaned again"
        );
        // Share cards with the title, counter, footer: all template; the paragraph stays.
        assert_eq!(
            templates.template_blocks(&post(2)),
            [true, true, true, false, true, true, true, true, true]
        );
    }

    #[test]
    fn blocks_of_another_source_or_below_the_share_stay() {
        let mut templates = Templates::new(rules());
        for n in 0..3 {
            templates.observe(&format!("a.substack.com-{n}"), Some(&post(n)));
        }
        let elsewhere = page(9, "b.substack.com", &["Share this post", "Copy link"]);
        assert_eq!(templates.template_blocks(&elsewhere), [false, false]);
        // Seven more posts without the footer: 3 of 10 is below the share.
        for n in 3..10 {
            let doc = page(n, "a.substack.com", &[&format!("Only text {n}.")]);
            templates.observe(&doc.id, Some(&doc));
        }
        assert!(!templates.template_blocks(&post(0))[8]);
        // Forgetting them (tombstones) makes it template again.
        for n in 3..10 {
            templates.observe(&format!("a.substack.com-{n}"), None);
        }
        assert!(templates.template_blocks(&post(0))[8]);
    }

    #[test]
    fn counters_are_numbers() {
        for yes in ["14", "1.2K", "3,400"] {
            assert!(is_counter(yes), "{yes}");
        }
        for no in ["v1", "K", "", "14 likes"] {
            assert!(!is_counter(no), "{no}");
        }
    }
}
