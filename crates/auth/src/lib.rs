//! sekisho-auth: edge authentication — users, roles and permissions, password hashing,
//! sessions and their tokens, brute-force protection and the audit trail.
//!
//! What it is for: the one [`Auth`] the gateway calls from one request step (the endpoints
//! under `[auth] path_prefix` and a route's `auth` requirement), the admin API calls for users
//! and sessions, and the CLI calls for `sekisho user …`/`role …`. It answers in its own types
//! ([`Identity`], [`LoginAnswer`], [`AuthError`]); the gateway turns them into HTTP at its edge.
//!
//! What it refuses to do: speak HTTP (no server code, no status codes), import the gateway,
//! hash on the reactor (every hash runs on [`password::HashPool`]), keep a token or a password
//! anywhere (tokens are stored as SHA-256, passwords as argon2id), tell an unknown user from a
//! wrong password (same error, and a hash against a dummy so the same time), or let the
//! database or Redis hold a login up for work that can wait (`last_login`, audit rows: the
//! bounded background queue of [`audit`]).
//!
//! The request's path through it: [`Auth::authenticate`] looks the access token's hash up in
//! the in-process cache (no database, no Redis on a hit), then in the session store, then loads
//! the user with its roles and permissions in one query; [`authorize`] checks the route's
//! requirement.

pub mod audit;
mod identities;
pub mod identity_cache;
pub mod lockout;
mod login;
mod manage;
pub mod password;
mod session_cache;
pub mod sessions;
pub mod token;
pub mod users;

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sekisho_config::{RouteAuth, SessionStore};
use sekisho_db::Database;

pub use login::LoginAnswer;
pub use manage::{LockoutView, UserUpdate, UserView};
pub use sekisho_db::DbError;
pub use users::Identity;

use audit::Background;
use lockout::Lockout;
use password::{HashPool, Hasher};
use sessions::{Lifetimes, Sessions, ValidSession};
use token::{cache_key, checked_cache_key, digest_of_hash, token_digest, CacheKey};
use users::Directory;

/// The message of every failed login: the same for an unknown user and a wrong password.
pub const LOGIN_FAILED: &str = "invalid username or password";

/// Why an auth operation did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials, bad ones, or an expired or revoked token (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials without what the route asks for (403).
    #[error("{0}")]
    Forbidden(String),
    /// Too many failed logins for the account or the address (429).
    #[error("too many failed logins; try again later")]
    Locked {
        /// Until the lockout ends.
        retry_after: Duration,
    },
    /// Every hashing slot is busy and the queue is full (503).
    #[error("too many logins at once; try again shortly")]
    Overloaded,
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such user or role.
    #[error("{0}")]
    NotFound(String),
    /// It exists already.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("{0}")]
    Database(#[from] DbError),
    /// Redis failed.
    #[error("session store: {0}")]
    Store(#[from] sekisho_store::StoreError),
    /// Something that should not happen.
    #[error("{0}")]
    Internal(String),
}

impl From<sekisho_db::sqlx::Error> for AuthError {
    fn from(error: sekisho_db::sqlx::Error) -> Self {
        Self::Database(DbError::Sql(error))
    }
}

#[derive(Debug)]
pub(crate) struct Cached {
    identity: Arc<Identity>,
    session_id: String,
    access_expires_at: i64,
}

/// Figures for the metrics, read when they are scraped.
#[derive(Debug, Default)]
pub struct AuthFigures {
    /// Live sessions, as last counted.
    pub active_sessions: AtomicI64,
    /// Database writes (audit rows, last logins, lockouts) dropped because the background
    /// queue was full: the database falls behind (their audit log lines were written).
    pub background_dropped: AtomicU64,
    /// Sessions validated from the in-process cache.
    pub cache_hits: AtomicU64,
    /// Sessions looked up in the session store (not cached, expired, or cache not trusted).
    pub cache_misses: AtomicU64,
    /// Identities found in process (`user_basic`).
    pub user_hits: AtomicU64,
    /// Identities not found in process.
    pub user_misses: AtomicU64,
    /// Identities found in the shared (Redis) tier.
    pub l2_hits: AtomicU64,
    /// Identities not found there (read from the database).
    pub l2_misses: AtomicU64,
    /// Role definitions found in the shared tier (`role_definitions`).
    pub role_l2_hits: AtomicU64,
    /// Role definitions not found there (read from the database).
    pub role_l2_misses: AtomicU64,
    /// Sessions found in the shared tier (`session_data`, local session store).
    pub session_l2_hits: AtomicU64,
    /// Sessions not found there (read from the database).
    pub session_l2_misses: AtomicU64,
    /// Where the time of each step of a login goes (`get_user`, `verify_password`,
    /// `create_session`): set once by whoever exports metrics.
    pub steps: StepObserver,
}

/// Receives the duration of each step of a login, by the step's name.
#[derive(Default)]
pub struct StepObserver(std::sync::OnceLock<Box<dyn Fn(&'static str, Duration) + Send + Sync>>);

impl StepObserver {
    /// Sends every step's duration to `observe` from now on (the first call wins).
    pub fn set(&self, observe: impl Fn(&'static str, Duration) + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(observe));
    }

    pub(crate) fn observe(&self, step: &'static str, took: Duration) {
        if let Some(observe) = self.0.get() {
            observe(step, took);
        }
    }
}

impl std::fmt::Debug for StepObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "StepObserver(set)"
        } else {
            "StepObserver(unset)"
        })
    }
}

