//! The request id: kept from the client when sane, made otherwise, echoed in `X-Request-Id`
//! both ways and in every error body and log line. This module imports nothing of the gateway.

use std::cell::RefCell;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The request id header.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Characters in an id we make.
const ID_LEN: usize = 32;

/// Ids made at once: their text shares one buffer, so an id costs no allocation of its own
/// (nor does a copy of it: each is a reference into the shared buffer).
const IDS_PER_BATCH: usize = 64;

thread_local! {
    /// This thread's ids made ahead, and how far they are used.
    static BATCH: RefCell<(Bytes, usize)> = const { RefCell::new((Bytes::new(), 0)) };
}

/// A request id of 32 hex characters (128 random bits).
pub fn new_request_id() -> HeaderValue {
    let id = BATCH.with(|batch| {
        let mut batch = batch.borrow_mut();
        let (text, used) = &mut *batch;
        if *used + ID_LEN > text.len() {
            *text = id_batch();
            *used = 0;
        }
        let id = text.slice(*used..*used + ID_LEN);
        *used += ID_LEN;
        id
    });
    HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Each byte's two hex digits, looked up rather than worked out digit by digit.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [HEX[byte >> 4], HEX[byte & 0xf]];
        byte += 1;
    }
    pairs
};

/// The text of [`IDS_PER_BATCH`] ids, one after the other.
fn id_batch() -> Bytes {
    // Written in place (a push per digit pair checked the capacity each time: ~200
    // instructions per id).
    let mut text = vec![0u8; ID_LEN * IDS_PER_BATCH];
    // A 64-bit word makes 16 digits.
    for digits in text.chunks_exact_mut(16) {
        let word = fastrand::u64(..).to_le_bytes();
        for (pair, byte) in digits.chunks_exact_mut(2).zip(word) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
    }
    Bytes::from(text)
}

/// Keeps a client's id when it is sane (visible ASCII, ≤ 128 bytes), otherwise makes one.
pub(crate) fn request_id_of(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(id) if is_sane(id.as_bytes()) => id.clone(),
        _ => new_request_id(),
    }
}

/// Whether a client's id is kept: visible ASCII, 1 to 128 bytes.
pub(crate) fn is_sane(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 128 && id.iter().all(u8::is_ascii_graphic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id_of(&headers), "abc-123");
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        let made = request_id_of(&headers);
        assert_eq!(made.len(), 32);
        assert_ne!(made, new_request_id());
    }

    #[test]
    fn made_ids_are_hex_and_differ_across_batches() {
        let ids: Vec<HeaderValue> = (0..IDS_PER_BATCH * 2 + 1)
            .map(|_| new_request_id())
            .collect();
        for id in &ids {
            assert_eq!(id.len(), ID_LEN);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        }
        let distinct: std::collections::HashSet<&[u8]> =
            ids.iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
