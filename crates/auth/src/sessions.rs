//! Sessions: a family of tokens from one login. The store keeps, per session, the hash of its
//! current access token and refresh token, their ends, and the session's absolute end; a
//! refresh rotates both and keeps the spent refresh token's hash, so that presenting it again
//! is recognised as a reuse and revokes the whole family.
//!
//! Two stores behind one interface: the database (`session_store = "local"`, survives a
//! restart; instances sharing a PostgreSQL database share its sessions) and Redis
//! (`session_store = "redis"`, through `sekisho_store::sessions`: every instance sees a new
//! session and a logout at once).

use sekisho_db::sqlx::{self, Row};
use sekisho_db::{now_millis, Database};
use sekisho_store::sessions::{RedisSessions, Rotated, StoredSession};

use crate::token::{new_token, token_hash};
use crate::AuthError;

/// How long tokens and sessions live (milliseconds).
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// An access token.
    pub access_ms: i64,
    /// A refresh token (idle).
    pub refresh_ms: i64,
    /// A session, however often refreshed.
    pub absolute_ms: i64,
}

/// The tokens a login or a refresh hands out.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    /// The session (family) id.
    pub session_id: String,
    /// The access token (given to the client only).
    pub access_token: String,
    /// The refresh token (given to the client only).
    pub refresh_token: String,
    /// Seconds the access token lives.
    pub expires_in: i64,
}

/// A session an access token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ValidSession {
    /// The session (family) id.
    pub session_id: String,
    /// Whose.
    pub user_id: i64,
    /// When the access token ends (Unix milliseconds).
    pub access_expires_at: i64,
}

/// What presenting a refresh token did.
#[derive(Debug)]
pub enum Refreshed {
    /// A new pair; the old refresh token is spent.
    Rotated(IssuedTokens, i64),
    /// The token was spent already: the session it belonged to is revoked (its id, its user).
    Reused(String, i64),
    /// No such token (or expired).
    Unknown,
}

/// A session as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    /// The session (family) id.
    pub id: String,
    /// Whose.
    pub user_id: i64,
    /// When it began (Unix milliseconds).
    pub created_at: i64,
    /// When it ends at the latest.
    pub expires_at: i64,
}

/// The session store in force.
#[derive(Debug, Clone)]
pub enum Sessions {
    /// The database.
    Local(Database),
    /// Redis.
    Redis(RedisSessions),
}

fn issue(lifetimes: Lifetimes, now: i64, absolute_end: i64) -> (IssuedTokens, StoredSession) {
    let access_token = new_token();
    let refresh_token = new_token();
    let access_expires_at = (now + lifetimes.access_ms).min(absolute_end);
    let refresh_expires_at = (now + lifetimes.refresh_ms).min(absolute_end);
    let tokens = IssuedTokens {
        session_id: String::new(),
        expires_in: ((access_expires_at - now) / 1000).max(0),
        access_token,
        refresh_token,
    };
    let stored = StoredSession {
        id: String::new(),
        user_id: 0,
        access_hash: token_hash(&tokens.access_token),
        access_expires_at,
        refresh_hash: token_hash(&tokens.refresh_token),
        refresh_expires_at,
        expires_at: absolute_end,
        created_at: now,
    };
    (tokens, stored)
}