/// Edge authentication: one per process, shared by the gateway, the admin API and the CLI.
#[derive(Debug)]
pub struct Auth {
    config: sekisho_config::Auth,
    directory: Directory,
    sessions: Sessions,
    hasher: Arc<Hasher>,
    hash_pool: HashPool,
    dummy_hash: Arc<str>,
    lockout: Lockout,
    background: Background,
    cache: SessionCache,
    keys_by_digest: KeysByDigest,
    /// Identities by user id (the seeds' `user_basic`): a session not cached yet of a user
    /// seen lately costs no query. `None`: no such user, or disabled.
    users: UserCache,
    /// With Redis sessions: the in-process cache is used only while the revocation channel is
    /// subscribed (otherwise a logout elsewhere could go unseen).
    cache_trusted: Arc<AtomicBool>,
    /// The shared (L2) identity tier in Redis, when `store.redis` is set.
    l2: Option<identity_cache::SharedIdentities>,
    figures: Arc<AuthFigures>,
}

pub(crate) use session_cache::SessionCache;
/// For revocations published by hash: a cached token's key by the token's SHA-256.
pub(crate) type KeysByDigest = moka::sync::Cache<[u8; 32], CacheKey>;

/// The in-process identities by user id.
pub(crate) type UserCache = moka::sync::Cache<i64, Option<Arc<Identity>>>;

/// Entries of the in-process identity cache (`user_basic`), at most.
const USER_CACHE_ENTRIES: u64 = 10_000;
/// How long an identity is kept in process.
const USER_CACHE_TTL: Duration = Duration::from_secs(60);

/// Entries of the in-process session cache, at most.
const SESSION_CACHE_ENTRIES: u64 = 50_000;
/// How long a validated session is kept in process, at most (and never past its token's end).
const SESSION_CACHE_TTL: Duration = Duration::from_secs(300);

