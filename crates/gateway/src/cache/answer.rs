//! Answers from a stored entry: the whole response, a `304` when the request's condition says
//! the client's copy is current, or a byte range of it (`206`, `416`).

use ::http::header::{self, HeaderMap, HeaderValue};
use ::http::{Method, Response, StatusCode};
use bytes::Bytes;

use super::entry::Entry;
use super::http;
use crate::body::ResponseBody;

/// The conditional fields of a request, which the cache answers from a fresh entry, and its
/// `Range` (with `If-Range`).
#[derive(Debug, Clone, Default)]
pub(super) struct Conditional {
    none_match: Option<HeaderValue>,
    modified_since: Option<HeaderValue>,
    range: Option<HeaderValue>,
    if_range: Option<HeaderValue>,
}

impl Conditional {
    pub(super) fn of(headers: &HeaderMap) -> Self {
        let none_match = headers.get(header::IF_NONE_MATCH).cloned();
        // If-Modified-Since is ignored when If-None-Match is there (RFC 9110 §13.1.3).
        let modified_since = match none_match {
            Some(_) => None,
            None => headers.get(header::IF_MODIFIED_SINCE).cloned(),
        };
        let range = headers.get(header::RANGE).cloned();
        let if_range = match range {
            Some(_) => headers.get(header::IF_RANGE).cloned(),
            None => None,
        };
        Self {
            none_match,
            modified_since,
            range,
            if_range,
        }
    }

    /// The range of `entry`'s body to answer with: `None` for the whole (no `Range`, a `Range`
    /// that is not one byte range, an `If-Range` that does not match), `Some(Err(()))` when
    /// unsatisfiable.
    fn range(&self, entry: &Entry) -> Option<Result<std::ops::Range<usize>, ()>> {
        let range = self.range.as_ref()?;
        if entry.status != StatusCode::OK {
            return None;
        }
        if let Some(if_range) = &self.if_range {
            if !http::if_range_matches(if_range, &entry.headers) {
                return None;
            }
        }
        http::byte_range(range.to_str().ok()?, entry.body.len())
    }

    /// Whether `entry` satisfies the condition (the client's copy is current): `304`.
    fn not_modified(&self, entry: &Entry) -> bool {
        if !entry.status.is_success() {
            return false;
        }
        if let Some(inm) = &self.none_match {
            return entry
                .headers
                .get(header::ETAG)
                .is_some_and(|etag| http::none_match(inm, etag));
        }
        match (
            &self.modified_since,
            entry.headers.get(header::LAST_MODIFIED),
        ) {
            (Some(since), Some(modified)) => http::not_modified_since(since, modified),
            _ => false,
        }
    }
}

/// The answer to a request from `entry`: `304` when the request's condition says the client's
/// copy is current (`If-None-Match` matching its `ETag`, weakly, or else `If-Modified-Since`
/// not before its `Last-Modified`).
pub(super) fn respond(
    entry: &Entry,
    now: u64,
    method: &Method,
    conditional: &Conditional,
) -> Response<ResponseBody> {
    let age = HeaderValue::from(entry.age_ms(now) / 1000);
    if conditional.not_modified(entry) {
        let mut response = Response::new(ResponseBody::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        for name in [
            header::ETAG,
            header::CACHE_CONTROL,
            header::VARY,
            header::EXPIRES,
            header::DATE,
            header::CONTENT_LOCATION,
            header::LAST_MODIFIED,
        ] {
            for value in entry.headers.get_all(&name) {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
        response.headers_mut().insert(header::AGE, age);
        return response;
    }
    let mut body = entry.body.clone();
    let mut status = entry.status;
    let mut content_range = None;
    if *method == Method::GET {
        // A range of a stored whole answer (RFC 9110 §14).
        let length = entry.body.len();
        match conditional.range(entry) {
            None => {}
            Some(Ok(range)) => {
                content_range = Some(format!(
                    "bytes {}-{}/{length}",
                    range.start,
                    range.end.saturating_sub(1)
                ));
                body = entry.body.slice(range);
                status = StatusCode::PARTIAL_CONTENT;
            }
            Some(Err(())) => {
                content_range = Some(format!("bytes */{length}"));
                body = Bytes::new();
                status = StatusCode::RANGE_NOT_SATISFIABLE;
            }
        }
    }
    let length = body.len();
    let body = if method == Method::HEAD {
        ResponseBody::empty()
    } else {
        ResponseBody::full(body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = entry.headers.clone();
    response.headers_mut().insert(header::AGE, age);
    if let Some(content_range) = content_range {
        if let Ok(value) = HeaderValue::try_from(content_range) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}
