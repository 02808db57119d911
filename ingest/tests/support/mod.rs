//! Fixtures in the shapes the platforms use (Medium's RSS and article pages, Substack's feed and
//! archive/post APIs, LinkedIn's data export, GitHub's REST API and tarballs of a real local git
//! repository, a blog page with navigation and comments), served by the testkit server, and a
//! configuration pointing every source at them.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use twin_config::{SourceConfig, TwinConfig};
use twin_eventlog::{EventConsumer, EventLog, StartFrom};
use twin_schemas::Event;
use twin_testkit::{FixtureServer, Route};

/// The platforms, each on its own server (its own host, as in life).
pub struct Platforms {
    pub medium: FixtureServer,
    pub substack: FixtureServer,
    pub github: FixtureServer,
    pub codeload: FixtureServer,
    pub web: FixtureServer,
    pub export: PathBuf,
    pub repository: PathBuf,
}

pub const GITHUB_TOKEN: &str = "ghp_fixtureTOKEN0123456789abcdefSECRET";

impl Platforms {
    pub async fn start(dir: &Path) -> Self {
        let platforms = Self {
            medium: FixtureServer::start().await.expect("medium server"),
            substack: FixtureServer::start().await.expect("substack server"),
            github: FixtureServer::start().await.expect("github server"),
            codeload: FixtureServer::start().await.expect("codeload server"),
            web: FixtureServer::start().await.expect("web server"),
            export: dir.join("Basic_LinkedInDataExport_03-15-2024.zip"),
            repository: dir.join("twin-demo"),
        };
        platforms.mount_medium();
        platforms.mount_substack(14);
        platforms.mount_web();
        write_export(&platforms.export, true);
        make_repository(&platforms.repository);
        platforms.mount_github();
        platforms
    }

    /// A configuration with every source, fast and impatient HTTP, data under `data_dir`.
    pub fn config(&self, data_dir: &Path) -> TwinConfig {
        let mut config = TwinConfig {
            data_dir: data_dir.to_path_buf(),
            ..TwinConfig::default()
        };
        config.author.id = "paul".into();
        config.author.full_name = "Paul Iusztin".into();
        config.log.partitions = 1;
        let http = &mut config.ingest.http;
        http.requests_per_second = 0.0;
        http.retries = 2;
        http.backoff_ms = 20;
        http.timeout_secs = 2.0;
        http.max_retry_after_secs = 5;
        config.ingest.github.api_url = self.github.base();
        config.ingest.github.token = GITHUB_TOKEN.into();
        let source = |url: String, platform: &str| SourceConfig {
            url: Some(url),
            platform: Some(platform.into()),
            ..SourceConfig::default()
        };
        config.ingest.sources = vec![
            SourceConfig {
                articles: vec![self.medium.url("/@paul/an-older-article-0ld0ld")],
                ..source(self.medium.url("/@paul"), "medium")
            },
            source(self.substack.base(), "substack"),
            SourceConfig {
                platform: Some("linkedin".into()),
                export: Some(self.export.clone()),
                ..SourceConfig::default()
            },
            source(self.github.url("/paul"), "github"),
            source(self.web.url("/blog/why-event-sourcing"), "web"),
        ];
        config
    }

    pub fn mount_medium(&self) {
        let base = self.medium.base();
        self.medium
            .put("/feed/@paul", Route::rss(medium_feed(&base)));
        self.medium.put(
            "/@paul/streaming-pipelines-for-llms-7a8b9c",
            Route::html(medium_page(
                "Streaming Pipelines for LLMs",
                "Why batch is not enough",
                "2024-02-20T09:00:00.000Z",
                "A feature pipeline that runs in real time keeps the twin up to date.",
            )),
        );
        self.medium.put(
            "/@paul/an-end-to-end-framework-b1e2f3",
            Route::html(medium_page(
                "An End-to-End Framework for Production-Ready LLM Systems",
                "Learn to build an LLM twin",
                "2024-03-11T10:02:31.000Z",
                "Building an LLM twin takes three pipelines: feature, training and inference.",
            )),
        );
        self.medium.put(
            "/@paul/an-older-article-0ld0ld",
            Route::html(medium_page(
                "An Older Article",
                "From the archive",
                "2023-05-01T12:00:00.000Z",
                "This one is too old for the feed, but the configuration names it.",
            )),
        );
        self.medium.put(
            "/robots.txt",
            Route::ok("text/plain", "User-agent: *\nDisallow: /me/settings\n"),
        );
    }

