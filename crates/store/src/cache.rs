//! The shared (L2) tier of sekisho's response cache, kept in Redis.
//!
//! The gateway decides what is cached and for how long (HTTP semantics live there); this module
//! only moves opaque entries, with the few Redis operations the cache needs, each bounded by a
//! timeout so a stalled Redis costs a request at most that long (the gateway then treats it as a
//! miss and goes to the upstream).
//!
//! # Keys
//!
//! | what | key | type |
//! | --- | --- | --- |
//! | an entry | `<prefix>e:<key>` | string (the gateway's encoding), with a TTL |
//! | a fill lock | `<prefix>l:<key>` | string (the holder's token), `SET NX PX` |
//! | a tag | `<prefix>t:<tag>` | set of entry keys carrying the tag |
//!
//! Entry keys are the gateway's versioned keys (`<route>:v<version>:<url>`); they are not
//! hash-tagged, so entries spread over a cluster's slots. A tag's set is not kept exact: a key
//! in it may have expired already, and deleting it again is harmless.
//!
//! # Invalidation
//!
//! [`RedisCache::publish`] sends a purge on channel `<prefix>invalidate`; every instance
//! [`subscribe`]s and drops the matching entries of its in-process tier. Pub/sub delivers at most
//! once to the instances connected at that moment: an instance cut off from Redis misses the
//! message, which is why, with Redis, in-process entries live at most `l1_ttl`.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use crate::{within, StoreError};

/// The prefix of cache keys unless the caller chooses another.
pub const DEFAULT_PREFIX: &str = "sekisho:cache:";

/// One Redis connection used for the shared tier.
#[derive(Clone)]
pub struct RedisCache {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    /// The shared tier on `conn`, its keys starting with `prefix`, each call bounded by
    /// `timeout`.
    pub fn new(conn: ConnectionManager, prefix: &str, timeout: Duration) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            timeout,
        }
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}e:{key}", self.prefix)
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}l:{key}", self.prefix)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}t:{tag}", self.prefix)
    }

    /// The channel purges travel on.
    pub fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    /// The entry stored under `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        within(self.timeout, conn.get(self.entry_key(key))).await
    }

    /// Stores `value` under `key` for `ttl`, and adds `key` to each of `tags`' sets (kept as
    /// long as the entry), in one round trip.
    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        tags: &[String],
    ) -> Result<(), StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let entry = self.entry_key(key);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&entry)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        for tag in tags {
            let set = self.tag_key(tag);
            pipe.cmd("SADD").arg(&set).arg(key).ignore();
            // A tag's set lives as long as its longest-lived entry, roughly.
            pipe.cmd("PEXPIRE").arg(&set).arg(ttl_ms).arg("GT").ignore();
            pipe.cmd("PEXPIRE").arg(&set).arg(ttl_ms).arg("NX").ignore();
        }
        let mut conn = self.conn.clone();
        within(self.timeout, pipe.query_async::<()>(&mut conn)).await
    }

    /// Takes the fill lock of `key` for `ttl` with `token`; `false` when another holds it.
    pub async fn lock(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.conn.clone();
        let answer: Option<String> = within(
            self.timeout,
            redis::cmd("SET")
                .arg(self.lock_key(key))
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn),
        )
        .await?;
        Ok(answer.is_some())
    }

    /// Gives the fill lock of `key` back if `token` still holds it.
    pub async fn unlock(&self, key: &str, token: &str) -> Result<(), StoreError> {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        );
        let mut conn = self.conn.clone();
        let mut invocation = script.key(self.lock_key(key));
        invocation.arg(token);
        within(self.timeout, invocation.invoke_async::<i64>(&mut conn))
            .await
            .map(|_| ())
    }

    /// Deletes the entry under `key`.
    pub async fn delete(&self, key: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        within(self.timeout, conn.del(self.entry_key(key))).await
    }

    /// Deletes every entry whose key starts with `prefix` (a `SCAN` of the keyspace: an
    /// operator's action, not a request's). Returns how many were deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let pattern = format!(
            "{}{}*",
            escape_glob(&self.entry_key("")),
            escape_glob(prefix)
        );
        let mut conn = self.conn.clone();
        let keys: Vec<String> = within(self.timeout * 20, async {
            let mut found = Vec::new();
            let mut iter = conn.scan_match::<_, String>(&pattern).await?;
            while let Some(key) = iter.next().await {
                found.push(key);
            }
            Ok(found)
        })
        .await?;
        let mut deleted = 0;
        let mut conn = self.conn.clone();
        for chunk in keys.chunks(500) {
            deleted += within(self.timeout, conn.del::<_, u64>(chunk)).await?;
        }
        Ok(deleted)
    }

    /// Deletes every entry tagged `tag`, and the tag. Returns how many entries were deleted.
    pub async fn delete_tag(&self, tag: &str) -> Result<u64, StoreError> {
        let set = self.tag_key(tag);
        let mut conn = self.conn.clone();
        let keys: Vec<String> = within(self.timeout, conn.smembers(&set)).await?;
        let mut deleted = 0;
        for chunk in keys.chunks(500) {
            let entries: Vec<String> = chunk.iter().map(|k| self.entry_key(k)).collect();
            deleted += within(self.timeout, conn.del::<_, u64>(entries)).await?;
        }
        within(self.timeout, conn.del::<_, u64>(&set)).await?;
        Ok(deleted)
    }

    /// Waits until every subscribed instance has applied what was published before
    /// ([`crate::barrier`]); logs when some did not within the timeout.
    pub async fn settle(&self) {
        crate::barrier::settle(&self.conn, &self.channel(), self.timeout).await;
    }

    /// One `PING`: how long Redis took to answer (the `redis_rtt` signal), bounded by the
    /// tier's timeout.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let mut conn = self.conn.clone();
        let started = tokio::time::Instant::now();
        within(
            self.timeout,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await?;
        Ok(started.elapsed())
    }

    /// Sends `message` to every subscribed instance.
    pub async fn publish(&self, message: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        within(
            self.timeout,
            conn.publish::<_, _, i64>(self.channel(), message),
        )
        .await
        .map(|_| ())
    }
}

