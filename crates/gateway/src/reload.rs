//! Reloading: reading the config file again (on a signal, the admin API or a change of the
//! file), building the new generation beside the one in force, swapping it in, and keeping the
//! record of the last attempt that `/health/detailed` shows. A config that does not build is
//! refused and the one in force stays.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use sekisho_config::{Config, ConfigError};

use crate::clock::unix_seconds;
use crate::runtime::{BuildError, Runtime};
use crate::sync::lock;
use crate::Gateway;

/// Why a reload was refused; the config in force stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config is invalid.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// The new config is valid but could not be put in force (e.g. an unreadable certificate).
    #[error("{0}")]
    Build(#[from] BuildError),
    /// The gateway was started without a config file.
    #[error("the gateway was started without a config file")]
    NoFile,
    /// The new config has routes with `auth` but authentication was not started with the
    /// gateway (no `[auth]` at start): it needs a restart.
    #[error(
        "route `{0}` asks for `auth` but authentication is not running: add [auth] and restart"
    )]
    AuthNotRunning(String),
}

/// What a successful reload changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadSummary {
    /// The generation now in force.
    pub generation: u64,
    /// One line on the new config.
    pub summary: String,
    /// Settings that changed but need a restart to take effect.
    pub needs_restart: Vec<String>,
}

impl Gateway {
    /// Reads the config file again and puts it in force if it is valid.
    pub fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        let Some(path) = &self.shared.config_path else {
            return Err(ReloadError::NoFile);
        };
        let result = match std::fs::read(path) {
            Ok(bytes) => {
                let parsed = sekisho_config::parse_file_contents(&bytes, path);
                *self.file_bytes() = Some(bytes);
                parsed
            }
            Err(error) => Err(sekisho_config::ConfigError::unreadable(path, &error)),
        }
        .map_err(ReloadError::from)
        .and_then(|config| self.apply(config));
        self.record_reload(&result);
        result
    }

    /// Puts `config` in force if it can be built.
    pub fn reload_with(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        let result = self.apply(config);
        self.record_reload(&result);
        result
    }

    fn apply(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        // One reload at a time, so generations are built and swapped in order.
        let mut record = self
            .shared
            .reload_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.shared.runtime.load_full();
        if self.shared.auth.is_none() {
            if let Some(route) = config.routes.iter().find(|r| r.get_ref().auth.is_some()) {
                return Err(ReloadError::AuthNotRunning(route.get_ref().name.clone()));
            }
        }
        let needs_restart = restart_only_changes(&current.config, &config);
        let generation = self.shared.generation.load(Ordering::Relaxed) + 1;
        let base_dir = self.shared.config_path.as_deref().and_then(Path::parent);
        let runtime = Runtime::build(
            Arc::new(config),
            base_dir,
            &self.shared.clients,
            &self.shared.states,
            &self.shared.metrics,
            generation,
        )?;
        let summary = runtime.config.summary();
        self.shared
            .metrics
            .config_loaded_timestamp
            .set(unix_seconds(runtime.loaded_at));
        let runtime = Arc::new(runtime);
        self.shared.runtime.store(Arc::clone(&runtime));
        self.shared
            .sheds_from_head
            .store(runtime.sheds_from_head(), Ordering::Relaxed);
        self.shared.generation.store(generation, Ordering::Relaxed);
        self.shared
            .metrics
            .set_upstreams(runtime.upstreams.values().cloned().collect());
        self.shared
            .metrics
            .set_adaptive_limits(runtime.adaptive_limits());
        self.shared.states.retain(&runtime.config);
        if self.shared.serving.load(Ordering::Acquire) {
            self.shared.health.reconcile(&runtime, &self.shared.metrics);
            self.shared.probe_lag_if_needed();
        }
        record.at = Some(SystemTime::now());
        record.error = None;
        Ok(ReloadSummary {
            generation,
            summary,
            needs_restart,
        })
    }

    fn record_reload(&self, result: &Result<ReloadSummary, ReloadError>) {
        self.shared.metrics.config_reload(result.is_ok());
        match result {
            Ok(summary) => {
                tracing::info!(
                    generation = summary.generation,
                    summary = %summary.summary,
                    "config reloaded"
                );
                for setting in &summary.needs_restart {
                    tracing::warn!(setting = %setting, "changed setting needs a restart to take effect");
                }
            }
            Err(error) => {
                let mut record = self
                    .shared
                    .reload_lock
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                record.at = Some(SystemTime::now());
                record.error = Some(error.to_string());
                tracing::error!(error = %error, "config reload refused; the previous config stays in force");
            }
        }
    }
}