    pub fn mount_substack(&self, posts: usize) {
        let base = self.substack.base();
        let all: Vec<serde_json::Value> =
            (0..posts).rev().map(|i| substack_post(&base, i)).collect();
        for (page, offset) in (0..=all.len()).step_by(12).enumerate() {
            let _ = page;
            let slice: Vec<_> = all.iter().skip(offset).take(12).cloned().collect();
            self.substack.put(
                &format!("/api/v1/archive?sort=new&search=&offset={offset}&limit=12"),
                Route::json(serde_json::to_vec(&slice).expect("json")),
            );
        }
        for post in &all {
            let slug = post["slug"].as_str().expect("slug");
            let mut full = post.clone();
            full["body_html"] = serde_json::Value::String(substack_body(slug));
            self.substack.put(
                &format!("/api/v1/posts/{slug}"),
                Route::json(serde_json::to_vec(&full).expect("json")),
            );
        }
        // The feed carries the two latest posts in full.
        let items: String = all
            .iter()
            .take(2)
            .map(|p| {
                format!(
                    "<item><title><![CDATA[{}]]></title><description><![CDATA[{}]]></description>\
                     <link>{}</link><guid isPermaLink=\"false\">{}</guid>\
                     <dc:creator><![CDATA[Paul Iusztin]]></dc:creator>\
                     <pubDate>Mon, 04 Mar 2024 13:01:27 GMT</pubDate>\
                     <content:encoded><![CDATA[{}]]></content:encoded></item>",
                    p["title"].as_str().unwrap_or(""),
                    p["subtitle"].as_str().unwrap_or(""),
                    p["canonical_url"].as_str().unwrap_or(""),
                    p["id"],
                    substack_body(p["slug"].as_str().unwrap_or("")),
                )
            })
            .collect();
        self.substack.put(
            "/feed",
            Route::rss(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><rss xmlns:dc=\"http://purl.org/dc/elements/1.1/\" \
                 xmlns:content=\"http://purl.org/rss/1.0/modules/content/\" xmlns:atom=\"http://www.w3.org/2005/Atom\" \
                 version=\"2.0\"><channel><title><![CDATA[Decoding ML]]></title><link>{base}</link>\
                 <description><![CDATA[Production ML, one post at a time]]></description>{items}</channel></rss>"
            )),
        );
    }

    pub fn mount_web(&self) {
        self.web.put(
            "/blog/why-event-sourcing",
            Route::html(blog_page(
                "Events are the truth, and every table is a view of them.",
            )),
        );
    }

    pub fn mount_github(&self) {
        let api = self.github.base();
        let repo = |name: &str, fork: bool| {
            serde_json::json!({
                "id": 1, "name": name, "full_name": format!("paul/{name}"),
                "html_url": format!("https://github.com/paul/{name}"),
                "description": "A tiny LLM twin demo", "fork": fork, "archived": false,
                "default_branch": "main", "pushed_at": "2024-03-01T10:00:00Z",
                "created_at": "2023-01-01T00:00:00Z", "stargazers_count": 42,
                "language": "Python", "topics": ["llm", "mlops"]
            })
        };
        // Two pages, linked the way GitHub links them.
        let next = format!("{api}/user/9/repos?page=2");
        self.github.put(
            "/users/paul/repos?type=owner&sort=full_name&per_page=100",
            Route::json(serde_json::to_vec(&vec![repo("twin-demo", false)]).expect("json"))
                .with_header(
                    "Link",
                    &format!("<{next}>; rel=\"next\", <{next}>; rel=\"last\""),
                ),
        );
        self.github.put(
            "/user/9/repos?page=2",
            Route::json(serde_json::to_vec(&vec![repo("someone-elses-fork", true)]).expect("json")),
        );
        // The API redirects the tarball to another host, as api.github.com does to codeload.
        self.github.put(
            "/repos/paul/twin-demo/tarball/main",
            Route::redirect(&self.codeload.url("/paul/twin-demo/legacy.tar.gz/main")),
        );
        self.serve_tarball();
    }

    /// (Re)serve the repository's HEAD as GitHub's tarball.
    pub fn serve_tarball(&self) {
        let tarball = git_archive(&self.repository);
        self.codeload.put(
            "/paul/twin-demo/legacy.tar.gz/main",
            Route::ok("application/x-gzip", tarball),
        );
    }
}

