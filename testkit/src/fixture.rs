//! A local HTTP server for tests and benchmarks that serves whatever a test puts in it, the way
//! the platforms serve it: ETag and Last-Modified with 304 answers to conditional GETs, and
//! scripted trouble (errors before success, 429 with Retry-After, slow answers). It records every
//! request so that tests can check what the crawler sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use sha2::{Digest, Sha256};

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Route {
    /// Status of a normal answer.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
    /// `Content-Type`.
    pub content_type: String,
    /// Extra headers (e.g. `Link`, `Location`).
    pub headers: Vec<(String, String)>,
    /// Send ETag / Last-Modified and answer conditional GETs with 304.
    pub validators: bool,
    /// Answers to give before the normal one: (status, Retry-After).
    pub trouble: Vec<(u16, Option<String>)>,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Route {
    /// 200 with `body` of `content_type`, with validators.
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            body: body.into(),
            content_type: content_type.to_string(),
            headers: Vec::new(),
            validators: true,
            trouble: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    /// An HTML page.
    pub fn html(body: impl Into<Vec<u8>>) -> Self {
        Self::ok("text/html; charset=utf-8", body)
    }

    /// A JSON document.
    pub fn json(body: impl Into<Vec<u8>>) -> Self {
        Self::ok("application/json", body)
    }

    /// An RSS feed.
    pub fn rss(body: impl Into<Vec<u8>>) -> Self {
        Self::ok("application/rss+xml; charset=utf-8", body)
    }

    /// A bare status.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            validators: false,
            ..Self::ok("text/plain", Vec::new())
        }
    }

    /// A redirect.
    pub fn redirect(to: &str) -> Self {
        Self::status(302).with_header("Location", to)
    }

    /// With an extra header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Answer `status` (with an optional Retry-After) first, `times` times.
    pub fn failing_first(mut self, times: usize, status: u16, retry_after: Option<&str>) -> Self {
        for _ in 0..times {
            self.trouble.push((status, retry_after.map(str::to_string)));
        }
        self
    }

    /// Answer only after `delay`.
    pub fn slow(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path and query.
    pub target: String,
    /// Headers, names in lower case.
    pub headers: HashMap<String, String>,
    /// Status answered.
    pub status: u16,
}

#[derive(Default)]
struct Site {
    routes: HashMap<String, Route>,
    seen: Vec<Seen>,
}

/// The server; stops when dropped.
pub struct FixtureServer {
    address: SocketAddr,
    site: Arc<Mutex<Site>>,
    task: tokio::task::JoinHandle<()>,
}

impl FixtureServer {
    /// Start on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let site = Arc::new(Mutex::new(Site::default()));
        let app = Router::new().fallback(answer).with_state(site.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            address,
            site,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The url of `target` (a path, with its query if any).
    pub fn url(&self, target: &str) -> String {
        format!("{}{target}", self.base())
    }

    /// Serve `route` at `target` (path, or path and query), replacing what was there.
    pub fn put(&self, target: &str, route: Route) {
        self.lock().routes.insert(target.to_string(), route);
    }

    /// Stop serving `target` (it answers 404).
    pub fn remove(&self, target: &str) {
        self.lock().routes.remove(target);
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Requests whose target starts with `prefix`.
    pub fn seen_at(&self, prefix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.target.starts_with(prefix))
            .collect()
    }

    /// Forget the requests seen so far.
    pub fn clear_seen(&self) {
        self.lock().seen.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Site> {
        self.site.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(site): State<Arc<Mutex<Site>>>, uri: Uri, headers: HeaderMap) -> Response {
    let target = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.path().to_string());
    let seen_headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let (route, trouble) = {
        let mut site = site.lock().unwrap_or_else(|p| p.into_inner());
        let key = if site.routes.contains_key(&target) {
            Some(target.clone())
        } else {
            Some(uri.path().to_string()).filter(|p| site.routes.contains_key(p))
        };
        match key.and_then(|k| site.routes.get_mut(&k)) {
            Some(route) => {
                let trouble = (!route.trouble.is_empty()).then(|| route.trouble.remove(0));
                (Some(route.clone()), trouble)
            }
            None => (None, None),
        }
    };
    let mut status = 404;
    let response = match (route, trouble) {
        (None, _) => plain(404),
        (Some(route), Some((code, retry_after))) => {
            tokio::time::sleep(route.delay).await;
            status = code;
            let mut response = plain(code);
            if let Some(value) = retry_after.and_then(|v| v.parse().ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        (Some(route), None) => {
            tokio::time::sleep(route.delay).await;
            let etag = format!("\"{}\"", hex(&Sha256::digest(&route.body)[..8]));
            let last_modified = "Mon, 01 Jan 2024 00:00:00 GMT";
            let matches = headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == etag);
            status = if route.validators && matches {
                304
            } else {
                route.status
            };
            let mut builder = Response::builder().status(status);
            if route.validators {
                builder = builder
                    .header(header::ETAG, etag.as_str())
                    .header(header::LAST_MODIFIED, last_modified);
            }
            for (name, value) in &route.headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            let body = if status == 304 {
                Body::empty()
            } else {
                builder = builder.header(header::CONTENT_TYPE, route.content_type.as_str());
                Body::from(route.body.clone())
            };
            builder.body(body).unwrap_or_else(|_| plain(500))
        }
    };
    site.lock()
        .unwrap_or_else(|p| p.into_inner())
        .seen
        .push(Seen {
            target,
            headers: seen_headers,
            status,
        });
    response
}

fn plain(status: u16) -> Response {
    let mut response = Response::new(Body::from(format!("status {status}")));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
