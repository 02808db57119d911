//! Local servers in the shapes of the real platforms, serving the sample author to the real
//! crawlers: a Medium profile's RSS feed, a Substack publication's feed and archive and post APIs,
//! GitHub's REST API with a repository tarball, and a LinkedIn data export (a ZIP file, as a
//! member downloads it). Each platform listens on its own port, as each has its own host in life.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use twin_config::SourceConfig;

use super::sample::{self, Article, AUTHOR_ID, AUTHOR_NAME, REPOSITORY};

const MEDIUM_PORT: u16 = 47311;
const SUBSTACK_PORT: u16 = 47312;
const GITHUB_PORT: u16 = 47313;

/// The running fake platforms; dropping it stops them.
pub struct Platforms {
    pub medium: String,
    pub substack: String,
    pub github: String,
    pub linkedin_export: PathBuf,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Platforms {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

impl Platforms {
    /// Start the servers; the LinkedIn export is written into `dir`.
    pub async fn start(dir: &Path) -> Result<Self> {
        let mut servers = Vec::new();
        let (medium, server) = listen(MEDIUM_PORT, medium_router).await?;
        servers.push(server);
        let (substack, server) = listen(SUBSTACK_PORT, substack_router).await?;
        servers.push(server);
        let (github, server) = listen(GITHUB_PORT, github_router).await?;
        servers.push(server);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let linkedin_export = dir.join("Basic_LinkedInDataExport_nora.zip");
        write_linkedin_export(&linkedin_export)?;
        Ok(Self {
            medium,
            substack,
            github,
            linkedin_export,
            servers,
        })
    }

    /// `[[ingest.sources]]` pointing at them. The platform is named, since the hosts are local.
    pub fn sources(&self) -> Vec<SourceConfig> {
        let source = |url: String, platform: &str| SourceConfig {
            url: Some(url),
            platform: Some(platform.into()),
            ..SourceConfig::default()
        };
        vec![
            source(format!("{}/@{AUTHOR_ID}", self.medium), "medium"),
            source(self.substack.clone(), "substack"),
            SourceConfig {
                platform: Some("linkedin".into()),
                export: Some(self.linkedin_export.clone()),
                ..SourceConfig::default()
            },
            source(format!("{}/{AUTHOR_ID}", self.github), "github"),
        ]
    }
}

/// Serve `router` (made for its base url) on `port`, or on a free one if it is taken. The same
/// port on every run keeps the documents' urls, so a second run finds them unchanged.
async fn listen(
    port: u16,
    router: impl FnOnce(&str) -> Result<Router>,
) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(e) => {
            println!(
                "  port {port} is taken ({e}): this platform listens elsewhere, so its \
                 documents get new urls and are crawled as new"
            );
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .context("starting a sample platform")?
        }
    };
    let base = format!("http://{}", listener.local_addr()?);
    let router = router(&base)?;
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(error = %e, "a sample platform stopped");
        }
    });
    Ok((base, server))
}

fn body(content_type: &'static str, body: impl Into<Vec<u8>>) -> axum::response::Response {
    ([(header::CONTENT_TYPE, content_type)], body.into()).into_response()
}

fn robots() -> axum::routing::MethodRouter {
    get(|| async { body("text/plain", "User-agent: *\nAllow: /\n") })
}

fn rss(title: &str, link: &str, items: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><rss version=\"2.0\" \
         xmlns:dc=\"http://purl.org/dc/elements/1.1/\" \
         xmlns:content=\"http://purl.org/rss/1.0/modules/content/\"><channel>\
         <title><![CDATA[{title}]]></title><link>{link}</link>{items}</channel></rss>"
    )
}

fn rss_item(article: &Article, link: &str, html: &str) -> Result<String> {
    Ok(format!(
        "<item><title><![CDATA[{}]]></title><link>{link}</link>\
         <guid isPermaLink=\"false\">{}</guid><dc:creator><![CDATA[{AUTHOR_NAME}]]></dc:creator>\
         <pubDate>{}</pubDate><content:encoded><![CDATA[{html}]]></content:encoded></item>",
        article.title,
        article.slug,
        article.published()?.to_rfc2822(),
    ))
}

/// Medium: `/feed/@nora` carries every article whole, opening with its title and subtitle as
/// Medium's feed does.
fn medium_router(base: &str) -> Result<Router> {
    let items: Result<Vec<String>> = sample::medium()?
        .iter()
        .map(|a| {
            let html = format!("<h3>{}</h3><h4>{}</h4>{}", a.title, a.subtitle, a.html());
            rss_item(a, &format!("{base}/@{AUTHOR_ID}/{}", a.slug), &html)
        })
        .collect();
    let feed = rss(
        &format!("Stories by {AUTHOR_NAME} on Medium"),
        &format!("{base}/@{AUTHOR_ID}"),
        &items?.concat(),
    );
    Ok(Router::new().route("/robots.txt", robots()).route(
        &format!("/feed/@{AUTHOR_ID}"),
        get(move || async move { body("application/rss+xml", feed) }),
    ))
}

