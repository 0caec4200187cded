//! Users, roles and sessions as the CLI and the admin API manage them.

use std::sync::Arc;

use sekisho_db::now_millis;
use serde::Serialize;

use crate::lockout::Subject;
use crate::password::Scheme;
use crate::sessions::SessionInfo;
use crate::users::UserRecord;
use crate::{identity_cache, Auth, AuthError};

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

/// A lockout as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LockoutView {
    /// `account` or `address`.
    pub kind: &'static str,
    /// The user name or the client address.
    pub name: String,
    /// Seconds until it ends (rounded up).
    pub retry_after: u64,
}

impl Auth {
    /// The lockouts in force (accounts and client addresses): every instance's with
    /// `store.redis`, else this instance's.
    pub async fn lockouts(&self) -> Vec<LockoutView> {
        self.lockout
            .locked_everywhere()
            .await
            .into_iter()
            .map(|(subject, name, left)| LockoutView {
                kind: match subject {
                    Subject::Account => "account",
                    Subject::Address => "address",
                },
                name,
                retry_after: left.as_secs() + u64::from(left.subsec_nanos() > 0),
            })
            .collect()
    }

    /// Clears the lockout of a client address (an operator's action); whether there was one.
    pub async fn unlock_address(&self, address: &str) -> bool {
        let cleared = self.lockout.forget(Subject::Address, address).await;
        if cleared {
            self.background.audit(
                "authn_login_unlock",
                None,
                Some(address),
                Some("address unlocked by an operator".to_owned()),
            );
        }
        cleared
    }

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

    /// One page of the users, by name: at most `limit` after the name `after`.
    pub async fn users_page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserView>, AuthError> {
        Ok(self
            .directory
            .users_page(after, limit)
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
            self.lockout.forget(Subject::Account, username).await;
            self.directory.set_locked_until(username, None).await?;
            changes.push("unlocked".to_owned());
        }
        self.forget_user(before.id).await;
        if update.password.is_some() || update.disabled == Some(true) {
            self.sessions.revoke_user(before.id).await?;
            self.forget_shared_sessions_of(before.id).await;
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
        self.forget_shared_sessions_of(user.id).await;
        self.directory.delete_user(username).await?;
        self.forget_user(user.id).await;
        self.background
            .audit("user_deleted", Some(username), None, None);
        Ok(())
    }

    /// Creates a role or replaces its permissions.
    pub async fn put_role(&self, name: &str, permissions: &[String]) -> Result<(), AuthError> {
        self.directory.put_role(name, permissions).await?;
        // Only the identities holding the role change: here, and on every instance.
        identity_cache::forget_role_in_process(&self.users, &self.cache, name);
        if let Some(l2) = &self.l2 {
            l2.forget_role(name).await;
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
        self.forget_shared_sessions_of(user.id).await;
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
