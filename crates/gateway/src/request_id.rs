//! The request id: kept from the client when sane, made otherwise, echoed in `X-Request-Id`
//! both ways and in every error body and log line. This module imports nothing of the gateway.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The request id header.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request id of 32 hex characters (128 random bits).
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    // Two 64-bit words, a byte (two digits) at a time: cheaper than shifting a u128 per digit.
    for (half, word) in text
        .chunks_exact_mut(16)
        .zip([fastrand::u64(..), fastrand::u64(..)])
    {
        for (index, pair) in half.chunks_exact_mut(2).enumerate() {
            let byte = (word >> (index * 8)) as u8;
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Keeps a client's id when it is sane (visible ASCII, ≤ 128 bytes), otherwise makes one.
pub(crate) fn request_id_of(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(id)
            if !id.is_empty()
                && id.len() <= 128
                && id.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
        {
            id.clone()
        }
        _ => new_request_id(),
    }
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
}
