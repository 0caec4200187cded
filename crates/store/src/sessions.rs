//! Sessions shared by every instance (`[auth] session_store = "redis"`): each instance sees a
//! new session, a rotation and a logout at once. The auth crate decides what a session is; this
//! module only stores the hashes of its tokens and their ends, each change in one atomic step
//! (a pipeline or a script), each call bounded by a timeout.
//!
//! # Keys
//!
//! | what | key | type |
//! | --- | --- | --- |
//! | a session | `<prefix>s:<id>` | hash: user, access, aexp, refresh, rexp, exp, created; expires at `exp` |
//! | an access token | `<prefix>a:<hash>` | string: the session id; expires with the token |
//! | a refresh token | `<prefix>r:<hash>` | string: the session id; expires with the token |
//! | a spent refresh token | `<prefix>x:<hash>` | string: the session id; expires with the session |
//! | a user's sessions | `<prefix>u:<user id>` | set of session ids (some may have expired) |
//! | every session | `<prefix>all` | sorted set: session id by `exp` |
//!
//! A token key is believed only when its session's hash still names that token, so a session
//! revoked by another instance is gone for every instance at the next look-up. Revocations are
//! also published on `<prefix>revoked` (the access token's hash), so that instances drop it from
//! their in-process cache; a logout, a user's revocation and a detected reuse return only once
//! every subscribed instance has done so ([`crate::barrier`]).

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use crate::{within, StoreError};

/// The prefix of session keys unless the caller chooses another.
pub const DEFAULT_PREFIX: &str = "sekisho:auth:";

/// A session as stored: token hashes and ends (Unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredSession {
    /// The session (family) id.
    pub id: String,
    /// Whose.
    pub user_id: i64,
    /// SHA-256 of the current access token.
    pub access_hash: String,
    /// When it ends.
    pub access_expires_at: i64,
    /// SHA-256 of the current refresh token.
    pub refresh_hash: String,
    /// When it ends.
    pub refresh_expires_at: i64,
    /// When the session ends, however often refreshed.
    pub expires_at: i64,
    /// When it began.
    pub created_at: i64,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotated {
    /// The pair was replaced; the old refresh token is spent.
    Done {
        /// The session.
        session_id: String,
        /// Whose.
        user_id: i64,
    },
    /// The token had been spent already: its session is revoked.
    Reused {
        /// The session.
        session_id: String,
        /// Whose.
        user_id: i64,
    },
    /// No such token.
    Unknown,
}

/// Returns the session a token key names when the session still names that token:
/// KEYS[1] the token key; ARGV[1] the prefix, ARGV[2] the token hash, ARGV[3] the field.
const LOOKUP: &str = r"
local id = redis.call('GET', KEYS[1])
if not id then return false end
local s = redis.call('HMGET', ARGV[1] .. 's:' .. id, 'user', 'access', 'aexp', 'refresh', 'rexp', 'exp', 'created')
if not s[1] then return false end
local current = s[2]
if ARGV[3] == 'refresh' then current = s[4] end
if current ~= ARGV[2] then return false end
return {id, s[1], s[2], s[3], s[4], s[5], s[6], s[7]}
";

/// Deletes session `id` and its token keys; returns its user.
const REVOKE_FN: &str = r"
local function revoke(p, id)
  local s = redis.call('HMGET', p .. 's:' .. id, 'user', 'access', 'refresh')
  if s[2] then redis.call('DEL', p .. 'a:' .. s[2]) end
  if s[3] then redis.call('DEL', p .. 'r:' .. s[3]) end
  redis.call('DEL', p .. 's:' .. id)
  redis.call('ZREM', p .. 'all', id)
  if s[1] then redis.call('SREM', p .. 'u:' .. s[1], id) end
  return s
end
";

/// ARGV: prefix, old refresh hash, new access hash, its end, new refresh hash, its end.
const ROTATE: &str = r"
local p = ARGV[1]
local id = redis.call('GET', p .. 'r:' .. ARGV[2])
if not id then
  local spent = redis.call('GET', p .. 'x:' .. ARGV[2])
  if not spent then return {'unknown'} end
  local s = revoke(p, spent)
  if s[2] then redis.call('PUBLISH', p .. 'revoked', s[2]) end
  return {'reused', spent, s[1] or '0'}
end
local s = redis.call('HMGET', p .. 's:' .. id, 'user', 'access', 'refresh', 'exp')
if not s[1] or s[3] ~= ARGV[2] then return {'unknown'} end
redis.call('DEL', p .. 'a:' .. s[2], p .. 'r:' .. ARGV[2])
redis.call('SET', p .. 'x:' .. ARGV[2], id, 'PXAT', s[4])
redis.call('SET', p .. 'a:' .. ARGV[3], id, 'PXAT', ARGV[4])
redis.call('SET', p .. 'r:' .. ARGV[5], id, 'PXAT', ARGV[6])
redis.call('HSET', p .. 's:' .. id, 'access', ARGV[3], 'aexp', ARGV[4], 'refresh', ARGV[5], 'rexp', ARGV[6])
redis.call('PUBLISH', p .. 'revoked', s[2])
return {'ok', id, s[1]}
";

