//! Brute-force protection: failed logins counted per account and per client address within a
//! window; past `max_failures` the account (or the address) is locked for `duration`, and a
//! login is refused at once with 429 and `Retry-After`, before any password is hashed.
//!
//! With `store.redis` the counts and lockouts are kept in Redis
//! ([`sekisho_store::lockouts::RedisLockouts`]), so every instance counts the same failures and
//! honours the same lockouts; when Redis fails (or answers too late: the store timeout) the
//! instance counts in process, as it does without Redis, and a lockout of either tier refuses a
//! login. An account's lockout is also written to the user's row (`locked_until`) through the
//! background queue, where the admin API shows it and an operator clears it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sekisho_store::lockouts::RedisLockouts;

/// Most accounts and addresses tracked at once; past it, entries without a lockout go first.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

/// What failed: an account or a client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A user name (known or not).
    Account,
    /// A client address.
    Address,
}

/// The failure counts: in Redis when shared, else (or while Redis fails) this instance's.
#[derive(Debug)]
pub struct Lockout {
    max_failures: u32,
    window: Duration,
    duration: Duration,
    entries: Mutex<HashMap<String, Failures>>,
    shared: Option<RedisLockouts>,
}

fn key(subject: Subject, name: &str) -> String {
    match subject {
        Subject::Account => format!("u:{name}"),
        Subject::Address => format!("a:{name}"),
    }
}

/// The subject and name of a [`key`].
fn parse_key(key: &str) -> Option<(Subject, &str)> {
    match key.split_once(':')? {
        ("u", name) => Some((Subject::Account, name)),
        ("a", name) => Some((Subject::Address, name)),
        _ => None,
    }
}

