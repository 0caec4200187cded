//! The shared (L2) identity tier, in Redis when `store.redis` is set, as the seeds lay it out:
//! a user's grants (name, roles, and whether it is disabled) under
//! `<prefix>e:user_permissions:v2:<id>` for an hour, and each role's permissions under
//! `<prefix>e:role_definitions:v1:<role>` for a day (`[auth] redis_prefix`, default
//! `sekisho:auth:`), so that an instance validating a session it has not cached asks Redis
//! rather than the database, and a role's change touches one key rather than every user's.
//! A key's `vN` is its layout's version: a change of what is stored bumps it, and old entries
//! are simply never read again (v1 of `user_permissions` held the permissions themselves).
//!
//! With `session_store = "local"` it also keeps validated sessions (`session_data`, by the access
//! token's hash, at most 30 minutes and never past the token's end), tagged by session and by
//! user so that a refresh, a logout or a revocation deletes them (and publishes
//! `session:<id>`).
//!
//! Invalidation is by event, on every instance: a change to a user deletes its entry and
//! publishes `user:<id>` on `sekisho:auth:invalidate`; a change to a role's permissions deletes
//! its definition and publishes `role:<name>` (users' entries stay: they name roles only).
//! Each instance subscribes and drops the matching in-process (L1) identities and sessions
//! (`all`, after a lost subscription, drops everything); the change returns once every
//! subscribed instance has done so
//! ([`sekisho_store::barrier`]). Redis failing costs only the cache: a failed read is a miss, a failed write is
//! ignored.

use std::time::Duration;

use redis::aio::ConnectionManager;
use sekisho_store::cache::RedisCache;

use crate::sessions::ValidSession;
use crate::users::Identity;
use crate::{SessionCache, UserCache};

/// Drops the in-process identities (and cached sessions) of the users holding `role`.
pub(crate) fn forget_role_in_process(users: &UserCache, cache: &SessionCache, role: &str) {
    let holding = |identity: &Identity| identity.roles.iter().any(|held| held == role);
    let stale: Vec<i64> = users
        .iter()
        .filter(|(_, known)| known.as_deref().is_some_and(holding))
        .map(|(id, _)| *id)
        .collect();
    for id in stale {
        users.invalidate(&id);
    }
    cache.remove_if(|cached| holding(&cached.identity));
}

/// The layout version of identity (`user_permissions`) and session entries.
const VERSION: u32 = 2;
/// The layout version of role entries.
const ROLE_VERSION: u32 = 1;
/// How long a user's grants stay in the shared tier.
const TTL: Duration = Duration::from_secs(3_600);
/// How long a role's permissions stay there (changes delete them at once).
const ROLE_TTL: Duration = Duration::from_secs(86_400);
/// How long a validated session (`session_data`) stays in the shared tier, at most (never past
/// its access token's end).
const SESSION_TTL: Duration = Duration::from_secs(1_800);

/// A user as the shared tier keeps it: who, and which roles (their permissions are the roles'
/// definitions).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SharedUser {
    /// The user's id.
    pub id: i64,
    /// The user's name.
    pub username: String,
    /// The roles held.
    pub roles: Vec<String>,
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

fn role_key(role: &str) -> String {
    format!("role_definitions:v{ROLE_VERSION}:{role}")
}

fn session_key(access_hash: &str) -> String {
    format!("session_data:v{VERSION}:{access_hash}")
}

/// The tag of every `session_data` entry of one session (its access tokens, current and
/// replaced), deleted together when the session changes or ends.
fn session_tag(session_id: &str) -> String {
    format!("session_data:v{VERSION}:s:{session_id}")
}