/// ARGV: prefix, access hash. Returns the session's fields, or false.
const REVOKE_BY_ACCESS: &str = r"
local p = ARGV[1]
local id = redis.call('GET', p .. 'a:' .. ARGV[2])
if not id then return false end
local s = redis.call('HMGET', p .. 's:' .. id, 'user', 'access', 'aexp', 'refresh', 'rexp', 'exp', 'created')
if s[2] ~= ARGV[2] then return false end
revoke(p, id)
redis.call('PUBLISH', p .. 'revoked', ARGV[2])
return {id, s[1], s[2], s[3], s[4], s[5], s[6], s[7]}
";

/// ARGV: prefix, user id. Returns how many sessions were revoked.
const REVOKE_USER: &str = r"
local p = ARGV[1]
local ids = redis.call('SMEMBERS', p .. 'u:' .. ARGV[2])
local n = 0
for _, id in ipairs(ids) do
  if redis.call('EXISTS', p .. 's:' .. id) == 1 then n = n + 1 end
  local s = revoke(p, id)
  if s[2] then redis.call('PUBLISH', p .. 'revoked', s[2]) end
end
redis.call('DEL', p .. 'u:' .. ARGV[2])
return n
";

/// The session store in Redis.
#[derive(Clone)]
pub struct RedisSessions {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    lookup: redis::Script,
    rotate: redis::Script,
    revoke_by_access: redis::Script,
    revoke_user: redis::Script,
}

impl std::fmt::Debug for RedisSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessions")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

type Fields = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

fn parse(fields: Fields) -> StoredSession {
    let (id, user, access, aexp, refresh, rexp, exp, created) = fields;
    let number = |text: &str| text.parse::<i64>().unwrap_or(0);
    StoredSession {
        user_id: number(&user),
        access_expires_at: number(&aexp),
        refresh_expires_at: number(&rexp),
        expires_at: number(&exp),
        created_at: number(&created),
        id,
        access_hash: access,
        refresh_hash: refresh,
    }
}

