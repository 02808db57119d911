//! The clean and chunk stages on realistic documents, with the real tokenizer of the embedding
//! model. Golden files (`testdata/*.golden.json`) hold the expected output; run with
//! `TWIN_BLESS=1` to rewrite them after an intended change, and review the diff.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use tokenizers::Tokenizer;
use twin_config::{ChunkingConfig, TemplateConfig};
use twin_schemas::ChunkId;
use twin_schemas::{
    content_hash, document_id, Author, BlockKind, CleanedDocument, ContentBlock, DocumentKind,
    RawDocument,
};
use twin_stream::clean::{clean_text, clean_without};
use twin_stream::template::Templates;
use twin_stream::{clean, Chunker};

const WINDOW: usize = 256;

fn tokenizer() -> Tokenizer {
    let path = twin_embedding::model::tool_cache()
        .expect("tool cache")
        .join("models/sentence-transformers/all-MiniLM-L6-v2/tokenizer.json");
    let mut tokenizer = Tokenizer::from_file(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
    // tokenizer.json truncates and pads to 128; count the text itself.
    tokenizer.with_truncation(None).expect("no truncation");
    tokenizer.with_padding(None);
    tokenizer
}

fn block(kind: BlockKind, text: &str, level: i32) -> ContentBlock {
    ContentBlock {
        level,
        ..ContentBlock::new(kind, text)
    }
}

/// A Medium-like article: headings, long prose, a list, code, boilerplate, tracking links,
/// LinkedIn-style bold letters.
fn article() -> RawDocument {
    let prose = "Streaming pipelines keep features fresh. They read events from a log, transform them and write \
        projections. Each projection can be rebuilt from the log at any time. That is the point of event \
        sourcing: the log is the truth. ";
    let mut code = ContentBlock::new(
        BlockKind::Code,
        "fn main() {\n    let log = open(\"./.twin\");\n\n\tlog.replay();\n}\n",
    );
    code.language = Some("rust".into());
    let content = vec![
        block(BlockKind::Heading, "Why 𝗲𝘃𝗲𝗻𝘁 𝘀𝗼𝘂𝗿𝗰𝗶𝗻𝗴?", 1),
        ContentBlock::paragraph(prose.repeat(6)),
        ContentBlock::paragraph("Read more at https://example.com/post?utm_source=newsletter&utm_medium=email&id=7 today."),
        block(BlockKind::Heading, "How it works", 2),
        block(BlockKind::ListItem, "Crawl   the sources.", 1),
        block(BlockKind::ListItem, "Clean, chunk\u{200B} and embed.", 1),
        code,
        ContentBlock::paragraph(prose.repeat(3)),
        ContentBlock::paragraph("Thanks for reading Decoding ML! Subscribe for free to receive new posts and support my work."),
        ContentBlock::paragraph("Share"),
    ];
    let url = "https://medium.com/@paul/why-event-sourcing";
    RawDocument {
        id: document_id("medium", url),
        kind: DocumentKind::Article,
        platform: "medium".into(),
        author: Author {
            id: "paul".into(),
            full_name: "Paul Iusztin".into(),
        },
        url: format!("{url}?source=rss----1"),
        title: "Why  event sourcing".into(),
        published_at: Some(1_700_000_000_000),
        crawled_at: 1_764_000_000_000,
        content_hash: content_hash(&content),
        content,
        metadata: BTreeMap::new(),
    }
}

fn golden(name: &str, actual: &serde_json::Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(format!("{name}.golden.json"));
    let rendered = serde_json::to_string_pretty(actual).expect("json") + "\n";
    if std::env::var_os("TWIN_BLESS").is_some() {
        std::fs::write(&path, &rendered).expect("bless");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with TWIN_BLESS=1 to write it)",
            path.display()
        )
    });
    // Compare values, not text: key order depends on serde_json features the workspace unifies.
    let expected: serde_json::Value = serde_json::from_str(&expected).expect("golden json");
    assert!(
        *actual == expected,
        "{} differs (TWIN_BLESS=1 rewrites it); now:\n{rendered}",
        path.display()
    );
}

