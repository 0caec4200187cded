//! Failed token attempts, counted per client address: past [`MAX_FAILURES`] in a
//! [`WINDOW`], the address gets 429 `RATE_LIMITED` for the rest of the window — even with the
//! right token, so guessing gains nothing by going on. The table is bounded ([`MAX_ADDRESSES`]):
//! when full, finished windows go first, then the oldest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::{Request, StatusCode};
use hyper::body::Incoming;

use crate::{AdminResponse, AdminState};

/// Failed attempts allowed per address and window.
pub(crate) const MAX_FAILURES: u32 = 10;
/// The window failures are counted over.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most.
const MAX_ADDRESSES: usize = 4096;

/// `None` when the request may go on; else 401, or 429 `RATE_LIMITED` with `Retry-After` for an
/// address past its failed attempts.
pub(crate) fn check_token(
    state: &AdminState,
    request: &Request<Incoming>,
    peer: IpAddr,
) -> Option<AdminResponse> {
    state.token.as_ref()?;
    let now = Instant::now();
    if let Some(wait) = state.guard.locked_for(peer, now) {
        let mut refused = crate::error(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            &format!(
                "more than {} wrong tokens from this address in {} s; try again later",
                MAX_FAILURES,
                WINDOW.as_secs()
            ),
        );
        let seconds = wait.as_secs().max(1);
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            refused
                .headers_mut()
                .insert(http::header::RETRY_AFTER, value);
        }
        return Some(refused);
    }
    if crate::authorized(state, request) {
        return None;
    }
    state.guard.failed(peer, now);
    Some(crate::unauthenticated())
}

#[derive(Debug, Default)]
pub(crate) struct TokenGuard {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl TokenGuard {
    /// How long `address` must wait before trying again, if it is locked out now.
    pub(crate) fn locked_for(&self, address: IpAddr, now: Instant) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let &(count, since) = failures.get(&address)?;
        let ends = since + WINDOW;
        (count >= MAX_FAILURES && ends > now).then(|| ends - now)
    }

    /// Counts a failed attempt of `address`.
    pub(crate) fn failed(&self, address: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= MAX_ADDRESSES && !failures.contains_key(&address) {
            failures.retain(|_, (_, since)| *since + WINDOW > now);
            if failures.len() >= MAX_ADDRESSES {
                let oldest = failures
                    .iter()
                    .min_by_key(|(_, (_, since))| *since)
                    .map(|(address, _)| *address);
                if let Some(oldest) = oldest {
                    failures.remove(&oldest);
                }
            }
        }
        let entry = failures.entry(address).or_insert((0, now));
        if entry.1 + WINDOW <= now {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_locked_out_after_too_many_failures_until_its_window_ends() {
        let guard = TokenGuard::default();
        let start = Instant::now();
        let client: IpAddr = "10.0.0.7".parse().expect("address");
        let other: IpAddr = "10.0.0.8".parse().expect("address");
        for _ in 0..MAX_FAILURES - 1 {
            guard.failed(client, start);
        }
        assert_eq!(guard.locked_for(client, start), None);
        guard.failed(client, start);
        let later = start + Duration::from_secs(20);
        assert_eq!(
            guard.locked_for(client, later),
            Some(WINDOW - Duration::from_secs(20))
        );
        assert_eq!(guard.locked_for(other, later), None);
        assert_eq!(guard.locked_for(client, start + WINDOW), None);
        // A new window counts from zero.
        guard.failed(client, start + WINDOW);
        assert_eq!(guard.locked_for(client, start + WINDOW), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let guard = TokenGuard::default();
        let now = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 100) {
            guard.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        let size = guard.failures.lock().expect("lock").len();
        assert!(size <= MAX_ADDRESSES, "{size}");
    }
}