/// The tag of every `session_data` entry of one user.
fn user_sessions_tag(user_id: i64) -> String {
    format!("session_data:v{VERSION}:u:{user_id}")
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

    /// The grants of `user_id`, if the tier has them (and Redis answered).
    pub async fn get(&self, user_id: i64) -> Option<SharedUser> {
        let bytes = self.cache.get(&key(user_id)).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Keeps the grants of `identity` for an hour.
    pub async fn put(&self, identity: &Identity, disabled: bool) {
        let entry = SharedUser {
            id: identity.id,
            username: identity.username.clone(),
            roles: identity.roles.clone(),
            disabled,
        };
        if let Ok(bytes) = serde_json::to_vec(&entry) {
            if let Err(error) = self.cache.set(&key(identity.id), &bytes, TTL, &[]).await {
                tracing::debug!(%error, "identity not kept in the shared tier");
            }
        }
    }

    /// The permissions of `role`, if the tier has its definition.
    pub async fn role(&self, role: &str) -> Option<Vec<String>> {
        let bytes = self.cache.get(&role_key(role)).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Keeps the permissions of `role` for a day.
    pub async fn put_role(&self, role: &str, permissions: &[String]) {
        if let Ok(bytes) = serde_json::to_vec(permissions) {
            if let Err(error) = self.cache.set(&role_key(role), &bytes, ROLE_TTL, &[]).await {
                tracing::debug!(%error, role, "role definition not kept in the shared tier");
            }
        }
    }

    /// Deletes the definition of `role` and tells every instance; returns once they have
    /// dropped the identities holding it.
    pub async fn forget_role(&self, role: &str) {
        let deleted = self.cache.delete(&role_key(role)).await;
        let published = self.cache.publish(&format!("role:{role}")).await;
        match deleted.and(published) {
            Ok(()) => self.cache.settle().await,
            Err(error) => tracing::warn!(
                %error,
                role,
                "could not invalidate a role in the shared identity cache"
            ),
        }
    }

    /// The session of an access token (by its hash), if the tier has it and it is still valid:
    /// with `session_store = "local"`, an instance that has not cached a session finds it here
    /// before the database.
    pub async fn session(&self, access_hash: &str) -> Option<ValidSession> {
        let bytes = self.cache.get(&session_key(access_hash)).await.ok()??;
        let session: ValidSession = serde_json::from_slice(&bytes).ok()?;
        (session.access_expires_at > sekisho_db::now_millis()).then_some(session)
    }

    /// Keeps a validated session until its access token ends (at most 30 minutes).
    pub async fn put_session(&self, access_hash: &str, session: &ValidSession) {
        let left = session.access_expires_at - sekisho_db::now_millis();
        let Ok(left) = u64::try_from(left) else {
            return;
        };
        let ttl = Duration::from_millis(left).min(SESSION_TTL);
        let tags = [
            session_tag(&session.session_id),
            user_sessions_tag(session.user_id),
        ];
        if let Ok(bytes) = serde_json::to_vec(session) {
            if let Err(error) = self
                .cache
                .set(&session_key(access_hash), &bytes, ttl, &tags)
                .await
            {
                tracing::debug!(%error, "session not kept in the shared tier");
            }
        }
    }

    /// Deletes what the tier keeps of a session (refreshed, logged out, revoked) and tells every
    /// instance to drop it from process; returns once they have.
    pub async fn forget_session(&self, session_id: &str) {
        let deleted = self.cache.delete_tag(&session_tag(session_id)).await;
        let published = self.cache.publish(&format!("session:{session_id}")).await;
        match deleted.map(|_| ()).and(published) {
            Ok(()) => self.cache.settle().await,
            Err(error) => tracing::warn!(
                %error,
                "could not invalidate a session in the shared tier"
            ),
        }
    }

    /// Deletes every session the tier keeps of `user_id` (its sessions were revoked; the
    /// instances drop them from process on the user's own invalidation).
    pub async fn forget_user_sessions(&self, user_id: i64) {
        if let Err(error) = self.cache.delete_tag(&user_sessions_tag(user_id)).await {
            tracing::warn!(%error, user_id, "could not invalidate a user's sessions in the shared tier");
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
}

/// Drops in-process identities and sessions when another instance changes a user
/// (`user:<id>`), a session (`session:<id>`) or a role (`role:<name>`); resubscribes after a
/// lost connection, dropping everything then (a message may have been missed).
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
                    None if message.starts_with("session:") => {
                        let session_id = message.trim_start_matches("session:");
                        cache.remove_if(|cached| cached.session_id == session_id);
                    }
                    None if message.starts_with("role:") => {
                        forget_role_in_process(&users, &cache, message.trim_start_matches("role:"));
                    }
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
