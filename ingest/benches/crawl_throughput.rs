//! Crawl throughput: 1,000 article pages from a local server, crawled onto the embedded event
//! log with the defaults that matter (robots.txt checked, conditional GETs, main-content
//! extraction, one event per page), then crawled again when nothing changed (all 304).
//!
//! `cargo bench -p twin-ingest --bench crawl_throughput` (or `scripts/bench.sh crawl`).
//! `PAGES` and `CONCURRENCY` override the page count (1,000) and pages in flight (8). The page
//! bodies are the articles of `../shared/corpus/articles.json` when it is there, else
//! generated text of a similar size.

use std::time::Instant;

use tokio_util::sync::CancellationToken;
use twin_config::{SourceConfig, TwinConfig};
use twin_ingest::{Ingest, Progress, SourceReport};
use twin_testkit::{FixtureServer, Route};

fn main() {
    let pages: usize = env_or("PAGES", 1_000);
    let concurrency: usize = env_or("CONCURRENCY", 8);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(pages, concurrency));
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Article texts: the shared corpus if present, else generated paragraphs.
fn bodies() -> (Vec<String>, &'static str) {
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/articles.json");
    if let Ok(text) = std::fs::read_to_string(&corpus) {
        if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(&text) {
            let bodies: Vec<String> = items
                .iter()
                .filter_map(|a| a["content"]["Content"].as_str().map(str::to_string))
                .filter(|c| !c.is_empty())
                .collect();
            if !bodies.is_empty() {
                return (bodies, "the 76-article corpus");
            }
        }
    }
    let paragraph = "Streaming pipelines keep an LLM twin's knowledge fresh: crawled documents \
                     become events, events become chunks, chunks become vectors. ";
    (vec![paragraph.repeat(60)], "generated text")
}

fn page(title: &str, body: &str) -> String {
    let paragraphs: String = body
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .map(|p| format!("<p>{}</p>\n", html_escape(p)))
        .collect();
    format!(
        "<!doctype html><html><head><title>{title}</title><meta property=\"og:title\" content=\"{title}\">\
         <meta property=\"article:published_time\" content=\"2024-01-15T08:00:00Z\"></head><body>\
         <header><nav><a href=\"/\">Home</a><a href=\"/about\">About</a></nav></header>\
         <main><article><h1>{title}</h1>{paragraphs}</article>\
         <section class=\"comments\"><p>Nice!</p></section></main><footer><p>© 2024</p></footer></body></html>"
    )
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn bench(pages: usize, concurrency: usize) {
    let server = FixtureServer::start().await.expect("server");
    let (bodies, origin) = bodies();
    let mut urls = Vec::with_capacity(pages);
    let mut bytes = 0usize;
    for i in 0..pages {
        let path = format!("/blog/article-{i}");
        let html = page(&format!("Article {i}"), &bodies[i % bodies.len()]);
        bytes += html.len();
        server.put(&path, Route::html(html));
        urls.push(server.url(&path));
    }
    server.put(
        "/robots.txt",
        Route::ok("text/plain", "User-agent: *\nDisallow: /private/\n"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = TwinConfig {
        data_dir: dir.path().to_path_buf(),
        ..TwinConfig::default()
    };
    config.ingest.http.requests_per_second = 0.0;
    config.ingest.http.concurrency = concurrency;
    config.ingest.sources = vec![SourceConfig {
        url: Some(urls[0].clone()),
        platform: Some("web".into()),
        articles: urls[1..].to_vec(),
        ..SourceConfig::default()
    }];
    let log = twin_eventlog::open(&config).expect("log");
    println!(
        "crawl_throughput: {pages} pages ({} KB of HTML, bodies from {origin}), {concurrency} in flight, embedded log, one host without a rate limit",
        bytes / 1024
    );
    for (pass, expect) in [
        ("first pass (all new)", "new"),
        ("second pass (unchanged, 304)", "unchanged"),
    ] {
        let ingest = Ingest::new(
            &config,
            log.clone(),
            Progress::hidden(),
            CancellationToken::new(),
        )
        .expect("ingest");
        let started = Instant::now();
        let reports = ingest.run_once().await;
        let seconds = started.elapsed().as_secs_f64();
        let report: &SourceReport = &reports[0];
        let counted = match expect {
            "new" => report.tally.new,
            _ => report.tally.unchanged,
        };
        assert_eq!(
            counted as usize,
            pages,
            "{report}: {:?}",
            report.errors.first()
        );
        println!(
            "  {pass:<30} {:>8.1} documents/s   ({pages} in {seconds:.2} s)",
            pages as f64 / seconds
        );
    }
}
