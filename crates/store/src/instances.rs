//! The registry of live gateway instances, for `on_store_error = "local"`.
//!
//! When Redis cannot be reached, a route configured with `on_store_error = "local"` keeps
//! limiting in process, each instance enforcing its share of the limit: the limit divided by the
//! number of instances ([`local_limit`]). That number is counted here, while Redis is up, and
//! remembered for when it is not.
//!
//! # Design
//!
//! One sorted set, `sekisho:instances` by default: member = instance id, score = when the
//! instance was last seen, in microseconds of Redis's clock. A heartbeat is one script, one
//! round trip: `ZADD` this instance at now, `ZREMRANGEBYSCORE` every instance last seen `ttl` or
//! more ago, `ZCARD` what is left, `PEXPIRE` the set `ttl` ahead (so the set disappears with the
//! last instance). Every instance runs it every `interval` from a background task
//! ([`Presence::start`]) and keeps the answer in an atomic, [`Presence::instances`], which the
//! gateway reads without I/O when Redis fails it.
//!
//! Why a sorted set rather than a key per instance (`sekisho:instances:<id>` with a TTL, counted
//! with `SCAN`): counting keys by `SCAN` walks the whole keyspace in several round trips and is
//! per node in a cluster, while the set counts in one command on one key. The ages are on Redis's
//! clock (`TIME` inside the script), so instances with skewed clocks agree on who is alive.
//!
//! An instance that stops cleanly ([`PresenceTask::stop`]) removes itself at once; one that
//! dies is dropped by the next heartbeat of another instance after `ttl`. Choose `ttl` at least
//! three intervals, so one slow or lost heartbeat does not make an instance vanish. Until its
//! first heartbeat succeeds an instance counts 1 (itself): if Redis is down from the start, each
//! instance enforces the whole limit.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use sekisho_policy::ratelimit::Limit;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{within, StoreError};

/// The sorted set of instances unless configured otherwise.
pub const DEFAULT_KEY: &str = "sekisho:instances";
/// How long an instance counts after its last heartbeat, by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// How often an instance sends its heartbeat, by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3);
/// How long a heartbeat may wait for Redis, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

const PRESENCE_LUA: &str = concat!(
    include_str!("prelude.lua"),
    include_str!("instances/presence.lua")
);

/// How one instance registers itself.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// The sorted set (shared by every instance of one deployment).
    pub key: String,
    /// This instance's id, unique among the live instances (see [`instance_id`]).
    pub id: String,
    /// How long an instance counts after its last heartbeat.
    pub ttl: Duration,
    /// How often the background task sends a heartbeat.
    pub interval: Duration,
    /// How long one heartbeat may wait for Redis.
    pub timeout: Duration,
}

impl PresenceConfig {
    /// The defaults ([`DEFAULT_KEY`], [`DEFAULT_TTL`], [`DEFAULT_INTERVAL`],
    /// [`DEFAULT_TIMEOUT`]) for instance `id`.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            key: DEFAULT_KEY.to_owned(),
            id: id.into(),
            ttl: DEFAULT_TTL,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// An id for this process: host name (from `HOSTNAME`, if set), process id, and the time it
/// was asked for, in nanoseconds. Unique in practice among the instances alive at one moment.
pub fn instance_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "sekisho".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{host}-{}-{nanos:x}", std::process::id())
}

struct Shared {
    conn: ConnectionManager,
    config: PresenceConfig,
    script: Script,
    live: AtomicU64,
}

/// This instance in the registry: its heartbeat, and the last count of live instances it saw.
///
/// Cheap to clone; clones share the count.
#[derive(Clone)]
pub struct Presence {
    shared: Arc<Shared>,
}

impl fmt::Debug for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presence")
            .field("config", &self.shared.config)
            .field("instances", &self.instances())
            .finish_non_exhaustive()
    }
}

