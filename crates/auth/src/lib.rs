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
pub mod identity_cache;
pub mod lockout;
pub mod password;
pub mod sessions;
pub mod token;
pub mod users;

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sekisho_config::{RouteAuth, SessionStore};
use sekisho_db::{now_millis, Database};
use serde::Serialize;

pub use sekisho_db::DbError;
pub use users::Identity;

use audit::Background;
use lockout::{Lockout, Subject};
use password::{HashPool, Hasher, Scheme, Verified};
use sessions::{IssuedTokens, Lifetimes, Refreshed, SessionInfo, Sessions};
use token::{looks_like_token, token_hash};
use users::{Directory, UserRecord};

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

/// What a login or a refresh answers (CONTRACT.md's JSON).
#[derive(Debug, Clone, Serialize)]
pub struct LoginAnswer {
    /// The access token, for `Authorization: Bearer`.
    pub access_token: String,
    /// The refresh token, for `POST …/refresh`.
    pub refresh_token: String,
    /// Always "Bearer".
    pub token_type: &'static str,
    /// Seconds the access token lives.
    pub expires_in: i64,
    /// Who logged in.
    pub user: Identity,
}

/// A user as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub username: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// Its permissions.
    pub permissions: Vec<String>,
    /// Whether it is disabled.
    pub disabled: bool,
    /// When its lockout ends (Unix milliseconds), while locked.
    pub locked_until: Option<i64>,
    /// Its last login (Unix milliseconds).
    pub last_login_at: Option<i64>,
    /// `argon2id`, `bcrypt` or `md5`.
    pub password_scheme: &'static str,
}

impl UserView {
    fn of(record: UserRecord) -> Self {
        let now = now_millis();
        Self {
            id: record.identity.id,
            username: record.identity.username,
            roles: record.identity.roles,
            permissions: record.identity.permissions,
            disabled: record.disabled,
            locked_until: record.locked_until.filter(|until| *until > now),
            last_login_at: record.last_login_at,
            password_scheme: Scheme::of(&record.password_hash).name(),
        }
    }
}

