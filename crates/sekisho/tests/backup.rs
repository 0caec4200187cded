//! `sekisho backup` and `sekisho restore` through the real binary on its embedded store: a backup
//! taken while the gateway serves (and, through the monitor, `backup_age` falling back so an
//! alert on it resolves), a restore refused while the instance still answers, then, once it is
//! stopped, the store put back as it was — a user deleted after the backup logs in again with
//! the same password. And at SIGTERM, the audit events still queued for the database (its
//! write lock held by someone else meanwhile) are written before the process exits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{add_role, add_user, binary, cli, cli_ok, free_port, login};
use sekisho_testkit::{
    client, next_notification, send, webhook_receiver, Origin, Reply, Sekisho, TempDir,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_online_restores_a_stopped_store_and_resets_backup_age() {
    let origin = Origin::start(|_, _| Reply::new(200, "ok")).await;
    let (hook, mut bodies) = webhook_receiver().await;
    let dir = TempDir::new("backup");
    // A fixed admin port: the restore looks there for an instance still running.
    let admin = format!("127.0.0.1:{}", free_port());
    let config = dir.write(
        "sekisho.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
             [admin]\nlisten = \"{admin}\"\n\
             [store]\ndata_dir = \"data\"\n\
             [auth]\nargon2 = {{ memory_kib = 64, iterations = 1, parallelism = 1 }}\n\
             [upstreams.app]\ntargets = [\"{}\"]\n\
             [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
             [monitor]\ninterval = \"100ms\"\n\
             [alerts]\ngroup_wait = \"0s\"\ngroup_interval = \"200ms\"\ndefault_rules = false\n\
             [[alerts.rules]]\nname = \"NoRecentBackup\"\nsignal = \"backup_age\"\nwarning = 2\n\
             [[alerts.receivers]]\nname = \"ops\"\nwebhook = \"http://{hook}/hook\"\n",
            origin.address
        ),
    );
    let config = config.to_str().unwrap();
    let out = dir.path().join("store.backup");
    let out = out.to_str().unwrap();

    // No store yet: nothing to back up, and the command says where it looked.
    let (code, _, err) = cli(&["backup", "--config", config, "--out", out], "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("there is no store at"), "{err}");

    add_role(config, "clerk", &["orders:read"]);
    add_user(config, "ann", Some("clerk"), "correct horse");
    let mut gateway = Sekisho::start(&binary(), std::path::Path::new(config));
    assert_eq!(login(&gateway, "ann", "correct horse").await, 200);

    // The store was never backed up: once it is older than 2 s, the rule fires …
    let firing = next_notification(&mut bodies, "firing").await;
    assert_eq!(
        firing["alerts"][0]["labels"]["alertname"], "NoRecentBackup",
        "{firing}"
    );

    // … a backup while the gateway serves …
    let (code, _, err) = cli(&["backup", "--config", config, "--out", out], "");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("written to"), "{err}");
    assert!(!dir.path().join("store.backup.partial").exists());
    let text = std::fs::read_to_string(out).unwrap();
    assert!(text.starts_with("{\"format\":\"sekisho-backup\""), "{text}");
    assert!(text.contains("\"ann\""), "{text}");

    // Into a directory, with retention: a name of the UTC time, the newest one kept.
    let dir_out = dir.path().join("nightly");
    std::fs::create_dir(&dir_out).unwrap();
    let dir_out = dir_out.to_str().unwrap();
    for _ in 0..2 {
        cli_ok(
            &[
                "backup", "--config", config, "--out", dir_out, "--keep", "1",
            ],
            "",
        );
    }
    let kept: Vec<String> = std::fs::read_dir(dir_out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        kept[0].starts_with("sekisho-2") && kept[0].ends_with("Z.jsonl"),
        "{kept:?}"
    );
    let (code, _, err) = cli(
        &["backup", "--config", config, "--out", out, "--keep", "1"],
        "",
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--keep prunes a directory"), "{err}");

    // … and the age falls back under the threshold: resolved.
    let resolved = next_notification(&mut bodies, "resolved").await;
    assert_eq!(
        resolved["alerts"][0]["labels"]["alertname"], "NoRecentBackup",
        "{resolved}"
    );

    // After the backup, ann is deleted.
    cli_ok(&["user", "del", "--config", config, "ann"], "");
    assert_eq!(login(&gateway, "ann", "correct horse").await, 401);

    // A restore while the instance answers on its admin address is refused.
    let (code, _, err) = cli(&["restore", "--config", config, out], "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("still runs"), "{err}");

    gateway.signal("TERM");
    assert_eq!(
        gateway.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        gateway.log()
    );

    // A damaged file replaces nothing.
    let damaged = dir.write("damaged.backup", &text.replacen("\"ann\"", "\"eve\"", 1));
    let (code, _, err) = cli(
        &["restore", "--config", config, damaged.to_str().unwrap()],
        "",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("nothing was restored") && err.contains("checksum"),
        "{err}"
    );

    let restored = cli_ok(&["restore", "--config", config, out], "");
    assert!(restored.contains("users: 1"), "{restored}");

    let gateway = Sekisho::start(&binary(), std::path::Path::new(config));
    assert_eq!(login(&gateway, "ann", "correct horse").await, 200);
    assert_eq!(login(&gateway, "ann", "wrong").await, 401);
    drop(gateway);
    drop(origin);
}

#[test]
fn the_running_gateway_takes_its_own_backups_and_keeps_the_newest() {
    let dir = TempDir::new("backup-schedule");
    let config = dir.write(
        "sekisho.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [store]\ndata_dir = \"data\"\n\
         [store.backup]\ndir = \"backups\"\ninterval = \"1s\"\nkeep = 2\n\
         [upstreams.app]\ntargets = [\"127.0.0.1:9\"]\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
    );
    let mut gateway = Sekisho::start(&binary(), &config);
    let mut written = Vec::new();
    for _ in 0..3 {
        let line = gateway
            .wait_for_log(
                |line| {
                    line["message"] == "scheduled backup written"
                        && !written.contains(&line["file"].as_str().unwrap_or("").to_owned())
                },
                Duration::from_secs(30),
            )
            .unwrap_or_else(|| panic!("no scheduled backup: {}", gateway.log()));
        written.push(line["file"].as_str().unwrap().to_owned());
    }
    let kept: Vec<String> = std::fs::read_dir(dir.path().join("backups"))
        .unwrap()
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".jsonl"))
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?} after {written:?}");
    assert!(!kept.contains(&written[0]), "the oldest is gone: {kept:?}");
    assert!(kept.contains(&written[2]), "{kept:?}");
    let text = std::fs::read_to_string(&written[2]).unwrap();
    assert!(text.starts_with("{\"format\":\"sekisho-backup\""));
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_still_queued_at_sigterm_reach_the_database_before_the_exit() {
    let origin = Origin::start(|_, _| Reply::new(200, "ok")).await;
    let dir = TempDir::new("audit-shutdown");
    let config = dir.write(
        "sekisho.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [store]\ndata_dir = \"data\"\n\
             [auth]\nargon2 = {{ memory_kib = 64, iterations = 1, parallelism = 1 }}\n\
             [upstreams.app]\ntargets = [\"{}\"]\n\
             [[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nupstream = \"app\"\nauth = {{ role = \"admin\" }}\n",
            origin.address
        ),
    );
    let config = config.to_str().unwrap();
    add_user(config, "ann", None, "correct horse");
    let mut gateway = Sekisho::start(&binary(), std::path::Path::new(config));
    let body = serde_json::json!({ "username": "ann", "password": "correct horse" }).to_string();
    let http = client();
    let answer = send(
        &http,
        "POST",
        &gateway.url("/auth/login"),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(answer.status, 200);
    let bearer = format!("Bearer {}", answer.json()["access_token"].as_str().unwrap());
    let admin_url = gateway.url("/admin");
    let headers = [("authorization", bearer.as_str())];
    let refusal = || send(&http, "GET", &admin_url, &headers, bytes::Bytes::new());
    // One refusal before the lock: the session is then in the in-process cache.
    assert_eq!(refusal().await.status, 403);

    // Someone else holds the database's write lock: the audit queue cannot drain.
    let file = dir.path().join("data").join("sekisho.db");
    let database = sekisho_db::Database::connect(&format!("sqlite://{}", file.display()), 1)
        .await
        .unwrap();
    let mut lock = database.pool().acquire().await.unwrap();
    sekisho_db::sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *lock)
        .await
        .unwrap();
    // Refusals decided from the cached session (no database read), each an audit event.
    for _ in 0..3 {
        assert_eq!(refusal().await.status, 403);
    }
    gateway.signal("TERM");
    let draining = gateway.wait_for_log(
        |line| line["message"] == "writing the audit queue before the exit",
        Duration::from_secs(20),
    );
    assert!(draining.is_some(), "{}", gateway.log());
    sekisho_db::sqlx::query("COMMIT")
        .execute(&mut *lock)
        .await
        .unwrap();
    drop(lock);
    assert_eq!(
        gateway.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        gateway.log()
    );
    let failures: i64 =
        sekisho_db::sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE event = 'authz_fail'")
            .fetch_one(database.pool())
            .await
            .unwrap();
    assert_eq!(failures, 4, "{}", gateway.log());
    database.close().await;
    drop(origin);
}
