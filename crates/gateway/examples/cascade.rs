//! The cascade scenario of docs/cascade.md, measured: one dependency slows from 100 ms to 5 s
//! while callers keep calling; with and without sekisho's defences.
//!
//! `cargo run --release -p sekisho-gateway --example cascade` (both runs, about 40 s).
//!
//! Two kinds of callers, 8 of each, every one a closed loop (the next request when the last is
//! answered, as a service's worker pool is): *orders* callers only call the healthy route;
//! *mixed* callers call the slow route, then the healthy one — their throughput on the healthy
//! route is what a caller whose workers wait on the slow dependency has left.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sekisho_load::ChaosState;
use sekisho_testkit::{chaos_upstream, client, try_send, InProcess};
use tokio::time::Instant;

const CALLERS: usize = 8;
const NORMAL: Duration = Duration::from_secs(3);
const SLOW: Duration = Duration::from_secs(12);

#[derive(Default)]
struct Log {
    /// (phase, route, code, latency).
    samples: Vec<(&'static str, &'static str, String, Duration, Instant)>,
}

fn latency(ms: u64) -> ChaosState {
    ChaosState {
        latency_ms: ms,
        ..ChaosState::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

async fn run(defended: bool) {
    let orders = chaos_upstream("orders").await;
    let payments = chaos_upstream("payments").await;
    payments.handle.set(latency(100));
    let defences = if defended {
        "[upstreams.payments.circuit_breaker]\nwindow_calls = 20\nminimum_calls = 10\n\
         failure_rate_threshold = 0.5\nopen_for = \"2s\"\nhalf_open_calls = 3\n\
         [upstreams.payments.bulkhead]\nmax_concurrent = 10\n"
    } else {
        ""
    };
    let payments_timeout = if defended { "1s" } else { "30s" };
    let gw = InProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstreams.orders]\ntargets = [\"{}\"]\n[upstreams.payments]\ntargets = [\"{}\"]\n{defences}\
         [[routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"orders\"\ntimeout = \"2s\"\n\
         [[routes]]\nname = \"payments\"\npath_prefix = \"/payments\"\nupstream = \"payments\"\ntimeout = \"{payments_timeout}\"\n",
        orders.address, payments.address
    ))
    .await;

    let log = Arc::new(Mutex::new(Log::default()));
    let phase: Arc<Mutex<&'static str>> = Arc::new(Mutex::new("normal"));
    let stop = Instant::now() + NORMAL + SLOW + Duration::from_secs(8);
    let mut callers = Vec::new();
    for index in 0..CALLERS * 2 {
        let mixed = index >= CALLERS;
        let (orders_url, payments_url) = (gw.url("/orders/1"), gw.url("/payments/1"));
        let (log, phase) = (Arc::clone(&log), Arc::clone(&phase));
        callers.push(tokio::spawn(async move {
            let http = client();
            while Instant::now() < stop {
                let routes: &[(&'static str, &String)] = if mixed {
                    &[("payments", &payments_url), ("orders(mixed)", &orders_url)]
                } else {
                    &[("orders", &orders_url)]
                };
                for (route, url) in routes {
                    let sent = Instant::now();
                    let code = match try_send(&http, "GET", url, &[], "").await {
                        Ok(answer) if answer.status == 200 => "200".to_owned(),
                        Ok(answer) => answer.error_code(),
                        Err(error) => format!("transport: {error}"),
                    };
                    let now = Instant::now();
                    let current = *phase.lock().unwrap();
                    log.lock()
                        .unwrap()
                        .samples
                        .push((current, route, code, now - sent, now));
                }
            }
        }));
    }
    tokio::time::sleep(NORMAL).await;
    *phase.lock().unwrap() = "slow";
    let slowed = Instant::now();
    payments.handle.set(latency(5_000));
    tokio::time::sleep(SLOW).await;
    *phase.lock().unwrap() = "recovered";
    let recovered = Instant::now();
    payments.handle.set(latency(100));
    for caller in callers {
        caller.await.unwrap();
    }

    let log = std::mem::take(&mut *log.lock().unwrap());
    println!(
        "\n## {} defences\n",
        if defended { "With" } else { "Without" }
    );
    println!("| phase | route | answers/s | p50 ms | p99 ms | answers |");
    println!("|---|---|---|---|---|---|");
    for (name, length) in [
        ("normal", NORMAL),
        ("slow", SLOW),
        ("recovered", Duration::from_secs(8)),
    ] {
        for route in ["orders", "orders(mixed)", "payments"] {
            let mut latencies: Vec<Duration> = Vec::new();
            let mut codes: BTreeMap<&str, usize> = BTreeMap::new();
            for (phase, r, code, latency, _) in &log.samples {
                if *phase == name && *r == route {
                    latencies.push(*latency);
                    *codes.entry(code.as_str()).or_insert(0) += 1;
                }
            }
            latencies.sort_unstable();
            let mix: Vec<String> = codes.iter().map(|(c, n)| format!("{c}×{n}")).collect();
            println!(
                "| {name} | {route} | {:.0} | {:.1} | {:.1} | {} |",
                latencies.len() as f64 / length.as_secs_f64(),
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99),
                mix.join(", ")
            );
        }
    }
    let first = |after: Instant, wanted: &str| {
        log.samples
            .iter()
            .filter(|(_, route, code, _, at)| {
                *route == "payments" && *at >= after && code == wanted
            })
            .map(|(_, _, _, _, at)| at.duration_since(after))
            .min()
    };
    let ms =
        |d: Option<Duration>| d.map_or("never".to_owned(), |d| format!("{} ms", d.as_millis()));
    println!();
    println!(
        "- first CIRCUIT_OPEN after the slowdown: {}",
        ms(first(slowed, "CIRCUIT_OPEN"))
    );
    println!(
        "- first payment answered 200 after recovery: {}",
        ms(first(recovered, "200"))
    );
    println!(
        "- calls that reached the payments upstream over the whole run: {}",
        payments.handle.requests()
    );
    if defended {
        let circuit = gw
            .gateway
            .circuits()
            .into_iter()
            .find(|c| &*c.name == "payments")
            .unwrap();
        let transitions: Vec<&str> = circuit.transitions.iter().map(|t| t.to).collect();
        println!("- circuit transitions: {}", transitions.join(" → "));
    }
    gw.stop().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    run(false).await;
    run(true).await;
}