impl RedisSessions {
    /// Sessions on `conn`, their keys starting with `prefix`, each call bounded by `timeout`.
    pub fn new(conn: ConnectionManager, prefix: &str, timeout: Duration) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            lookup: redis::Script::new(LOOKUP),
            rotate: redis::Script::new(&format!("{REVOKE_FN}{ROTATE}")),
            revoke_by_access: redis::Script::new(&format!("{REVOKE_FN}{REVOKE_BY_ACCESS}")),
            revoke_user: redis::Script::new(&format!("{REVOKE_FN}{REVOKE_USER}")),
        }
    }

    /// Waits until every instance has dropped what was revoked ([`crate::barrier`]).
    async fn settle(&self) {
        crate::barrier::settle(&self.conn, &self.channel(), self.timeout).await;
    }

    /// The channel revocations travel on (payload: the revoked access token's hash).
    pub fn channel(&self) -> String {
        format!("{}revoked", self.prefix)
    }

    /// Stores a new session (`session.id` and `session.user_id` set).
    pub async fn create(&self, session: &StoredSession, _now: i64) -> Result<(), StoreError> {
        let p = &self.prefix;
        let key = format!("{p}s:{}", session.id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(&key)
            .arg("user")
            .arg(session.user_id)
            .arg("access")
            .arg(&session.access_hash)
            .arg("aexp")
            .arg(session.access_expires_at)
            .arg("refresh")
            .arg(&session.refresh_hash)
            .arg("rexp")
            .arg(session.refresh_expires_at)
            .arg("exp")
            .arg(session.expires_at)
            .arg("created")
            .arg(session.created_at)
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&key)
            .arg(session.expires_at)
            .ignore()
            .cmd("SET")
            .arg(format!("{p}a:{}", session.access_hash))
            .arg(&session.id)
            .arg("PXAT")
            .arg(session.access_expires_at)
            .ignore()
            .cmd("SET")
            .arg(format!("{p}r:{}", session.refresh_hash))
            .arg(&session.id)
            .arg("PXAT")
            .arg(session.refresh_expires_at)
            .ignore()
            .cmd("SADD")
            .arg(format!("{p}u:{}", session.user_id))
            .arg(&session.id)
            .ignore()
            .cmd("ZADD")
            .arg(format!("{p}all"))
            .arg(session.expires_at)
            .arg(&session.id)
            .ignore();
        let mut conn = self.conn.clone();
        within(self.timeout, pipe.query_async::<()>(&mut conn)).await
    }

    async fn lookup(
        &self,
        key: String,
        hash: &str,
        field: &str,
    ) -> Result<Option<StoredSession>, StoreError> {
        let mut invocation = self.lookup.prepare_invoke();
        invocation.key(key).arg(&self.prefix).arg(hash).arg(field);
        let mut conn = self.conn.clone();
        let found: Option<Fields> =
            within(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(found.map(parse))
    }

    /// The session whose current access token hashes to `hash`.
    pub async fn by_access(&self, hash: &str) -> Result<Option<StoredSession>, StoreError> {
        self.lookup(format!("{}a:{hash}", self.prefix), hash, "access")
            .await
    }

    /// The session whose current refresh token hashes to `hash`.
    pub async fn by_refresh(&self, hash: &str) -> Result<Option<StoredSession>, StoreError> {
        self.lookup(format!("{}r:{hash}", self.prefix), hash, "refresh")
            .await
    }

    /// Replaces the pair whose refresh token hashes to `old_refresh` by `next`'s (its
    /// hashes and ends); a spent token revokes its session.
    pub async fn rotate(
        &self,
        old_refresh: &str,
        next: &StoredSession,
        _now: i64,
    ) -> Result<Rotated, StoreError> {
        let mut invocation = self.rotate.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(old_refresh)
            .arg(&next.access_hash)
            .arg(next.access_expires_at)
            .arg(&next.refresh_hash)
            .arg(next.refresh_expires_at);
        let mut conn = self.conn.clone();
        let answer: Vec<String> = within(self.timeout, invocation.invoke_async(&mut conn)).await?;
        let user = |index: usize| {
            answer
                .get(index)
                .and_then(|text| text.parse().ok())
                .unwrap_or(0)
        };
        if answer.first().map(String::as_str) == Some("reused") {
            // A stolen token's family is gone from every instance before the answer.
            self.settle().await;
        }
        Ok(match answer.first().map(String::as_str) {
            Some("ok") => Rotated::Done {
                session_id: answer.get(1).cloned().unwrap_or_default(),
                user_id: user(2),
            },
            Some("reused") => Rotated::Reused {
                session_id: answer.get(1).cloned().unwrap_or_default(),
                user_id: user(2),
            },
            _ => Rotated::Unknown,
        })
    }

    /// Revokes the session whose current access token hashes to `hash` (logout).
    pub async fn revoke_by_access(&self, hash: &str) -> Result<Option<StoredSession>, StoreError> {
        let mut invocation = self.revoke_by_access.prepare_invoke();
        invocation.arg(&self.prefix).arg(hash);
        let mut conn = self.conn.clone();
        let found: Option<Fields> =
            within(self.timeout, invocation.invoke_async(&mut conn)).await?;
        if found.is_some() {
            self.settle().await;
        }
        Ok(found.map(parse))
    }

    /// Revokes every session of `user_id`; returns how many were live.
    pub async fn revoke_user(&self, user_id: i64) -> Result<u64, StoreError> {
        let mut invocation = self.revoke_user.prepare_invoke();
        invocation.arg(&self.prefix).arg(user_id);
        let mut conn = self.conn.clone();
        let revoked = within(self.timeout, invocation.invoke_async(&mut conn)).await?;
        if revoked > 0 {
            self.settle().await;
        }
        Ok(revoked)
    }

    /// The live sessions of `user_id`.
    pub async fn of_user(&self, user_id: i64) -> Result<Vec<StoredSession>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = within(
            self.timeout,
            conn.smembers(format!("{}u:{user_id}", self.prefix)),
        )
        .await?;
        let mut sessions = Vec::new();
        for id in ids {
            let fields: Vec<Option<String>> = within(
                self.timeout,
                redis::cmd("HMGET")
                    .arg(format!("{}s:{id}", self.prefix))
                    .arg(&[
                        "user", "access", "aexp", "refresh", "rexp", "exp", "created",
                    ])
                    .query_async(&mut conn),
            )
            .await?;
            if let [Some(user), Some(access), Some(aexp), Some(refresh), Some(rexp), Some(exp), Some(created)] =
                fields.as_slice()
            {
                sessions.push(parse((
                    id,
                    user.clone(),
                    access.clone(),
                    aexp.clone(),
                    refresh.clone(),
                    rexp.clone(),
                    exp.clone(),
                    created.clone(),
                )));
            }
        }
        sessions.sort_by_key(|s| s.created_at);
        Ok(sessions)
    }

    /// Live sessions in all.
    pub async fn count(&self) -> Result<i64, StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let key = format!("{}all", self.prefix);
        let mut pipe = redis::pipe();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("ZCARD")
            .arg(&key);
        let mut conn = self.conn.clone();
        let (count,): (i64,) = within(self.timeout, pipe.query_async(&mut conn)).await?;
        Ok(count)
    }
}
