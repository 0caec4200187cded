//! `sekisho demo`: the example config (or the one given) with demo services on its upstreams'
//! loopback addresses: the seeds' URL shortener and notification service behind upstreams of
//! those names, chaos upstreams behind the others, an alert receiver on each loopback `webhook`
//! of `[[alerts.receivers]]` (it logs each alert and lists them at `GET /alerts`), and — when
//! the config has `[auth]` — demo users with known passwords, printed at the start.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sekisho_config::Config;

use crate::{gateway_runtime, init_logging, read_config, serve};

/// The demo's users: name, password, roles. Printed at the start; never for a real deployment.
const DEMO_USERS: &[(&str, &str, &[&str])] = &[
    ("ada", "demo-password-ada", &["clerk"]),
    ("bob", "demo-password-bob", &["viewer"]),
];

/// The demo's roles and their permissions.
const DEMO_ROLES: &[(&str, &[&str])] = &[
    ("clerk", &["orders:read", "orders:write", "account:read"]),
    ("viewer", &["orders:read", "account:read"]),
];

const DEMO_CONFIG: &str = include_str!("../../../examples/sekisho.toml");

pub(crate) fn demo(path: Option<&Path>) -> anyhow::Result<()> {
    let (config, file) = match path {
        Some(path) => {
            let (config, bytes) = read_config(path)?;
            (config, Some((path.to_owned(), bytes)))
        }
        None => (
            sekisho_config::parse(DEMO_CONFIG, "examples/sekisho.toml")
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            None,
        ),
    };
    init_logging();
    let runtime = gateway_runtime(&config.server)?;
    runtime.block_on(async move {
        let mut upstream_tasks = Vec::new();
        for (name, upstream) in &config.upstreams {
            for target in upstream.targets.get_ref() {
                let Ok(listen) = target.address.parse::<SocketAddr>() else {
                    tracing::warn!(target = %target.address, "not an IP address; no demo upstream started for it");
                    continue;
                };
                if !listen.ip().is_loopback() {
                    tracing::warn!(target = %target.address, "not a loopback address; no demo upstream started for it");
                    continue;
                }
                if let Some(service) = sekisho_load::Service::for_upstream(name.get_ref()) {
                    // The seeds' demo services stand behind upstreams of their names.
                    let server = sekisho_load::ServiceServer::bind(service, listen, 0.2)
                        .await
                        .with_context(|| format!("cannot start the demo {service:?} service on {listen}"))?;
                    upstream_tasks.push(tokio::spawn(server.run(std::future::pending())));
                    continue;
                }
                let server = sekisho_load::ChaosServer::bind(sekisho_load::ChaosOptions {
                    listen,
                    latency: Duration::from_millis(20),
                    error_rate: 0.0,
                    name: Some(format!("{}-{}", name.get_ref(), listen.port())),
                })
                .await
                .with_context(|| format!("cannot start the demo upstream on {listen}"))?;
                upstream_tasks.push(tokio::spawn(server.run(std::future::pending())));
            }
        }
        let mut inboxes = Vec::new();
        for receiver in &config.alerts.receivers {
            let Some(webhook) = &receiver.get_ref().webhook else {
                continue;
            };
            let Some(listen) = loopback_address(webhook) else {
                tracing::warn!(%webhook, "not an http:// URL on a loopback address; no demo alert receiver started for it");
                continue;
            };
            let inbox = sekisho_load::AlertInbox::bind(listen)
                .await
                .with_context(|| format!("cannot start the demo alert receiver on {listen}"))?;
            inboxes.push(format!("http://{listen}/alerts"));
            upstream_tasks.push(tokio::spawn(inbox.run(std::future::pending())));
        }
        let users = match &config.auth {
            Some(_) => {
                let base_dir = file.as_ref().and_then(|(path, _)| path.parent());
                seed_demo_users(&config, base_dir).await?
            }
            None => String::new(),
        };
        let listen = config.server.listen.clone();
        let admin = config.admin.listen.clone();
        let dashboard_token = match &config.admin.token {
            Some(token) => format!(" (token {token})"),
            None => String::new(),
        };
        let first_route = config
            .routes
            .first()
            .and_then(|r| r.get_ref().path_prefix.as_ref().map(|p| p.get_ref().clone()))
            .unwrap_or_else(|| "/".to_owned());
        // The service to slow down: payments when there is one (the guided script of the
        // README), otherwise the first chaos upstream.
        let chaos_targets: Vec<(String, String)> = config
            .upstreams
            .iter()
            .filter(|(name, _)| sekisho_load::Service::for_upstream(name.get_ref()).is_none())
            .filter_map(|(name, u)| {
                u.targets
                    .get_ref()
                    .first()
                    .map(|t| (name.get_ref().clone(), t.address.clone()))
            })
            .collect();
        let (slow_name, first_target) = chaos_targets
            .iter()
            .find(|(name, _)| name == "payments")
            .or(chaos_targets.first())
            .cloned()
            .unwrap_or_default();
        let alerts = if inboxes.is_empty() {
            String::new()
        } else {
            format!(
                "  alerts: each one is logged here (\"alert received\") and listed at {}\n",
                inboxes.join(", ")
            )
        };
        let token_header = match &config.admin.token {
            Some(token) => format!(" -H 'authorization: Bearer {token}'"),
            None => String::new(),
        };
        let services = if config.upstreams.keys().any(|n| n.get_ref() == "shortener") {
            format!(
                "  shorten a URL:  curl -i http://{listen}/api/v1/shorten -d '{{\"url\":\"https://example.com\"}}'\n  follow it (cached at the gateway):  curl -i http://{listen}/s/KEY\n  notify:  curl -i http://{listen}/api/v1/notifications -H 'Idempotency-Key: 1' -d '{{\"user\":\"ada\",\"channel\":\"email\",\"message\":\"hi\"}}'\n"
            )
        } else {
            String::new()
        };
        eprintln!(
            "\nsekisho demo: {} demo upstream(s) and receiver(s) started.\n  try:   curl -i http://{listen}{first_route}\n{services}{users}  slow {slow_name} down:  curl -X POST http://{first_target}/_chaos -d '{{\"latency_ms\":5000}}'\n  dashboard: http://{admin}/{dashboard_token}\n  circuits:  curl{token_header} http://{admin}/api/v1/circuits\n{alerts}  metrics: curl http://{admin}/metrics\n  the guided tour: README.md, \"Break something\"\n  stop with Ctrl-C\n",
            upstream_tasks.len()
        );
        let result = serve(config, file).await;
        for task in upstream_tasks {
            task.abort();
        }
        result
    })
}

