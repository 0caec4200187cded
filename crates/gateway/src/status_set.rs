//! A set of HTTP status codes, looked up on every answer (a retry's statuses, a circuit's
//! failures): one bit per code, where a list was scanned whole for every answer that is not
//! in it (a circuit counting all of 5xx as failures held a hundred). This module imports
//! nothing of the gateway.

/// Codes 0–639 (RFC 9110's are 100–599); larger ones are never in the set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StatusSet {
    bits: [u64; 10],
}

impl StatusSet {
    /// Whether `status` is in the set.
    pub(crate) fn contains(&self, status: u16) -> bool {
        let status = usize::from(status);
        self.bits
            .get(status / 64)
            .is_some_and(|word| word & (1 << (status % 64)) != 0)
    }
}

impl FromIterator<u16> for StatusSet {
    /// The codes of `statuses`; a code over 639 is left out (it could never be answered).
    fn from_iter<I: IntoIterator<Item = u16>>(statuses: I) -> Self {
        let mut set = Self::default();
        for status in statuses {
            let status = usize::from(status);
            if let Some(word) = set.bits.get_mut(status / 64) {
                *word |= 1 << (status % 64);
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_exactly_the_codes_it_was_made_of() {
        let set: StatusSet = [500, 502, 503, 504, 429, 100, 599, 639, 640, 65535]
            .into_iter()
            .collect();
        for status in 0..=u16::MAX {
            let expected = matches!(status, 100 | 429 | 500 | 502 | 503 | 504 | 599 | 639);
            assert_eq!(set.contains(status), expected, "{status}");
        }
        assert!(!StatusSet::default().contains(500));
    }

    #[test]
    fn a_range_of_codes_is_all_of_them() {
        let set: StatusSet = (500..=599).collect();
        assert!((500..=599).all(|status| set.contains(status)));
        assert!(!set.contains(499) && !set.contains(600) && !set.contains(200));
    }
}
