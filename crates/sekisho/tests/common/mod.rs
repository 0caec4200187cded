//! What the binary's test files share: the binary, a command run to its end (`cli`), a free
//! port, `sekisho demo` on the example config moved to free ports, and `sekisho load` run to
//! its end.
// Not every test file uses every helper.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use sekisho_testkit::{client, send, Sekisho, TempDir};

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sekisho"))
}

/// A loopback port free now, for a process that must be told its port in advance (the demo's
/// fixed addresses, a restart on the same port). Chosen below the kernel's ephemeral range
/// (32768–60999 here): a port the kernel handed out and took back can be given at once to any
/// outgoing connection of a test running beside this one, and the process told to bind it then
/// fails with "Address already in use".
pub fn free_port() -> u16 {
    loop {
        let port = fastrand::u16(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The example config with every address on a free port: the text, and each example port's
/// replacement (9001–9005 the demo services, 9006 the alert receiver).
pub fn demo_config() -> (String, HashMap<u16, u16>) {
    let mut text = include_str!("../../../../examples/sekisho.toml")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0");
    let mut ports = HashMap::new();
    for port in 9001..=9006 {
        let free = free_port();
        text = text.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{free}"));
        ports.insert(port, free);
    }
    (text, ports)
}

/// `sekisho demo --config` on `text`, written into `dir` (so its SQLite database is there too).
pub fn start_demo(dir: &TempDir, text: &str) -> Sekisho {
    let path = dir.write("sekisho.toml", text);
    Sekisho::start_with(&binary(), &["demo", "--config", path.to_str().unwrap()])
}

/// Runs `sekisho load args… --quiet` to its end off the runtime (servers of the test may run
/// on it).
pub async fn load(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .arg("load")
            .args(&args)
            .arg("--quiet")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// A finished command's status and output, for a failed assertion.
pub fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `sekisho ARGS…` with `stdin`; its exit code, stdout and stderr.
pub fn cli(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(binary())
        .args(args)
        .env("SEKISHO_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// [`cli`], which must exit 0; its stdout.
pub fn cli_ok(args: &[&str], stdin: &str) -> String {
    let (code, out, err) = cli(args, stdin);
    assert_eq!(code, 0, "sekisho {args:?}: {out}{err}");
    out
}

/// `sekisho role add NAME --permission P…` on `config`.
pub fn add_role(config: &str, name: &str, permissions: &[&str]) {
    let mut args = vec!["role", "add", "--config", config, name];
    for permission in permissions {
        args.extend(["--permission", permission]);
    }
    cli_ok(&args, "");
}

/// `sekisho user add NAME [--role ROLE] --password-stdin` on `config`.
pub fn add_user(config: &str, name: &str, role: Option<&str>, password: &str) {
    let mut args = vec!["user", "add", "--config", config, name];
    if let Some(role) = role {
        args.extend(["--role", role]);
    }
    args.push("--password-stdin");
    cli_ok(&args, &format!("{password}\n"));
}

/// `POST /auth/login` on `gateway` with JSON credentials; the answer's status.
pub async fn login(gateway: &Sekisho, user: &str, password: &str) -> u16 {
    let body = serde_json::json!({ "username": user, "password": password }).to_string();
    send(
        &client(),
        "POST",
        &gateway.url("/auth/login"),
        &[("content-type", "application/json")],
        body,
    )
    .await
    .status
}