/// Substack: the archive API lists every post (newest first), the post API gives one with its
/// body, and the feed carries the two latest whole.
fn substack_router(base: &str) -> Result<Router> {
    let mut posts = sample::substack()?;
    posts.sort_by(|a, b| b.date.cmp(&a.date));
    let listed: Vec<serde_json::Value> = posts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            serde_json::json!({
                "id": 170_000_000 + i, "title": p.title, "subtitle": p.subtitle,
                "slug": p.slug, "post_date": p.date, "type": "newsletter",
                "audience": "everyone", "canonical_url": format!("{base}/p/{}", p.slug),
            })
        })
        .collect();
    let items: Result<Vec<String>> = posts
        .iter()
        .take(2)
        .map(|p| rss_item(p, &format!("{base}/p/{}", p.slug), &p.html()))
        .collect();
    let feed = rss("The Backpressure Letter", base, &items?.concat());
    let archive = serde_json::to_vec(&listed)?;
    let mut router = Router::new()
        .route("/robots.txt", robots())
        .route(
            "/feed",
            get(move || async move { body("application/rss+xml", feed) }),
        )
        .route(
            "/api/v1/archive",
            get(move || async move { body("application/json", archive) }),
        );
    for (post, listed) in posts.iter().zip(listed) {
        let mut full = listed;
        full["body_html"] = serde_json::Value::String(post.html());
        let json = serde_json::to_vec(&full)?;
        router = router.route(
            &format!("/api/v1/posts/{}", post.slug),
            get(move || async move { body("application/json", json) }),
        );
    }
    Ok(router)
}

/// GitHub: the REST API lists the author's one repository, and serves its default branch as a
/// tarball whose entries sit under one top folder, as GitHub's do.
fn github_router(base: &str) -> Result<Router> {
    let listing = serde_json::to_vec(&[serde_json::json!({
        "id": 1, "name": REPOSITORY, "full_name": format!("{AUTHOR_ID}/{REPOSITORY}"),
        "html_url": format!("https://github.com/{AUTHOR_ID}/{REPOSITORY}"),
        "description": "An event-sourced ledger in one small Python module",
        "fork": false, "archived": false, "default_branch": "main",
        "pushed_at": "2025-04-02T18:00:00Z", "created_at": "2025-03-30T09:00:00Z",
        "stargazers_count": 7, "language": "Python", "topics": ["event-sourcing"],
        "url": format!("{base}/repos/{AUTHOR_ID}/{REPOSITORY}"),
    })])?;
    let tarball = repository_tarball()?;
    Ok(Router::new()
        .route(
            &format!("/users/{AUTHOR_ID}/repos"),
            get(move || async move { body("application/json", listing) }),
        )
        .route(
            &format!("/repos/{AUTHOR_ID}/{REPOSITORY}/tarball/main"),
            get(move || async move { body("application/x-gzip", tarball) }),
        ))
}

fn repository_tarball() -> Result<Vec<u8>> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut archive = tar::Builder::new(encoder);
    for (path, text) in sample::repository_files() {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_743_616_800);
        header.set_cksum();
        archive.append_data(
            &mut header,
            format!("{AUTHOR_ID}-{REPOSITORY}-5e1d9a2/{path}"),
            text.as_bytes(),
        )?;
    }
    Ok(archive.into_inner()?.finish()?)
}

/// LinkedIn's data export: `Profile.csv` and the member's posts in `Shares.csv`.
fn write_linkedin_export(path: &Path) -> Result<()> {
    let (first, last) = AUTHOR_NAME.split_once(' ').unwrap_or((AUTHOR_NAME, ""));
    let mut shares = String::from("Date,ShareLink,ShareCommentary,SharedUrl,MediaUrl,Visibility\n");
    for (i, post) in sample::linkedin_posts()?.iter().enumerate() {
        shares.push_str(&format!(
            "{},https://www.linkedin.com/feed/update/urn%3Ali%3Ashare%3A73000000000000000{i:02},\"{}\",,,PUBLIC\n",
            post.date,
            post.text.replace('"', "\"\"")
        ));
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
    let mut zip = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file("Profile.csv", options)?;
    zip.write_all(
        format!("First Name,Last Name,Headline\n{first},{last},Data platform engineer\n")
            .as_bytes(),
    )?;
    zip.start_file("Shares.csv", options)?;
    zip.write_all(shares.as_bytes())?;
    zip.finish()?;
    Ok(())
}
