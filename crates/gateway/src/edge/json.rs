//! The contract's error body, `{"status":"error","error":{"code","message","request_id"}}`,
//! written by hand: every refusal pays for it. This module is the edge's; it maps nothing to
//! HTTP itself.

use std::fmt::Write as _;

use bytes::Bytes;

use super::GatewayError;

/// The contract's JSON body for an error: `{"status":"error","error":{"code","message",
/// "request_id"}}`, as serde_json writes it. Written by hand because every refusal pays for it
/// (a shed request, a rate-limited one): the message is formatted straight into the body (no
/// string of its own), and text with nothing to escape — nearly all of it — is copied as it is.
pub fn error_json(code: &str, message: &str, request_id: &str) -> Bytes {
    error_json_display(code, &message, request_id)
}

/// The bytes of the error JSON around its three strings.
const ERROR_JSON_FIXED: usize =
    r#"{"status":"error","error":{"code":"","message":"","request_id":""}}"#.len();

/// [`error_json`] with a message still to be formatted.
pub(super) fn error_json_display(
    code: &str,
    message: &dyn std::fmt::Display,
    request_id: &str,
) -> Bytes {
    const FIXED: usize = ERROR_JSON_FIXED;
    // Room for a typical message too, so the body is one allocation.
    let mut out = Vec::with_capacity(FIXED + code.len() + request_id.len() + 96);
    out.extend_from_slice(br#"{"status":"error","error":{"code":"#);
    push_json_str(&mut out, code);
    out.extend_from_slice(br#","message":""#);
    let _ = write!(JsonEscaped(&mut out), "{message}");
    out.extend_from_slice(br#"","request_id":"#);
    push_json_str(&mut out, request_id);
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// [`error_json_display`] for a gateway error: the refusals a gateway under load gives most
/// (shed, circuit open, bulkhead full, no healthy target) have their message written straight
/// into the body, without `core::fmt` (which cost ≈ 1.2 k instructions per refusal, a fifth of
/// the error answer); the rest are formatted.
pub(super) fn error_json_of(error: &GatewayError, request_id: &str) -> Bytes {
    let mut message = Vec::with_capacity(96);
    if !error.write_message(&mut message) {
        return error_json_display(error.code(), error, request_id);
    }
    let code = error.code();
    // Exactly what is written (the code and the id need no escaping): no growth on the way.
    let mut out =
        Vec::with_capacity(ERROR_JSON_FIXED + code.len() + message.len() + request_id.len());
    out.extend_from_slice(br#"{"status":"error","error":{"code":"#);
    push_json_str(&mut out, code);
    out.extend_from_slice(br#","message":""#);
    out.extend_from_slice(&message);
    out.extend_from_slice(br#"","request_id":"#);
    push_json_str(&mut out, request_id);
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

impl GatewayError {
    /// This error's message, escaped for a JSON string, written into `out` without
    /// `core::fmt`, for the refusals that come in floods; `false` (nothing written) for the
    /// others. Each is the same text as its `Display` (tested).
    pub(super) fn write_message(&self, out: &mut Vec<u8>) -> bool {
        let (before, name, after) = match self {
            Self::Overloaded { route, limit } => {
                out.extend_from_slice(b"route `");
                push_escaped(out, route);
                out.extend_from_slice(b"` is at its concurrency limit (");
                out.extend_from_slice(itoa::Buffer::new().format(*limit).as_bytes());
                out.extend_from_slice(b" in flight)");
                return true;
            }
            Self::BulkheadFull {
                upstream,
                max_concurrent,
            } => {
                out.extend_from_slice(b"upstream `");
                push_escaped(out, upstream);
                out.extend_from_slice(b"` has all its ");
                out.extend_from_slice(itoa::Buffer::new().format(*max_concurrent).as_bytes());
                out.extend_from_slice(b" slots in use");
                return true;
            }
            Self::CircuitOpen { upstream, .. } => {
                ("upstream `", upstream, "` is failing; its circuit is open")
            }
            Self::NoHealthyUpstream { upstream } => {
                ("upstream `", upstream, "` has no healthy target")
            }
            _ => return false,
        };
        out.extend_from_slice(before.as_bytes());
        push_escaped(out, name);
        out.extend_from_slice(after.as_bytes());
        true
    }
}

/// Whether `text` can go into a JSON string as it is.
fn needs_no_escape(text: &str) -> bool {
    !text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

/// `text` as a JSON string.
fn push_json_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    push_escaped(out, text);
    out.push(b'"');
}

/// `text` escaped for the inside of a JSON string, as serde_json escapes it.
fn push_escaped(out: &mut Vec<u8>, text: &str) {
    if needs_no_escape(text) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    let mut quoted = Vec::with_capacity(text.len() + 8);
    if serde_json::to_writer(&mut quoted, text).is_ok() && quoted.len() >= 2 {
        out.extend_from_slice(&quoted[1..quoted.len() - 1]);
    }
    // Writing to a Vec cannot fail; should it, the text is left out.
}

/// A `fmt::Write` that escapes what it is given for the inside of a JSON string.
struct JsonEscaped<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        push_escaped(self.0, text);
        Ok(())
    }
}