impl Sessions {
    /// A new session for `user_id`.
    pub async fn create(
        &self,
        user_id: i64,
        lifetimes: Lifetimes,
        client_ip: Option<&str>,
    ) -> Result<IssuedTokens, AuthError> {
        let now = now_millis();
        let (mut tokens, mut stored) = issue(lifetimes, now, now + lifetimes.absolute_ms);
        stored.id = new_token();
        stored.user_id = user_id;
        tokens.session_id = stored.id.clone();
        match self {
            Self::Local(db) => {
                sqlx::query(
                    "INSERT INTO sessions (id, user_id, access_hash, access_expires_at, refresh_hash, refresh_expires_at, expires_at, created_at, client_ip)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&stored.id)
                .bind(user_id)
                .bind(&stored.access_hash)
                .bind(stored.access_expires_at)
                .bind(&stored.refresh_hash)
                .bind(stored.refresh_expires_at)
                .bind(stored.expires_at)
                .bind(now)
                .bind(client_ip)
                .execute(db.pool())
                .await?;
            }
            Self::Redis(redis) => redis.create(&stored, now).await?,
        }
        Ok(tokens)
    }

    /// The session `access_token` belongs to, if it is valid now.
    pub async fn validate(&self, access_token: &str) -> Result<Option<ValidSession>, AuthError> {
        let hash = token_hash(access_token);
        let now = now_millis();
        let found = match self {
            Self::Local(db) => {
                let row = sqlx::query(
                    "SELECT id, user_id, access_expires_at, expires_at FROM sessions WHERE access_hash = $1",
                )
                .bind(&hash)
                .fetch_optional(db.reader())
                .await?;
                match row {
                    Some(row) => {
                        let expires_at: i64 = row.try_get(3)?;
                        let session = ValidSession {
                            session_id: row.try_get(0)?,
                            user_id: row.try_get(1)?,
                            access_expires_at: row.try_get::<i64, _>(2)?.min(expires_at),
                        };
                        Some(session)
                    }
                    None => None,
                }
            }
            Self::Redis(redis) => redis.by_access(&hash).await?.map(|stored| ValidSession {
                session_id: stored.id,
                user_id: stored.user_id,
                access_expires_at: stored.access_expires_at.min(stored.expires_at),
            }),
        };
        Ok(found.filter(|session| session.access_expires_at > now))
    }

    /// Rotates the pair `refresh_token` belongs to; a spent one revokes its session.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        lifetimes: Lifetimes,
    ) -> Result<Refreshed, AuthError> {
        let old_hash = token_hash(refresh_token);
        let now = now_millis();
        match self {
            Self::Local(db) => {
                let mut transaction = db.pool().begin().await?;
                let row = sqlx::query(
                    "SELECT id, user_id, expires_at, refresh_expires_at FROM sessions WHERE refresh_hash = $1",
                )
                .bind(&old_hash)
                .fetch_optional(&mut *transaction)
                .await?;
                let Some(row) = row else {
                    let spent: Option<String> = sqlx::query_scalar(
                        "SELECT session_id FROM spent_refresh_tokens WHERE token_hash = $1",
                    )
                    .bind(&old_hash)
                    .fetch_optional(&mut *transaction)
                    .await?;
                    let Some(session_id) = spent else {
                        return Ok(Refreshed::Unknown);
                    };
                    let user_id: Option<i64> =
                        sqlx::query_scalar("DELETE FROM sessions WHERE id = $1 RETURNING user_id")
                            .bind(&session_id)
                            .fetch_optional(&mut *transaction)
                            .await?;
                    transaction.commit().await?;
                    return Ok(Refreshed::Reused(session_id, user_id.unwrap_or(0)));
                };
                let session_id: String = row.try_get(0)?;
                let user_id: i64 = row.try_get(1)?;
                let expires_at: i64 = row.try_get(2)?;
                let refresh_expires_at: i64 = row.try_get(3)?;
                if refresh_expires_at <= now || expires_at <= now {
                    return Ok(Refreshed::Unknown);
                }
                let (mut tokens, stored) = issue(lifetimes, now, expires_at);
                tokens.session_id = session_id.clone();
                let updated = sqlx::query(
                    "UPDATE sessions SET access_hash = $1, access_expires_at = $2, refresh_hash = $3, refresh_expires_at = $4
                     WHERE id = $5 AND refresh_hash = $6",
                )
                .bind(&stored.access_hash)
                .bind(stored.access_expires_at)
                .bind(&stored.refresh_hash)
                .bind(stored.refresh_expires_at)
                .bind(&session_id)
                .bind(&old_hash)
                .execute(&mut *transaction)
                .await?;
                if updated.rows_affected() != 1 {
                    // Another refresh of the same token won the race: this one is the reuse.
                    return Ok(Refreshed::Unknown);
                }
                sqlx::query(
                    "INSERT INTO spent_refresh_tokens (token_hash, session_id, expires_at) VALUES ($1, $2, $3)",
                )
                .bind(&old_hash)
                .bind(&session_id)
                .bind(expires_at)
                .execute(&mut *transaction)
                .await?;
                transaction.commit().await?;
                Ok(Refreshed::Rotated(tokens, user_id))
            }
            Self::Redis(redis) => {
                let probe = redis.by_refresh(&old_hash).await?;
                let expires_at = match &probe {
                    Some(stored) => stored.expires_at,
                    None => now,
                };
                let (mut tokens, stored) = issue(lifetimes, now, expires_at);
                match redis.rotate(&old_hash, &stored, now).await? {
                    Rotated::Done {
                        session_id,
                        user_id,
                    } => {
                        tokens.session_id = session_id;
                        Ok(Refreshed::Rotated(tokens, user_id))
                    }
                    Rotated::Reused {
                        session_id,
                        user_id,
                    } => Ok(Refreshed::Reused(session_id, user_id)),
                    Rotated::Unknown => Ok(Refreshed::Unknown),
                }
            }
        }
    }