fn medium_feed(base: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><rss xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:content="http://purl.org/rss/1.0/modules/content/" xmlns:atom="http://www.w3.org/2005/Atom" version="2.0" xmlns:cc="http://cyber.law.harvard.edu/rss/creativeCommonsRssModule.html">
<channel><title><![CDATA[Stories by Paul Iusztin on Medium]]></title><description><![CDATA[Stories by Paul Iusztin on Medium]]></description><link>{base}/@paul?source=rss-8323de62a1a1------2</link><generator>Medium</generator><lastBuildDate>Tue, 12 Mar 2024 08:00:00 GMT</lastBuildDate><atom:link href="{base}/feed/@paul" rel="self" type="application/rss+xml"/><webMaster><![CDATA[yourfriends@medium.com]]></webMaster>
<item><title><![CDATA[An End-to-End Framework for Production-Ready LLM Systems]]></title><link>{base}/@paul/an-end-to-end-framework-b1e2f3?source=rss-8323de62a1a1------2</link><guid isPermaLink="false">https://medium.com/p/b1e2f3</guid><category><![CDATA[llm]]></category><category><![CDATA[mlops]]></category><dc:creator><![CDATA[Paul Iusztin]]></dc:creator><pubDate>Mon, 11 Mar 2024 10:02:31 GMT</pubDate><atom:updated>2024-03-12T08:00:00.000Z</atom:updated><content:encoded><![CDATA[<h3>An End-to-End Framework for Production-Ready LLM Systems</h3><h4>Learn to build an LLM twin</h4><figure><img alt="" src="https://cdn-images-1.medium.com/max/1024/1.png" /><figcaption>The architecture</figcaption></figure><p>Building an LLM twin takes <strong>three pipelines</strong>: feature, training and inference.</p><h3>The feature pipeline</h3><ul><li>crawl</li><li>clean<ul><li>normalise unicode</li></ul></li></ul><pre>def chunk(text):<br>    return text.split("\n\n")</pre><blockquote>The log is the truth.</blockquote><img src="https://medium.com/_/stat?event=post.clientViewed&amp;referrerSource=full_rss&amp;postId=b1e2f3" width="1" height="1" alt="">]]></content:encoded></item>
<item><title><![CDATA[Streaming Pipelines for LLMs]]></title><link>{base}/@paul/streaming-pipelines-for-llms-7a8b9c?source=rss-8323de62a1a1------2</link><guid isPermaLink="false">https://medium.com/p/7a8b9c</guid><category><![CDATA[streaming]]></category><dc:creator><![CDATA[Paul Iusztin]]></dc:creator><pubDate>Tue, 20 Feb 2024 09:00:00 GMT</pubDate><atom:updated>2024-02-20T09:00:00.000Z</atom:updated><content:encoded><![CDATA[<div class="medium-feed-item"><p class="medium-feed-image"><a href="{base}/@paul/streaming-pipelines-for-llms-7a8b9c"><img src="https://cdn-images-1.medium.com/max/1024/2.png" width="1024"></a></p><p class="medium-feed-snippet">Why batch is not enough&#x2026;</p><p class="medium-feed-link"><a href="{base}/@paul/streaming-pipelines-for-llms-7a8b9c">Continue reading on Medium »</a></p></div>]]></content:encoded></item>
</channel></rss>"#
    )
}

