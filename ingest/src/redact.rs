//! Secrets out of what is published: text that matches a known secret format (GitHub, AWS,
//! OpenAI, Anthropic, Slack, Stripe, Google API keys, private-key blocks) is replaced by
//! `[REDACTED <kind>]` before it becomes an event. The log is kept for ever and every store is
//! rebuilt from it, so a secret that reached it would be served, embedded and trained on.
//!
//! The formats are those of the providers' own token prefixes (as GitHub's secret scanning and
//! gitleaks match them): specific enough that prose is not redacted by mistake.

use std::sync::LazyLock;

use regex::Regex;

/// The secret formats: a kind (named in the replacement and the counts) and its pattern.
const PATTERNS: &[(&str, &str)] = &[
    (
        "private-key",
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
    ),
    (
        "github-token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{40,255})\b",
    ),
    (
        "aws-access-key-id",
        r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
    ),
    (
        "aws-secret-access-key",
        r#"(?i)\baws_?secret_?access_?key\b["']?\s*[:=]\s*["']?[A-Za-z0-9/+=]{40}\b"#,
    ),
    ("anthropic-api-key", r"\bsk-ant-[A-Za-z0-9_-]{32,}"),
    (
        "openai-api-key",
        r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,}",
    ),
    ("slack-token", r"\bxox[abposre]-[A-Za-z0-9-]{10,}"),
    (
        "slack-webhook",
        r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9+/_-]{20,}",
    ),
    ("stripe-key", r"\b(?:sk|rk)_live_[A-Za-z0-9]{20,}\b"),
    ("google-api-key", r"\bAIza[0-9A-Za-z_-]{35}\b"),
];

static COMPILED: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    PATTERNS
        .iter()
        .map(|(kind, pattern)| (*kind, Regex::new(pattern).expect("a valid secret pattern")))
        .collect()
});

/// `text` with every secret replaced, and the kinds found (one entry per secret).
pub fn redact(text: &str) -> (String, Vec<&'static str>) {
    let mut found = Vec::new();
    let mut out = std::borrow::Cow::Borrowed(text);
    for (kind, pattern) in COMPILED.iter() {
        if !pattern.is_match(&out) {
            continue;
        }
        let replaced = pattern.replace_all(&out, |_: &regex::Captures<'_>| {
            found.push(*kind);
            format!("[REDACTED {kind}]")
        });
        out = std::borrow::Cow::Owned(replaced.into_owned());
    }
    (out.into_owned(), found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_redacted_and_named() {
        // Made-up values of each provider's format.
        let cases = [
            ("github-token", format!("ghp_{}", "a1B2".repeat(9))),
            ("github-token", format!("github_pat_11{}", "AbC_9".repeat(12))),
            ("aws-access-key-id", "AKIAIOSFODNN7EXAMPLE".to_string()),
            (
                "aws-secret-access-key",
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_string(),
            ),
            ("openai-api-key", format!("sk-proj-{}", "Xy7_".repeat(12))),
            ("anthropic-api-key", format!("sk-ant-api03-{}", "Qw9-".repeat(12))),
            ("slack-token", "xoxb-2048-4096-AbCdEfGhIjKl".to_string()),
            (
                "slack-webhook",
                "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX".to_string(),
            ),
            (
                "private-key",
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA\n-----END OPENSSH PRIVATE KEY-----"
                    .to_string(),
            ),
            ("stripe-key", format!("sk_live_{}", "4eC39HqLyjWDarjtT1zdp7dc")),
            ("google-api-key", format!("AIza{}", "SyA-1234567890abcdefghijklmnopqrstu")),
        ];
        for (kind, secret) in cases {
            let text = format!("Set it up like this:\n{secret}\nand run it.");
            let (clean, found) = redact(&text);
            assert_eq!(found, vec![kind], "{text}");
            assert!(!clean.contains(&secret), "{clean}");
            assert!(clean.contains(&format!("[REDACTED {kind}]")), "{clean}");
            assert!(clean.starts_with("Set it up like this:") && clean.ends_with("and run it."));
        }
    }

    #[test]
    fn prose_and_code_without_secrets_are_untouched() {
        let text = "Use sk-learn's API (scikit-learn); AKIA is a prefix; a ghp_ token looks \
                    like ghp_short. `let key = env::var(\"OPENAI_API_KEY\")?;` \
                    -----BEGIN CERTIFICATE----- is public.";
        let (clean, found) = redact(text);
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(clean, text);
    }
}
