//! The response cache's lookup: a hit in the in-process tier (key built from the request,
//! moka lookup, the answer made from the entry), a miss, and the hit path from two threads.
//! Each iteration runs the async lookup to completion on a current-thread runtime (it never
//! waits on a hit), which adds the cost of one `block_on`.
//!
//! Run: `cargo bench -p sekisho-gateway --bench cache`.
// A benchmark, not a request path: a setup that fails may panic.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use prometheus_client::metrics::counter::Counter;
use sekisho_gateway::body::ResponseBody;
use sekisho_gateway::cache::{CacheMetrics, CacheStore, Lookup, RouteCache};
use tokio::time::Instant;

fn route_cache() -> Arc<RouteCache> {
    let config: sekisho_config::Cache = toml::from_str("ttl = \"1h\"").expect("cache config");
    let metrics = CacheMetrics {
        hit: Counter::default(),
        miss: Counter::default(),
        stale: Counter::default(),
        stale_if_error: Counter::default(),
        coalesced: Counter::default(),
        revalidated: Counter::default(),
        negative: Counter::default(),
        bypass: Counter::default(),
    };
    Arc::new(RouteCache::new(
        CacheStore::new(10_000, 64 << 20),
        "catalog",
        &config,
        metrics,
    ))
}

fn head(path: &str) -> http::request::Parts {
    Request::get(path)
        .header("host", "shop.example")
        .header("accept", "application/json")
        .body(())
        .expect("request")
        .into_parts()
        .0
}

fn lookups(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let cache = route_cache();
    // Fill one entry through the real miss path.
    runtime.block_on(async {
        let mut parts = head("/api/catalog/7");
        let Lookup::Fetch(fetch) = cache
            .lookup(&mut parts, Instant::now() + Duration::from_secs(5))
            .await
        else {
            panic!("a cold cache misses");
        };
        let mut answer = Response::new(ResponseBody::full(bytes::Bytes::from(vec![b'x'; 2048])));
        answer.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        let _ = fetch.finish(Ok(answer)).await;
    });
    let deadline = Instant::now() + Duration::from_secs(3600);
    c.bench_function("cache/l1_hit", |b| {
        b.iter(|| {
            let mut parts = head("/api/catalog/7");
            let found = runtime.block_on(cache.lookup(&mut parts, deadline));
            black_box(matches!(found, Lookup::Hit(..)))
        })
    });
    c.bench_function("cache/request_head_only", |b| {
        b.iter(|| black_box(head("/api/catalog/7")))
    });
    c.bench_function("cache/key", |b| {
        let parts = head("/api/catalog/7");
        b.iter(|| black_box(cache.key(&parts)))
    });
}

criterion_group!(benches, lookups);
criterion_main!(benches);
