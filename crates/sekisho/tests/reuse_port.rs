//! `[server] reuse_port` through the real binary: two gateways listen on one address and the
//! kernel spreads new connections over both; the first stops (SIGTERM) and the second keeps
//! answering — a new version started beside the old one. Without it, the second refuses to
//! start and says why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{binary, cli, free_port};
use sekisho_testkit::{chaos_upstream, Sekisho, TempDir};

fn config(port: u16, upstream: std::net::SocketAddr, reuse_port: bool) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\naccess_log = false\nreuse_port = {reuse_port}\n\
         drain_timeout = \"5s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.app]\ntargets = [\"{upstream}\"]\n\
         [[routes]]\nname = \"app\"\npath_prefix = \"/\"\nupstream = \"app\"\n"
    )
}

/// One request on a new connection; the `x-upstream` of the answer (who served it), or the
/// status line when it is not a 200.
fn served_by(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.lines().next().unwrap_or("").to_owned();
    if !status.contains(" 200 ") {
        return status;
    }
    answer
        .lines()
        .find_map(|line| line.strip_prefix("x-upstream: "))
        .unwrap_or("?")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_port_and_one_stops_without_the_other_failing() {
    let one = chaos_upstream("one").await;
    let two = chaos_upstream("two").await;
    let port = free_port();
    let dir = TempDir::new("reuse-port");
    let first_config = dir.write("one.toml", &config(port, one.address, true));
    let second_config = dir.write("two.toml", &config(port, two.address, true));
    let mut first = Sekisho::start(&binary(), &first_config);
    let second = Sekisho::start(&binary(), &second_config);

    let answers: Vec<String> =
        tokio::task::spawn_blocking(move || (0..64).map(|_| served_by(port)).collect())
            .await
            .unwrap();
    assert!(
        answers.iter().all(|a| a == "one" || a == "two"),
        "{answers:?}"
    );
    // The kernel hashes each new connection to one of the two listeners: with 64 connections,
    // all on one side has a chance of 2^-63.
    assert!(answers.iter().any(|a| a == "one"), "{answers:?}");
    assert!(answers.iter().any(|a| a == "two"), "{answers:?}");

    first.signal("TERM");
    assert_eq!(
        first.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        first.log()
    );
    let after: Vec<String> =
        tokio::task::spawn_blocking(move || (0..32).map(|_| served_by(port)).collect())
            .await
            .unwrap();
    assert!(after.iter().all(|a| a == "two"), "{after:?}");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reuse_port_a_second_gateway_on_the_address_refuses_to_start() {
    let upstream = chaos_upstream("one").await;
    let port = free_port();
    let dir = TempDir::new("no-reuse-port");
    let shared = dir.write("shared.toml", &config(port, upstream.address, true));
    let plain = dir.write("plain.toml", &config(port, upstream.address, false));
    let _first = Sekisho::start(&binary(), &shared);
    let plain = plain.to_str().unwrap().to_owned();
    let (code, _, err) = tokio::task::spawn_blocking(move || cli(&["run", "--config", &plain], ""))
        .await
        .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("in use"), "{err}");
}
