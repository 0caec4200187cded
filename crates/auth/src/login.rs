//! Logins, refreshes and logouts: the endpoints' work, in `Auth`'s hands.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sekisho_db::now_millis;
use serde::Serialize;
use tracing::Instrument;

use crate::audit;
use crate::lockout::Subject;
use crate::password::{Scheme, Verified};
use crate::sessions::{IssuedTokens, Refreshed};
use crate::token::{checked_cache_key, looks_like_token};
use crate::{short, Auth, AuthError, Identity, LOGIN_FAILED};

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

impl Auth {
    /// `POST …/login`.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client_ip: IpAddr,
    ) -> Result<LoginAnswer, AuthError> {
        let address = client_ip.to_string();
        let (account_locked, address_locked) = tokio::join!(
            self.lockout.check(Subject::Account, username),
            self.lockout.check(Subject::Address, &address)
        );
        let locked = account_locked.max(address_locked);
        if let Some(retry_after) = locked {
            return Err(AuthError::Locked { retry_after });
        }
        if username.is_empty() || username.len() > 128 || password.len() > 1024 {
            return Err(AuthError::Unauthenticated(LOGIN_FAILED.to_owned()));
        }
        let step = Instant::now();
        let record = self
            .directory
            .user_by_name(username)
            .instrument(tracing::debug_span!(target: "auth", "get_user"))
            .await?;
        let get_user = step.elapsed();
        self.figures.steps.observe("get_user", get_user);
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
                .instrument(tracing::debug_span!(target: "auth", "verify_password"))
                .await?
        };
        let verify_password = step.elapsed();
        self.figures
            .steps
            .observe("verify_password", verify_password);
        let record = match record {
            Some(record) if verdict != Verified::No && !record.disabled => record,
            other => {
                let detail = match other {
                    None => "unknown user",
                    Some(record) if record.disabled && verdict != Verified::No => "disabled",
                    Some(_) => "wrong password",
                };
                let written = self.background.audit(
                    "authn_login_fail",
                    Some(username),
                    Some(&address),
                    Some(detail.to_owned()),
                );
                if let Some(duration) = self
                    .lockout
                    .record_failure(Subject::Account, username)
                    .await
                {
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
                if let Some(duration) = self
                    .lockout
                    .record_failure(Subject::Address, &address)
                    .await
                {
                    self.background.audit(
                        "authn_login_lock",
                        None,
                        Some(&address),
                        Some(format!("address locked for {}s", duration.as_secs())),
                    );
                }
                // Stored (durable) before the answer: a gateway killed right after it loses
                // none of these events (`audit.rs`); bounded, never refused for it.
                written.wait().await;
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
        self.lockout.forget(Subject::Account, username).await;
        let step = Instant::now();
        let tokens = self
            .sessions
            .create(record.identity.id, self.lifetimes(), Some(&address))
            .instrument(tracing::debug_span!(target: "auth", "create_session"))
            .await?;
        let create_session = step.elapsed();
        self.figures.steps.observe("create_session", create_session);
        tracing::debug!(
            target: "auth",
            get_user_us = get_user.as_micros() as u64,
            verify_password_us = verify_password.as_micros() as u64,
            create_session_us = create_session.as_micros() as u64,
            "login steps"
        );
        self.background.send(audit::Job::LastLogin {
            user_id: record.identity.id,
            at: now_millis(),
        });
        self.background
            .audit(
                "authn_login_success",
                Some(username),
                Some(&address),
                Some(format!("session {}", short(&tokens.session_id))),
            )
            .wait()
            .await;
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
                self.forget_shared_session(&tokens.session_id).await;
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
                self.forget_shared_session(&session_id).await;
                let username = self
                    .directory
                    .user_by_id(user_id)
                    .await
                    .ok()
                    .flatten()
                    .map(|u| u.identity.username);
                let written = self.background.audit(
                    "authn_token_reuse",
                    username.as_deref(),
                    Some(&address),
                    Some(format!(
                        "spent refresh token presented again; session {} revoked",
                        short(&session_id)
                    )),
                );
                written.wait().await;
                Err(invalid())
            }
            Refreshed::Unknown => Err(invalid()),
        }
    }

    fn forget_session(&self, session_id: &str) {
        self.cache
            .remove_if(|cached| cached.session_id == session_id);
    }

    /// `POST …/logout`: the session is gone for every instance.
    pub async fn logout(&self, access_token: &str, client_ip: IpAddr) -> Result<(), AuthError> {
        let Some(key) = checked_cache_key(access_token) else {
            return Err(AuthError::Unauthenticated(
                "invalid or expired token".to_owned(),
            ));
        };
        let cached = self.cache.remove(&key);
        match self.sessions.logout(access_token).await? {
            Some((session_id, _user_id)) => {
                self.forget_shared_session(&session_id).await;
                let username = cached.map(|c| c.identity.username.clone());
                self.background
                    .audit(
                        "authn_logout",
                        username.as_deref(),
                        Some(&client_ip.to_string()),
                        Some(format!("session {}", short(&session_id))),
                    )
                    .wait()
                    .await;
                Ok(())
            }
            None => Err(AuthError::Unauthenticated(
                "invalid or expired token".to_owned(),
            )),
        }
    }
}