fn cleaned_article() -> CleanedDocument {
    clean(&article(), 1_764_000_000_100)
}

#[test]
fn cleaning_an_article_matches_its_golden_file() {
    let cleaned = cleaned_article();
    assert_eq!(cleaned.title, "Why event sourcing");
    assert_eq!(cleaned.url, "https://medium.com/@paul/why-event-sourcing");
    assert_eq!(cleaned.content[0].text, "Why event sourcing?");
    assert!(cleaned
        .content
        .iter()
        .all(|b| !b.text.contains("Subscribe") && b.text != "Share"));
    let code = cleaned
        .content
        .iter()
        .find(|b| b.kind == BlockKind::Code)
        .expect("code kept");
    assert_eq!(code.text, article().content[6].text, "code byte for byte");
    assert_eq!(cleaned.content_hash, content_hash(&cleaned.content));
    golden(
        "article.cleaned",
        &serde_json::to_value(&cleaned).expect("json"),
    );
}

#[test]
fn chunks_fit_the_window_follow_sentences_and_overlap() {
    let tokenizer = tokenizer();
    let chunker =
        Chunker::new(tokenizer.clone(), ChunkingConfig::default(), WINDOW).expect("chunker");
    let doc = cleaned_article();
    let chunks = chunker.chunk(&doc, 1_764_000_000_200).expect("chunk");
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        let with_specials = tokenizer
            .encode(chunk.text.as_str(), true)
            .expect("tokenize")
            .len();
        assert!(
            with_specials <= WINDOW,
            "chunk {i} has {with_specials} tokens"
        );
        assert_eq!(chunk.token_count as usize + 2, with_specials);
        assert_eq!(chunk.position, i as i32);
        assert_eq!(
            chunk.id,
            ChunkId::new(&doc.id, chunk.position, &chunk.text).as_str()
        );
        assert_eq!(chunk.document_hash, doc.content_hash);
        // Prose chunks end at the end of a sentence (or of a code line).
        let last = chunk.text.trim_end().chars().last().expect("text");
        assert!(
            matches!(last, '.' | '?' | '!' | '}' | ';' | ')'),
            "chunk {i} ends mid-sentence: {:?}",
            chunk.text
        );
    }
    // Overlap: a chunk that continues prose starts with the previous chunk's last sentences.
    let overlap = |a: &str, b: &str| {
        b.char_indices()
            .map(|(i, _)| i)
            .chain([b.len()])
            .filter(|&n| n > 0 && a.ends_with(&b[..n]))
            .max()
            .unwrap_or(0)
    };
    let overlaps: Vec<usize> = chunks
        .windows(2)
        .map(|w| overlap(&w[0].text, &w[1].text))
        .collect();
    assert!(
        overlaps.iter().any(|&n| n > 20),
        "no chunk overlaps the one before: {overlaps:?}"
    );
    // Urls survive sentence splitting.
    assert!(chunks
        .iter()
        .any(|c| c.text.contains("https://example.com/post?id=7")));
    // Sections start chunks: the second heading opens one.
    assert!(chunks.iter().any(|c| c.text.starts_with("How it works")));
    // Code keeps its whitespace inside the chunk.
    assert!(chunks.iter().any(|c| c
        .text
        .contains("fn main() {\n    let log = open(\"./.twin\");\n\n\tlog.replay();\n}")));
    golden(
        "article.chunks",
        &serde_json::json!(chunks.iter().map(|c| serde_json::json!({"position": c.position, "tokens": c.token_count, "text": c.text})).collect::<Vec<_>>()),
    );
    // Deterministic: the same document gives the same chunks.
    let again = chunker.chunk(&doc, 1).expect("chunk");
    assert_eq!(
        again.iter().map(|c| &c.id).collect::<Vec<_>>(),
        chunks.iter().map(|c| &c.id).collect::<Vec<_>>()
    );
}

