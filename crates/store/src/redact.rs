//! Credentials out of URLs before anything shows them.
//!
//! A store URL can carry a password (`redis://:secret@host:6379/0`,
//! `postgres://user:secret@host/db`, `...?password=secret`). The gateway keeps the URL as given
//! to connect with and shows only [`redact_url`]'s form in the admin API, health checks, `check`
//! and log lines; [`redact_in`] scrubs a password from text a driver produced (an error message).

/// What a secret is replaced by.
pub const MASK: &str = "***";

/// `url` with its password (userinfo after `:`, or the whole userinfo when it has no `:`, since
/// a lone userinfo is often a token) and any `password`/`pass`/`secret`/`token` query value
/// replaced by `***`. Text that is not a URL comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut copied = 0;
    for (start, end) in secret_spans(url) {
        out.push_str(&url[copied..start]);
        out.push_str(MASK);
        copied = end;
    }
    out.push_str(&url[copied..]);
    out
}

/// `text` with every secret [`redact_url`] would hide in `url` replaced by `***`: for messages a
/// driver wrote about that URL.
pub fn redact_in(text: &str, url: &str) -> String {
    let mut out = text.to_owned();
    if out.contains(url) {
        out = out.replace(url, &redact_url(url));
    }
    for (start, end) in secret_spans(url) {
        if start < end {
            out = out.replace(&url[start..end], MASK);
        }
    }
    out
}

fn is_secret_key(key: &str) -> bool {
    ["password", "pass", "secret", "token"]
        .iter()
        .any(|secret| key.eq_ignore_ascii_case(secret))
}

/// Where the secrets of `url` are, as byte ranges in order: its password (or lone userinfo) and
/// the values of secret query keys (an empty password or value is masked too).
fn secret_spans(url: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let Some(scheme_end) = url.find("://") else {
        return spans;
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if let Some(at) = rest[..authority_len].rfind('@') {
        match rest[..at].find(':') {
            Some(colon) => spans.push((authority_start + colon + 1, authority_start + at)),
            // An empty userinfo hides nothing.
            None if at == 0 => {}
            None => spans.push((authority_start, authority_start + at)),
        }
    }
    let tail_start = authority_start + authority_len;
    if let Some(question) = url[tail_start..].find('?') {
        let query_start = tail_start + question + 1;
        let query_end = url[query_start..]
            .find('#')
            .map_or(url.len(), |hash| query_start + hash);
        let mut pair_start = query_start;
        for pair in url[query_start..query_end].split('&') {
            if let Some((key, _)) = pair.split_once('=') {
                if is_secret_key(key) {
                    spans.push((pair_start + key.len() + 1, pair_start + pair.len()));
                }
            }
            pair_start += pair.len() + 1;
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_are_masked() {
        let cases = [
            ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
            ("redis://user:pw@host:6379", "redis://user:***@host:6379"),
            ("redis://token@host", "redis://***@host"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://user:@host", "redis://user:***@host"),
            ("redis://@host/0?password=", "redis://@host/0?password=***"),
            ("rediss://u:p@a@host/1", "rediss://u:***@host/1"),
            (
                "postgres://app@db/x?sslmode=require&password=pw#f",
                "postgres://***@db/x?sslmode=require&password=***#f",
            ),
            ("not a url", "not a url"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_password_is_scrubbed_from_a_message() {
        let url = "redis://:s3cret@host:6379/0";
        let message = format!("cannot reach {url}: auth s3cret refused");
        let scrubbed = redact_in(&message, url);
        assert!(!scrubbed.contains("s3cret"), "{scrubbed}");
        assert!(scrubbed.contains("redis://:***@host:6379/0"), "{scrubbed}");
    }
}
