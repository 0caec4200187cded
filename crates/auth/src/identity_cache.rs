//! The shared (L2) identity tier, in Redis when `store.redis` is set: a user's identity (roles
//! and permissions, and whether it is disabled) under `<prefix>e:user_permissions:v1:<id>`
//! (`[auth] redis_prefix`, default `sekisho:auth:`)
//! for an hour, so that an instance validating a session it has not cached asks Redis rather
//! than the database. The key's `v1` is the layout's version: a change of what is stored bumps
//! it, and old entries are simply never read again.
//!
//! Invalidation is by event, on every instance: a change to a user deletes its entry and
//! publishes `user:<id>` on `sekisho:auth:invalidate`; a change to a role deletes every entry
//! and publishes `all`. Each instance subscribes and drops the matching in-process (L1)
//! sessions; the change returns once every subscribed instance has done so
//! ([`sekisho_store::barrier`]). Redis failing costs only the cache: a failed read is a miss, a failed write is
//! ignored.

use std::time::Duration;

use redis::aio::ConnectionManager;
use sekisho_store::cache::RedisCache;

use crate::users::Identity;
use crate::{SessionCache, UserCache};

/// The layout version of identity entries.
const VERSION: u32 = 1;
/// How long an identity stays in the shared tier.
const TTL: Duration = Duration::from_secs(3_600);

/// An identity as the shared tier keeps it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SharedIdentity {
    /// Who, and what it may do.
    pub identity: Identity,
    /// A disabled user's sessions are refused.
    pub disabled: bool,
}

/// The shared identity tier.
#[derive(Debug, Clone)]
pub struct SharedIdentities {
    cache: RedisCache,
}

fn key(user_id: i64) -> String {
    format!("user_permissions:v{VERSION}:{user_id}")
}

impl SharedIdentities {
    /// The tier on `conn`, its keys and channel starting with `prefix` (`[auth]
    /// redis_prefix`), each call bounded by `timeout`.
    pub fn new(conn: ConnectionManager, prefix: &str, timeout: Duration) -> Self {
        Self {
            cache: RedisCache::new(conn, prefix, timeout),
        }
    }

    /// The channel invalidations travel on.
    pub fn channel(&self) -> String {
        self.cache.channel()
    }

    /// The identity of `user_id`, if the tier has it (and Redis answered).
    pub async fn get(&self, user_id: i64) -> Option<SharedIdentity> {
        let bytes = self.cache.get(&key(user_id)).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Keeps `identity` for an hour.
    pub async fn put(&self, identity: &Identity, disabled: bool) {
        let entry = SharedIdentity {
            identity: identity.clone(),
            disabled,
        };
        if let Ok(bytes) = serde_json::to_vec(&entry) {
            if let Err(error) = self.cache.set(&key(identity.id), &bytes, TTL, &[]).await {
                tracing::debug!(%error, "identity not kept in the shared tier");
            }
        }
    }

    /// Deletes the entry of `user_id` and tells every instance.
    pub async fn forget_user(&self, user_id: i64) {
        let deleted = self.cache.delete(&key(user_id)).await;
        let published = self.cache.publish(&format!("user:{user_id}")).await;
        match deleted.and(published) {
            Ok(()) => self.cache.settle().await,
            Err(error) => tracing::warn!(
                %error,
                user_id,
                "could not invalidate a user in the shared identity cache"
            ),
        }
    }

    /// Deletes every identity and tells every instance (a role changed).
    pub async fn forget_all(&self) {
        let deleted = self.cache.delete_prefix("user_permissions:").await;
        let published = self.cache.publish("all").await;
        match deleted.map(|_| ()).and(published) {
            Ok(()) => self.cache.settle().await,
            Err(error) => tracing::warn!(%error, "could not invalidate the shared identity cache"),
        }
    }
}

/// Drops in-process sessions when another instance changes a user (`user:<id>`) or a role
/// (`all`); resubscribes after a lost connection, dropping everything then (a message may
/// have been missed).
pub(crate) fn spawn_listener(url: String, channel: String, cache: SessionCache, users: UserCache) {
    tokio::spawn(async move {
        loop {
            let error = sekisho_store::cache::subscribe(
                &url,
                &channel,
                || {},
                |message| match message
                    .strip_prefix("user:")
                    .and_then(|id| id.parse::<i64>().ok())
                {
                    Some(user_id) => {
                        users.invalidate(&user_id);
                        cache.remove_if(|cached| cached.identity.id == user_id);
                    }
                    None => {
                        users.invalidate_all();
                        cache.clear();
                    }
                },
            )
            .await;
            users.invalidate_all();
            cache.clear();
            tracing::warn!(%error, "identity invalidation channel lost; resubscribing");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
