//! sekisho-store: the state sekisho shares between its instances, kept in Redis.
//!
//! What it is for:
//! - rate limits enforced across every gateway instance at once ([`ratelimit::RedisLimiter`]:
//!   the five algorithms of `sekisho_policy::ratelimit`, each one Lua script run on Redis's own
//!   clock, one round trip per decision);
//! - the registry of live instances ([`instances::Presence`]) that lets each instance fall back
//!   to its share of a limit when Redis cannot be reached (`on_store_error = "local"`);
//! - the shared (L2) tier of the response cache ([`cache::RedisCache`]: entries, tags, the fill
//!   lock that lets one instance fetch a cold key for all, and the purge channel every instance
//!   subscribes to, [`cache::subscribe`]);
//! - sessions every instance validates (`[auth] session_store = "redis"`,
//!   [`sessions::RedisSessions`]: token hashes, rotation with reuse detection, revocation
//!   published on a channel);
//! - failed-login counts and lockouts every instance sees ([`lockouts::RedisLockouts`]);
//! - store URLs without their credentials ([`redact_url`], [`redact_in`]), for everything that
//!   shows or logs them.
//!
//! What is cached, for how long, and what a request gets when Redis fails are the gateway's
//! decisions, not this crate's. (The database layer — SQLite and PostgreSQL, migrations — will
//! join it for sessions and the audit trail; see ARCHITECTURE.md.)
//!
//! What it refuses to do: wait on a stalled Redis. Every call carries a timeout and fails with a
//! [`StoreError`], so the caller decides what a request gets when the store is gone (refuse,
//! admit, or enforce the local share), never a hung request.
//!
//! Connections are `redis::aio::ConnectionManager`s: one multiplexed TCP connection per manager
//! (every concurrent call of an instance is pipelined on it), reconnected by the manager itself
//! after an I/O error. [`connect`] opens one with the settings this crate expects.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub mod barrier;
pub mod cache;
pub mod instances;
pub mod lockouts;
pub mod ratelimit;
mod redact;
pub mod sessions;

pub use redact::{redact_in, redact_url};

/// How long [`connect`] waits for Redis before giving up.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a call to the store failed. None of these is an answer about the limit: the caller applies
/// its `on_store_error` policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Redis answered with an error, the connection failed, or the URL is wrong.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time. For a rate-limit decision the script may still have run: the
    /// units may have been taken although the caller never learns the decision.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The parameters of a limit cannot be evaluated (a rate that is not a positive number, a
    /// window shorter than a microsecond, a number of 2^53 or more).
    #[error("invalid limit: {0}")]
    InvalidLimit(&'static str),
}

/// Opens a [`ConnectionManager`] to `url` (`redis://host:port/db`), failing within
/// [`DEFAULT_CONNECT_TIMEOUT`].
pub async fn connect(url: &str) -> Result<ConnectionManager, StoreError> {
    connect_with_timeout(url, DEFAULT_CONNECT_TIMEOUT).await
}

/// Opens a [`ConnectionManager`] to `url`, failing within `timeout` (a refused connection fails
/// at once, a silent host after `timeout`).
///
/// Settings: `TCP_NODELAY` on (decisions are small requests whose latency matters; Nagle's
/// algorithm would hold a pipelined write back for an ACK); each connection attempt bounded by
/// `timeout`; one retry after a short backoff, so a reconnection after Redis went away is tried
/// again by the next call rather than queued behind long backoffs. No response timeout is set
/// on the connection: the callers of this crate put their own on each call.
pub async fn connect_with_timeout(
    url: &str,
    timeout: Duration,
) -> Result<ConnectionManager, StoreError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_number_of_retries(1)
        .set_factor(50)
        .set_max_delay(200)
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    match tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config)).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

/// Runs one call to Redis under `timeout`.
pub(crate) async fn within<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}
