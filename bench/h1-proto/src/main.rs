//! `h1-proto`: the owned HTTP/1.1 prototype as a benchmark target.
//!
//! Listens on `--listen ADDR` (or `$LISTEN`, default 127.0.0.1:18089, the port the bench's
//! instr.sh and run.sh give `hyper-min`), forwards to `--upstream ADDR` (or `$UPSTREAM`,
//! default 127.0.0.1:18080). One tokio current-thread runtime, no logging. Reads are timed by
//! one ticking timer per connection; `H1_TIMERS=per-wait` puts a tokio timeout on each wait.
//! `H1_REFUSE=1` answers every request with a fixed 503 instead (the refusal floor).

use std::net::SocketAddr;
use std::process::ExitCode;

fn address(flag: &str, variable: &str, default: &str) -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut text = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    while let Some(arg) = args.next() {
        if arg == flag {
            text = args.next().ok_or(format!("{flag} needs an address"))?;
        }
    }
    text.parse()
        .map_err(|error| format!("{flag} {text}: {error}"))
}

fn main() -> ExitCode {
    let addresses = address("--listen", "LISTEN", "127.0.0.1:18089").and_then(|listen| {
        Ok((
            listen,
            address("--upstream", "UPSTREAM", "127.0.0.1:18080")?,
        ))
    });
    let (listen, upstream) = match addresses {
        Ok(addresses) => addresses,
        Err(message) => {
            eprintln!("h1-proto: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("h1-proto: runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("h1-proto: bind {listen}: {error}");
                return ExitCode::FAILURE;
            }
        };
        let mut timeouts = h1_proto::Timeouts::default();
        if std::env::var("H1_TIMERS").is_ok_and(|mode| mode == "per-wait") {
            timeouts.mode = h1_proto::TimerMode::PerWait;
        }
        let mut shared = h1_proto::Shared::new(upstream, timeouts);
        if std::env::var("H1_REFUSE").is_ok_and(|on| on == "1") {
            if let Some(shared) = std::sync::Arc::get_mut(&mut shared) {
                shared.refuse = true;
            }
        }
        h1_proto::serve(listener, shared).await;
        ExitCode::SUCCESS
    })
}
