//! Who a session belongs to, beyond the in-process session map: the in-process identities
//! (`user_basic`), the shared tier (users' grants and roles' definitions in Redis) and the
//! database, with their invalidation and warming.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sekisho_db::now_millis;

use crate::users::Identity;
use crate::{identity_cache, Auth, AuthError};

impl Auth {
    /// The identity of an enabled user: the shared tier (Redis), else the database's one
    /// query (then kept in the shared tier for an hour).
    pub(crate) async fn identity(&self, user_id: i64) -> Result<Option<Arc<Identity>>, AuthError> {
        if let Some(known) = self.users.get(&user_id) {
            self.figures.user_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(known);
        }
        self.figures.user_misses.fetch_add(1, Ordering::Relaxed);
        let found = self.identity_from_stores(user_id).await?;
        self.users.insert(user_id, found.clone());
        Ok(found)
    }

    /// The identity of an enabled user from the shared tier (its grants, and its roles'
    /// definitions), else the database.
    async fn identity_from_stores(&self, user_id: i64) -> Result<Option<Arc<Identity>>, AuthError> {
        if let Some(l2) = &self.l2 {
            match l2.get(user_id).await {
                Some(user) => {
                    self.figures.l2_hits.fetch_add(1, Ordering::Relaxed);
                    if user.disabled {
                        return Ok(None);
                    }
                    let permissions = self.permissions_of(l2, &user.roles).await?;
                    return Ok(Some(Arc::new(Identity::new(
                        user.id,
                        user.username,
                        user.roles,
                        permissions,
                    ))));
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

    /// The permissions of `roles`: each role's definition from the shared tier, those it lacks
    /// from the database in one query (then kept there for a day). A role that no longer
    /// exists grants nothing.
    async fn permissions_of(
        &self,
        l2: &identity_cache::SharedIdentities,
        roles: &[String],
    ) -> Result<Vec<String>, AuthError> {
        let mut permissions = Vec::new();
        let mut missing = Vec::new();
        for role in roles {
            match l2.role(role).await {
                Some(granted) => {
                    self.figures.role_l2_hits.fetch_add(1, Ordering::Relaxed);
                    permissions.extend(granted);
                }
                None => {
                    self.figures.role_l2_misses.fetch_add(1, Ordering::Relaxed);
                    missing.push(role.clone());
                }
            }
        }
        if !missing.is_empty() {
            let definitions = self.directory.role_definitions(&missing).await?;
            for (role, granted) in definitions {
                l2.put_role(&role, &granted).await;
                permissions.extend(granted);
            }
        }
        permissions.sort();
        permissions.dedup();
        Ok(permissions)
    }

    /// Drops what is cached of a user, here and (through Redis) on every instance.
    pub(crate) async fn forget_user(&self, user_id: i64) {
        self.users.invalidate(&user_id);
        self.cache.remove_if(|cached| cached.identity.id == user_id);
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
}
