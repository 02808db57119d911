//! The crawlers against local servers that play Medium, Substack, GitHub (REST API and tarballs
//! of a real git repository), a blog, and a LinkedIn export ZIP, onto the real embedded event
//! log: what arrives, what a second run emits, and how every kind of trouble is reported.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Platforms, GITHUB_TOKEN, TRAIN_PY};
use tokio_util::sync::CancellationToken;
use twin_config::{SourceConfig, TwinConfig};
use twin_eventlog::EventLog;
use twin_ingest::{Ingest, Progress, SourceReport};
use twin_schemas::{BlockKind, DocumentKind, Event, RawDocument};
use twin_testkit::{FixtureServer, Route};

async fn crawl(config: &TwinConfig, log: &Arc<dyn EventLog>) -> Vec<SourceReport> {
    let ingest = Ingest::new(
        config,
        log.clone(),
        Progress::hidden(),
        CancellationToken::new(),
    )
    .expect("configuration accepted");
    ingest.run_once().await
}

fn report<'a>(reports: &'a [SourceReport], platform: &str) -> &'a SourceReport {
    reports
        .iter()
        .find(|r| r.source.starts_with(platform))
        .unwrap_or_else(|| panic!("no report for {platform}: {reports:#?}"))
}

fn documents(events: &[Event], platform: &str) -> Vec<RawDocument> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Raw(doc) if doc.platform == platform => Some(doc.clone()),
            _ => None,
        })
        .collect()
}

fn by_title<'a>(docs: &'a [RawDocument], title: &str) -> &'a RawDocument {
    docs.iter().find(|d| d.title == title).unwrap_or_else(|| {
        panic!(
            "no document titled {title:?} in {:?}",
            docs.iter().map(|d| &d.title).collect::<Vec<_>>()
        )
    })
}

fn texts(doc: &RawDocument) -> Vec<(BlockKind, &str)> {
    doc.content
        .iter()
        .map(|b| (b.kind, b.text.as_str()))
        .collect()
}