/// Creates the demo's roles, and its users unless they exist already (a second demo run keeps
/// the first one's users and their sessions); returns the lines that tell how to log in.
async fn seed_demo_users(config: &Config, base_dir: Option<&Path>) -> anyhow::Result<String> {
    let auth = sekisho_auth::Auth::open(config, base_dir)
        .await
        .context("cannot open the demo's identity store")?;
    for (role, permissions) in DEMO_ROLES {
        let permissions: Vec<String> = permissions.iter().map(|p| (*p).to_owned()).collect();
        auth.put_role(role, &permissions)
            .await
            .with_context(|| format!("cannot create the demo role `{role}`"))?;
    }
    for (name, password, roles) in DEMO_USERS {
        match auth.user(name).await {
            Ok(_) => {}
            Err(sekisho_auth::AuthError::NotFound(_)) => {
                let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
                auth.create_user(name, Some(password), None, &roles)
                    .await
                    .with_context(|| format!("cannot create the demo user `{name}`"))?;
            }
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read the demo user `{name}`"))
            }
        }
    }
    let prefix = &config
        .auth
        .as_ref()
        .map_or("/auth", |auth| auth.get_ref().path_prefix.as_str())
        .trim_end_matches('/')
        .to_owned();
    let listen = &config.server.listen;
    let (name, password, _) = DEMO_USERS[0];
    let names: Vec<&str> = DEMO_USERS.iter().map(|(name, _, _)| *name).collect();
    Ok(format!(
        "  demo users: {} (passwords demo-password-<name>)\n  log in:  curl -s http://{listen}{prefix}/login -d '{{\"username\":\"{name}\",\"password\":\"{password}\"}}'\n  then:    curl -i http://{listen}/api/account -H 'Authorization: Bearer ACCESS_TOKEN'\n",
        names.join(", ")
    ))
}

/// The address of an `http://` URL whose host is a loopback IP address with a port (the demo
/// starts nothing anywhere else).
fn loopback_address(url: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?']).next()?;
    let address: SocketAddr = authority.parse().ok()?;
    address.ip().is_loopback().then_some(address)
}

#[cfg(test)]
mod tests {
    use super::loopback_address;

    #[test]
    fn alert_receivers_are_started_only_on_loopback_http_urls() {
        assert_eq!(
            loopback_address("http://127.0.0.1:9006/alerts"),
            "127.0.0.1:9006".parse().ok()
        );
        assert_eq!(
            loopback_address("http://[::1]:9006"),
            "[::1]:9006".parse().ok()
        );
        assert_eq!(loopback_address("https://127.0.0.1:9006/alerts"), None);
        assert_eq!(loopback_address("http://10.0.0.5:9006/alerts"), None);
        assert_eq!(loopback_address("http://alerts.example.com/hook"), None);
    }
}
