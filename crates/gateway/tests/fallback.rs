//! A route's fallback with real upstreams: a static answer when the upstream cannot answer, an
//! alternate upstream that gets the very request (body included), the static answer when the
//! alternate fails too, and no fallback for what is the client's fault.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use sekisho_load::ChaosState;
use sekisho_testkit::{chaos_upstream, client, get, send, InProcess};

fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn gateway(primary: SocketAddr, alternate: SocketAddr, fallback: &str) -> InProcess {
    InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\nmax_body_bytes = 1000\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.main]\ntargets = [\"{primary}\"]\n\
         [upstreams.spare]\ntargets = [\"{alternate}\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"main\"\n\
         [routes.fallback]\n{fallback}\n"
    ))
    .await
}

fn fallbacks(gw: &InProcess, kind: &str) -> u64 {
    let sample = format!("sekisho_fallbacks_total{{route=\"r\",kind=\"{kind}\"}}");
    gw.gateway
        .encode_metrics()
        .lines()
        .find_map(|line| line.strip_prefix(&sample)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_answer_stands_in_for_an_unreachable_upstream() {
    let gw = gateway(
        closed_port(),
        closed_port(),
        "status = 200\nbody = '{\"items\":[]}'\nheaders = { \"Cache-Control\" = \"no-store\" }",
    )
    .await;
    let answer = get(&gw.url("/items")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(&answer.body[..], b"{\"items\":[]}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert_eq!(answer.header("x-sekisho-fallback"), Some("static"));
    assert!(answer.header("x-request-id").is_some());
    assert_eq!(fallbacks(&gw, "static"), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alternate_upstream_gets_the_request_with_its_body() {
    let spare = chaos_upstream("spare").await;
    let gw = gateway(closed_port(), spare.address, "upstream = \"spare\"").await;
    let answer = send(&client(), "POST", &gw.url("/orders"), &[], "order #7").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-upstream"), Some("spare"));
    assert_eq!(&answer.body[..], b"order #7");
    assert_eq!(fallbacks(&gw, "upstream"), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_status_named_in_on_goes_to_the_alternate_and_then_to_the_static_answer() {
    let main = chaos_upstream("main").await;
    let spare = chaos_upstream("spare").await;
    let failing = ChaosState {
        error_rate: 1.0,
        ..ChaosState::default()
    };
    main.handle.set(failing);
    let gw = gateway(
        main.address,
        spare.address,
        "on = [500, \"upstream_error\"]\nupstream = \"spare\"\nstatus = 503\nbody = \"later\"\ncontent_type = \"text/plain\"",
    )
    .await;
    let answer = get(&gw.url("/x")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-upstream"), Some("spare"));

    spare.handle.set(failing);
    let answer = get(&gw.url("/x")).await;
    assert_eq!(answer.status, 503);
    assert_eq!(&answer.body[..], b"later");
    assert_eq!(answer.header("content-type"), Some("text/plain"));
    assert_eq!(fallbacks(&gw, "upstream"), 2);
    assert_eq!(fallbacks(&gw, "static"), 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_own_errors_are_not_hidden_and_unnamed_statuses_pass() {
    let main = chaos_upstream("main").await;
    main.handle.set(ChaosState {
        error_rate: 1.0,
        ..ChaosState::default()
    });
    let gw = gateway(main.address, closed_port(), "status = 200\nbody = \"{}\"").await;
    // The default `on` names no status: the upstream's own 500 comes through.
    assert_eq!(get(&gw.url("/x")).await.status, 500);
    let too_large = send(&client(), "POST", &gw.url("/x"), &[], "z".repeat(5000)).await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.error_code(), "PAYLOAD_TOO_LARGE");
    assert_eq!(fallbacks(&gw, "static"), 0);
    gw.stop().await;
}
