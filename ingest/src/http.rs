//! Polite, robust HTTP for the crawlers: robots.txt, a per-host pace, timeouts, retries with
//! backoff that honour Retry-After, a size limit per response, and conditional GETs.
//!
//! Redirects are followed here, hop by hop, not by the HTTP client: each hop is checked as the
//! first url was (scheme, robots.txt for pages, address) and a bearer token is dropped when the
//! origin changes. robots.txt is cached per origin for `robots_txt_ttl_secs` (RFC 9309: at most
//! a day), a failure to fetch it for a minute at most. Unless a source is local, no request goes
//! to a loopback, private, link-local or otherwise non-public address, whether the url names it,
//! a redirect leads to it or a host name resolves to it (the resolver itself refuses them), so
//! that a page or feed cannot turn the crawler against the machine's own network.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::StatusCode;
use texting_robots::Robot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use twin_config::HttpConfig;
use url::Url;

use crate::error::{IngestError, Result};

/// What is fetched, which decides whether robots.txt applies: it governs crawled pages and
/// feeds; documented APIs (GitHub's REST API, Substack's archive API) are not crawled pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A page or feed: robots.txt is obeyed.
    Page,
    /// A documented API endpoint.
    Api,
}

/// The validators a server gave with a response, for a conditional GET next time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// `ETag`.
    pub etag: Option<String>,
    /// `Last-Modified`.
    pub last_modified: Option<String>,
}

impl Validators {
    /// Whether there is anything to send.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// One GET.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The url.
    pub url: &'a str,
    /// Page or API.
    pub access: Access,
    /// Validators of the copy we have, for a conditional GET.
    pub validators: Option<&'a Validators>,
    /// A bearer token (never logged; dropped on a redirect to another origin).
    pub bearer: Option<&'a str>,
    /// `Accept` header.
    pub accept: Option<&'a str>,
}

/// Shown without the token: requests are logged and land in error reports.
impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("url", &self.url)
            .field("access", &self.access)
            .field("validators", &self.validators)
            .field("bearer", &self.bearer.map(|_| twin_config::secrets::MASK))
            .field("accept", &self.accept)
            .finish()
    }
}

impl<'a> Request<'a> {
    /// A plain GET of a page or feed.
    pub fn page(url: &'a str) -> Self {
        Self {
            url,
            access: Access::Page,
            validators: None,
            bearer: None,
            accept: None,
        }
    }

    /// A plain GET of an API endpoint.
    pub fn api(url: &'a str) -> Self {
        Self {
            access: Access::Api,
            ..Self::page(url)
        }
    }

    /// Conditional on the copy we have.
    pub fn if_changed(mut self, validators: Option<&'a Validators>) -> Self {
        self.validators = validators.filter(|v| !v.is_empty());
        self
    }
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// The url finally answered (after redirects).
    pub url: String,
    /// The body, whole.
    pub body: Vec<u8>,
    /// Validators for next time.
    pub validators: Validators,
    /// `Link` header (GitHub paginates with it).
    pub link: Option<String>,
}

impl Response {
    /// The body as text (lossy: a page with a bad byte is still a page).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What a GET gave.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// 304: the copy we have is current.
    NotModified,
    /// 2xx with its body.
    Body(Response),
}

/// robots.txt of one origin, as understood.
enum Robots {
    /// Rules for our agent.
    Rules(Box<Robot>),
    /// No robots.txt (4xx): everything allowed.
    AllowAll,
    /// robots.txt unreachable (5xx, network): RFC 9309 says assume complete disallow.
    DisallowAll(String),
}

/// The pace of one host: when its next request may start.
struct HostPace {
    next: Instant,
    interval: Duration,
}

/// Which addresses a fetcher may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// Public ones only (the default for every source).
    Public,
    /// Any, loopback and private included: sources configured as local.
    Any,
}

/// Most redirects followed for one GET.
const MAX_REDIRECTS: usize = 10;

/// How long a failure to fetch robots.txt keeps its origin disallowed, at most.
const ROBOTS_FAILURE_TTL: Duration = Duration::from_secs(60);