fn all_text(doc: &RawDocument) -> String {
    doc.content
        .iter()
        .map(|b| b.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A configuration with one web source at `url` and impatient HTTP.
fn web_config(data_dir: &std::path::Path, urls: &[String]) -> TwinConfig {
    let mut config = TwinConfig {
        data_dir: data_dir.to_path_buf(),
        ..TwinConfig::default()
    };
    config.log.partitions = 1;
    config.ingest.http.requests_per_second = 0.0;
    config.ingest.http.retries = 2;
    config.ingest.http.backoff_ms = 20;
    config.ingest.http.timeout_secs = 2.0;
    config.ingest.http.max_retry_after_secs = 5;
    config.ingest.sources = urls
        .iter()
        .map(|url| SourceConfig {
            url: Some(url.clone()),
            platform: Some("web".into()),
            ..SourceConfig::default()
        })
        .collect();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_arrives_as_events_with_the_right_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let platforms = Platforms::start(dir.path()).await;
    let config = platforms.config(&dir.path().join("data"));
    let log = twin_eventlog::open(&config).expect("log");
    let reports = crawl(&config, &log).await;
    for r in &reports {
        assert!(!r.failed(), "{r}: {:?}", r.errors);
    }
    let events = support::raw_events(log.as_ref(), &config).await;
    assert_eq!(
        events.len(),
        22,
        "3 medium + 14 substack + 3 linkedin + 1 github + 1 web"
    );
    for event in &events {
        let Event::Raw(doc) = event else {
            panic!("a first crawl emits no tombstones: {event:?}");
        };
        assert_eq!(doc.author.id, "paul");
        assert_eq!(doc.author.full_name, "Paul Iusztin");
        assert_eq!(doc.content_hash, twin_schemas::content_hash(&doc.content));
        assert_eq!(doc.id, twin_schemas::document_id(&doc.platform, &doc.url));
        assert!(!doc.content.is_empty(), "{} has content", doc.url);
    }

    // Medium: one article whole from the feed, one the feed truncates (from its page), one
    // older article the configuration names.
    let medium = documents(&events, "medium");
    assert_eq!(medium.len(), 3);
    let framework = by_title(
        &medium,
        "An End-to-End Framework for Production-Ready LLM Systems",
    );
    assert_eq!(
        framework.url,
        platforms
            .medium
            .url("/@paul/an-end-to-end-framework-b1e2f3")
    );
    assert_eq!(framework.kind, DocumentKind::Article);
    assert_eq!(framework.published_at, Some(1_710_151_351_000));
    assert_eq!(
        framework.metadata.get("tags").map(String::as_str),
        Some("llm,mlops")
    );
    assert_eq!(
        texts(framework),
        vec![
            (BlockKind::Heading, "Learn to build an LLM twin"),
            (BlockKind::Paragraph, "The architecture"),
            (
                BlockKind::Paragraph,
                "Building an LLM twin takes three pipelines: feature, training and inference."
            ),
            (BlockKind::Heading, "The feature pipeline"),
            (BlockKind::ListItem, "crawl"),
            (BlockKind::ListItem, "clean"),
            (BlockKind::ListItem, "normalise unicode"),
            (
                BlockKind::Code,
                "def chunk(text):\n    return text.split(\"\\n\\n\")"
            ),
            (BlockKind::Quote, "The log is the truth."),
        ]
    );
    let streaming = by_title(&medium, "Streaming Pipelines for LLMs");
    assert_eq!(
        streaming.metadata.get("subtitle").map(String::as_str),
        Some("Why batch is not enough")
    );
    assert_eq!(streaming.published_at, Some(1_708_419_600_000));
    let code = streaming
        .content
        .iter()
        .find(|b| b.kind == BlockKind::Code)
        .expect("code block");
    assert_eq!(code.text, "fn main() {\n    let events = log.replay();\n}");
    let text = all_text(streaming);
    assert!(text.contains("keeps the twin up to date"), "{text}");
    for furniture in ["Sign in", "More from", "5 min read", "About"] {
        assert!(
            !text.contains(furniture),
            "{furniture:?} is not content: {text}"
        );
    }
    by_title(&medium, "An Older Article");

    // Substack: the whole archive (two pages), the two latest from the feed, the rest from the
    // post API; a paid post is marked.
    let substack = documents(&events, "substack");
    assert_eq!(substack.len(), 14);
    let post = by_title(&substack, "Post number 5");
    assert_eq!(post.url, platforms.substack.url("/p/post-number-5"));
    assert_eq!(
        post.metadata.get("subtitle").map(String::as_str),
        Some("Subtitle 5")
    );
    assert_eq!(post.published_at, Some(1_704_546_087_553));
    assert_eq!(
        texts(post),
        vec![
            (
                BlockKind::Paragraph,
                "This is post-number-5, a Decoding ML issue about production ML."
            ),
            (BlockKind::Heading, "Why it matters"),
            (BlockKind::Paragraph, "Real-time features beat stale ones."),
            (BlockKind::Code, "pip install twin"),
        ]
    );
    assert_eq!(
        by_title(&substack, "Post number 3")
            .metadata
            .get("paywalled")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        platforms.substack.seen_at("/api/v1/archive").len(),
        2,
        "two archive pages"
    );
    assert_eq!(
        platforms.substack.seen_at("/api/v1/posts/").len(),
        12,
        "the feed's two need no post call"
    );

    // LinkedIn export: posts from Shares.csv (a reshare without words is not the author's, a
    // post for connections only is not public), the article from Articles/.
    let linkedin = documents(&events, "linkedin");
    assert_eq!(linkedin.len(), 3);
    assert!(
        !linkedin
            .iter()
            .any(|d| d.url.ends_with("7174000000000000004")),
        "a connections-only post was published"
    );
    let post = linkedin
        .iter()
        .find(|d| d.url.ends_with("7174000000000000001"))
        .expect("first post");
    assert_eq!(post.kind, DocumentKind::Post);
    assert_eq!(post.published_at, Some(1_710_511_331_000));
    assert_eq!(
        texts(post),
        vec![
            (BlockKind::Paragraph, "𝗟𝗟𝗠 𝘁𝘄𝗶𝗻𝘀, explained:"),
            (
                BlockKind::Paragraph,
                "A model that writes like you, \"fine-tuned\" on your posts."
            ),
            (BlockKind::Paragraph, "Here is how."),
        ]
    );
    let article = by_title(&linkedin, "Why LLM twins");
    assert_eq!(article.kind, DocumentKind::Article);
    assert_eq!(
        article.url,
        "https://www.linkedin.com/pulse/why-llm-twins-paul-iusztin-abc1"
    );
    assert_eq!(article.published_at, Some(1_704_878_100_000));
    assert_eq!(article.content.len(), 2);

    // GitHub: the repository (not the fork) as one document, README first, code exact, the
    // symlink to /etc/passwd, the vendored, binary and generated files left out.
    let github = documents(&events, "github");
    assert_eq!(github.len(), 1);
    let repository = &github[0];
    assert_eq!(repository.kind, DocumentKind::Repository);
    assert_eq!(repository.url, "https://github.com/paul/twin-demo");
    let paths: Vec<_> = repository
        .content
        .iter()
        .map(|b| b.path.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(paths, vec!["README.md", "src/train.py"]);
    assert!(repository.content.iter().all(|b| b.kind == BlockKind::File));
    assert_eq!(
        repository.content[1].text, TRAIN_PY,
        "whitespace is content"
    );
    assert_eq!(repository.content[1].language.as_deref(), Some("python"));
    assert!(
        !all_text(repository).contains("root:"),
        "nothing outside the repository is read"
    );
    for (key, value) in [
        ("skipped_link", "1"),
        ("skipped_rule", "1"),
        ("skipped_binary", "1"),
        ("skipped_generated", "1"),
        ("default_branch", "main"),
        ("stars", "42"),
    ] {
        assert_eq!(
            repository.metadata.get(key).map(String::as_str),
            Some(value),
            "{key}"
        );
    }
    let api_calls = platforms.github.seen();
    assert!(!api_calls.is_empty());
    for call in &api_calls {
        assert_eq!(
            call.headers.get("authorization").map(String::as_str),
            Some(format!("Bearer {GITHUB_TOKEN}").as_str()),
            "the API gets the token"
        );
    }
    for call in platforms.codeload.seen() {
        assert!(
            !call.headers.contains_key("authorization"),
            "the token does not follow a redirect to another host"
        );
    }

    // Any web article: the main content, not the navigation, comments, share buttons or footer.
    let web = documents(&events, "web");
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].title, "Why event sourcing?");
    assert_eq!(
        texts(&web[0]),
        vec![
            (
                BlockKind::Paragraph,
                "Events are the truth, and every table is a view of them."
            ),
            (BlockKind::Paragraph, "Replays rebuild every projection."),
            (BlockKind::ListItem, "append"),
            (BlockKind::ListItem, "project"),
        ]
    );

    // Every request said who it is.
    for call in platforms.web.seen() {
        assert!(call
            .headers
            .get("user-agent")
            .is_some_and(|ua| ua.starts_with("twin-crawler/")));
    }
    let medium_report = report(&reports, "medium");
    assert_eq!(
        (medium_report.tally.new, medium_report.tally.failed),
        (3, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_emits_nothing_and_each_change_emits_exactly_one_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let platforms = Platforms::start(dir.path()).await;
    let config = platforms.config(&dir.path().join("data"));
    let log = twin_eventlog::open(&config).expect("log");
    crawl(&config, &log).await;
    let first = support::event_count(log.as_ref(), &config).await;
    assert_eq!(first, 22);

    // Unchanged fixtures: nothing emitted; pages answered 304 to conditional GETs; the
    // repository not downloaded again.
    platforms.medium.clear_seen();
    let tarballs = platforms.codeload.seen().len();
    let reports = crawl(&config, &log).await;
    assert_eq!(support::event_count(log.as_ref(), &config).await, first);
    for r in &reports {
        assert_eq!(
            (
                r.tally.new,
                r.tally.changed,
                r.tally.deleted,
                r.tally.failed
            ),
            (0, 0, 0, 0),
            "{r}"
        );
    }
    let total_unchanged: u64 = reports.iter().map(|r| r.tally.unchanged).sum();
    assert_eq!(total_unchanged, 22);
    let page = platforms
        .medium
        .seen_at("/@paul/streaming-pipelines-for-llms");
    assert_eq!(page.len(), 1);
    assert!(
        page[0].headers.contains_key("if-none-match"),
        "a conditional GET"
    );
    assert_eq!(page[0].status, 304);
    assert_eq!(
        platforms.codeload.seen().len(),
        tarballs,
        "same push, no download"
    );

    // One changed page: exactly one event, counted as changed.
    platforms.web.put(
        "/blog/why-event-sourcing",
        Route::html(support::blog_page(
            "Events are the truth; tables are views, and views can be rebuilt.",
        )),
    );
    let reports = crawl(&config, &log).await;
    assert_eq!(support::event_count(log.as_ref(), &config).await, first + 1);
    assert_eq!(report(&reports, "web").tally.changed, 1);
    let events = support::raw_events(log.as_ref(), &config).await;
    let Some(Event::Raw(changed)) = events.last() else {
        panic!("the last event is the changed page");
    };
    assert!(all_text(changed).contains("views can be rebuilt"));

    // A post the archive no longer lists: one tombstone.
    platforms.mount_substack(13);
    let reports = crawl(&config, &log).await;
    assert_eq!(support::event_count(log.as_ref(), &config).await, first + 2);
    assert_eq!(report(&reports, "substack").tally.deleted, 1);
    let events = support::raw_events(log.as_ref(), &config).await;
    let Some(Event::Deleted(tombstone)) = events.last() else {
        panic!("the last event is a tombstone: {:?}", events.last());
    };
    assert_eq!(tombstone.url, platforms.substack.url("/p/post-number-13"));
    assert!(
        tombstone.reason.contains("no longer listed"),
        "{}",
        tombstone.reason
    );

    // An article page that answers 404: one tombstone, once.
    platforms.medium.remove("/@paul/an-older-article-0ld0ld");
    let reports = crawl(&config, &log).await;
    assert_eq!(report(&reports, "medium").tally.deleted, 1);
    assert_eq!(support::event_count(log.as_ref(), &config).await, first + 3);
    crawl(&config, &log).await;
    assert_eq!(
        support::event_count(log.as_ref(), &config).await,
        first + 3,
        "tombstoned once"
    );

    // A new commit: the repository is downloaded again and changes.
    std::fs::write(
        platforms.repository.join("src/serve.py"),
        "def serve():\n    pass\n",
    )
    .expect("write");
    support::git(&platforms.repository, &["add", "-A"]);
    support::git(&platforms.repository, &["commit", "-q", "-m", "serve"]);
    platforms.serve_tarball();
    let listing = "/users/paul/repos?type=owner&sort=full_name&per_page=100";
    let pushed = serde_json::json!([{
        "name": "twin-demo", "full_name": "paul/twin-demo", "html_url": "https://github.com/paul/twin-demo",
        "default_branch": "main", "pushed_at": "2024-03-02T10:00:00Z", "fork": false
    }]);
    platforms.github.put(
        listing,
        Route::json(serde_json::to_vec(&pushed).expect("json")),
    );
    let reports = crawl(&config, &log).await;
    assert_eq!(report(&reports, "github").tally.changed, 1);
    assert_eq!(support::event_count(log.as_ref(), &config).await, first + 4);
}

/// Security item 6: a secret pasted into a post is replaced before the document becomes an
/// event, and counted in the source's report; the rest of the text is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_a_page_are_redacted_before_they_are_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FixtureServer::start().await.expect("server");
    let token = format!("ghp_{}", "Zq8Lm2Xw".repeat(5));
    server.put(
        "/setup",
        Route::html(support::blog_page(&format!(
            "Export the token first: GITHUB_TOKEN={token} and then run the crawler."
        ))),
    );
    let config = web_config(dir.path(), &[server.url("/setup")]);
    let log = twin_eventlog::open(&config).expect("log");
    let reports = crawl(&config, &log).await;
    assert_eq!(reports[0].tally.redacted, 1, "{}", reports[0]);
    assert!(
        reports[0].to_string().contains("1 secrets redacted"),
        "{}",
        reports[0]
    );
    let events = support::raw_events(log.as_ref(), &config).await;
    let text = match &events[0] {
        Event::Raw(doc) => all_text(doc),
        other => panic!("{other:?}"),
    };
    assert!(!text.contains(&token), "{text}");
    assert!(
        text.contains("GITHUB_TOKEN=[REDACTED github-token] and then run the crawler."),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_429_are_retried_honouring_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FixtureServer::start().await.expect("server");
    server.put(
        "/flaky",
        Route::html(support::blog_page("Flaky but fine.")).failing_first(2, 500, None),
    );
    server.put(
        "/busy",
        Route::html(support::blog_page("Busy but fine.")).failing_first(1, 429, Some("1")),
    );
    let config = web_config(dir.path(), &[server.url("/flaky"), server.url("/busy")]);
    let log = twin_eventlog::open(&config).expect("log");
    let started = Instant::now();
    let reports = crawl(&config, &log).await;
    for r in &reports {
        assert!(!r.failed(), "{r}: {:?}", r.errors);
        assert_eq!(r.tally.new, 1);
    }
    let statuses = |path: &str| {
        server
            .seen_at(path)
            .iter()
            .map(|s| s.status)
            .collect::<Vec<_>>()
    };
    assert_eq!(statuses("/flaky"), vec![500, 500, 200]);
    assert_eq!(statuses("/busy"), vec![429, 200]);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_trouble_is_reported_with_where_and_why_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FixtureServer::start().await.expect("server");
    let slow = FixtureServer::start().await.expect("slow server");
    server.put("/fine", Route::html(support::blog_page("Still crawled.")));
    server.put("/always-down", Route::status(503));
    server.put(
        "/patience",
        Route::html(support::blog_page("x")).failing_first(1, 429, Some("3600")),
    );
    server.put(
        "/garbage",
        Route::html("<html><head><title>Oops</title></head><body><div class=\"nav\"><a href=\"/\">Home</a></div><script>var p = '<p>';</script></bod"),
    );
    server.put(
        "/huge",
        Route::html(support::blog_page(&"big ".repeat(100_000))),
    );
    server.put("/private/diary", Route::html(support::blog_page("secret")));
    server.put(
        "/robots.txt",
        Route::ok("text/plain", "User-agent: *\nDisallow: /private/\n"),
    );
    slow.put(
        "/slow",
        Route::html(support::blog_page("too late")).slow(Duration::from_secs(3)),
    );
    let targets = [
        "/fine",
        "/always-down",
        "/patience",
        "/garbage",
        "/huge",
        "/private/diary",
        "/missing",
    ];
    let mut urls: Vec<String> = targets.iter().map(|t| server.url(t)).collect();
    urls.push(slow.url("/slow"));
    let mut config = web_config(dir.path(), &urls);
    config.ingest.http.timeout_secs = 0.5;
    config.ingest.http.retries = 1;
    config.ingest.http.max_response_bytes = 100_000;
    let log = twin_eventlog::open(&config).expect("log");
    let reports = crawl(&config, &log).await;
    let error_of = |target: &str| {
        let r = reports
            .iter()
            .find(|r| r.source.ends_with(target))
            .unwrap_or_else(|| panic!("report for {target}"));
        r.errors.join("; ")
    };
    assert!(error_of("/fine").is_empty());
    let expectations = [
        (
            "/always-down",
            "HTTP 503 Service Unavailable (after 2 attempts)",
        ),
        (
            "/patience",
            "retry after 3600 s, more than ingest.http.max_retry_after_secs = 5",
        ),
        ("/garbage", "no content found"),
        ("/huge", "max_response_bytes = 100000"),
        ("/private/diary", "disallowed by"),
        ("/missing", "HTTP 404 Not Found"),
        ("/slow", "timed out (after 2 attempts)"),
    ];
    for (target, why) in expectations {
        let error = error_of(target);
        assert!(error.contains(target), "the error names the url: {error}");
        assert!(
            error.contains(why),
            "{target}: expected {why:?} in {error:?}"
        );
    }
    assert!(server.seen_at("/private/").is_empty(), "robots.txt obeyed");
    assert_eq!(
        support::event_count(log.as_ref(), &config).await,
        1,
        "only the good page"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_feed_and_an_export_missing_a_file_fail_their_source_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let platforms = Platforms::start(dir.path()).await;
    let config = platforms.config(&dir.path().join("data"));
    let log = twin_eventlog::open(&config).expect("log");
    crawl(&config, &log).await;
    let before = support::event_count(log.as_ref(), &config).await;

    // The Medium feed cut off mid-item; the export without Shares.csv.
    let feed_path = "/feed/@paul";
    let full = reqwest::get(platforms.medium.url(feed_path))
        .await
        .expect("feed")
        .text()
        .await
        .expect("text");
    platforms
        .medium
        .put(feed_path, Route::rss(full[..full.len() / 2].to_string()));
    support::write_export(&platforms.export, false);
    let reports = crawl(&config, &log).await;
    let medium = report(&reports, "medium");
    assert!(medium.failed());
    let error = medium.errors.join("; ");
    assert!(
        error.contains(&platforms.medium.url(feed_path)) && error.contains("feed does not parse"),
        "{error}"
    );
    assert_eq!(
        medium.tally.unchanged, 3,
        "known article pages are still checked: {medium}"
    );
    let linkedin = report(&reports, "linkedin");
    let error = linkedin.errors.join("; ");
    assert!(
        error.contains("Basic_LinkedInDataExport_03-15-2024.zip")
            && error.contains("no Shares.csv"),
        "{error}"
    );
    assert_eq!(
        linkedin.tally.unchanged, 1,
        "the article is still read: {linkedin}"
    );
    assert_eq!(
        linkedin.tally.deleted, 0,
        "an incomplete export deletes nothing"
    );
    for other in ["substack", "github", "web"] {
        assert!(!report(&reports, other).failed(), "{other} went on");
    }
    assert_eq!(support::event_count(log.as_ref(), &config).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_reaches_only_the_api_and_appears_in_no_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let platforms = Platforms::start(dir.path()).await;
    let mut config = platforms.config(&dir.path().join("data"));
    config
        .ingest
        .sources
        .retain(|s| s.platform.as_deref() == Some("github"));
    platforms
        .codeload
        .put("/paul/twin-demo/legacy.tar.gz/main", Route::status(500));
    let log = twin_eventlog::open(&config).expect("log");
    let reports = crawl(&config, &log).await;
    let github = report(&reports, "github");
    assert!(github.failed());
    let text = format!("{github:?} {}", github.errors.join(" "));
    assert!(text.contains("HTTP 500"), "{text}");
    assert!(!text.contains(GITHUB_TOKEN), "{text}");
    assert!(
        !format!("{config:?}").contains(GITHUB_TOKEN),
        "Debug of the configuration masks it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_keeps_what_was_crawled_and_deletes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = FixtureServer::start().await.expect("server");
    let mut urls = Vec::new();
    for i in 0..6 {
        let path = format!("/page-{i}");
        let delay = Duration::from_millis(if i == 0 { 0 } else { 1_500 });
        server.put(
            &path,
            Route::html(support::blog_page(&format!("Page {i}."))).slow(delay),
        );
        urls.push(server.url(&path));
    }
    let mut config = web_config(dir.path(), &[]);
    config.ingest.sources = vec![SourceConfig {
        url: Some(urls[0].clone()),
        platform: Some("web".into()),
        articles: urls[1..].to_vec(),
        ..SourceConfig::default()
    }];
    config.ingest.http.concurrency = 1;
    config.ingest.http.timeout_secs = 10.0;
    let log = twin_eventlog::open(&config).expect("log");
    let stop = CancellationToken::new();
    let ingest =
        Ingest::new(&config, log.clone(), Progress::hidden(), stop.clone()).expect("ingest");
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        stopper.cancel();
    });
    let started = Instant::now();
    let reports = ingest.run_once().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped promptly"
    );
    let r = &reports[0];
    assert!(!r.failed(), "a stop is not a failure: {:?}", r.errors);
    // The page fetched before the stop (and the one in flight) are on the log; nothing else.
    let emitted = support::event_count(log.as_ref(), &config).await;
    assert!((1..=2).contains(&emitted), "{emitted} events");
    assert_eq!(r.tally.new, emitted);
    assert_eq!(r.tally.deleted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_reaches_a_kafka_broker_the_same_way() {
    let broker = twin_testkit::tansu::tansu().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let platforms = Platforms::start(dir.path()).await;
    let mut config = platforms.config(&dir.path().join("data"));
    config.log.backend = twin_config::LogBackend::Kafka;
    config.log.kafka.brokers = broker.brokers.clone();
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos();
    config.topics.raw_documents = format!("raw-documents-ingest-{unique}");
    let log = twin_eventlog::open(&config).expect("kafka log");
    let reports = crawl(&config, &log).await;
    assert!(reports.iter().all(|r| !r.failed()), "{reports:#?}");
    let events = support::raw_events(log.as_ref(), &config).await;
    assert_eq!(events.len(), 22);
    for (platform, count) in [
        ("medium", 3),
        ("substack", 14),
        ("linkedin", 3),
        ("github", 1),
        ("web", 1),
    ] {
        assert_eq!(documents(&events, platform).len(), count, "{platform}");
    }
    crawl(&config, &log).await;
    assert_eq!(
        support::event_count(log.as_ref(), &config).await,
        22,
        "nothing new the second time"
    );
}
