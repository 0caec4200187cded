//! Every answer of the admin listener is made here. The API's (`/api/v1/…`) are one JSON
//! object with a `status`: `"ok"` beside what was asked for ([`ok`]; a list under its plural
//! name with `next_cursor`), or `"error"` with the contract's `error` object ([`error`]). The
//! probes (`/health`, `/ready`, `/health/detailed`) keep the contract's own shapes
//! ([`json_response`]).

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;
use sekisho_gateway::edge::error_json;
use sekisho_gateway::new_request_id;
use serde_json::Value;

use crate::AdminResponse;

/// A JSON answer as given.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> AdminResponse {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A successful API answer: `value`'s fields with `"status": "ok"`.
pub(crate) fn ok(status: StatusCode, mut value: Value) -> AdminResponse {
    debug_assert!(value.is_object(), "an API answer is an object: {value}");
    if let Value::Object(fields) = &mut value {
        fields.insert("status".to_owned(), Value::from("ok"));
    }
    json_response(status, &value)
}

/// A failed answer in the contract's shape, with a request id to find it in the logs.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> AdminResponse {
    let request_id = new_request_id();
    let body = error_json(code, message, request_id.to_str().unwrap_or(""));
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-request-id", request_id);
    response
}