#[test]
fn a_sentence_longer_than_a_chunk_is_cut_at_token_boundaries() {
    let tokenizer = tokenizer();
    let chunker =
        Chunker::new(tokenizer.clone(), ChunkingConfig::default(), WINDOW).expect("chunker");
    let endless = "word ".repeat(1000);
    let mut doc = cleaned_article();
    doc.content = vec![ContentBlock::paragraph(endless.trim())];
    let chunks = chunker.chunk(&doc, 1).expect("chunk");
    assert!(chunks.len() >= 4);
    assert!(chunks
        .iter()
        .all(|c| tokenizer.encode(c.text.as_str(), true).expect("t").len() <= WINDOW));
    let words: usize = chunks
        .iter()
        .map(|c| c.text.split_whitespace().count())
        .sum();
    assert_eq!(
        words, 1000,
        "nothing lost, nothing repeated when cutting inside a sentence"
    );
}

#[test]
fn posts_and_repositories_follow_their_own_rules() {
    let tokenizer = tokenizer();
    let chunker =
        Chunker::new(tokenizer.clone(), ChunkingConfig::default(), WINDOW).expect("chunker");
    let mut post = cleaned_article();
    post.kind = DocumentKind::Post;
    let post_chunks = chunker.chunk(&post, 1).expect("chunk");
    assert!(post_chunks.iter().all(|c| c.token_count <= 128));

    let mut repo = cleaned_article();
    repo.kind = DocumentKind::Repository;
    let source: String = (0..200)
        .map(|i| format!("    let value_{i} = compute({i}, \"x\");\n"))
        .collect();
    let mut file = ContentBlock::new(BlockKind::File, &source);
    file.path = Some("src/lib.rs".into());
    repo.content = vec![file];
    let repo_chunks = chunker.chunk(&repo, 1).expect("chunk");
    assert!(repo_chunks.len() > 1);
    assert!(repo_chunks[0].text.starts_with("// src/lib.rs\n"));
    // Code is cut between lines, without overlap: the lines come back exactly, in order.
    let lines: Vec<&str> = repo_chunks
        .iter()
        .flat_map(|c| c.text.lines())
        .filter(|l| !l.starts_with("// src/lib.rs"))
        .collect();
    assert_eq!(lines, source.lines().collect::<Vec<_>>());
}

/// Substack's page chrome as the shared corpus saved it with every post: share bar, comment
/// section, footer.
const SUBSTACK_CHROME: &[&str] = &[
    "SubscribeSign in",
    "Share this post",
    "Copy link",
    "Facebook",
    "Email",
    "Note",
    "Other",
    "Share",
    "PreviousNext",
    "#### Discussion about this post",
    "Comments",
    "Restacks",
    "Top",
    "Latest",
    "Discussions",
    "No posts",
    "Ready for more?",
    "Subscribe",
    "Privacy ∙ Terms ∙ Collection notice",
    "Start WritingGet the app",
    "Substack is the home for great culture",
    "This site requires JavaScript to run correctly. Please turn on JavaScript or\nunblock scripts",
];