pub fn medium_page(title: &str, subtitle: &str, published: &str, body: &str) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><title>{title} | by Paul Iusztin | Medium</title>
<meta property="og:title" content="{title}"><meta property="og:type" content="article">
<meta name="description" content="{subtitle}"><meta property="article:published_time" content="{published}">
<script type="application/ld+json">{{"@type":"NewsArticle","datePublished":"{published}"}}</script></head>
<body><div id="root"><nav class="metabar"><a href="/">Medium</a><a href="/m/signin">Sign in</a></nav>
<div class="l"><article><div class="m"><div class="pw-post-body">
<h1 class="pw-post-title" data-testid="storyTitle">{title}</h1>
<h2 class="pw-subtitle-paragraph">{subtitle}</h2>
<div class="speechify-ignore"><div class="byline"><a href="/@paul">Paul Iusztin</a> · Follow · 5 min read</div></div>
<p class="pw-post-body-paragraph">{body}</p>
<h2 class="pw-post-body-paragraph">Code</h2>
<pre><span class="ni">fn main() {{<br>    let events = log.replay();<br>}}</span></pre>
<p class="pw-post-body-paragraph">That is all.</p>
</div></div></article>
<footer><div class="recommended">More from Paul Iusztin</div><a href="/about">About</a></footer></div></div>
</body></html>"#
    )
}

fn substack_post(base: &str, i: usize) -> serde_json::Value {
    let slug = format!("post-number-{i}");
    serde_json::json!({
        "id": 140_000_000 + i, "publication_id": 1526003, "title": format!("Post number {i}"),
        "social_title": null, "search_engine_title": null, "type": "newsletter",
        "slug": slug, "post_date": format!("2024-01-{:02}T13:01:27.553Z", (i % 28) + 1),
        "audience": if i == 3 { "only_paid" } else { "everyone" },
        "canonical_url": format!("{base}/p/{slug}"), "subtitle": format!("Subtitle {i}"),
        "cover_image": null, "wordcount": 1200, "truncated_body_text": "The first words…"
    })
}

pub fn substack_body(slug: &str) -> String {
    format!(
        "<div class=\"captioned-image-container\"><figure><img src=\"x.png\"></figure></div>\
         <p>This is <em>{slug}</em>, a Decoding ML issue about production ML.</p>\
         <h2 class=\"header-anchor-post\">Why it matters</h2><p>Real-time features beat stale ones.</p>\
         <pre><code>pip install twin</code></pre>\
         <div class=\"subscription-widget-wrap\"><p>Subscribe to Decoding ML</p></div>"
    )
}

pub fn blog_page(body: &str) -> String {
    format!(
        r#"<!doctype html><html><head><title>Why event sourcing? — Paul's blog</title>
<meta property="og:title" content="Why event sourcing?">
<meta property="article:published_time" content="2024-01-15T08:00:00+00:00"></head>
<body><header class="site-header"><a href="/">Paul's blog</a><nav><ul><li><a href="/">Home</a></li><li><a href="/about">About</a></li></ul></nav></header>
<main><div class="post"><h1>Why event sourcing?</h1><p class="meta">January 15, 2024</p>
<div class="entry-content"><p>{body}</p><p>Replays rebuild every projection.</p>
<ol><li>append</li><li>project</li></ol></div>
<div class="share-buttons"><a>Share on X</a></div>
<section id="comments" class="comments"><h3>3 comments</h3><p>Great post!</p></section></div></main>
<aside class="sidebar"><p>Subscribe to the newsletter</p></aside>
<footer class="site-footer"><p>© 2024 Paul</p></footer></body></html>"#
    )
}