/// Escapes the glob characters of `text` for `SCAN MATCH`.
fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Subscribes to `channel` on `url` and calls `on_message` with each message's text until the
/// connection drops; returns the error that ended it. The caller resubscribes (after a pause)
/// to keep listening across Redis restarts; `on_subscribed` runs once the subscription is in
/// place. Barriers ([`crate::barrier`]) are acknowledged here, after every earlier message has
/// gone through `on_message`.
pub async fn subscribe(
    url: &str,
    channel: &str,
    on_subscribed: impl FnOnce(),
    mut on_message: impl FnMut(String),
) -> StoreError {
    let client = match redis::Client::open(url) {
        Ok(client) => client,
        Err(error) => return error.into(),
    };
    let mut pubsub = match within(crate::DEFAULT_CONNECT_TIMEOUT, client.get_async_pubsub()).await {
        Ok(pubsub) => pubsub,
        Err(error) => return error,
    };
    // Barriers are acknowledged on a connection of their own.
    let mut acks = match within(
        crate::DEFAULT_CONNECT_TIMEOUT,
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(conn) => conn,
        Err(error) => return error,
    };
    if let Err(error) = pubsub.subscribe(channel).await {
        return error.into();
    }
    on_subscribed();
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let Ok(text) = message.get_payload::<String>() else {
            continue;
        };
        match crate::barrier::counter_of(&text) {
            // Everything published before the barrier has been applied.
            Some(key) => {
                if let Err(error) = crate::barrier::acknowledge(&mut acks, key).await {
                    tracing::warn!(%error, "could not acknowledge a barrier");
                }
            }
            None => on_message(text),
        }
    }
    StoreError::Redis(redis::RedisError::from((
        redis::ErrorKind::IoError,
        "the subscription's connection closed",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn cache() -> Option<RedisCache> {
        let url = std::env::var("SEKISHO_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let conn = crate::connect(&url).await.ok()?;
        let prefix = format!("sekisho:test:cache:{}:", fastrand::u64(..));
        Some(RedisCache::new(conn, &prefix, Duration::from_secs(1)))
    }

    #[tokio::test]
    async fn entries_tags_locks_and_prefixes() {
        let Some(cache) = cache().await else {
            panic!(
                "the tests need Redis at SEKISHO_TEST_REDIS_URL or redis://127.0.0.1:6379 \
                 (scripts/test starts it)"
            );
        };
        cache
            .set("r:v1:a/1", b"one", Duration::from_secs(60), &["t1".into()])
            .await
            .expect("set");
        cache
            .set(
                "r:v1:a/2",
                b"two",
                Duration::from_secs(60),
                &["t1".into(), "t2".into()],
            )
            .await
            .expect("set");
        cache
            .set("r:v1:b/3", b"three", Duration::from_secs(60), &[])
            .await
            .expect("set");
        assert_eq!(
            cache.get("r:v1:a/1").await.expect("get").as_deref(),
            Some(&b"one"[..])
        );

        assert!(cache
            .lock("k", "me", Duration::from_secs(5))
            .await
            .expect("lock"));
        assert!(!cache
            .lock("k", "you", Duration::from_secs(5))
            .await
            .expect("lock"));
        cache.unlock("k", "you").await.expect("unlock");
        assert!(
            !cache
                .lock("k", "you", Duration::from_secs(5))
                .await
                .expect("lock"),
            "not yours"
        );
        cache.unlock("k", "me").await.expect("unlock");
        assert!(cache
            .lock("k", "you", Duration::from_secs(5))
            .await
            .expect("lock"));

        assert_eq!(cache.delete_tag("t2").await.expect("tag"), 1);
        assert!(cache.get("r:v1:a/2").await.expect("get").is_none());
        assert!(cache.get("r:v1:a/1").await.expect("get").is_some());
        assert_eq!(cache.delete_prefix("r:v1:a/").await.expect("prefix"), 1);
        assert!(cache.get("r:v1:a/1").await.expect("get").is_none());
        assert!(cache.get("r:v1:b/3").await.expect("get").is_some());
        assert_eq!(cache.delete("r:v1:b/3").await.expect("delete"), 1);
    }
}

/// A barrier (`barrier.rs`) against the subscribers it waits for: this module's listeners.
#[cfg(test)]
mod barrier_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use redis::AsyncCommands;

    use super::subscribe;

    fn url() -> String {
        std::env::var("SEKISHO_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    /// Subscribes to `channel` with a listener that takes `delay` to apply each message, and
    /// waits until the subscription is in place.
    async fn slow_listener(channel: &str, delay: Duration, applied: Arc<AtomicUsize>) {
        let subscribed = Arc::new(tokio::sync::Notify::new());
        let ready = Arc::clone(&subscribed);
        let channel = channel.to_owned();
        tokio::spawn(async move {
            subscribe(
                &url(),
                &channel,
                move || ready.notify_one(),
                move |_| {
                    std::thread::sleep(delay);
                    applied.fetch_add(1, Ordering::SeqCst);
                },
            )
            .await
        });
        subscribed.notified().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_barrier_returns_once_every_listener_has_applied_what_came_before() {
        let conn = crate::connect(&url())
            .await
            .expect("redis (scripts/test starts it)");
        let channel = format!("sekisho:test:barrier:{:016x}", fastrand::u64(..));
        let applied = Arc::new(AtomicUsize::new(0));
        for _ in 0..2 {
            slow_listener(&channel, Duration::from_millis(150), Arc::clone(&applied)).await;
        }
        let mut publisher = conn.clone();
        let receivers: i64 = publisher
            .publish(&channel, "change")
            .await
            .expect("publish");
        assert_eq!(receivers, 2);
        // Both listeners are still applying it now; the barrier waits for them.
        let acknowledged = crate::barrier::barrier(&conn, &channel, Duration::from_secs(5))
            .await
            .expect("barrier");
        assert_eq!(acknowledged, 2);
        assert_eq!(applied.load(Ordering::SeqCst), 2);
    }
}