impl Auth {
    /// Opens the database named by `config.store` (migrating it), and Redis when sessions live
    /// there; `base_dir` is the config file's directory.
    pub async fn open(
        config: &sekisho_config::Config,
        base_dir: Option<&Path>,
    ) -> Result<Self, AuthError> {
        let auth = config
            .auth
            .as_ref()
            .map(|a| a.get_ref().clone())
            .unwrap_or_default();
        let database = open_database(config, base_dir).await?;
        database.migrate().await?;
        let redis = match (auth.session_store, &config.store.redis) {
            (SessionStore::Redis, Some(url)) => Some(url.clone()),
            (SessionStore::Redis, None) => {
                return Err(AuthError::Internal(
                    "auth.session_store = \"redis\" needs store.redis".to_owned(),
                ))
            }
            (SessionStore::Local, _) => None,
        };
        let sessions = match &redis {
            Some(url) => {
                let conn = sekisho_store::connect(url).await?;
                Sessions::Redis(sekisho_store::sessions::RedisSessions::new(
                    conn,
                    &auth.redis_prefix,
                    config
                        .store
                        .redis_timeout
                        .get()
                        .max(Duration::from_millis(250)),
                ))
            }
            None => Sessions::Local(database.clone()),
        };
        let mut this = Self::with_parts(auth, database, sessions).await?;
        if let Some(url) = &config.store.redis {
            // The shared identity tier is an optimisation: without Redis at start, run without
            // (and count failed logins on this instance).
            match sekisho_store::connect(url).await {
                Ok(conn) => {
                    let timeout = config
                        .store
                        .redis_timeout
                        .get()
                        .max(Duration::from_millis(250));
                    this.lockout
                        .share(sekisho_store::lockouts::RedisLockouts::new(
                            conn.clone(),
                            &this.config.redis_prefix,
                            timeout,
                        ));
                    let shared = identity_cache::SharedIdentities::new(
                        conn,
                        &this.config.redis_prefix,
                        timeout,
                    );
                    identity_cache::spawn_listener(
                        url.clone(),
                        shared.channel(),
                        this.cache.clone(),
                        this.users.clone(),
                    );
                    this.l2 = Some(shared);
                }
                Err(error) => {
                    tracing::warn!(%error, "Redis unreachable at start: no shared identity cache");
                }
            }
        }
        if let (Some(url), Sessions::Redis(store)) = (redis, &this.sessions) {
            this.cache_trusted.store(false, Ordering::Release);
            spawn_revocation_listener(
                url,
                store.channel(),
                this.cache.clone(),
                this.keys_by_digest.clone(),
                Arc::clone(&this.cache_trusted),
            );
        }
        Ok(this)
    }

    async fn with_parts(
        config: sekisho_config::Auth,
        database: Database,
        sessions: Sessions,
    ) -> Result<Self, AuthError> {
        let hasher = Arc::new(Hasher::new(config.argon2)?);
        let hash_pool = HashPool::new(config.max_concurrent_hashes, config.hash_queue);
        let dummy_hash: Arc<str> = {
            let hasher = Arc::clone(&hasher);
            hash_pool
                .run(move || hasher.hash("sekisho: no such user"))
                .await??
                .into()
        };
        let directory = Directory::new(database);
        let figures: Arc<AuthFigures> = Arc::default();
        let background = Background::start(directory.clone(), Arc::clone(&figures));
        let cache = SessionCache::new(SESSION_CACHE_ENTRIES as usize, SESSION_CACHE_TTL);
        Ok(Self {
            lockout: Lockout::new(config.lockout),
            config,
            directory,
            sessions,
            hasher,
            hash_pool,
            dummy_hash,
            background,
            cache,
            keys_by_digest: moka::sync::Cache::builder()
                .max_capacity(SESSION_CACHE_ENTRIES)
                .time_to_live(SESSION_CACHE_TTL)
                .build(),
            users: moka::sync::Cache::builder()
                .max_capacity(USER_CACHE_ENTRIES)
                .time_to_live(USER_CACHE_TTL)
                .build(),
            cache_trusted: Arc::new(AtomicBool::new(true)),
            l2: None,
            figures,
        })
    }

    /// `[auth]` as in force.
    pub fn config(&self) -> &sekisho_config::Auth {
        &self.config
    }

    /// The identity store.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The session store.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The hasher (argon2id with the configured cost).
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// Figures for the metrics.
    pub fn figures(&self) -> Arc<AuthFigures> {
        Arc::clone(&self.figures)
    }

    /// Background work queued and not yet stored is stored (or, without a job store, written)
    /// before this returns.
    pub async fn flush(&self) {
        self.background.flush().await;
    }

    /// Sends the background work (audit rows, last logins, lockouts) to `store` — the durable
    /// task queue — instead of writing it at once; what `store` keeps is applied later through
    /// [`Auth::apply_job`]. Once only: false when a store was attached already.
    pub fn attach_job_store(&self, store: Arc<dyn audit::JobStore>) -> bool {
        self.background.attach(store)
    }

