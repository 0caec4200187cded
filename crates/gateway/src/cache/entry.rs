//! A stored response, and its encoding for the shared tier.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// Milliseconds of the wall clock: entries move between instances, so their times must mean
/// the same on every one (instances are assumed NTP-synchronised; a skew of a second shifts
/// freshness by a second).
pub(super) fn now_ms() -> u64 {
    crate::clock::unix_ms(SystemTime::now())
}

/// How long past its freshness an entry with a validator is kept at least, to be revalidated
/// (a `304` costs the origin far less than the whole answer): nginx's `inactive` default.
pub(super) const REVALIDATE_KEEP_MS: u64 = 10 * 60 * 1000;

/// One cached response, or a marker that the response of this URL varies.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it was stored, in [`now_ms`] milliseconds.
    pub stored_ms: u64,
    /// Age the upstream reported (`Age`), in milliseconds.
    pub initial_age_ms: u64,
    /// Freshness lifetime, jitter included.
    pub lifetime_ms: u64,
    /// How long past its freshness it may serve while one refresh runs.
    pub swr_ms: u64,
    /// How long past its freshness it may serve when the upstream fails.
    pub sie_ms: u64,
    /// How long the upstream call that made it took (for early refresh).
    pub fetch_ms: u64,
    /// Tags, for purges.
    pub tags: Vec<String>,
    /// For a marker: the header names the response varies on, and the marker's generation
    /// (part of every variant's key, so a new marker orphans the old variants).
    pub vary: Option<(Vec<HeaderName>, u64)>,
}

impl Entry {
    /// Milliseconds since it was made at the origin.
    pub(super) fn age_ms(&self, now: u64) -> u64 {
        now.saturating_sub(self.stored_ms) + self.initial_age_ms
    }

    /// Positive while fresh: milliseconds of freshness left (negative: stale by that much).
    pub(super) fn ttl_ms(&self, now: u64) -> i64 {
        let lifetime = i64::try_from(self.lifetime_ms).unwrap_or(i64::MAX);
        lifetime - i64::try_from(self.age_ms(now)).unwrap_or(i64::MAX)
    }

    /// How long the entry is worth keeping: its freshness and the longest stale window; with a
    /// validator, at least [`REVALIDATE_KEEP_MS`] (or its lifetime, up to a day) past its
    /// freshness, to be revalidated with a conditional request then. A Vary marker is kept as
    /// long as any of its variants may be.
    pub(super) fn keep(&self) -> Duration {
        let mut stale = self.swr_ms.max(self.sie_ms);
        if self.vary.is_some() || super::http::has_validator(&self.headers) {
            stale = stale.max(self.lifetime_ms.clamp(REVALIDATE_KEEP_MS, 86_400_000));
        }
        Duration::from_millis(
            self.lifetime_ms
                .saturating_sub(self.initial_age_ms)
                .saturating_add(stale)
                .max(1),
        )
    }

    /// Bytes it takes, roughly (for the in-process tier's bound).
    pub(super) fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        self.body.len() + headers + 128
    }

    /// The shared tier's encoding: a length-prefixed JSON head, then the body as it is.
    pub(super) fn encode(&self) -> Vec<u8> {
        let head = Head {
            status: self.status.as_u16(),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            stored_ms: self.stored_ms,
            initial_age_ms: self.initial_age_ms,
            lifetime_ms: self.lifetime_ms,
            swr_ms: self.swr_ms,
            sie_ms: self.sie_ms,
            fetch_ms: self.fetch_ms,
            tags: self.tags.clone(),
            vary: self.vary.as_ref().map(|(names, generation)| {
                (
                    names.iter().map(|n| n.as_str().to_owned()).collect(),
                    *generation,
                )
            }),
        };
        let head = serde_json::to_vec(&head).unwrap_or_default();
        let mut out = Vec::with_capacity(4 + head.len() + self.body.len());
        out.extend_from_slice(&u32::try_from(head.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads [`encode`](Self::encode)'s output; `None` for anything else.
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if rest.len() < len {
            return None;
        }
        let (head, body) = rest.split_at(len);
        let head: Head = serde_json::from_slice(head).ok()?;
        let mut headers = HeaderMap::new();
        for (name, value) in head.headers {
            headers.append(
                HeaderName::try_from(name).ok()?,
                HeaderValue::from_bytes(&value).ok()?,
            );
        }
        let vary = match head.vary {
            Some((names, generation)) => Some((
                names
                    .into_iter()
                    .map(|n| HeaderName::try_from(n).ok())
                    .collect::<Option<Vec<_>>>()?,
                generation,
            )),
            None => None,
        };
        Some(Self {
            status: StatusCode::from_u16(head.status).ok()?,
            headers,
            body: Bytes::copy_from_slice(body),
            stored_ms: head.stored_ms,
            initial_age_ms: head.initial_age_ms,
            lifetime_ms: head.lifetime_ms,
            swr_ms: head.swr_ms,
            sie_ms: head.sie_ms,
            fetch_ms: head.fetch_ms,
            tags: head.tags,
            vary,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Head {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    stored_ms: u64,
    initial_age_ms: u64,
    lifetime_ms: u64,
    swr_ms: u64,
    sie_ms: u64,
    fetch_ms: u64,
    tags: Vec<String>,
    vary: Option<(Vec<String>, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-many", HeaderValue::from_static("1"));
        headers.append("x-many", HeaderValue::from_static("2"));
        let entry = Entry {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"\x00binary\xffbody"),
            stored_ms: 1_700_000_000_000,
            initial_age_ms: 3000,
            lifetime_ms: 60_000,
            swr_ms: 10_000,
            sie_ms: 300_000,
            fetch_ms: 12,
            tags: vec!["a".into()],
            vary: Some((vec![HeaderName::from_static("accept-encoding")], 7)),
        };
        let back = Entry::decode(&entry.encode()).expect("decodes");
        assert_eq!(back.status, entry.status);
        assert_eq!(back.headers, entry.headers);
        assert_eq!(back.body, entry.body);
        assert_eq!(back.lifetime_ms, 60_000);
        assert_eq!(back.vary, entry.vary);
        assert_eq!(back.tags, entry.tags);
        assert!(Entry::decode(b"garbage").is_none());
        assert_eq!(entry.ttl_ms(1_700_000_000_000 + 60_000), -3000);
        // A marker: kept as long as a variant with a validator may be.
        assert_eq!(
            entry.keep(),
            Duration::from_millis(57_000 + REVALIDATE_KEEP_MS)
        );
        let mut plain = back.clone();
        plain.vary = None;
        assert_eq!(plain.keep(), Duration::from_millis(57_000 + 300_000));
        let mut validated = plain.clone();
        validated.sie_ms = 0;
        validated
            .headers
            .insert("etag", HeaderValue::from_static("\"x\""));
        assert_eq!(
            validated.keep(),
            Duration::from_millis(57_000 + REVALIDATE_KEEP_MS)
        );
    }
}
