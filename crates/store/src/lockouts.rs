//! Failed-login counts shared by every instance (`[auth] lockout` with `store.redis`): an
//! attacker spreading guesses over several gateways meets one count, not one per gateway.
//!
//! # Keys
//!
//! | what | key | type |
//! | --- | --- | --- |
//! | failures within the window | `<prefix>lockout:n:<subject>` | integer, expires with the window (from the first failure) |
//! | a lockout | `<prefix>lockout:l:<subject>` | string `1`, expires when the lockout ends |
//!
//! `<subject>` is the caller's (`a:<address>`, `u:<user name>`). One script per failure counts
//! and, at the `max`-th, locks and starts the count over, on Redis's own clock: two instances
//! failing at once cannot both miss the limit. Every call is bounded by the timeout; the caller
//! counts locally when Redis fails.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

use crate::{within, StoreError};

/// The failure script. KEYS: count, lock. ARGV: window ms, max failures, lockout ms.
/// Returns the lockout's length in ms when this failure started one, 0 otherwise, or minus the
/// time left when the subject is locked already.
const FAIL: &str = r"
local left = redis.call('PTTL', KEYS[2])
if left > 0 then return -left end
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if count >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return tonumber(ARGV[3])
end
return 0
";

/// Failure counts and lockouts in Redis.
#[derive(Clone)]
pub struct RedisLockouts {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    fail: Script,
}

impl std::fmt::Debug for RedisLockouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLockouts")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl RedisLockouts {
    /// Counts on `conn`, keys starting with `prefix`, each call bounded by `timeout`.
    pub fn new(conn: ConnectionManager, prefix: &str, timeout: Duration) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            fail: Script::new(FAIL),
        }
    }

    fn count_key(&self, subject: &str) -> String {
        format!("{}lockout:n:{subject}", self.prefix)
    }

    fn lock_key(&self, subject: &str) -> String {
        format!("{}lockout:l:{subject}", self.prefix)
    }

    /// How long `subject` stays locked, if it is.
    pub async fn locked(&self, subject: &str) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.conn.clone();
        let left: i64 = within(
            self.timeout,
            redis::cmd("PTTL")
                .arg(self.lock_key(subject))
                .query_async(&mut conn),
        )
        .await?;
        Ok((left > 0).then(|| Duration::from_millis(left.unsigned_abs())))
    }

    /// Counts a failure of `subject` within `window`; the `max`-th locks it for `duration`,
    /// which is returned then. A subject locked already is not counted.
    pub async fn fail(
        &self,
        subject: &str,
        window: Duration,
        max: u32,
        duration: Duration,
    ) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.fail.prepare_invoke();
        invocation
            .key(self.count_key(subject))
            .key(self.lock_key(subject))
            .arg(millis(window))
            .arg(max.max(1))
            .arg(millis(duration));
        let answer: i64 = within(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok((answer > 0).then(|| Duration::from_millis(answer.unsigned_abs())))
    }

    /// Forgets the failures and the lockout of `subject`; whether it was locked.
    pub async fn clear(&self, subject: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let deleted: (i64, i64) = within(
            self.timeout,
            redis::pipe()
                .cmd("DEL")
                .arg(self.lock_key(subject))
                .cmd("DEL")
                .arg(self.count_key(subject))
                .query_async(&mut conn),
        )
        .await?;
        Ok(deleted.0 > 0)
    }

    /// The subjects locked now (their names as given to [`Self::fail`]) and the time left.
    pub async fn locked_now(&self) -> Result<Vec<(String, Duration)>, StoreError> {
        let mut conn = self.conn.clone();
        let start = self.lock_key("");
        let pattern = format!("{start}*");
        let mut cursor: u64 = 0;
        let mut keys: Vec<String> = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = within(
                self.timeout,
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut conn),
            )
            .await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 || keys.len() > 10_000 {
                break;
            }
        }
        let mut locked = Vec::with_capacity(keys.len());
        for key in keys {
            let left: i64 = within(
                self.timeout,
                redis::cmd("PTTL").arg(&key).query_async(&mut conn),
            )
            .await?;
            if let (true, Some(subject)) = (left > 0, key.strip_prefix(&start)) {
                locked.push((
                    subject.to_owned(),
                    Duration::from_millis(left.unsigned_abs()),
                ));
            }
        }
        Ok(locked)
    }
}