#[test]
fn templates_of_the_shared_corpus_go_and_the_writing_stays() {
    let file = twin_testkit::documents::corpus_file();
    if !file.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing under CI",
            file.display()
        );
        eprintln!("SKIPPED: no shared corpus at {}", file.display());
        return;
    }
    let docs = twin_testkit::documents::corpus();
    let mut templates = Templates::new(TemplateConfig::default());
    for doc in &docs {
        templates.observe(&doc.id, Some(doc));
    }
    // How many documents of its source hold each cleaned block.
    let mut held: HashMap<(String, String), usize> = HashMap::new();
    let mut per_source: HashMap<String, usize> = HashMap::new();
    for doc in &docs {
        let source = Templates::source_of(doc);
        *per_source.entry(source.clone()).or_default() += 1;
        let texts: HashSet<String> = doc.content.iter().map(|b| clean_text(&b.text)).collect();
        for text in texts {
            *held.entry((source.clone(), text)).or_default() += 1;
        }
    }
    let chrome: HashSet<String> = SUBSTACK_CHROME.iter().map(|c| clean_text(c)).collect();
    let mut dropped: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut with_chrome_before = 0;
    for doc in &docs {
        let source = Templates::source_of(doc);
        let template = templates.template_blocks(doc);
        let cleaned = clean_without(doc, 0, &template);
        let kept: HashSet<&str> = cleaned.content.iter().map(|b| b.text.as_str()).collect();
        let plain_list: Vec<String> = clean(doc, 0).content.into_iter().map(|b| b.text).collect();
        let plain: HashSet<String> = plain_list.iter().cloned().collect();
        if plain
            .iter()
            .any(|t| t == &clean_text("Privacy ∙ Terms ∙ Collection notice"))
        {
            with_chrome_before += 1;
        }
        for line in &chrome {
            assert!(
                !kept.contains(line.as_str()),
                "{line:?} survives in {}",
                doc.url
            );
        }
        // Counters beside the chrome (likes, comments) go with it.
        for (i, is_template) in template.iter().enumerate() {
            let text = clean_text(&doc.content[i].text);
            let beside_chrome = [i.wrapping_sub(1), i + 1]
                .iter()
                .filter_map(|&j| doc.content.get(j))
                .any(|b| chrome.contains(&clean_text(&b.text)));
            if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) && beside_chrome {
                assert!(
                    is_template,
                    "counter {text:?} beside the chrome stays in {}",
                    doc.url
                );
            }
        }
        // The author's own paragraphs: what plain cleaning keeps, at least 40 characters, held
        // by fewer than half of the source's documents, once in the page (not the title a share
        // card repeats: the title heading itself stays).
        let documents = per_source[&source];
        let title = clean_text(&doc.title);
        // Headings may break the title differently ("fine- tuning"): compare letters only.
        let letters = |t: &str| {
            t.chars()
                .filter(|c| c.is_alphanumeric())
                .collect::<String>()
        };
        let is_title = |t: &str| {
            let t = letters(t);
            t.len() >= 10 && letters(&title).starts_with(&t)
        };
        let once = |t: &str| plain_list.iter().filter(|p| p.as_str() == t).count() == 1;
        assert!(
            !plain.iter().any(|t| is_title(t)) || kept.iter().any(|t| is_title(t)),
            "the title heading goes in {}",
            doc.url
        );
        for text in &plain {
            let own = text.chars().count() >= 40
                && once(text)
                && held
                    .get(&(source.clone(), text.clone()))
                    .copied()
                    .unwrap_or(0)
                    * 2
                    < documents;
            assert!(
                !own || kept.contains(text.as_str()),
                "lost from {}: {text:?}",
                doc.url
            );
        }
        for (block, is_template) in doc.content.iter().zip(&template) {
            if *is_template {
                dropped
                    .entry(source.clone())
                    .or_default()
                    .insert(clean_text(&block.text));
            }
        }
    }
    assert_eq!(
        with_chrome_before, 69,
        "the corpus as the issue describes it"
    );
    // What it saves downstream: chunks embedded (and later trained on).
    let chunker = Chunker::new(tokenizer(), ChunkingConfig::default(), WINDOW).expect("chunker");
    let (mut before, mut after, mut tokens) = (0, 0, 0);
    for doc in &docs {
        before += chunker.chunk(&clean(doc, 0), 0).expect("chunks").len();
        let cleaned = clean_without(doc, 0, &templates.template_blocks(doc));
        let chunks = chunker.chunk(&cleaned, 0).expect("chunks");
        after += chunks.len();
        tokens += chunks.iter().map(|c| c.token_count as usize).sum::<usize>();
    }
    eprintln!(
        "corpus: {before} chunks without template removal, {after} with ({} tokens on average)",
        tokens / after.max(1)
    );
    assert!(after < before, "templates removed, fewer chunks");
    // What is dropped, per source, for review: numbers (counters) and titles in share cards
    // vary, so only the blocks held by at least two documents are listed.
    let listed: BTreeMap<String, Vec<String>> = dropped
        .into_iter()
        .map(|(source, blocks)| {
            let blocks = blocks
                .into_iter()
                .filter(|b| held.get(&(source.clone(), b.clone())).copied().unwrap_or(0) >= 2)
                .collect();
            (source, blocks)
        })
        .collect();
    golden(
        "corpus.templates",
        &serde_json::to_value(listed).expect("json"),
    );
}