/// A change to a user (admin API `PUT`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    /// New roles (replacing the old ones).
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// A new password.
    #[serde(default)]
    pub password: Option<String>,
    /// Disable or enable.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// `true`: clear the account's lockout.
    #[serde(default)]
    pub unlock: bool,
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
    /// Sessions validated from the in-process cache.
    pub cache_hits: AtomicU64,
    /// Sessions looked up in the session store (not cached, expired, or cache not trusted).
    pub cache_misses: AtomicU64,
    /// Identities found in the shared (Redis) tier.
    pub l2_hits: AtomicU64,
    /// Identities not found there (read from the database).
    pub l2_misses: AtomicU64,
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
    cache: moka::sync::Cache<String, Arc<Cached>>,
    /// With Redis sessions: the in-process cache is used only while the revocation channel is
    /// subscribed (otherwise a logout elsewhere could go unseen).
    cache_trusted: Arc<AtomicBool>,
    /// The shared (L2) identity tier in Redis, when `store.redis` is set.
    l2: Option<identity_cache::SharedIdentities>,
    figures: Arc<AuthFigures>,
}

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
                    sekisho_store::sessions::DEFAULT_PREFIX,
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
            // The shared identity tier is an optimisation: without Redis at start, run without.
            match sekisho_store::connect(url).await {
                Ok(conn) => {
                    let shared = identity_cache::SharedIdentities::new(
                        conn,
                        config
                            .store
                            .redis_timeout
                            .get()
                            .max(Duration::from_millis(250)),
                    );
                    identity_cache::spawn_listener(
                        url.clone(),
                        shared.channel(),
                        this.cache.clone(),
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
        let background = Background::start(directory.clone());
        let cache = moka::sync::Cache::builder()
            .max_capacity(SESSION_CACHE_ENTRIES)
            .time_to_live(SESSION_CACHE_TTL)
            .support_invalidation_closures()
            .build();
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
            cache_trusted: Arc::new(AtomicBool::new(true)),
            l2: None,
            figures: Arc::default(),
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

    /// Background work queued and not yet written is written before this returns.
    pub async fn flush(&self) {
        self.background.flush().await;
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

    /// `POST …/login`.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client_ip: IpAddr,
    ) -> Result<LoginAnswer, AuthError> {
        let address = client_ip.to_string();
        let now = Instant::now();
        let locked = self
            .lockout
            .locked(Subject::Account, username, now)
            .into_iter()
            .chain(self.lockout.locked(Subject::Address, &address, now))
            .max();
        if let Some(retry_after) = locked {
            return Err(AuthError::Locked { retry_after });
        }
        if username.is_empty() || username.len() > 128 || password.len() > 1024 {
            return Err(AuthError::Unauthenticated(LOGIN_FAILED.to_owned()));
        }
        let step = Instant::now();
        let record = self.directory.user_by_name(username).await?;
        let get_user = step.elapsed();
        // An account locked by another instance (its lockout is written to the user's row).
        if let Some(until) = record.as_ref().and_then(|r| r.locked_until) {
            let left = until - now_millis();
            if left > 0 {
                return Err(AuthError::Locked {
                    retry_after: Duration::from_millis(u64::try_from(left).unwrap_or(0)),
                });
            }
        }
        let stored: Arc<str> = match &record {
            Some(record) => record.password_hash.as_str().into(),
            None => Arc::clone(&self.dummy_hash),
        };
        let step = Instant::now();
        let (verdict, new_hash) = {
            let hasher = Arc::clone(&self.hasher);
            let password = password.to_owned();
            let stored = Arc::clone(&stored);
            self.hash_pool
                .run(move || {
                    let verdict = hasher.verify(&password, &stored);
                    let new_hash = (verdict == Verified::YesRehash)
                        .then(|| hasher.hash(&password).ok())
                        .flatten();
                    (verdict, new_hash)
                })
                .await?
        };
        let verify_password = step.elapsed();
        let record = match record {
            Some(record) if verdict != Verified::No && !record.disabled => record,
            other => {
                let detail = match other {
                    None => "unknown user",
                    Some(record) if record.disabled && verdict != Verified::No => "disabled",
                    Some(_) => "wrong password",
                };
                self.background.audit(
                    "authn_login_fail",
                    Some(username),
                    Some(&address),
                    Some(detail.to_owned()),
                );
                let now = Instant::now();
                if let Some(duration) = self.lockout.fail(Subject::Account, username, now) {
                    self.background.audit(
                        "authn_login_lock",
                        Some(username),
                        Some(&address),
                        Some(format!("account locked for {}s", duration.as_secs())),
                    );
                    self.background.send(audit::Job::LockedUntil {
                        username: username.to_owned(),
                        until: Some(
                            now_millis() + i64::try_from(duration.as_millis()).unwrap_or(0),
                        ),
                    });
                }
                if let Some(duration) = self.lockout.fail(Subject::Address, &address, now) {
                    self.background.audit(
                        "authn_login_lock",
                        None,
                        Some(&address),
                        Some(format!("address locked for {}s", duration.as_secs())),
                    );
                }
                return Err(AuthError::Unauthenticated(LOGIN_FAILED.to_owned()));
            }
        };
        if let Some(new_hash) = new_hash {
            let from = Scheme::of(&record.password_hash).name();
            if self
                .directory
                .rehash(record.identity.id, &record.password_hash, &new_hash)
                .await?
            {
                self.background.audit(
                    "user_updated",
                    Some(username),
                    Some(&address),
                    Some(format!("password rehashed from {from} to argon2id")),
                );
            }
        }
        self.lockout.clear(Subject::Account, username);
        let step = Instant::now();
        let tokens = self
            .sessions
            .create(record.identity.id, self.lifetimes(), Some(&address))
            .await?;
        tracing::debug!(
            target: "auth",
            get_user_us = get_user.as_micros() as u64,
            verify_password_us = verify_password.as_micros() as u64,
            create_session_us = step.elapsed().as_micros() as u64,
            "login steps"
        );
        self.background.send(audit::Job::LastLogin {
            user_id: record.identity.id,
            at: now_millis(),
        });
        self.background.audit(
            "authn_login_success",
            Some(username),
            Some(&address),
            Some(format!("session {}", short(&tokens.session_id))),
        );
        Ok(self.answer(tokens, record.identity))
    }

    fn answer(&self, tokens: IssuedTokens, user: Identity) -> LoginAnswer {
        LoginAnswer {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            token_type: "Bearer",
            expires_in: tokens.expires_in,
            user,
        }
    }

    /// `POST …/refresh`: a new pair; a spent refresh token revokes its whole session.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client_ip: IpAddr,
    ) -> Result<LoginAnswer, AuthError> {
        let invalid = || AuthError::Unauthenticated("invalid or expired refresh token".to_owned());
        if !looks_like_token(refresh_token) {
            return Err(invalid());
        }
        let address = client_ip.to_string();
        match self
            .sessions
            .refresh(refresh_token, self.lifetimes())
            .await?
        {
            Refreshed::Rotated(tokens, user_id) => {
                // The old access token is gone from the store; drop it here too.
                self.forget_session(&tokens.session_id);
                let Some(user) = self.directory.user_by_id(user_id).await? else {
                    return Err(invalid());
                };
                if user.disabled {
                    return Err(invalid());
                }
                Ok(self.answer(tokens, user.identity))
            }
            Refreshed::Reused(session_id, user_id) => {
                self.forget_session(&session_id);
                let username = self
                    .directory
                    .user_by_id(user_id)
                    .await
                    .ok()
                    .flatten()
                    .map(|u| u.identity.username);
                self.background.audit(
                    "authn_token_reuse",
                    username.as_deref(),
                    Some(&address),
                    Some(format!(
                        "spent refresh token presented again; session {} revoked",
                        short(&session_id)
                    )),
                );
                Err(invalid())
            }
            Refreshed::Unknown => Err(invalid()),
        }
    }

    fn forget_session(&self, session_id: &str) {
        let session_id = session_id.to_owned();
        let _ = self
            .cache
            .invalidate_entries_if(move |_, cached| cached.session_id == session_id);
    }

    /// `POST …/logout`: the session is gone for every instance.
    pub async fn logout(&self, access_token: &str, client_ip: IpAddr) -> Result<(), AuthError> {
        if !looks_like_token(access_token) {
            return Err(AuthError::Unauthenticated(
                "invalid or expired token".to_owned(),
            ));
        }
        let hash = token_hash(access_token);
        let cached = self.cache.get(&hash);
        self.cache.invalidate(&hash);
        match self.sessions.logout(access_token).await? {
            Some((session_id, _user_id)) => {
                let username = cached.map(|c| c.identity.username.clone());
                self.background.audit(
                    "authn_logout",
                    username.as_deref(),
                    Some(&client_ip.to_string()),
                    Some(format!("session {}", short(&session_id))),
                );
                Ok(())
            }
            None => Err(AuthError::Unauthenticated(
                "invalid or expired token".to_owned(),
            )),
        }
    }

    /// The user an access token belongs to: from the in-process cache (no I/O), else the
    /// session store and the user's one query.
    pub async fn authenticate(&self, access_token: &str) -> Result<Arc<Identity>, AuthError> {
        let invalid = || AuthError::Unauthenticated("invalid or expired token".to_owned());
        if !looks_like_token(access_token) {
            return Err(invalid());
        }
        let hash = token_hash(access_token);
        let use_cache = self.cache_trusted.load(Ordering::Acquire);
        if use_cache {
            if let Some(cached) = self.cache.get(&hash) {
                if cached.access_expires_at > now_millis() {
                    self.figures.cache_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Arc::clone(&cached.identity));
                }
                self.cache.invalidate(&hash);
            }
        }
        self.figures.cache_misses.fetch_add(1, Ordering::Relaxed);
        let Some(session) = self.sessions.validate(access_token).await? else {
            return Err(invalid());
        };
        let Some(identity) = self.identity(session.user_id).await? else {
            return Err(invalid());
        };
        if use_cache {
            self.cache.insert(
                hash,
                Arc::new(Cached {
                    identity: Arc::clone(&identity),
                    session_id: session.session_id,
                    access_expires_at: session.access_expires_at,
                }),
            );
        }
        Ok(identity)
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

    /// The identity of an enabled user: the shared tier (Redis), else the database's one
    /// query (then kept in the shared tier for an hour).
    async fn identity(&self, user_id: i64) -> Result<Option<Arc<Identity>>, AuthError> {
        if let Some(l2) = &self.l2 {
            match l2.get(user_id).await {
                Some(cached) => {
                    self.figures.l2_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((!cached.disabled).then(|| Arc::new(cached.identity)));
                }
                None => {
                    self.figures.l2_misses.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let Some(user) = self.directory.user_by_id(user_id).await? else {
            return Ok(None);
        };
        if let Some(l2) = &self.l2 {
            l2.put(&user.identity, user.disabled).await;
        }
        Ok((!user.disabled).then(|| Arc::new(user.identity)))
    }

    /// Drops what is cached of a user, here and (through Redis) on every instance.
    async fn forget_user(&self, user_id: i64) {
        let _ = self
            .cache
            .invalidate_entries_if(move |_, cached| cached.identity.id == user_id);
        if let Some(l2) = &self.l2 {
            l2.forget_user(user_id).await;
        }
    }

    /// Starts warming the shared tier: every `every`, the identities of users who logged in
    /// within the last hour are written to Redis. Ends when `self` is dropped.
    pub fn spawn_warming(self: &Arc<Self>, every: Duration) {
        if self.l2.is_none() || every.is_zero() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(auth) = weak.upgrade() else { return };
                let since = now_millis() - 3_600_000;
                match auth.directory.active_since(since).await {
                    Ok(users) => {
                        if let Some(l2) = &auth.l2 {
                            for user in &users {
                                l2.put(&user.identity, user.disabled).await;
                            }
                        }
                        tracing::debug!(users = users.len(), "identity cache warmed");
                    }
                    Err(error) => tracing::warn!(%error, "warming the identity cache failed"),
                }
            }
        });
    }

    // --- users and roles (CLI and admin API) ---

    /// Every user.
    pub async fn users(&self) -> Result<Vec<UserView>, AuthError> {
        Ok(self
            .directory
            .users()
            .await?
            .into_iter()
            .map(UserView::of)
            .collect())
    }

    /// One user.
    pub async fn user(&self, username: &str) -> Result<UserView, AuthError> {
        self.directory
            .user_by_name(username)
            .await?
            .map(UserView::of)
            .ok_or_else(|| AuthError::NotFound(format!("no user `{username}`")))
    }

    /// Creates a user with a password (hashed here) or an imported hash.
    pub async fn create_user(
        &self,
        username: &str,
        password: Option<&str>,
        imported_hash: Option<&str>,
        roles: &[String],
    ) -> Result<UserView, AuthError> {
        let hash = match (password, imported_hash) {
            (Some(password), None) => self.hash_password(password).await?,
            (None, Some(hash)) => {
                if Scheme::of(hash) == Scheme::Unknown {
                    return Err(AuthError::BadRequest(
                        "the password hash is neither argon2id ($argon2id$…), bcrypt ($2a$/$2b$/$2y$…) nor MD5 (32 hex digits)".to_owned(),
                    ));
                }
                hash.to_owned()
            }
            _ => {
                return Err(AuthError::BadRequest(
                    "give a password or a password hash (one of them)".to_owned(),
                ))
            }
        };
        self.directory.add_user(username, &hash, roles).await?;
        self.background.audit(
            "user_created",
            Some(username),
            None,
            Some(format!("roles [{}]", roles.join(","))),
        );
        self.user(username).await
    }

    async fn hash_password(&self, password: &str) -> Result<String, AuthError> {
        if password.is_empty() || password.len() > 1024 {
            return Err(AuthError::BadRequest(
                "a password must be 1 to 1024 bytes".to_owned(),
            ));
        }
        let hasher = Arc::clone(&self.hasher);
        let password = password.to_owned();
        self.hash_pool.run(move || hasher.hash(&password)).await?
    }

    /// Changes a user (roles, password, disabled, lockout).
    pub async fn update_user(
        &self,
        username: &str,
        update: UserUpdate,
    ) -> Result<UserView, AuthError> {
        let before = self.user(username).await?;
        let mut changes = Vec::new();
        if let Some(roles) = &update.roles {
            self.directory.set_roles(username, roles).await?;
            changes.push(format!("roles [{}]", roles.join(",")));
        }
        if let Some(password) = &update.password {
            let hash = self.hash_password(password).await?;
            self.directory.set_password_hash(username, &hash).await?;
            changes.push("password".to_owned());
        }
        if let Some(disabled) = update.disabled {
            self.directory.set_disabled(username, disabled).await?;
            changes.push(format!("disabled {disabled}"));
        }
        if update.unlock {
            // A lockout still queued for the database must not land after the unlock.
            self.background.flush().await;
            self.lockout.clear(Subject::Account, username);
            self.directory.set_locked_until(username, None).await?;
            changes.push("unlocked".to_owned());
        }
        self.forget_user(before.id).await;
        if update.password.is_some() || update.disabled == Some(true) {
            self.sessions.revoke_user(before.id).await?;
        }
        self.background.audit(
            "user_updated",
            Some(username),
            None,
            Some(changes.join("; ")),
        );
        self.user(username).await
    }

    /// Sets a user's password (CLI `user passwd`); its sessions are revoked.
    pub async fn set_password(&self, username: &str, password: &str) -> Result<(), AuthError> {
        self.update_user(
            username,
            UserUpdate {
                password: Some(password.to_owned()),
                ..UserUpdate::default()
            },
        )
        .await
        .map(|_| ())
    }

    /// Deletes a user and its sessions.
    pub async fn delete_user(&self, username: &str) -> Result<(), AuthError> {
        let user = self.user(username).await?;
        self.sessions.revoke_user(user.id).await?;
        self.directory.delete_user(username).await?;
        self.forget_user(user.id).await;
        self.background
            .audit("user_deleted", Some(username), None, None);
        Ok(())
    }

    /// Creates a role or replaces its permissions.
    pub async fn put_role(&self, name: &str, permissions: &[String]) -> Result<(), AuthError> {
        self.directory.put_role(name, permissions).await?;
        self.cache.invalidate_all();
        if let Some(l2) = &self.l2 {
            l2.forget_all().await;
        }
        self.background.audit(
            "role_updated",
            None,
            None,
            Some(format!(
                "role {name}: permissions [{}]",
                permissions.join(",")
            )),
        );
        Ok(())
    }

    /// The live sessions of a user.
    pub async fn sessions_of(&self, username: &str) -> Result<Vec<SessionInfo>, AuthError> {
        let user = self.user(username).await?;
        self.sessions.of_user(user.id).await
    }

    /// Revokes every session of a user; returns how many there were.
    pub async fn revoke_sessions(&self, username: &str) -> Result<u64, AuthError> {
        let user = self.user(username).await?;
        let revoked = self.sessions.revoke_user(user.id).await?;
        self.forget_user(user.id).await;
        self.background.audit(
            "session_revoked",
            Some(username),
            None,
            Some(format!("{revoked} session(s) revoked by an operator")),
        );
        Ok(revoked)
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
    cache: moka::sync::Cache<String, Arc<Cached>>,
    trusted: Arc<AtomicBool>,
) {
    tokio::spawn(async move {
        loop {
            let flag = Arc::clone(&trusted);
            let on_subscribed = {
                let cache = cache.clone();
                let flag = Arc::clone(&flag);
                move || {
                    cache.invalidate_all();
                    flag.store(true, Ordering::Release);
                }
            };
            let error = sekisho_store::cache::subscribe(&url, &channel, on_subscribed, |hash| {
                cache.invalidate(&hash);
            })
            .await;
            flag.store(false, Ordering::Release);
            cache.invalidate_all();
            tracing::warn!(%error, "session revocation channel lost; resubscribing");
            drop(flag);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