    /// Ends the session `access_token` belongs to; returns its id and user when there was one.
    pub async fn logout(&self, access_token: &str) -> Result<Option<(String, i64)>, AuthError> {
        let hash = token_hash(access_token);
        match self {
            Self::Local(db) => {
                let row = sqlx::query(
                    "DELETE FROM sessions WHERE access_hash = $1 RETURNING id, user_id",
                )
                .bind(&hash)
                .fetch_optional(db.pool())
                .await?;
                match row {
                    Some(row) => Ok(Some((row.try_get(0)?, row.try_get(1)?))),
                    None => Ok(None),
                }
            }
            Self::Redis(redis) => Ok(redis
                .revoke_by_access(&hash)
                .await?
                .map(|stored| (stored.id, stored.user_id))),
        }
    }

    /// The live sessions of user `user_id`.
    pub async fn of_user(&self, user_id: i64) -> Result<Vec<SessionInfo>, AuthError> {
        let now = now_millis();
        match self {
            Self::Local(db) => {
                let rows = sqlx::query(
                    "SELECT id, user_id, created_at, expires_at FROM sessions WHERE user_id = $1 AND expires_at > $2 ORDER BY created_at",
                )
                .bind(user_id)
                .bind(now)
                .fetch_all(db.pool())
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(SessionInfo {
                            id: row.try_get(0)?,
                            user_id: row.try_get(1)?,
                            created_at: row.try_get(2)?,
                            expires_at: row.try_get(3)?,
                        })
                    })
                    .collect::<Result<_, sqlx::Error>>()
                    .map_err(AuthError::from)
            }
            Self::Redis(redis) => Ok(redis
                .of_user(user_id)
                .await?
                .into_iter()
                .map(|stored| SessionInfo {
                    id: stored.id,
                    user_id: stored.user_id,
                    created_at: stored.created_at,
                    expires_at: stored.expires_at,
                })
                .collect()),
        }
    }

    /// Revokes every session of user `user_id`; returns how many there were.
    pub async fn revoke_user(&self, user_id: i64) -> Result<u64, AuthError> {
        match self {
            Self::Local(db) => Ok(sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(user_id)
                .execute(db.pool())
                .await?
                .rows_affected()),
            Self::Redis(redis) => Ok(redis.revoke_user(user_id).await?),
        }
    }

    /// Live sessions in all (for `sekisho_active_sessions`).
    pub async fn count(&self) -> Result<i64, AuthError> {
        match self {
            Self::Local(db) => Ok(sqlx::query_scalar(
                "SELECT COUNT(*) FROM sessions WHERE expires_at > $1",
            )
            .bind(now_millis())
            .fetch_one(db.pool())
            .await?),
            Self::Redis(redis) => Ok(redis.count().await?),
        }
    }

    /// Deletes expired sessions and spent tokens (local store; Redis expires its own keys).
    pub async fn sweep(&self) -> Result<(), AuthError> {
        if let Self::Local(db) = self {
            let now = now_millis();
            sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR refresh_expires_at <= $1")
                .bind(now)
                .execute(db.pool())
                .await?;
            sqlx::query("DELETE FROM spent_refresh_tokens WHERE expires_at <= $1")
                .bind(now)
                .execute(db.pool())
                .await?;
        }
        Ok(())
    }
}
