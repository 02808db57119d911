//! Document fixtures: small raw documents and chunks for contract tests, and a corpus of real
//! articles for end-to-end tests and benchmarks.

use std::collections::BTreeMap;
use std::path::PathBuf;

use twin_schemas::{
    content_hash, document_id, Author, BlockKind, Chunk, ChunkId, ContentBlock, DocumentKind,
    RawDocument,
};

/// The author every fixture is written by.
pub fn author() -> Author {
    Author {
        id: "paul".into(),
        full_name: "Paul".into(),
    }
}

/// A Substack article `id` of one paragraph, published at 1,700,000,000,000 ms.
pub fn article(id: &str, text: &str) -> RawDocument {
    let content = vec![ContentBlock::paragraph(text)];
    RawDocument {
        id: id.into(),
        kind: DocumentKind::Article,
        platform: "substack".into(),
        author: author(),
        url: format!("https://x.substack.com/p/{id}"),
        title: format!("Title of {id}"),
        published_at: Some(1_700_000_000_000),
        crawled_at: 1_764_000_000_000,
        content_hash: content_hash(&content),
        content,
        metadata: BTreeMap::from([("subtitle".to_string(), "sub".to_string())]),
    }
}

/// A Substack article as a crawler emits it: a heading "About SLUG", then one paragraph block
/// per paragraph; its id derives from its url, as the crawlers derive it.
pub fn substack_article(slug: &str, paragraphs: &[&str]) -> RawDocument {
    let mut content = vec![ContentBlock {
        level: 1,
        ..ContentBlock::new(BlockKind::Heading, format!("About {slug}"))
    }];
    content.extend(paragraphs.iter().map(|p| ContentBlock::paragraph(*p)));
    let url = format!("https://paul.substack.com/p/{slug}");
    RawDocument {
        id: document_id("substack", &url),
        kind: DocumentKind::Article,
        platform: "substack".into(),
        author: Author {
            id: "paul".into(),
            full_name: "Paul Iusztin".into(),
        },
        url,
        title: format!("About {slug}"),
        published_at: Some(1_700_000_000_000),
        crawled_at: 1_764_000_000_000,
        content_hash: content_hash(&content),
        content,
        metadata: BTreeMap::new(),
    }
}

/// The chunks of article `document_id`, one per text, in order.
pub fn chunks(document_id: &str, texts: &[&str]) -> Vec<Chunk> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| Chunk {
            id: ChunkId::new(document_id, i as i32, text).into(),
            document_id: document_id.into(),
            kind: DocumentKind::Article,
            platform: "substack".into(),
            author: author(),
            url: format!("https://x.substack.com/p/{document_id}"),
            title: "t".into(),
            published_at: Some(1_700_000_000_000),
            position: i as i32,
            text: text.to_string(),
            token_count: 3,
            document_hash: "h".into(),
            chunked_at: 1,
        })
        .collect()
}

/// Where the shared corpus of 76 real articles is, when this workplace has it.
pub fn corpus_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/articles.json")
}

/// The 76 real articles of `../shared/corpus/articles.json` (Substack, Medium, a blog) as raw
/// documents, one paragraph block per blank-line-separated paragraph. Where that file is absent
/// (outside this workplace), 76 generated articles of the same shape, so tests still run.
pub fn corpus() -> Vec<RawDocument> {
    let articles: Vec<serde_json::Value> = std::fs::read_to_string(corpus_file())
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(generated_articles);
    articles
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let text = a["content"]["Content"].as_str().unwrap_or_default();
            let content: Vec<ContentBlock> = text
                .split("\n\n")
                .filter(|p| !p.trim().is_empty())
                .map(ContentBlock::paragraph)
                .collect();
            let platform = a["platform"].as_str().unwrap_or("web").to_string();
            let url = a["link"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("https://example.org/{i}"));
            RawDocument {
                id: document_id(&platform, &url),
                kind: DocumentKind::Article,
                platform,
                author: Author {
                    id: "author".into(),
                    full_name: a["author_full_name"].as_str().unwrap_or("Author").into(),
                },
                url,
                title: a["content"]["Title"].as_str().unwrap_or("Untitled").into(),
                published_at: None,
                crawled_at: 1_764_000_000_000,
                content_hash: content_hash(&content),
                content,
                metadata: BTreeMap::new(),
            }
        })
        .collect()
}

fn generated_articles() -> Vec<serde_json::Value> {
    (0..76)
        .map(|i| {
            let body: Vec<String> = (0..12)
                .map(|p| {
                    format!(
                        "Paragraph {p} of article {i} explains streaming pipelines, vector search \
                         and fine-tuning in some detail."
                    )
                })
                .collect();
            serde_json::json!({
                "content": {"Title": format!("Article {i}"), "Content": body.join("\n\n")},
                "platform": "generated",
                "author_full_name": "Generated Author",
                "link": format!("https://example.org/{i}"),
            })
        })
        .collect()
}

/// The corpus cut for retrieval checks: passages of at most `words` words, each article cut on
/// its own (its last passage shorter), and the articles' titles, to search them with.
pub struct Passages {
    /// Every article's passages, article after article.
    pub passages: Vec<String>,
    /// One query per article: its title.
    pub titles: Vec<String>,
}

/// [`corpus`] cut into [`Passages`] of at most `words` words.
pub fn corpus_passages(words: usize) -> Passages {
    let documents = corpus();
    let mut passages = Vec::new();
    for document in &documents {
        let text: Vec<&str> = document
            .content
            .iter()
            .flat_map(|block| block.text.split_whitespace())
            .collect();
        passages.extend(text.chunks(words.max(1)).map(|piece| piece.join(" ")));
    }
    Passages {
        passages,
        titles: documents.into_iter().map(|d| d.title).collect(),
    }
}
