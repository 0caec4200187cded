//! Request ids: 32 hex characters (128 bits) from a per-connection wyrand generator.
//!
//! sekisho draws them from fastrand (a thread-local wyrand); the prototype keeps one generator
//! per connection, seeded from a process-wide counter mixed with the start time, so making an id
//! is a few multiplications and no allocation (it is written into a reused buffer).

use std::sync::atomic::{AtomicU64, Ordering};

/// Seeds handed to connections: a start value, then a Weyl sequence.
static NEXT_SEED: AtomicU64 = AtomicU64::new(0);

const WEYL: u64 = 0xa076_1d64_78bd_642f;

/// One connection's id generator.
#[derive(Debug, Clone)]
pub struct RequestIds {
    state: u64,
}

impl RequestIds {
    /// Seeds a generator for a new connection.
    pub fn new() -> Self {
        let mut seed = NEXT_SEED.fetch_add(WEYL, Ordering::Relaxed);
        if seed == 0 {
            // The first connection: mix in the time so that two runs differ.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |elapsed| elapsed.as_nanos() as u64);
            NEXT_SEED.fetch_add(nanos, Ordering::Relaxed);
            seed = nanos;
        }
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(WEYL);
        let product = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        (product >> 64) as u64 ^ product as u64
    }

    /// Appends a new id (32 lowercase hex digits) to `out`.
    pub fn next_hex(&mut self, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 32];
        for (half, word) in text
            .chunks_exact_mut(16)
            .zip([self.next_u64(), self.next_u64()])
        {
            for (index, pair) in half.chunks_exact_mut(2).enumerate() {
                let byte = (word >> (index * 8)) as u8;
                pair[0] = HEX[usize::from(byte >> 4)];
                pair[1] = HEX[usize::from(byte & 0xf)];
            }
        }
        out.extend_from_slice(&text);
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_digits_and_differ() {
        let mut ids = RequestIds::new();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        ids.next_hex(&mut first);
        ids.next_hex(&mut second);
        assert_eq!(first.len(), 32);
        assert!(first.iter().all(u8::is_ascii_hexdigit));
        assert_ne!(first, second);
        let mut other = Vec::new();
        RequestIds::new().next_hex(&mut other);
        assert_ne!(first, other);
    }
}
