//! The identity store's queries: users with their roles and permissions, roles, the audit log.
//! Every query is written once, with `$n` placeholders, and runs on SQLite and PostgreSQL alike.

use sekisho_db::sqlx::{self, any::AnyRow, Row};
use sekisho_db::{now_millis, Database};
use serde::Serialize;

use crate::AuthError;

/// An account's lockout end (NULL: unlocked); the operator's unlock and the lockout jobs
/// (`audit.rs`) both write it with this.
pub(crate) const SET_LOCKED_UNTIL: &str = "UPDATE users SET locked_until = $1 WHERE username = $2";

/// A user as a request sees it: who, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Identity {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub username: String,
    /// Its roles, sorted.
    pub roles: Vec<String>,
    /// The permissions of its roles, sorted, once each.
    pub permissions: Vec<String>,
    /// `roles` joined by commas, as the upstream's `X-Auth-Roles` carries them (made once).
    #[serde(skip)]
    pub roles_csv: String,
    /// `permissions` joined by commas, for `X-Auth-Permissions`.
    #[serde(skip)]
    pub permissions_csv: String,
    /// What a caller derives from this identity, made once (the gateway keeps the identity
    /// headers it sends up, so a cached session renders them once, not per request).
    #[serde(skip)]
    pub memo: Memo,
}

/// A slot filled once with a value of the caller's type; a clone starts empty.
#[derive(Default)]
pub struct Memo(std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>);

impl Memo {
    /// The value, made by `make` the first time; `None` if the slot holds another type.
    pub fn get_or_init<T: std::any::Any + Send + Sync>(
        &self,
        make: impl FnOnce() -> T,
    ) -> Option<&T> {
        self.0.get_or_init(|| Box::new(make())).downcast_ref::<T>()
    }
}

impl Clone for Memo {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Memo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Memo {}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo")
    }
}

impl Identity {
    /// An identity; the comma-joined lists are made here.
    pub fn new(id: i64, username: String, roles: Vec<String>, permissions: Vec<String>) -> Self {
        Self {
            roles_csv: roles.join(","),
            permissions_csv: permissions.join(","),
            memo: Memo::default(),
            id,
            username,
            roles,
            permissions,
        }
    }
}

/// A user with what only the store needs.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// Who, and what it may do.
    pub identity: Identity,
    /// The stored hash (argon2id, or a legacy bcrypt or MD5 one).
    pub password_hash: String,
    /// A disabled user cannot log in and its sessions are refused.
    pub disabled: bool,
    /// When a lockout of the account ends (Unix milliseconds), if one was recorded.
    pub locked_until: Option<i64>,
    /// Its last login (Unix milliseconds).
    pub last_login_at: Option<i64>,
}

/// A user, its roles and its permissions in one query: the seed's join and aggregate (roles
/// and the permissions of those roles, tagged `r:`/`p:`, united so each appears once, then
/// aggregated into one text per user).
const USER_WITH_GRANTS: &str =
    "SELECT u.id, u.username, u.password_hash, u.disabled, u.locked_until, u.last_login_at,
       string_agg(g.kind || ':' || g.name, ',') AS grants
FROM users u
LEFT JOIN (
    SELECT ur.user_id AS user_id, 'r' AS kind, r.name AS name
    FROM user_roles ur JOIN roles r ON r.id = ur.role_id
    UNION
    SELECT ur.user_id, 'p', p.name
    FROM user_roles ur
    JOIN role_permissions rp ON rp.role_id = ur.role_id
    JOIN permissions p ON p.id = rp.permission_id
) g ON g.user_id = u.id
WHERE ";
const GROUP_BY: &str =
    " GROUP BY u.id, u.username, u.password_hash, u.disabled, u.locked_until, u.last_login_at";

fn user_of(row: &AnyRow) -> Result<UserRecord, sqlx::Error> {
    let grants: Option<String> = row.try_get(6)?;
    let mut roles = Vec::new();
    let mut permissions = Vec::new();
    for grant in grants.as_deref().unwrap_or_default().split(',') {
        if let Some(role) = grant.strip_prefix("r:") {
            roles.push(role.to_owned());
        } else if let Some(permission) = grant.strip_prefix("p:") {
            permissions.push(permission.to_owned());
        }
    }
    roles.sort();
    roles.dedup();
    permissions.sort();
    permissions.dedup();
    Ok(UserRecord {
        identity: Identity::new(row.try_get(0)?, row.try_get(1)?, roles, permissions),
        password_hash: row.try_get(2)?,
        disabled: row.try_get::<i64, _>(3)? != 0,
        locked_until: row.try_get(4)?,
        last_login_at: row.try_get(5)?,
    })
}

/// Role, permission and user names: what a header and the aggregate can carry.
pub fn check_name(what: &str, name: &str) -> Result<(), AuthError> {
    let fine = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != ',' && c != '\\' && c != '"');
    if fine {
        Ok(())
    } else {
        Err(AuthError::BadRequest(format!(
            "{what} `{name}` must be 1 to 128 visible ASCII characters without `,`, `\\` or `\"`"
        )))
    }
}