    /// Applies a stored job (`payload`, as [`audit::Job`] serialises it) taken from the task
    /// queue, `task` being its id there. A payload that is not a job is an
    /// [`AuthError::BadRequest`] (it will never apply); a database error may pass.
    pub async fn apply_job(&self, task: i64, payload: &str) -> Result<(), AuthError> {
        let job: audit::Job = serde_json::from_str(payload)
            .map_err(|error| AuthError::BadRequest(format!("not an auth job: {error}")))?;
        job.apply(&self.directory, Some(task)).await
    }

    /// [`Auth::apply_job`] for several stored jobs at once: those that read as jobs in one
    /// transaction (`audit::apply_all`). The result of each, in order.
    pub async fn apply_jobs(&self, tasks: &[(i64, &str)]) -> Vec<Result<(), AuthError>> {
        let mut results: Vec<Option<Result<(), AuthError>>> = Vec::with_capacity(tasks.len());
        let mut jobs = Vec::with_capacity(tasks.len());
        for (task, payload) in tasks {
            match serde_json::from_str::<audit::Job>(payload) {
                Ok(job) => {
                    jobs.push((Some(*task), job));
                    results.push(None);
                }
                Err(error) => results.push(Some(Err(AuthError::BadRequest(format!(
                    "not an auth job: {error}"
                ))))),
            }
        }
        let mut applied = audit::apply_all(&self.directory, &jobs).await.into_iter();
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    applied.next().unwrap_or_else(|| {
                        Err(AuthError::Internal("a job without a result".into()))
                    })
                })
            })
            .collect()
    }

    /// Starts the housekeeping task: expired sessions swept and live ones counted every
    /// `every`. Ends when `self` is dropped.
    pub fn spawn_housekeeping(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(auth) = weak.upgrade() else { return };
                if let Err(error) = auth.sessions.sweep().await {
                    tracing::warn!(%error, "sweeping expired sessions failed");
                }
                match auth.sessions.count().await {
                    Ok(count) => auth.figures.active_sessions.store(count, Ordering::Relaxed),
                    Err(error) => tracing::warn!(%error, "counting sessions failed"),
                }
            }
        });
    }

    fn lifetimes(&self) -> Lifetimes {
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Lifetimes {
            access_ms: millis(self.config.access_ttl.get()),
            refresh_ms: millis(self.config.refresh_ttl.get()),
            absolute_ms: millis(self.config.session_absolute.get()),
        }
    }

    /// The user an access token belongs to when the in-process cache holds its session, live
    /// at `now` (the request's start: no clock is read here); nothing otherwise — then
    /// [`Auth::authenticate`] asks the stores. No I/O, no await: every request of a route
    /// with `auth` comes here first.
    pub fn authenticate_cached(&self, access_token: &[u8], now: Instant) -> Option<Arc<Identity>> {
        if !self.cache_trusted.load(Ordering::Acquire) {
            return None;
        }
        let cached = self.cache.get(&cache_key(access_token)?, now)?;
        self.figures.cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(Arc::clone(&cached.identity))
    }

    /// The user an access token belongs to: from the in-process cache (no I/O), else the
    /// session store and the user's one query.
    pub async fn authenticate(&self, access_token: &str) -> Result<Arc<Identity>, AuthError> {
        let invalid = || AuthError::Unauthenticated("invalid or expired token".to_owned());
        // The form first: 64 lowercase hex digits, or no store is asked.
        let Some(key) = checked_cache_key(access_token) else {
            return Err(invalid());
        };
        if let Some(identity) = self.authenticate_cached(&key, Instant::now()) {
            return Ok(identity);
        }
        let use_cache = self.cache_trusted.load(Ordering::Acquire);
        self.figures.cache_misses.fetch_add(1, Ordering::Relaxed);
        let Some(session) = self.session(access_token).await? else {
            return Err(invalid());
        };
        let Some(identity) = self.identity(session.user_id).await? else {
            return Err(invalid());
        };
        if use_cache {
            self.keys_by_digest.insert(token_digest(access_token), key);
            self.cache.insert(
                key,
                Arc::new(Cached {
                    identity: Arc::clone(&identity),
                    session_id: session.session_id,
                    access_expires_at: session.access_expires_at,
                }),
            );
        }
        Ok(identity)
    }

    /// The session of `access_token` from the session store; with local sessions and the
    /// shared tier, from Redis first (`session_data`), then kept there.
    async fn session(&self, access_token: &str) -> Result<Option<ValidSession>, AuthError> {
        let (Some(l2), Sessions::Local(_)) = (&self.l2, &self.sessions) else {
            return self.sessions.validate(access_token).await;
        };
        let hash = token::token_hash(access_token);
        if let Some(session) = l2.session(&hash).await {
            self.figures.session_l2_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(session));
        }
        self.figures
            .session_l2_misses
            .fetch_add(1, Ordering::Relaxed);
        let found = self.sessions.validate(access_token).await?;
        if let Some(session) = &found {
            l2.put_session(&hash, session).await;
        }
        Ok(found)
    }

    /// Drops a session (refreshed, reused, logged out) from the shared tier, and from every
    /// instance's process.
    async fn forget_shared_session(&self, session_id: &str) {
        if let (Some(l2), Sessions::Local(_)) = (&self.l2, &self.sessions) {
            l2.forget_session(session_id).await;
        }
    }

    /// Drops the sessions of a user whose sessions were revoked from the shared tier.
    async fn forget_shared_sessions_of(&self, user_id: i64) {
        if let (Some(l2), Sessions::Local(_)) = (&self.l2, &self.sessions) {
            l2.forget_user_sessions(user_id).await;
        }
    }

    /// Records a refusal by a route's requirement (`authz_fail`).
    pub fn audit_forbidden(&self, identity: &Identity, route: &str, client_ip: IpAddr) {
        self.background.audit(
            "authz_fail",
            Some(&identity.username),
            Some(&client_ip.to_string()),
            Some(format!("route {route}")),
        );
    }
}