/// Settings read once at start; a reload that changes them says so.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen {
        changed.push("server.listen".to_owned());
    }
    if old.server.workers != new.server.workers {
        changed.push("server.workers".to_owned());
    }
    if old.server.worker_model != new.server.worker_model {
        changed.push("server.worker_model".to_owned());
    }
    if old.server.max_connections != new.server.max_connections {
        changed.push("server.max_connections".to_owned());
    }
    if old.server.reuse_port != new.server.reuse_port {
        changed.push("server.reuse_port".to_owned());
    }
    if old.server.tls.is_some() != new.server.tls.is_some() {
        changed.push("server.tls (on/off)".to_owned());
    }
    if old.admin.listen != new.admin.listen {
        changed.push("admin.listen".to_owned());
    }
    // Authentication opens its database and session store once, at start.
    if old.auth.as_ref().map(|a| a.get_ref()) != new.auth.as_ref().map(|a| a.get_ref()) {
        changed.push("auth".to_owned());
    }
    if old.store.database != new.store.database || old.store.data_dir != new.store.data_dir {
        changed.push("store.database / store.data_dir".to_owned());
    }
    if old.store.backup != new.store.backup {
        changed.push("store.backup".to_owned());
    }
    // The monitor starts with receivers and keeps its cycle and outbox settings; a reload
    // applies the rules, the timings and the receivers' URLs (crates/sekisho/src/monitor.rs).
    let (before, after) = (&old.alerts, &new.alerts);
    if before.receivers.is_empty() != after.receivers.is_empty() {
        changed.push("alerts.receivers (alerting on/off)".to_owned());
    }
    if old.monitor != new.monitor {
        changed.push("monitor.interval".to_owned());
    }
    if before.group_by != after.group_by {
        changed.push("alerts.group_by".to_owned());
    }
    if before.outbox_section != after.outbox_section
        || before.history_retention != after.history_retention
    {
        changed.push("alerts.outbox / alerts.history_retention".to_owned());
    }
    let ca_files = |alerts: &sekisho_config::Alerts| {
        alerts
            .receivers
            .iter()
            .map(|r| (r.get_ref().name.clone(), r.get_ref().ca_file.clone()))
            .filter(|(_, ca)| ca.is_some())
            .collect::<Vec<_>>()
    };
    if ca_files(before) != ca_files(after) {
        changed.push("alerts.receivers.ca_file".to_owned());
    }
    changed
}

impl Gateway {
    fn file_bytes(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        lock(&self.shared.file_bytes)
    }

    /// The config file's contents the gateway was started from: the file watch reloads when the
    /// file differs from them (without this, its first look sets the starting point, and a change
    /// made before that look would be missed).
    pub fn loaded_file_contents(&self, bytes: Vec<u8>) {
        *self.file_bytes() = Some(bytes);
    }

    /// Reloads whenever the config file's contents change, checking every `interval`, until the
    /// returned future is dropped. An unreadable or invalid file is logged and skipped; the
    /// config in force stays.
    pub async fn watch_config_file(&self, interval: std::time::Duration) {
        let Some(path) = self.shared.config_path.clone() else {
            return;
        };
        if let Ok(bytes) = tokio::fs::read(&path).await {
            self.file_bytes().get_or_insert(bytes);
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        // A look is a stat (microseconds, done in place); the file is read only when its size or
        // modification time moved, and every tenth look anyway (a file system whose clock is too
        // coarse to tell two quick writes apart).
        let mut last_stat = None;
        let mut looks = 0u32;
        loop {
            ticker.tick().await;
            looks = looks.wrapping_add(1);
            let stat = std::fs::metadata(&path)
                .ok()
                .map(|m| (m.modified().ok(), m.len()));
            if stat.is_some() && stat == last_stat && !looks.is_multiple_of(10) {
                continue;
            }
            last_stat = stat;
            let Ok(contents) = tokio::fs::read(&path).await else {
                continue;
            };
            // Compared with what the last reload read, not with the previous look: a reload
            // by signal or API in between must not hide a change (A → B by SIGHUP → A again).
            if self.file_bytes().as_deref() == Some(contents.as_slice()) {
                continue;
            }
            tracing::info!(path = %path.display(), "config file changed; reloading");
            let gateway = self.clone();
            // Building a runtime reads TLS files: keep it off the reactor.
            let _ = tokio::task::spawn_blocking(move || gateway.reload()).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(server: &str) -> Config {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n\
             [upstreams.app]\ntargets = [\"127.0.0.1:1\"]\n\
             [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n"
        );
        sekisho_config::parse(&text, "test.toml").unwrap()
    }

    #[test]
    fn the_workers_and_their_model_need_a_restart() {
        let old = config("workers = 2");
        assert!(restart_only_changes(&old, &config("workers = 2")).is_empty());
        assert_eq!(
            restart_only_changes(&old, &config("workers = 2\nworker_model = \"shared\"")),
            ["server.worker_model"]
        );
        assert_eq!(
            restart_only_changes(&old, &config("workers = 3")),
            ["server.workers"]
        );
    }
}
