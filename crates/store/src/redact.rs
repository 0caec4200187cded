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
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..authority_start]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                None if userinfo.is_empty() => {}
                None => out.push_str(MASK),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[authority_len..];
    match tail.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let (query, fragment) = match query.split_once('#') {
                Some((query, fragment)) => (query, Some(fragment)),
                None => (query, None),
            };
            for (index, pair) in query.split('&').enumerate() {
                if index > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((key, _)) if is_secret_key(key) => {
                        out.push_str(key);
                        out.push('=');
                        out.push_str(MASK);
                    }
                    _ => out.push_str(pair),
                }
            }
            if let Some(fragment) = fragment {
                out.push('#');
                out.push_str(fragment);
            }
        }
        None => out.push_str(tail),
    }
    out
}

fn is_secret_key(key: &str) -> bool {
    ["password", "pass", "secret", "token"]
        .iter()
        .any(|secret| key.eq_ignore_ascii_case(secret))
}

/// `text` with every secret [`redact_url`] would hide in `url` replaced by `***`: for messages a
/// driver wrote about that URL.
pub fn redact_in(text: &str, url: &str) -> String {
    let mut out = text.to_owned();
    for secret in secrets(url) {
        if !secret.is_empty() {
            out = out.replace(secret, MASK);
        }
    }
    if out.contains(url) {
        out = out.replace(url, &redact_url(url));
    }
    out
}

/// The secrets of `url`: its password (or lone userinfo) and secret query values, as written.
fn secrets(url: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let Some(scheme_end) = url.find("://") else {
        return found;
    };
    let rest = &url[scheme_end + 3..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if let Some(at) = rest[..authority_len].rfind('@') {
        let userinfo = &rest[..at];
        found.push(
            userinfo
                .split_once(':')
                .map_or(userinfo, |(_, password)| password),
        );
    }
    if let Some((_, query)) = rest[authority_len..].split_once('?') {
        let query = query.split_once('#').map_or(query, |(query, _)| query);
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=') {
                if is_secret_key(key) {
                    found.push(value);
                }
            }
        }
    }
    found
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
