//! Tracking parameters in links: one rule, used by the crawlers (canonical urls, hence document
//! ids) and by the clean stage (links inside text).

/// Query parameters that only track the reader, on any site (with every `utm_*`).
const TRACKING_PARAMS: &[&str] = &[
    "fbclid",
    "gclid",
    "dclid",
    "msclkid",
    "mc_cid",
    "mc_eid",
    "igshid",
    "ref_src",
    "ref_url",
    "trk",
    "trackingid",
    "lipi",
];

/// Parameters that track only on some platforms (elsewhere they may mean something).
const PLATFORM_TRACKING_PARAMS: &[(&str, &[&str])] = &[
    ("medium.com", &["source"]),
    ("substack.com", &["r", "triedredirect"]),
];

/// Whether query parameter `name` only tracks the reader on `host`.
pub fn is_tracking_param(host: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    name.starts_with("utm_")
        || TRACKING_PARAMS.contains(&name.as_str())
        || PLATFORM_TRACKING_PARAMS.iter().any(|(domain, params)| {
            (host == *domain || host.ends_with(&format!(".{domain}")))
                && params.contains(&name.as_str())
        })
}

/// A url without its tracking query parameters (unchanged if it does not parse or has none).
pub fn strip_tracking(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return raw.to_string();
    };
    if url.query().is_none() {
        return raw.to_string();
    }
    let host = url.host_str().unwrap_or("").to_string();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !is_tracking_param(&host, k))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_parameters_leave_links_and_the_rest_stays() {
        assert_eq!(
            strip_tracking("https://x.substack.com/p/post?utm_source=twitter&utm_medium=social"),
            "https://x.substack.com/p/post"
        );
        assert_eq!(
            strip_tracking("https://a.io/s?q=rust&fbclid=123"),
            "https://a.io/s?q=rust"
        );
        assert_eq!(strip_tracking("not a url"), "not a url");
        assert_eq!(strip_tracking("https://a.io/x?id=2"), "https://a.io/x?id=2");
    }

    #[test]
    fn platform_parameters_are_tracking_only_on_their_platform() {
        assert_eq!(
            strip_tracking("https://a.substack.com/p/x?r=abc"),
            "https://a.substack.com/p/x"
        );
        assert_eq!(
            strip_tracking("https://medium.com/p/1?source=rss----1"),
            "https://medium.com/p/1"
        );
        assert_eq!(
            strip_tracking("https://example.org/feed?source=docs"),
            "https://example.org/feed?source=docs"
        );
        assert_eq!(
            strip_tracking("https://medium.com/@a/p?sk=friend"),
            "https://medium.com/@a/p?sk=friend"
        );
    }
}
