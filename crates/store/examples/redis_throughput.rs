//! Decisions per second and latency per decision of `RedisLimiter`, for one gateway instance:
//! N concurrent tasks sharing one multiplexed connection, for each algorithm in turn.
//!
//! ```text
//! cargo run --release -p sekisho-store --example redis_throughput -- \
//!     [--url redis://127.0.0.1:6379] [--tasks 32] [--secs 5] [--keys 1000] [--algorithms tb,gcra,fw,sl,sc]
//! ```
//!
//! Limits are generous so nearly every decision is admitted (the path that writes). Keys are
//! spread over `--keys` clients; all expire within seconds of the run. A PING with the same
//! concurrency is measured first: the round trip any Redis call pays on this machine.
//! Last, the read-then-write race that a single script avoids is shown on a plain counter
//! (`GET`, compare, `INCRBY`: two round trips), with the same 16 tasks and quota as the tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sekisho_policy::ratelimit::Limit;
use sekisho_store::ratelimit::RedisLimiter;

struct Args {
    url: String,
    tasks: usize,
    secs: u64,
    keys: u64,
    algorithms: Vec<String>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        url: std::env::var("SEKISHO_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
        tasks: 32,
        secs: 5,
        keys: 1000,
        algorithms: ["tb", "gcra", "fw", "sl", "sc"].map(str::to_owned).to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => args.url = value.clone(),
            "--tasks" => args.tasks = number()?.max(1) as usize,
            "--secs" => args.secs = number()?.max(1),
            "--keys" => args.keys = number()?.max(1),
            "--algorithms" => args.algorithms = value.split(',').map(str::to_owned).collect(),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

fn limit(name: &str) -> Option<Limit> {
    let window = Duration::from_secs(1);
    Some(match name {
        "tb" => Limit::TokenBucket {
            capacity: 1_000_000,
            refill_per_second: 1_000_000.0,
        },
        "gcra" => Limit::Gcra {
            burst: 1_000_000,
            per_second: 1_000_000.0,
        },
        "fw" => Limit::FixedWindow {
            limit: 1_000_000,
            window,
        },
        "sl" => Limit::SlidingWindowLog {
            limit: 1_000,
            window,
        },
        "sc" => Limit::SlidingWindowCounter {
            limit: 1_000_000,
            window,
        },
        _ => return None,
    })
}

struct Report {
    calls: u64,
    errors: u64,
    admitted: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Report {
    fn print(&mut self, name: &str) {
        self.latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.latencies_us.is_empty() {
                return 0.0;
            }
            let i = ((self.latencies_us.len() as f64 * p).ceil() as usize)
                .clamp(1, self.latencies_us.len())
                - 1;
            f64::from(self.latencies_us[i]) / 1000.0
        };
        println!(
            "{name:<24} {:>9.0}/s  p50 {:>6.3} ms  p99 {:>6.3} ms  p99.9 {:>6.3} ms  max {:>7.3} ms  ({} calls, {} admitted, {} errors)",
            self.calls as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            pct(0.999),
            pct(1.0),
            self.calls,
            self.admitted,
            self.errors,
        );
    }
}

/// Runs `call` from `tasks` tasks until `secs` have passed; `call(task, i)` says whether it was
/// admitted.
async fn run<F, Fut>(tasks: usize, secs: u64, call: F) -> Report
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<bool, String>> + Send,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let errors = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let call = call.clone();
        let errors = errors.clone();
        let admitted = admitted.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match call(task, i).await {
                    Ok(true) => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {}
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                i += 1;
            }
            latencies
        }));
    }
    let mut latencies_us = Vec::new();
    for h in handles {
        if let Ok(l) = h.await {
            latencies_us.extend(l);
        }
    }
    Report {
        calls: latencies_us.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        admitted: admitted.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        latencies_us,
    }
}

/// Two connections, 16 tasks, 1008 attempts on a quota of 300, checked with `GET` and taken
/// with `INCRBY`: the race of a limiter that reads, then writes.
async fn read_then_write(a: ConnectionManager, b: ConnectionManager, key: String) -> u64 {
    let admitted = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..16 {
        let mut conn = if t % 2 == 0 { a.clone() } else { b.clone() };
        let key = key.clone();
        let admitted = admitted.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..63 {
                let used: Option<u64> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(None);
                if used.unwrap_or(0) < 300 {
                    let _: Result<u64, _> = redis::cmd("INCRBY")
                        .arg(&key)
                        .arg(1)
                        .query_async(&mut conn)
                        .await;
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let _: Result<u64, _> = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut a.clone())
        .await;
    admitted.load(Ordering::Relaxed)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let conn = sekisho_store::connect(&args.url).await?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let prefix = format!("sekisho:bench:{:x}:", nanos.as_nanos());
    let limiter = RedisLimiter::new(conn.clone(), prefix.clone(), Duration::from_secs(1));
    println!(
        "{} tasks on one multiplexed connection, {} s per line, {} keys, {} worker threads",
        args.tasks,
        args.secs,
        args.keys,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );

    let mut ping = {
        let conn = conn.clone();
        run(args.tasks, args.secs, move |_, _| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(|_| true)
                    .map_err(|e| e.to_string())
            }
        })
        .await
    };
    ping.print("PING (round trip)");

    for name in &args.algorithms {
        let Some(limit) = limit(name) else {
            return Err(format!("unknown algorithm {name}").into());
        };
        let limiter = limiter.clone();
        let keys = args.keys;
        let tasks = args.tasks as u64;
        let mut report = run(args.tasks, args.secs, move |task, i| {
            let limiter = limiter.clone();
            async move {
                let key = format!("client{}", (i * tasks + task as u64) % keys);
                limiter
                    .decide(&limit, &key, 1)
                    .await
                    .map(|d| d.allowed)
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        report.print(&format!("decide {name}"));
    }

    let second = sekisho_store::connect(&args.url).await?;
    let admitted = read_then_write(conn, second, format!("{prefix}race")).await;
    println!(
        "read-then-write (GET, INCRBY), 16 tasks on 2 connections: {admitted} of 1008 admitted for a quota of 300"
    );
    Ok(())
}