impl Lockout {
    /// From `[auth] lockout`.
    pub fn new(config: sekisho_config::Lockout) -> Self {
        Self {
            max_failures: config.max_failures,
            window: config.window.get(),
            duration: config.duration.get(),
            entries: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// Counts in Redis from now on (falling back to this instance's counts when it fails).
    pub fn share(&mut self, shared: RedisLockouts) {
        self.shared = Some(shared);
    }

    /// How long `name` stays locked by any instance (or by this one while Redis fails).
    pub async fn check(&self, subject: Subject, name: &str) -> Option<Duration> {
        let here = self.locked(subject, name, Instant::now());
        let Some(shared) = &self.shared else {
            return here;
        };
        match shared.locked(&key(subject, name)).await {
            Ok(there) => here.max(there),
            Err(error) => {
                tracing::debug!(%error, "lockout store unavailable: this instance's counts only");
                here
            }
        }
    }

    /// Counts a failure where every instance sees it (this instance's count when Redis
    /// fails); returns the lockout's length when this failure started one.
    pub async fn record_failure(&self, subject: Subject, name: &str) -> Option<Duration> {
        if self.max_failures == 0 {
            return None;
        }
        if let Some(shared) = &self.shared {
            match shared
                .fail(
                    &key(subject, name),
                    self.window,
                    self.max_failures,
                    self.duration,
                )
                .await
            {
                Ok(started) => return started,
                Err(error) => {
                    tracing::warn!(%error, "lockout store unavailable: failure counted on this instance only");
                }
            }
        }
        self.fail(subject, name, Instant::now())
    }

    /// Forgets the failures of `name` everywhere; whether it was locked.
    pub async fn forget(&self, subject: Subject, name: &str) -> bool {
        let here = self.clear(subject, name);
        let Some(shared) = &self.shared else {
            return here;
        };
        match shared.clear(&key(subject, name)).await {
            Ok(there) => here || there,
            Err(error) => {
                tracing::warn!(%error, "lockout store unavailable: cleared on this instance only");
                here
            }
        }
    }

    /// What is locked now, by any instance, and for how long still.
    pub async fn locked_everywhere(&self) -> Vec<(Subject, String, Duration)> {
        let mut locked = self.locked_now(Instant::now());
        if let Some(shared) = &self.shared {
            match shared.locked_now().await {
                Ok(there) => {
                    for (key, left) in there {
                        let Some((subject, name)) = parse_key(&key) else {
                            continue;
                        };
                        match locked
                            .iter_mut()
                            .find(|(s, n, _)| *s == subject && n == name)
                        {
                            Some(known) => known.2 = known.2.max(left),
                            None => locked.push((subject, name.to_owned(), left)),
                        }
                    }
                    locked.sort_by(|a, b| a.1.cmp(&b.1));
                }
                Err(error) => {
                    tracing::warn!(%error, "lockout store unavailable: this instance's lockouts only")
                }
            }
        }
        locked
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long `name` stays locked, if it is.
    pub fn locked(&self, subject: Subject, name: &str, now: Instant) -> Option<Duration> {
        let entries = self.entries();
        let until = entries.get(&key(subject, name))?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts a failure; returns the lockout's length when this failure started one.
    pub fn fail(&self, subject: Subject, name: &str, now: Instant) -> Option<Duration> {
        if self.max_failures == 0 {
            return None;
        }
        let mut entries = self.entries();
        if entries.len() >= MAX_TRACKED {
            entries.retain(|_, f| f.locked_until.is_some_and(|until| until > now));
        }
        let entry = entries.entry(key(subject, name)).or_insert(Failures {
            count: 0,
            window_start: now,
            locked_until: None,
        });
        if now.duration_since(entry.window_start) > self.window
            || entry.locked_until.is_some_and(|until| until <= now)
        {
            *entry = Failures {
                count: 0,
                window_start: now,
                locked_until: None,
            };
        }
        entry.count += 1;
        if entry.count >= self.max_failures && entry.locked_until.is_none() {
            entry.locked_until = Some(now + self.duration);
            return Some(self.duration);
        }
        None
    }

    /// Forgets the failures of `name` (a successful login, an operator's unlock); whether it
    /// was locked.
    pub fn clear(&self, subject: Subject, name: &str) -> bool {
        self.entries()
            .remove(&key(subject, name))
            .is_some_and(|failures| failures.locked_until.is_some())
    }

    /// What is locked now, and for how long still.
    pub fn locked_now(&self, now: Instant) -> Vec<(Subject, String, Duration)> {
        let mut locked: Vec<(Subject, String, Duration)> = self
            .entries()
            .iter()
            .filter_map(|(key, failures)| {
                let until = failures.locked_until.filter(|until| *until > now)?;
                let (subject, name) = parse_key(key)?;
                Some((subject, name.to_owned(), until - now))
            })
            .collect();
        locked.sort_by(|a, b| a.1.cmp(&b.1));
        locked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lockout(max_failures: u32) -> Lockout {
        Lockout::new(sekisho_config::Lockout {
            max_failures,
            window: sekisho_config::NonZeroDuration(Duration::from_secs(60)),
            duration: sekisho_config::NonZeroDuration(Duration::from_secs(30)),
        })
    }

    #[test]
    fn the_nth_failure_locks_until_the_duration_passes() {
        let lockout = lockout(3);
        let start = Instant::now();
        assert_eq!(lockout.fail(Subject::Account, "ann", start), None);
        assert_eq!(lockout.fail(Subject::Account, "ann", start), None);
        assert_eq!(lockout.locked(Subject::Account, "ann", start), None);
        assert_eq!(
            lockout.fail(Subject::Account, "ann", start),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            lockout.locked(Subject::Account, "ann", start + Duration::from_secs(10)),
            Some(Duration::from_secs(20))
        );
        assert_eq!(lockout.locked(Subject::Address, "ann", start), None);
        let listed = lockout.locked_now(start);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, Subject::Account);
        assert_eq!(listed[0].1, "ann");
        let after = start + Duration::from_secs(31);
        assert_eq!(lockout.locked(Subject::Account, "ann", after), None);
        assert_eq!(
            lockout.fail(Subject::Account, "ann", after),
            None,
            "counts anew"
        );
    }

    #[test]
    fn failures_outside_the_window_start_over_and_clear_forgets() {
        let lockout = lockout(2);
        let start = Instant::now();
        assert_eq!(lockout.fail(Subject::Address, "10.0.0.1", start), None);
        let later = start + Duration::from_secs(61);
        assert_eq!(lockout.fail(Subject::Address, "10.0.0.1", later), None);
        lockout.clear(Subject::Address, "10.0.0.1");
        assert_eq!(lockout.fail(Subject::Address, "10.0.0.1", later), None);
        assert!(lockout.fail(Subject::Address, "10.0.0.1", later).is_some());
        assert_eq!(
            super::tests::lockout(0).fail(Subject::Account, "x", start),
            None
        );
    }
}