/// A LinkedIn data export, with or without `Shares.csv`.
pub fn write_export(path: &Path, with_shares: bool) {
    let file = std::fs::File::create(path).expect("export file");
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file("Profile.csv", options).expect("entry");
    zip.write_all(b"First Name,Last Name,Headline\nPaul,Iusztin,Senior ML Engineer\n")
        .expect("write");
    if with_shares {
        zip.start_file("Shares.csv", options).expect("entry");
        zip.write_all(
            "Date,ShareLink,ShareCommentary,SharedUrl,MediaUrl,Visibility\n\
             2024-03-15 14:02:11,https://www.linkedin.com/feed/update/urn%3Ali%3Ashare%3A7174000000000000001,\"𝗟𝗟𝗠 𝘁𝘄𝗶𝗻𝘀, explained:\n\nA model that writes like you, \"\"fine-tuned\"\" on your posts.\n\nHere is how.\",,,PUBLIC\n\
             2024-03-10 09:00:00,https://www.linkedin.com/feed/update/urn%3Ali%3Ashare%3A7174000000000000002,,https://example.com/reshared,,MEMBER_NETWORK\n\
             2024-02-01 18:30:45,https://www.linkedin.com/feed/update/urn%3Ali%3Aactivity%3A7174000000000000003,Streaming beats batch for features.,,,PUBLIC\n\
             2024-01-20 08:00:00,https://www.linkedin.com/feed/update/urn%3Ali%3Ashare%3A7174000000000000004,Only my connections should read this.,,,MEMBER_NETWORK\n"
                .as_bytes(),
        )
        .expect("write");
    }
    zip.start_file("Articles/Articles/Why LLM twins.html", options)
        .expect("entry");
    zip.write_all(
        br#"<html><head><title>Why LLM twins</title></head><body><h1><a href="https://www.linkedin.com/pulse/why-llm-twins-paul-iusztin-abc1">Why LLM twins</a></h1><p class="created">Created on 2024-01-10 09:00</p><p class="published">Published on 2024-01-10 09:15</p><div><p>An LLM twin is an AI character that writes like you.</p><p>It learns from your own posts.</p></div></body></html>"#,
    )
    .expect("write");
    zip.finish().expect("finish zip");
}

/// A real git repository: code with tabs and trailing spaces, a README, a symlink to
/// /etc/passwd, a vendored folder, a binary and a generated file.
pub fn make_repository(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).expect("dirs");
    std::fs::create_dir_all(dir.join("vendor/lib")).expect("dirs");
    std::fs::write(dir.join("README.md"), "# twin-demo\n\nA tiny LLM twin.\n").expect("write");
    std::fs::write(dir.join("src/train.py"), TRAIN_PY).expect("write");
    std::fs::write(dir.join("vendor/lib/big.js"), "var x = 1;\n").expect("write");
    std::fs::write(dir.join("logo.png"), b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").expect("write");
    std::fs::write(
        dir.join("src/schema.py"),
        "# Code generated by schemagen. DO NOT EDIT.\nx = 1\n",
    )
    .expect("write");
    #[cfg(unix)]
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).expect("symlink");
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "first"]);
}

pub const TRAIN_PY: &str = "def train(model, data):\n\tfor batch in data:   \n\t\tmodel.step(batch)\n\n\n    return model  \n";

pub fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args([
            "-c",
            "user.email=t@example.com",
            "-c",
            "user.name=Test",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?} failed");
}

fn git_archive(dir: &Path) -> Vec<u8> {
    let output = Command::new("git")
        .args([
            "archive",
            "--format=tar.gz",
            "--prefix=paul-twin-demo-1a2b3c4/",
            "HEAD",
        ])
        .current_dir(dir)
        .output()
        .expect("git archive");
    assert!(
        output.status.success(),
        "git archive: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Every event on the raw-documents topic, in order per partition.
pub async fn raw_events(log: &dyn EventLog, config: &TwinConfig) -> Vec<Event> {
    let topic = &config.topics.raw_documents;
    log.ensure_topic(topic).await.expect("topic");
    let total: u64 = log.end_offsets(topic).await.expect("ends").iter().sum();
    let consumer = log
        .consumer(topic, "test-reader", StartFrom::Beginning)
        .await
        .expect("consumer");
    let mut consumer = EventConsumer::new(consumer, topic.as_str());
    let mut events = Vec::new();
    // A Kafka consumer's first polls may come back empty while it joins its group.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (events.len() as u64) < total && std::time::Instant::now() < deadline {
        if let Some(delivery) = consumer.next(Duration::from_secs(2)).await.expect("poll") {
            events.push(delivery.event.expect("decodes"));
        }
    }
    events
}

/// How many events the raw-documents topic holds.
pub async fn event_count(log: &dyn EventLog, config: &TwinConfig) -> u64 {
    let topic = &config.topics.raw_documents;
    log.ensure_topic(topic).await.expect("topic");
    log.end_offsets(topic).await.expect("ends").iter().sum()
}
