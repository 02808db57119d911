//! What counts as a secret, and masking it. A key is secret when one of its words (split at
//! `.`, `_` and `-`, in any case) is or ends with one of [`SECRET_WORDS`], or it holds `api`
//! followed by `key`: `github_token`, `sasl.password` and `api_key` are secrets, `max_tokens`
//! and `overlap_tokens` are not (a word that only contains one, as `tokens` does, is not).

/// Words that mark a key as secret.
pub const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "credentials",
    "pem",
    "apikey",
];

/// What a secret is shown as.
pub const MASK: &str = "********";

/// Whether a configuration key holds a secret.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let words: Vec<&str> = key.split(['.', '_', '-']).collect();
    words
        .iter()
        .any(|word| SECRET_WORDS.iter().any(|w| word.ends_with(w)))
        || words.windows(2).any(|pair| pair == ["api", "key"])
        || key.contains("sasl.oauthbearer.config")
        || key.contains("sasl_oauthbearer_config")
}

/// The value, or the mask if the key is secret.
pub fn masked<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret(key) {
        MASK
    } else {
        value
    }
}

/// Mask every secret in a TOML tree, in place.
pub fn mask_toml(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                if is_secret(key) && !v.is_table() {
                    *v = toml::Value::String(MASK.into());
                } else {
                    mask_toml(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(mask_toml),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_recognised_by_name() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "SASL_PASSWORD",
            "github_token",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "api_key",
            "api_token",
            "HF_TOKEN",
            "apiToken",
            "aws_secret_access_key",
            "sasl.oauthbearer.config",
        ] {
            assert!(is_secret(key), "{key}");
        }
        for key in [
            "sasl.username",
            "security.protocol",
            "ssl.ca.location",
            "brokers",
            "max_tokens",
            "overlap_tokens",
            "chunk_tokens",
            "context_tokens",
            "max_new_tokens",
        ] {
            assert!(!is_secret(key), "{key}");
        }
    }

    #[test]
    fn masking_reaches_nested_tables() {
        let mut value: toml::Value = toml::from_str(
            "[log.kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"sasl.username\" = \"me\"\n",
        )
        .expect("toml");
        mask_toml(&mut value);
        let text = value.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("me"), "{text}");
    }
}