/// The first characters of a session id, enough to find it in the log.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Opens (without migrating) the database `config.store` names.
pub async fn open_database(
    config: &sekisho_config::Config,
    base_dir: Option<&Path>,
) -> Result<Database, AuthError> {
    Ok(Database::open(&config.store, base_dir, 8).await?)
}

/// Whether `identity` meets `requirement`.
pub fn authorize(identity: &Identity, requirement: &RouteAuth) -> Result<(), AuthError> {
    let allowed = match requirement {
        RouteAuth::Authenticated => true,
        RouteAuth::Permission(permission) => identity.permissions.iter().any(|p| p == permission),
        RouteAuth::Role(role) => identity.roles.iter().any(|r| r == role),
    };
    if allowed {
        Ok(())
    } else {
        let what = match requirement {
            RouteAuth::Authenticated => String::new(),
            RouteAuth::Permission(permission) => format!("permission `{permission}`"),
            RouteAuth::Role(role) => format!("role `{role}`"),
        };
        Err(AuthError::Forbidden(format!("this route needs the {what}")))
    }
}

/// Keeps the in-process cache honest with Redis sessions: drops a revoked token's entry when
/// its revocation is published, and stops using the cache while not subscribed.
fn spawn_revocation_listener(
    url: String,
    channel: String,
    cache: SessionCache,
    keys: KeysByDigest,
    trusted: Arc<AtomicBool>,
) {
    tokio::spawn(async move {
        loop {
            let flag = Arc::clone(&trusted);
            let on_subscribed = {
                let cache = cache.clone();
                let flag = Arc::clone(&flag);
                move || {
                    cache.clear();
                    flag.store(true, Ordering::Release);
                }
            };
            let error = sekisho_store::cache::subscribe(&url, &channel, on_subscribed, |hash| {
                if let Some(key) = digest_of_hash(&hash).and_then(|digest| keys.remove(&digest)) {
                    cache.remove(&key);
                }
            })
            .await;
            flag.store(false, Ordering::Release);
            cache.clear();
            tracing::warn!(%error, "session revocation channel lost; resubscribing");
            drop(flag);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