impl Presence {
    /// This instance, not registered yet (see [`Presence::start`] and [`Presence::heartbeat`]).
    pub fn new(conn: ConnectionManager, config: PresenceConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                conn,
                config,
                script: Script::new(PRESENCE_LUA),
                live: AtomicU64::new(1),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PresenceConfig {
        &self.shared.config
    }

    /// The number of live instances at the last successful heartbeat (at least 1: this one).
    /// No I/O: this is what the gateway divides by when Redis is down.
    pub fn instances(&self) -> u64 {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Registers this instance as seen now and counts the live instances: one round trip. The
    /// count is remembered for [`Presence::instances`].
    pub async fn heartbeat(&self) -> Result<u64, StoreError> {
        let shared = &self.shared;
        let ttl_us = u64::try_from(shared.config.ttl.as_micros()).unwrap_or(u64::MAX >> 12);
        let mut conn = shared.conn.clone();
        let mut invocation = shared.script.prepare_invoke();
        invocation
            .key(&shared.config.key)
            .arg(&shared.config.id)
            .arg(ttl_us.max(1));
        let live: u64 = within(shared.config.timeout, invocation.invoke_async(&mut conn)).await?;
        let live = live.max(1);
        shared.live.store(live, Ordering::Relaxed);
        Ok(live)
    }

    /// Removes this instance from the registry (one round trip): the others count it out at
    /// their next heartbeat instead of after `ttl`.
    pub async fn leave(&self) -> Result<(), StoreError> {
        let shared = &self.shared;
        let mut conn = shared.conn.clone();
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(&shared.config.key).arg(&shared.config.id);
        let _removed: u64 = within(shared.config.timeout, cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    /// Spawns the heartbeat task on the current Tokio runtime: a heartbeat at once, then one
    /// every `interval` (a failed heartbeat keeps the last count and is tried again at the next
    /// tick). Stop it with [`PresenceTask::stop`]; dropping the handle aborts it without
    /// leaving, as a crash would.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn start(&self) -> PresenceTask {
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let presence = self.clone();
        let interval = self.shared.config.interval.max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = ticker.tick() => {
                        // The error is the count's staleness, which `instances` already
                        // reflects by not changing.
                        let _ = presence.heartbeat().await;
                    }
                }
            }
        });
        PresenceTask {
            presence: self.clone(),
            stop: Some(stop_tx),
            task: Some(task),
        }
    }
}

/// The running heartbeat of a [`Presence`]. Dropping it aborts the task (the instance ages out
/// of the registry after `ttl`); [`PresenceTask::stop`] ends it and leaves at once.
pub struct PresenceTask {
    presence: Presence,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for PresenceTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceTask")
            .field("id", &self.presence.shared.config.id)
            .field("running", &self.task.is_some())
            .finish()
    }
}

impl PresenceTask {
    /// Stops the heartbeat, waits for the task to end, and removes this instance from the
    /// registry.
    pub async fn stop(mut self) -> Result<(), StoreError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.presence.leave().await
    }
}

impl Drop for PresenceTask {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The share of `limit` one of `instances` enforces on its own: quotas divided and rounded up
/// (so no instance refuses everything when the quota is smaller than the number of instances;
/// together they admit at most `instances - 1` units more than the limit), rates divided.
/// Windows are unchanged. `instances` of 0 or 1 leaves the limit as it is.
pub fn local_limit(limit: &Limit, instances: u64) -> Limit {
    if instances <= 1 {
        return *limit;
    }
    let share = |quota: u64| quota.div_ceil(instances);
    let rate = |per_second: f64| per_second / instances as f64;
    match *limit {
        Limit::TokenBucket {
            capacity,
            refill_per_second,
        } => Limit::TokenBucket {
            capacity: share(capacity),
            refill_per_second: rate(refill_per_second),
        },
        Limit::Gcra { burst, per_second } => Limit::Gcra {
            burst: share(burst),
            per_second: rate(per_second),
        },
        Limit::FixedWindow { limit, window } => Limit::FixedWindow {
            limit: share(limit),
            window,
        },
        Limit::SlidingWindowLog { limit, window } => Limit::SlidingWindowLog {
            limit: share(limit),
            window,
        },
        Limit::SlidingWindowCounter { limit, window } => Limit::SlidingWindowCounter {
            limit: share(limit),
            window,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_limit_divides_quota_up_and_rate() {
        let tb = Limit::TokenBucket {
            capacity: 100,
            refill_per_second: 30.0,
        };
        assert_eq!(
            local_limit(&tb, 3),
            Limit::TokenBucket {
                capacity: 34,
                refill_per_second: 10.0
            }
        );
        assert_eq!(local_limit(&tb, 1), tb);
        assert_eq!(local_limit(&tb, 0), tb);
        let fw = Limit::FixedWindow {
            limit: 2,
            window: Duration::from_secs(1),
        };
        assert_eq!(local_limit(&fw, 5).quota(), 1);
        let gcra = Limit::Gcra {
            burst: 10,
            per_second: 4.0,
        };
        assert_eq!(
            local_limit(&gcra, 4),
            Limit::Gcra {
                burst: 3,
                per_second: 1.0
            }
        );
    }

    #[test]
    fn instance_ids_differ() {
        let a = instance_id();
        std::thread::sleep(Duration::from_millis(1));
        assert_ne!(a, instance_id());
    }
}