/// The identity store on a [`Database`].
#[derive(Debug, Clone)]
pub struct Directory {
    db: Database,
}

impl Directory {
    /// The store on `db` (migrated).
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The database underneath.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The user called `username`, with its roles and permissions: one query.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, AuthError> {
        let sql = format!("{USER_WITH_GRANTS}u.username = $1{GROUP_BY}");
        let row = sqlx::query(&sql)
            .bind(username)
            .fetch_optional(self.db.reader())
            .await?;
        Ok(row.as_ref().map(user_of).transpose()?)
    }

    /// The user with `id`: one query.
    pub async fn user_by_id(&self, id: i64) -> Result<Option<UserRecord>, AuthError> {
        let sql = format!("{USER_WITH_GRANTS}u.id = $1{GROUP_BY}");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.db.reader())
            .await?;
        Ok(row.as_ref().map(user_of).transpose()?)
    }

    /// Users who logged in at or after `since` (Unix milliseconds): whom to warm.
    pub async fn active_since(&self, since: i64) -> Result<Vec<UserRecord>, AuthError> {
        let sql = format!("{USER_WITH_GRANTS}u.last_login_at >= $1{GROUP_BY}");
        let rows = sqlx::query(&sql)
            .bind(since)
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows.iter().map(user_of).collect::<Result<_, _>>()?)
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<UserRecord>, AuthError> {
        let sql = format!("{USER_WITH_GRANTS}1 = 1{GROUP_BY} ORDER BY u.username");
        let rows = sqlx::query(&sql).fetch_all(self.db.pool()).await?;
        Ok(rows.iter().map(user_of).collect::<Result<_, _>>()?)
    }

    /// One page of the users, by name: at most `limit` of those whose name sorts after `after`
    /// (from the first without it). The last name of a page is the cursor of the next.
    pub async fn users_page(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserRecord>, AuthError> {
        let sql =
            format!("{USER_WITH_GRANTS}u.username > $1{GROUP_BY} ORDER BY u.username LIMIT $2");
        let rows = sqlx::query(&sql)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows.iter().map(user_of).collect::<Result<_, _>>()?)
    }

    /// Creates `username` with `password_hash` and `roles` (which must exist).
    pub async fn add_user(
        &self,
        username: &str,
        password_hash: &str,
        roles: &[String],
    ) -> Result<i64, AuthError> {
        check_name("user name", username)?;
        let now = now_millis();
        let mut transaction = self.db.pool().begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&mut *transaction)
            .await?;
        if exists.is_some() {
            return Err(AuthError::Conflict(format!(
                "user `{username}` exists already"
            )));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, disabled, created_at, updated_at) VALUES ($1, $2, 0, $3, $3) RETURNING id",
        )
        .bind(username)
        .bind(password_hash)
        .bind(now)
        .fetch_one(&mut *transaction)
        .await?;
        for role in roles {
            let role_id = role_id(&mut transaction, role).await?;
            sqlx::query("INSERT INTO user_roles (user_id, role_id) VALUES ($1, $2)")
                .bind(id)
                .bind(role_id)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(id)
    }

    /// Replaces the roles of `username`.
    pub async fn set_roles(&self, username: &str, roles: &[String]) -> Result<(), AuthError> {
        let mut transaction = self.db.pool().begin().await?;
        let id = user_id(&mut transaction, username).await?;
        sqlx::query("DELETE FROM user_roles WHERE user_id = $1")
            .bind(id)
            .execute(&mut *transaction)
            .await?;
        for role in roles {
            let role_id = role_id(&mut transaction, role).await?;
            sqlx::query("INSERT INTO user_roles (user_id, role_id) VALUES ($1, $2)")
                .bind(id)
                .bind(role_id)
                .execute(&mut *transaction)
                .await?;
        }
        sqlx::query("UPDATE users SET updated_at = $1 WHERE id = $2")
            .bind(now_millis())
            .bind(id)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Stores a new hash for `username`.
    pub async fn set_password_hash(&self, username: &str, hash: &str) -> Result<(), AuthError> {
        let done =
            sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE username = $3")
                .bind(hash)
                .bind(now_millis())
                .bind(username)
                .execute(self.db.pool())
                .await?;
        if done.rows_affected() == 0 {
            return Err(AuthError::NotFound(format!("no user `{username}`")));
        }
        Ok(())
    }

    /// Replaces the stored hash of user `id` only if it is still `old` (a rehash after login
    /// must not overwrite a password changed meanwhile).
    pub async fn rehash(&self, id: i64, old: &str, new: &str) -> Result<bool, AuthError> {
        let done = sqlx::query(
            "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3 AND password_hash = $4",
        )
        .bind(new)
        .bind(now_millis())
        .bind(id)
        .bind(old)
        .execute(self.db.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Disables or enables `username`.
    pub async fn set_disabled(&self, username: &str, disabled: bool) -> Result<(), AuthError> {
        let done =
            sqlx::query("UPDATE users SET disabled = $1, updated_at = $2 WHERE username = $3")
                .bind(i64::from(disabled))
                .bind(now_millis())
                .bind(username)
                .execute(self.db.pool())
                .await?;
        if done.rows_affected() == 0 {
            return Err(AuthError::NotFound(format!("no user `{username}`")));
        }
        Ok(())
    }

    /// Records (or clears, with `None`) the end of a lockout of `username`.
    pub async fn set_locked_until(
        &self,
        username: &str,
        until: Option<i64>,
    ) -> Result<(), AuthError> {
        sqlx::query(SET_LOCKED_UNTIL)
            .bind(until)
            .bind(username)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Deletes `username` (its roles and sessions go with it).
    pub async fn delete_user(&self, username: &str) -> Result<(), AuthError> {
        let done = sqlx::query("DELETE FROM users WHERE username = $1")
            .bind(username)
            .execute(self.db.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(AuthError::NotFound(format!("no user `{username}`")));
        }
        Ok(())
    }

    /// Creates role `name`, or replaces its permissions when it exists.
    pub async fn put_role(&self, name: &str, permissions: &[String]) -> Result<(), AuthError> {
        check_name("role", name)?;
        for permission in permissions {
            check_name("permission", permission)?;
        }
        let mut transaction = self.db.pool().begin().await?;
        let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM roles WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *transaction)
            .await?;
        let role_id = match existing {
            Some(id) => id,
            None => {
                sqlx::query_scalar(
                    "INSERT INTO roles (name, created_at) VALUES ($1, $2) RETURNING id",
                )
                .bind(name)
                .bind(now_millis())
                .fetch_one(&mut *transaction)
                .await?
            }
        };
        sqlx::query("DELETE FROM role_permissions WHERE role_id = $1")
            .bind(role_id)
            .execute(&mut *transaction)
            .await?;
        for permission in permissions {
            let existing: Option<i64> =
                sqlx::query_scalar("SELECT id FROM permissions WHERE name = $1")
                    .bind(permission)
                    .fetch_optional(&mut *transaction)
                    .await?;
            let permission_id = match existing {
                Some(id) => id,
                None => {
                    sqlx::query_scalar("INSERT INTO permissions (name) VALUES ($1) RETURNING id")
                        .bind(permission)
                        .fetch_one(&mut *transaction)
                        .await?
                }
            };
            sqlx::query("INSERT INTO role_permissions (role_id, permission_id) VALUES ($1, $2)")
                .bind(role_id)
                .bind(permission_id)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// The permissions of each role of `names` that exists (the seeds' `role_definitions`),
    /// in one query; a role without permissions maps to an empty list.
    pub async fn role_definitions(
        &self,
        names: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<String>>, AuthError> {
        let mut definitions = std::collections::HashMap::new();
        if names.is_empty() {
            return Ok(definitions);
        }
        let placeholders: Vec<String> = (1..=names.len()).map(|n| format!("${n}")).collect();
        let text = format!(
            "SELECT r.name, p.name FROM roles r
             LEFT JOIN role_permissions rp ON rp.role_id = r.id
             LEFT JOIN permissions p ON p.id = rp.permission_id
             WHERE r.name IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&text);
        for name in names {
            query = query.bind(name);
        }
        for row in query.fetch_all(self.db.pool()).await? {
            let role: String = row.try_get(0)?;
            let permission: Option<String> = row.try_get(1)?;
            let entry: &mut Vec<String> = definitions.entry(role).or_default();
            entry.extend(permission);
        }
        for permissions in definitions.values_mut() {
            permissions.sort();
            permissions.dedup();
        }
        Ok(definitions)
    }

    /// The newest `limit` audit events: (at, event, username).
    pub async fn audit_events(
        &self,
        limit: i64,
    ) -> Result<Vec<(i64, String, Option<String>)>, AuthError> {
        let rows =
            sqlx::query("SELECT at, event, username FROM audit_log ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(self.db.pool())
                .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(AuthError::from)
    }
}

async fn user_id(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    username: &str,
) -> Result<i64, AuthError> {
    sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
        .bind(username)
        .fetch_optional(&mut **transaction)
        .await?
        .ok_or_else(|| AuthError::NotFound(format!("no user `{username}`")))
}

async fn role_id(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    role: &str,
) -> Result<i64, AuthError> {
    sqlx::query_scalar("SELECT id FROM roles WHERE name = $1")
        .bind(role)
        .fetch_optional(&mut **transaction)
        .await?
        .ok_or_else(|| {
            AuthError::NotFound(format!(
                "no role `{role}`: create it first with `sekisho role add`"
            ))
        })
}
