//! Opaque tokens: 256 random bits from the operating system, written as 64 hex digits; the
//! stores keep only their SHA-256, so a leaked table or Redis dump holds no usable token.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::password::hex;

/// A new token (or session id): 32 random bytes in hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// What the stores keep of `token`: its SHA-256 in hex.
pub fn token_hash(token: &str) -> String {
    hex(&token_digest(token))
}

/// The SHA-256 of `token`: the in-process session cache's key (no text made per request).
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The in-process session cache's key: a token's own 64 bytes, neither decoded nor hashed.
/// Only tokens the stores validated are ever inserted under one, so a key a client invents
/// only misses (and the miss then checks the token's form); `None` when the length is wrong.
pub type CacheKey = [u8; 64];

/// `token` as a [`CacheKey`].
pub fn cache_key(token: &[u8]) -> Option<CacheKey> {
    token.try_into().ok()
}

/// The shard a [`CacheKey`] belongs to, of 16: the value of its last hex digit (any other
/// byte lands somewhere, to miss there).
pub fn cache_shard(key: &CacheKey) -> usize {
    usize::from(NIBBLES[usize::from(key[63])] & 0x0f)
}

/// The [`CacheKey`] of `token` when it has our tokens' form (64 lowercase hex digits): what a
/// validation that may ask the stores, or a logout, looks up; `None` for anything else, which
/// no store is asked about.
pub fn checked_cache_key(token: &str) -> Option<CacheKey> {
    looks_like_token(token)
        .then(|| cache_key(token.as_bytes()))
        .flatten()
}

/// The value of each lowercase hex digit; 0xff for every other byte.
const NIBBLES: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut digit = 0;
    while digit < 10 {
        table[b'0' as usize + digit] = digit as u8;
        digit += 1;
    }
    let mut letter = 0;
    while letter < 6 {
        table[b'a' as usize + letter] = 10 + letter as u8;
        letter += 1;
    }
    table
};

/// The digest written by [`token_hash`], read back (`None` if it is not 64 hex digits).
pub fn digest_of_hash(hash: &str) -> Option<[u8; 32]> {
    let bytes = hash.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (index, pair) in bytes.chunks_exact(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        digest[index] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(digest)
}

/// Whether `text` looks like one of our tokens (64 lowercase hex digits): anything else is
/// refused before any store is asked.
pub fn looks_like_token(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex_and_hashed() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(looks_like_token(&a));
        assert!(!looks_like_token("abc"));
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
        assert_eq!(digest_of_hash(&token_hash(&a)), Some(token_digest(&a)));
        assert_eq!(digest_of_hash("xyz"), None);
        assert_eq!(checked_cache_key(&a), cache_key(a.as_bytes()));
        assert!(checked_cache_key(&a).is_some());
        assert_eq!(checked_cache_key(&a.to_uppercase()), None);
        assert_eq!(checked_cache_key("abc"), None);
        assert_eq!(
            checked_cache_key(&"0f".repeat(32)),
            Some(*b"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f")
        );
        assert_eq!(checked_cache_key(&format!("{}g", "0".repeat(63))), None);
        assert_eq!(checked_cache_key(&format!("/{}", "0".repeat(63))), None);
        assert_eq!(checked_cache_key(&"é".repeat(32)), None);
        // The shard is the last digit's value, so every shard gets its share of tokens.
        let shards: std::collections::BTreeSet<usize> = "0123456789abcdef"
            .chars()
            .map(|last| {
                cache_shard(
                    &cache_key(format!("{}{last}", "0".repeat(63)).as_bytes()).unwrap_or([0; 64]),
                )
            })
            .collect();
        assert_eq!(shards.len(), 16);
    }
}
