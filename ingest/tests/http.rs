//! The crawlers' HTTP client against local servers: what it refuses to reach, redirects
//! checked hop by hop, and robots.txt kept for a while but not for ever (security item 11).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use twin_config::HttpConfig;
use twin_ingest::http::{Addresses, Fetched, Fetcher, Request};
use twin_ingest::IngestError;
use twin_testkit::{FixtureServer, Route};

fn settings() -> HttpConfig {
    HttpConfig {
        requests_per_second: 0.0,
        retries: 2,
        backoff_ms: 20,
        timeout_secs: 2.0,
        ..HttpConfig::default()
    }
}

fn body(fetched: Fetched) -> String {
    match fetched {
        Fetched::Body(response) => response.text(),
        Fetched::NotModified => panic!("304"),
    }
}

/// A source that is not local reaches no loopback, private or link-local address: not by its
/// url, not by a name that resolves to one, and nothing is tried twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_source_reaches_no_private_address() {
    let server = FixtureServer::start().await.expect("server");
    server.put("/page", Route::html("<p>here</p>"));
    let public = Fetcher::new(&settings(), CancellationToken::new()).expect("fetcher");
    let port = server
        .base()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    for url in [
        server.url("/page"),
        format!("http://localhost:{port}/page"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/admin".to_string(),
        "http://[::1]:9/".to_string(),
    ] {
        let error = public
            .get(Request::page(&url))
            .await
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("refused") && error.contains("local = true"),
            "{url}: {error}"
        );
        assert!(!error.contains("attempts"), "not retried: {error}");
    }
    assert!(server.seen().is_empty(), "no request reached the server");
    // The same page, for a local source.
    let local =
        Fetcher::reaching(&settings(), CancellationToken::new(), Addresses::Any).expect("fetcher");
    let page = local
        .get(Request::page(&server.url("/page")))
        .await
        .expect("local");
    assert!(body(page).contains("here"));
}

/// A redirect is followed hop by hop, and each hop's robots.txt is obeyed: a page that
/// redirects into a folder another origin's robots.txt forbids is not fetched there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robots_txt_is_checked_after_a_redirect() {
    let first = FixtureServer::start().await.expect("server");
    let second = FixtureServer::start().await.expect("server");
    second.put(
        "/robots.txt",
        Route::ok("text/plain", "User-agent: *\nDisallow: /private/\n"),
    );
    second.put("/private/diary", Route::html("<p>secret</p>"));
    second.put("/public/post", Route::html("<p>hello</p>"));
    first.put("/a", Route::redirect(&second.url("/private/diary")));
    first.put("/b", Route::redirect(&second.url("/public/post")));
    let fetcher =
        Fetcher::reaching(&settings(), CancellationToken::new(), Addresses::Any).expect("fetcher");
    let error = fetcher
        .get(Request::page(&first.url("/a")))
        .await
        .expect_err("disallowed");
    assert!(
        matches!(&error, IngestError::Disallowed { url, .. } if url.ends_with("/private/diary")),
        "{error}"
    );
    assert!(second.seen_at("/private/").is_empty(), "robots.txt obeyed");
    let allowed = fetcher
        .get(Request::page(&first.url("/b")))
        .await
        .expect("allowed");
    match allowed {
        Fetched::Body(response) => {
            assert_eq!(response.url, second.url("/public/post"));
            assert!(response.text().contains("hello"));
        }
        Fetched::NotModified => panic!("304"),
    }
}

/// robots.txt is fetched again after its time to live; one that could not be fetched
/// disallows its site only for a while, not until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robots_txt_expires_and_a_failure_to_fetch_it_is_retried() {
    let server = FixtureServer::start().await.expect("server");
    server.put("/post", Route::html("<p>post</p>"));
    // Down for the first pass (every retry of it), then up, allowing everything.
    server.put(
        "/robots.txt",
        Route::ok("text/plain", "User-agent: *\nAllow: /\n").failing_first(3, 503, None),
    );
    let mut short = settings();
    short.robots_txt_ttl_secs = 1;
    let fetcher =
        Fetcher::reaching(&short, CancellationToken::new(), Addresses::Any).expect("fetcher");
    let error = fetcher
        .get(Request::page(&server.url("/post")))
        .await
        .expect_err("robots.txt unreachable: everything disallowed");
    assert!(error.to_string().contains("unreachable"), "{error}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    fetcher
        .get(Request::page(&server.url("/post")))
        .await
        .expect("robots.txt fetched again, and it allows");
    // A changed robots.txt is read once the old one expires.
    server.put(
        "/robots.txt",
        Route::ok("text/plain", "User-agent: *\nDisallow: /\n"),
    );
    fetcher
        .get(Request::page(&server.url("/post")))
        .await
        .expect("still the kept robots.txt");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let error = fetcher
        .get(Request::page(&server.url("/post")))
        .await
        .expect_err("the new robots.txt forbids it");
    assert!(matches!(error, IngestError::Disallowed { .. }), "{error}");
}