/// The crawlers' HTTP client. Cheap to share behind an `Arc`.
pub struct Fetcher {
    client: reqwest::Client,
    settings: HttpConfig,
    addresses: Addresses,
    robots_agent: String,
    robots: tokio::sync::Mutex<HashMap<String, (Arc<Robots>, Instant)>>,
    hosts: Mutex<HashMap<String, HostPace>>,
    stop: CancellationToken,
}

/// The error of a host name that resolves only to addresses a public fetcher must not reach.
#[derive(Debug)]
struct NotPublic(String);

impl std::fmt::Display for NotPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} resolves only to non-public addresses (loopback, private or link-local); set \
             `local = true` on the source to crawl it",
            self.0
        )
    }
}

impl std::error::Error for NotPublic {}

/// A resolver that keeps only public addresses: checked where the connection is made, so a name
/// that resolves differently the second time (DNS rebinding) cannot slip through.
struct PublicResolver;

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(NotPublic(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether an address is on the public internet: not loopback, private (RFC 1918, unique
/// local), link-local (cloud metadata lives there), shared (CGNAT), unspecified, multicast,
/// broadcast, documentation or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// Whether a url names this machine or a private network by itself (`localhost`, a loopback or
/// private address): a source configured with such a url is local.
pub fn names_local_host(url: &str) -> bool {
    let Ok(url) = Url::parse(url) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        None => false,
    }
}

/// Where a GET went: an answer, or a redirect to follow.
enum Hop {
    Done(Fetched),
    Redirect(Url),
}

impl Fetcher {
    /// A client with the configured user agent and timeouts, reaching public addresses only;
    /// `stop` cuts waits short.
    pub fn new(settings: &HttpConfig, stop: CancellationToken) -> Result<Self> {
        Self::reaching(settings, stop, Addresses::Public)
    }

    /// A client that reaches `addresses`.
    pub fn reaching(
        settings: &HttpConfig,
        stop: CancellationToken,
        addresses: Addresses,
    ) -> Result<Self> {
        if settings.timeout_secs <= 0.0 || !settings.timeout_secs.is_finite() {
            return Err(IngestError::Config(format!(
                "ingest.http.timeout_secs must be a positive number of seconds, not {}",
                settings.timeout_secs
            )));
        }
        if settings.requests_per_second < 0.0 || !settings.requests_per_second.is_finite() {
            return Err(IngestError::Config(format!(
                "ingest.http.requests_per_second must be 0 (no limit) or more, not {}",
                settings.requests_per_second
            )));
        }
        let timeout = Duration::from_secs_f64(settings.timeout_secs);
        let mut builder = reqwest::Client::builder()
            .user_agent(settings.user_agent.clone())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none());
        if addresses == Addresses::Public {
            builder = builder.dns_resolver(Arc::new(PublicResolver));
        }
        let client = builder
            .build()
            .map_err(|e| IngestError::Config(format!("HTTP client: {e}")))?;
        // robots.txt groups name a product token ("twin-crawler"), not the whole user agent.
        let robots_agent = settings
            .user_agent
            .split(['/', ' '])
            .next()
            .unwrap_or("*")
            .to_ascii_lowercase();
        Ok(Self {
            client,
            settings: settings.clone(),
            addresses,
            robots_agent,
            robots: tokio::sync::Mutex::new(HashMap::new()),
            hosts: Mutex::new(HashMap::new()),
            stop,
        })
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &HttpConfig {
        &self.settings
    }

    /// GET `request.url`: robots.txt checked for pages, paced per host, retried on 429, 5xx,
    /// timeouts and broken connections (honouring Retry-After), body capped in size.
    pub async fn get(&self, request: Request<'_>) -> Result<Fetched> {
        let url = Url::parse(request.url).map_err(|e| IngestError::Http {
            url: request.url.to_string(),
            status: None,
            reason: format!("not a valid url: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(IngestError::Http {
                url: request.url.to_string(),
                status: None,
                reason: format!("unsupported scheme {:?}", url.scheme()),
            });
        }
        let robots = request.access == Access::Page && self.settings.respect_robots_txt;
        self.follow(url, request, robots).await
    }

    /// GET `url`, following redirects hop by hop: every hop's scheme and address checked,
    /// robots.txt too when `robots`, the bearer token dropped once the origin changes.
    async fn follow(&self, first: Url, request: Request<'_>, robots: bool) -> Result<Fetched> {
        let mut url = first;
        let mut request = request;
        for _ in 0..=MAX_REDIRECTS {
            self.check_address(&url)?;
            if robots {
                self.check_robots(&url).await?;
            }
            match self.get_with_retries(&url, request).await? {
                Hop::Done(fetched) => return Ok(fetched),
                Hop::Redirect(next) => {
                    if !matches!(next.scheme(), "http" | "https") {
                        return Err(IngestError::Http {
                            url: url.to_string(),
                            status: None,
                            reason: format!("redirects to an unsupported scheme: {next}"),
                        });
                    }
                    if next.origin() != url.origin() {
                        request.bearer = None;
                    }
                    // Validators belong to the url they were given for.
                    request.validators = None;
                    debug!(from = %url, to = %next, "following a redirect");
                    url = next;
                }
            }
        }
        Err(IngestError::Http {
            url: url.to_string(),
            status: None,
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// Refuse a url that names a non-public address, unless this fetcher reaches any (names
    /// are checked by the resolver, where the connection is made).
    fn check_address(&self, url: &Url) -> Result<()> {
        if self.addresses == Addresses::Any {
            return Ok(());
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        if is_public(ip) {
            return Ok(());
        }
        metrics::counter!("twin_ingest_private_refused_total").increment(1);
        Err(IngestError::Http {
            url: url.to_string(),
            status: None,
            reason: format!(
                "refused: {ip} is not a public address (loopback, private or link-local); set \
                 `local = true` on the source to crawl it"
            ),
        })
    }

    /// Whether robots.txt lets us fetch `url`; fetched once per origin, kept for
    /// `robots_txt_ttl_secs` (a failure to fetch it, for a minute at most).
    async fn check_robots(&self, url: &Url) -> Result<()> {
        let origin = url.origin().ascii_serialization();
        let robots_url = format!("{origin}/robots.txt");
        let ttl = Duration::from_secs(self.settings.robots_txt_ttl_secs);
        let robots = {
            // Held across the fetch so that concurrent pages of one origin fetch it once.
            let mut cache = self.robots.lock().await;
            let fresh = cache.get(&origin).filter(|(robots, at)| {
                let keep = match robots.as_ref() {
                    Robots::DisallowAll(_) => ttl.min(ROBOTS_FAILURE_TTL),
                    _ => ttl,
                };
                at.elapsed() < keep
            });
            match fresh {
                Some((robots, _)) => robots.clone(),
                None => {
                    // Boxed: fetching robots.txt follows redirects too (a cycle of futures).
                    let robots = Arc::new(Box::pin(self.fetch_robots(&robots_url)).await?);
                    cache.insert(origin.clone(), (robots.clone(), Instant::now()));
                    robots
                }
            }
        };
        match robots.as_ref() {
            Robots::AllowAll => Ok(()),
            Robots::Rules(robot) if robot.allowed(url.as_str()) => Ok(()),
            Robots::Rules(_) => Err(IngestError::Disallowed {
                url: url.to_string(),
                robots: robots_url,
            }),
            Robots::DisallowAll(why) => Err(IngestError::Disallowed {
                url: url.to_string(),
                robots: format!("{robots_url} (unreachable: {why}, so everything is disallowed)"),
            }),
        }
    }

    async fn fetch_robots(&self, robots_url: &str) -> Result<Robots> {
        let url = Url::parse(robots_url)
            .map_err(|e| IngestError::malformed(robots_url, e.to_string()))?;
        let robots = match self
            .follow(url.clone(), Request::api(robots_url), false)
            .await
        {
            Ok(Fetched::Body(response)) => match Robot::new(&self.robots_agent, &response.body) {
                Ok(robot) => {
                    if let Some(delay) = robot.delay.filter(|d| d.is_finite() && *d > 0.0) {
                        self.slow_down(&url, Duration::from_secs_f32(delay));
                    }
                    Robots::Rules(Box::new(robot))
                }
                Err(e) => {
                    warn!(robots = robots_url, error = %e, "unreadable robots.txt, treated as absent");
                    Robots::AllowAll
                }
            },
            Ok(Fetched::NotModified) => Robots::AllowAll,
            Err(IngestError::Http {
                status: Some(status),
                ..
            }) if (400..500).contains(&status) => Robots::AllowAll,
            Err(IngestError::Stopped) => return Err(IngestError::Stopped),
            Err(e) => Robots::DisallowAll(e.to_string()),
        };
        Ok(robots)
    }

    /// robots.txt's Crawl-delay can slow a host down, never speed it up.
    fn slow_down(&self, url: &Url, interval: Duration) {
        let host = host_key(url);
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let pace = hosts.entry(host).or_insert_with(|| HostPace {
            next: Instant::now(),
            interval: self.base_interval(),
        });
        pace.interval = pace.interval.max(interval);
    }

    fn base_interval(&self) -> Duration {
        if self.settings.requests_per_second > 0.0 {
            Duration::from_secs_f64(1.0 / self.settings.requests_per_second)
        } else {
            Duration::ZERO
        }
    }

    /// Wait for this host's next slot.
    async fn pace(&self, url: &Url) -> Result<()> {
        let wait = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let pace = hosts.entry(host_key(url)).or_insert_with(|| HostPace {
                next: now,
                interval: self.base_interval(),
            });
            let slot = pace.next.max(now);
            pace.next = slot + pace.interval;
            slot - now
        };
        self.sleep(wait).await
    }

    /// Sleep, unless the crawl is stopped first.
    async fn sleep(&self, duration: Duration) -> Result<()> {
        if duration.is_zero() {
            return if self.stop.is_cancelled() {
                Err(IngestError::Stopped)
            } else {
                Ok(())
            };
        }
        tokio::select! {
            _ = tokio::time::sleep(duration) => Ok(()),
            _ = self.stop.cancelled() => Err(IngestError::Stopped),
        }
    }

    async fn get_with_retries(&self, url: &Url, request: Request<'_>) -> Result<Hop> {
        let attempts = self.settings.retries + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.pace(url).await?;
            let started = Instant::now();
            let outcome = self.get_once(url, &request).await;
            metrics::histogram!("twin_ingest_http_request_seconds")
                .record(started.elapsed().as_secs_f64());
            let failure = match outcome {
                Ok(fetched) => {
                    metrics::counter!("twin_ingest_http_requests_total", "outcome" => "ok")
                        .increment(1);
                    return Ok(fetched);
                }
                Err(failure) => failure,
            };
            metrics::counter!("twin_ingest_http_requests_total", "outcome" => failure.label())
                .increment(1);
            let retry = failure.retryable && attempt < attempts;
            if !retry {
                let reason = if attempt > 1 {
                    format!("{} (after {attempt} attempts)", failure.reason)
                } else {
                    failure.reason
                };
                return Err(IngestError::Http {
                    url: url.to_string(),
                    status: failure.status,
                    reason,
                });
            }
            let backoff = Duration::from_millis(self.settings.backoff_ms)
                .saturating_mul(1u32 << (attempt - 1).min(16));
            let delay = match failure.retry_after {
                Some(asked) if asked > Duration::from_secs(self.settings.max_retry_after_secs) => {
                    return Err(IngestError::Http {
                        url: url.to_string(),
                        status: failure.status,
                        reason: format!(
                            "{}; the server asks to retry after {} s, more than \
                             ingest.http.max_retry_after_secs = {}",
                            failure.reason,
                            asked.as_secs(),
                            self.settings.max_retry_after_secs
                        ),
                    });
                }
                Some(asked) => asked,
                None => backoff,
            };
            debug!(url = %url, attempt, delay_ms = delay.as_millis() as u64, reason = %failure.reason, "retrying");
            self.sleep(delay).await?;
        }
    }

    async fn get_once(&self, url: &Url, request: &Request<'_>) -> Result<Hop, Failure> {
        let mut headers = HeaderMap::new();
        if let Some(validators) = request.validators {
            if let Some(etag) = validators.etag.as_deref().and_then(header_value) {
                headers.insert(header::IF_NONE_MATCH, etag);
            }
            if let Some(date) = validators.last_modified.as_deref().and_then(header_value) {
                headers.insert(header::IF_MODIFIED_SINCE, date);
            }
        }
        if let Some(accept) = request.accept.and_then(header_value) {
            headers.insert(header::ACCEPT, accept);
        }
        if let Some(token) = request.bearer {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Failure::fatal(None, "the token is not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let mut response = self
            .client
            .get(url.clone())
            .headers(headers)
            .send()
            .await
            .map_err(Failure::transport)?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Hop::Done(Fetched::NotModified));
        }
        if status.is_redirection() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    Failure::fatal(
                        Some(status.as_u16()),
                        format!("HTTP {status} without a Location"),
                    )
                })?;
            let next = url.join(location).map_err(|e| {
                Failure::fatal(
                    Some(status.as_u16()),
                    format!("HTTP {status} to an invalid Location {location:?}: {e}"),
                )
            })?;
            return Ok(Hop::Redirect(next));
        }
        if !status.is_success() {
            let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            return Err(Failure {
                status: Some(status.as_u16()),
                reason: format!("HTTP {status}"),
                retryable,
                retry_after: retry_after(response.headers()),
            });
        }
        let limit = self.settings.max_response_bytes;
        if let Some(length) = response.content_length().filter(|l| *l > limit) {
            return Err(Failure::fatal(
                Some(status.as_u16()),
                format!(
                    "response of {length} bytes is over ingest.http.max_response_bytes = {limit}"
                ),
            ));
        }
        let validators = Validators {
            etag: header_string(response.headers(), header::ETAG),
            last_modified: header_string(response.headers(), header::LAST_MODIFIED),
        };
        let link = header_string(response.headers(), header::LINK);
        let final_url = response.url().to_string();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(Failure::transport)? {
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(Failure::fatal(
                    Some(status.as_u16()),
                    format!("response is over ingest.http.max_response_bytes = {limit}"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Hop::Done(Fetched::Body(Response {
            url: final_url,
            body,
            validators,
            link,
        })))
    }
}

/// Why one attempt failed, and whether another may help.
struct Failure {
    status: Option<u16>,
    reason: String,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn fatal(status: Option<u16>, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            retryable: false,
            retry_after: None,
        }
    }

    fn transport(error: reqwest::Error) -> Self {
        // reqwest's message names the url, which the caller adds itself; keep only the cause.
        let error = error.without_url();
        // A refused address is not worth another try.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(e) = cause {
            if let Some(refused) = e.downcast_ref::<NotPublic>() {
                metrics::counter!("twin_ingest_private_refused_total").increment(1);
                return Self::fatal(None, format!("refused: {refused}"));
            }
            cause = e.source();
        }
        let reason = if error.is_timeout() {
            "timed out".to_string()
        } else if error.is_connect() {
            format!("could not connect: {}", source_chain(&error))
        } else {
            source_chain(&error)
        };
        Self {
            status: None,
            reason,
            retryable: true,
            retry_after: None,
        }
    }

    fn label(&self) -> &'static str {
        match self.status {
            Some(429) => "429",
            Some(s) if s >= 500 => "5xx",
            Some(_) => "4xx",
            None => "transport",
        }
    }
}

fn source_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Retry-After as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn header_string(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn header_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

fn host_key(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// The url of the next page from a `Link` header (`<url>; rel="next"`).
pub fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next");
        is_next.then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_is_found_among_others() {
        let link = r#"<https://api.github.com/user/1/repos?page=1>; rel="prev", <https://api.github.com/user/1/repos?page=3>; rel="next", <https://api.github.com/user/1/repos?page=5>; rel="last""#;
        assert_eq!(
            next_link(link).as_deref(),
            Some("https://api.github.com/user/1/repos?page=3")
        );
        assert_eq!(next_link(r#"<https://x/?page=1>; rel="first""#), None);
    }

    #[test]
    fn a_request_is_shown_without_its_token() {
        let request = Request {
            bearer: Some("ghp_s3cr3tT0ken"),
            ..Request::page("https://api.github.com/user/repos")
        };
        let shown = format!("{request:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            shown.contains("api.github.com") && shown.contains("********"),
            "{shown}"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(30);
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).expect("date"),
        );
        let wait = retry_after(&headers).expect("a date");
        assert!(wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }
}
