//! Rate limits of the gateway: the server-wide one and each route's.
//!
//! A limit is a [`Limit`] of `sekisho_policy::ratelimit` (the algorithm and its numbers), a key
//! built from the request (client IP, headers, API key, user, route, or several joined by `+`),
//! a cost per request, and a backend: in process ([`LocalLimiter`]) or Redis
//! ([`RedisLimiter`], one script per decision on Redis's clock, shared by every instance).
//!
//! When Redis cannot answer (down, slow past its timeout, not yet connected), `on_store_error`
//! decides: `local` enforces this instance's share of the limit in process (the limit divided by
//! the number of live instances last counted through Redis), `allow` lets the request through,
//! `deny` refuses it with 429. Every such decision is logged (once per failure streak), counted
//! (`sekisho_rate_limit_store_errors_total`), and shown as `degraded` under `redis` in
//! `/health/detailed`; the next decision tries Redis again, so the limit is shared again as soon
//! as Redis is back (the connection manager reconnects by itself).
//!
//! Headers: `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (delta seconds) on
//! every response of a limited route, as in draft-ietf-httpapi-ratelimit-headers-06 (the last
//! draft with the three separate fields; later drafts fold them into one structured field).

use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use sekisho_config::{OnStoreError, RateLimitAlgorithm};
use sekisho_policy::ratelimit::local::LocalLimiter;
use sekisho_policy::ratelimit::{Decision, Limit};
use sekisho_store::instances::local_limit;
use tokio::time::Instant;

use crate::edge::GatewayError;
use crate::store_link::StoreLink;
use crate::sync::lock;

/// Keys kept per limit in process at most; beyond, idle keys are evicted first.
pub(crate) const MAX_LOCAL_KEYS: usize = 100_000;

/// Keys of a Redis-decided limit remembered as over their limit, at most (a refusal past this
/// many is simply not remembered: the next request asks Redis).
const MAX_KNOWN_OVER: usize = 10_000;

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Nanoseconds of the process's monotonic clock, for the in-process limiters.
// The epoch is a std Instant on purpose: it only gives the counters their zero, taken once per
// process; `at`, the instant that decides, is on tokio's clock.
#[allow(clippy::disallowed_types, clippy::disallowed_methods)]
fn now_ns(at: Instant) -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    u64::try_from(at.into_std().saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// One part of a limit's key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    ClientIp,
    Header(HeaderName),
    ApiKey,
    User,
    Route,
}

/// What a request offers to the key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeySource<'a> {
    /// The client's address (after `trusted_proxies`).
    pub client_ip: IpAddr,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The route's name, if routed.
    pub route: Option<&'a str>,
    /// The authenticated user's name, on a route with `auth`.
    pub user: Option<&'a str>,
    /// When the request arrived: the limit decides at that instant (one clock read per
    /// request serves every step).
    pub at: Instant,
}

/// Metric handles of one limit.
#[derive(Debug, Clone)]
pub(crate) struct LimitMetrics {
    /// Requests admitted.
    pub allowed: Counter,
    /// Requests refused with 429.
    pub limited: Counter,
    /// Decisions Redis could not make (the `on_store_error` policy decided instead).
    pub store_errors: Counter,
    /// Seconds per Redis decision.
    pub store_latency: Histogram,
    /// Refusals decided in process, without Redis, for a key Redis had refused until then.
    pub known_over: Counter,
}

/// One configured limit, ready to decide.
#[derive(Debug)]
pub(crate) struct RateLimit {
    scope: Arc<str>,
    limit: Limit,
    key: Vec<KeyPart>,
    cost: u64,
    local: Arc<LocalLimiter>,
    shared: Option<RedisBacked>,
    metrics: LimitMetrics,
}

impl RateLimit {
    /// Whether the key reads a request header that `named` picks.
    pub(crate) fn reads_header(&self, named: impl Fn(&HeaderName) -> bool) -> bool {
        self.key
            .iter()
            .any(|part| matches!(part, KeyPart::Header(name) if named(name)))
    }
}

/// The Redis side of a limit.
#[derive(Debug)]
struct RedisBacked {
    store: Arc<StoreLink>,
    on_error: OnStoreError,
    /// This instance's share, for `on_store_error = "local"`, with the instance count it was
    /// made for.
    share: Mutex<Option<(u64, Arc<LocalLimiter>)>>,
    /// Keys Redis refused, until the moment a request of this limit's cost could pass.
    known_over: KnownOver,
}

/// Keys a Redis-decided limit is known to refuse until some instant, so that a client hammering
/// past its limit costs no round trip. Exact, not an approximation: every algorithm's
/// `retry_after` is the earliest moment a request of the same cost could pass if nothing else
/// were admitted meanwhile, and other requests (from any instance) can only push that moment
/// later — so before it Redis would refuse too. The moment is counted from when the question was
/// sent, before Redis decided, never later than Redis's own.
#[derive(Debug, Default)]
struct KnownOver {
    /// Entries now, read without the lock: the admitted path of a limit nobody exceeds pays one
    /// atomic load.
    len: std::sync::atomic::AtomicUsize,
    keys: Mutex<std::collections::HashMap<String, KnownRefusal>>,
}

/// A remembered refusal: Redis's decision and the instant it was asked.
#[derive(Debug, Clone, Copy)]
struct KnownRefusal {
    asked: Instant,
    decision: Decision,
}

impl KnownOver {
    /// The refusal of `key` at `now`, if Redis's last one still holds, with its durations
    /// shortened by the time gone since.
    fn refusal(&self, key: &str, now: Instant) -> Option<Decision> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.len.load(Relaxed) == 0 {
            return None;
        }
        let mut keys = lock(&self.keys);
        let known = *keys.get(key)?;
        let gone = now.saturating_duration_since(known.asked);
        if gone >= known.decision.retry_after {
            keys.remove(key);
            self.len.store(keys.len(), Relaxed);
            return None;
        }
        Some(Decision {
            reset: known.decision.reset.saturating_sub(gone),
            retry_after: known.decision.retry_after - gone,
            ..known.decision
        })
    }

    /// Remembers Redis's refusal of `key`, asked at `asked`; forgets a stale entry when Redis
    /// admitted it.
    fn record(&self, key: &str, asked: Instant, decision: &Decision) {
        use std::sync::atomic::Ordering::Relaxed;
        if decision.allowed {
            if self.len.load(Relaxed) > 0 {
                let mut keys = lock(&self.keys);
                if keys.remove(key).is_some() {
                    self.len.store(keys.len(), Relaxed);
                }
            }
            return;
        }
        if decision.retry_after.is_zero() {
            return;
        }
        let mut keys = lock(&self.keys);
        if keys.len() >= MAX_KNOWN_OVER && !keys.contains_key(key) {
            let now = Instant::now();
            keys.retain(|_, known| {
                now.saturating_duration_since(known.asked) < known.decision.retry_after
            });
            if keys.len() >= MAX_KNOWN_OVER {
                return;
            }
        }
        keys.insert(
            key.to_owned(),
            KnownRefusal {
                asked,
                decision: *decision,
            },
        );
        self.len.store(keys.len(), Relaxed);
    }
}

/// What the admin API shows of a limit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RateLimitView {
    /// `*` for the server's, else the route's name.
    pub scope: String,
    /// The algorithm and its parameters.
    pub limit: String,
    /// The quota clients are told about.
    pub quota: u64,
    /// Units per request.
    pub cost: u64,
    /// `local` or `redis`.
    pub backend: &'static str,
    /// Keys this instance remembers now (its in-process state).
    pub local_keys: usize,
    /// Keys forgotten before they were idle because the in-process map was full.
    pub evicted: u64,
}

impl RateLimit {
    /// What `key` has left now — the key as the limit builds it: its parts joined by `|`, each
    /// labelled (`ip=10.0.0.7`, `h=acme` for a header, `key=…` for an API key, `route=orders`),
    /// without spending anything: from Redis for a shared limit (the in-process share when
    /// Redis fails), else from this instance's state.
    pub(crate) async fn usage(&self, key: &str) -> Decision {
        let key = format!("{}|{key}", self.scope);
        let fresh = Decision {
            allowed: true,
            limit: self.limit.quota(),
            remaining: self.limit.quota(),
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
        };
        if let Some(shared) = &self.shared {
            if let Some(redis) = shared.store.limiter() {
                if let Ok(decision) = redis.decide(&self.limit, &key, 0).await {
                    return decision;
                }
            }
        }
        self.local
            .peek(&key, now_ns(Instant::now()))
            .unwrap_or(fresh)
    }

    /// The scope: `*` or the route's name.
    pub(crate) fn scope(&self) -> &str {
        &self.scope
    }

    /// What the admin API shows.
    pub(crate) fn view(&self) -> RateLimitView {
        RateLimitView {
            scope: self.scope.to_string(),
            limit: format!("{:?}", self.limit),
            quota: self.limit.quota(),
            cost: self.cost,
            backend: if self.shared.is_some() {
                "redis"
            } else {
                "local"
            },
            local_keys: self.local.len(),
            evicted: self.local.evicted(),
        }
    }

    /// The limit `config` of `scope` (a route's name, or `*` for the server's), keeping the
    /// in-process state of `kept` when given (a reload that left the limit as it was).
    pub(crate) fn new(
        scope: &str,
        config: &sekisho_config::RateLimit,
        store: Option<Arc<StoreLink>>,
        local: Arc<LocalLimiter>,
        metrics: LimitMetrics,
    ) -> Self {
        let shared = match (config.backend, store) {
            (sekisho_config::RateLimitBackend::Redis, Some(store)) => Some(RedisBacked {
                store,
                on_error: config.on_store_error,
                share: Mutex::new(None),
                known_over: KnownOver::default(),
            }),
            _ => None,
        };
        Self {
            scope: Arc::from(scope),
            limit: limit_of(config),
            key: key_parts(&config.key),
            cost: u64::from(config.cost.0),
            local,
            shared,
            metrics,
        }
    }

    /// Decides for one request: `Ok` with the figures for the response headers, or
    /// `RATE_LIMITED`.
    pub(crate) async fn check(&self, source: &KeySource<'_>) -> Result<Decision, GatewayError> {
        let key = self.key_of(source);
        let (decision, unchecked) = match &self.shared {
            None => (self.local.decide(&key, now_ns(source.at), self.cost), false),
            Some(shared) => self.decide_shared(shared, &key).await,
        };
        if decision.allowed {
            self.metrics.allowed.inc();
            Ok(decision)
        } else {
            self.metrics.limited.inc();
            Err(GatewayError::RateLimited {
                scope: Arc::clone(&self.scope),
                decision,
                unchecked,
            })
        }
    }

    /// Redis's decision, or `on_store_error`'s when Redis did not answer; `true` with a refusal
    /// made because the limit could not be checked (`deny`).
    async fn decide_shared(&self, shared: &RedisBacked, key: &str) -> (Decision, bool) {
        let started = Instant::now();
        if let Some(decision) = shared.known_over.refusal(key, started) {
            self.metrics.known_over.inc();
            return (decision, false);
        }
        let answer = match shared.store.limiter() {
            Some(redis) => redis
                .decide(&self.limit, key, self.cost)
                .await
                .map_err(|e| e.to_string()),
            None => Err("not connected".to_owned()),
        };
        match answer {
            Ok(decision) => {
                self.metrics
                    .store_latency
                    .observe(started.elapsed().as_secs_f64());
                shared.store.succeeded();
                shared.known_over.record(key, started, &decision);
                (decision, false)
            }
            Err(error) => {
                self.metrics.store_errors.inc();
                shared.store.failed(&error);
                match shared.on_error {
                    OnStoreError::Allow => (
                        Decision {
                            allowed: true,
                            limit: self.limit.quota(),
                            remaining: self.limit.quota(),
                            reset: Duration::ZERO,
                            retry_after: Duration::ZERO,
                        },
                        false,
                    ),
                    OnStoreError::Deny => (
                        Decision {
                            allowed: false,
                            limit: self.limit.quota(),
                            remaining: 0,
                            reset: Duration::from_secs(1),
                            retry_after: Duration::from_secs(1),
                        },
                        true,
                    ),
                    OnStoreError::Local => {
                        let share = self.share(shared);
                        (share.decide(key, now_ns(Instant::now()), self.cost), false)
                    }
                }
            }
        }
    }

    /// This instance's share of the limit, remade when the instance count changed.
    fn share(&self, shared: &RedisBacked) -> Arc<LocalLimiter> {
        let instances = shared.store.instances().max(1);
        let mut share = lock(&shared.share);
        match &*share {
            Some((count, limiter)) if *count == instances => Arc::clone(limiter),
            _ => {
                let limiter = Arc::new(LocalLimiter::new(
                    local_limit(&self.limit, instances),
                    MAX_LOCAL_KEYS,
                ));
                *share = Some((instances, Arc::clone(&limiter)));
                limiter
            }
        }
    }

    /// The request's key under this limit: its parts joined by `|`. A part the request does
    /// not have (no such header, no API key, no user) falls back to the client's address, so
    /// leaving a header out is not a way around the limit.
    fn key_of(&self, source: &KeySource<'_>) -> String {
        let mut key = String::with_capacity(64);
        key.push_str(&self.scope);
        for part in &self.key {
            key.push('|');
            let value = match part {
                KeyPart::ClientIp => None,
                KeyPart::Route => source.route.map(str::to_owned),
                KeyPart::Header(name) => header_text(source.headers, name),
                KeyPart::ApiKey => api_key(source.headers),
                // The authenticated user, on a route with `auth`.
                KeyPart::User => source.user.map(str::to_owned),
            };
            match value {
                Some(value) => {
                    key.push_str(part_label(part));
                    key.push('=');
                    key.push_str(&value);
                }
                None => {
                    key.push_str("ip=");
                    key.push_str(&source.client_ip.to_string());
                }
            }
        }
        key
    }
}

fn part_label(part: &KeyPart) -> &'static str {
    match part {
        KeyPart::ClientIp => "ip",
        KeyPart::Header(_) => "h",
        KeyPart::ApiKey => "key",
        KeyPart::User => "user",
        KeyPart::Route => "route",
    }
}

fn header_text(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

/// The API key: `X-Api-Key`, or the token of `Authorization: Bearer …`.
fn api_key(headers: &HeaderMap) -> Option<String> {
    header_text(headers, &X_API_KEY).or_else(|| {
        let value = header_text(headers, &AUTHORIZATION)?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    })
}

fn key_parts(key: &str) -> Vec<KeyPart> {
    key.split('+')
        .filter_map(|part| match part.split_once(':') {
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .ok()
                .map(KeyPart::Header),
            _ => match part {
                "client_ip" => Some(KeyPart::ClientIp),
                "api_key" => Some(KeyPart::ApiKey),
                "user" => Some(KeyPart::User),
                "route" => Some(KeyPart::Route),
                _ => None,
            },
        })
        .collect()
}

/// The policy's limit from the config (validated: the numbers an algorithm needs are there).
pub(crate) fn limit_of(config: &sekisho_config::RateLimit) -> Limit {
    let quota = u64::from(config.capacity.or(config.limit).map_or(1, |q| q.0));
    let rate = config.refill_per_second.unwrap_or(1.0);
    let window = config.window.map_or(Duration::from_secs(1), |w| w.get());
    match config.algorithm {
        RateLimitAlgorithm::TokenBucket => Limit::TokenBucket {
            capacity: quota,
            refill_per_second: rate,
        },
        RateLimitAlgorithm::Gcra => Limit::Gcra {
            burst: quota,
            per_second: rate,
        },
        RateLimitAlgorithm::FixedWindow => Limit::FixedWindow {
            limit: quota,
            window,
        },
        RateLimitAlgorithm::SlidingWindowLog => Limit::SlidingWindowLog {
            limit: quota,
            window,
        },
        RateLimitAlgorithm::SlidingWindowCounter => Limit::SlidingWindowCounter {
            limit: quota,
            window,
        },
    }
}

/// Adds the `RateLimit-*` fields of `decision`.
pub(crate) fn add_headers(headers: &mut HeaderMap, decision: &Decision) {
    let reset = decision.reset.as_secs() + u64::from(decision.reset.subsec_nanos() > 0);
    headers.insert(&RATELIMIT_LIMIT, HeaderValue::from(decision.limit));
    headers.insert(&RATELIMIT_REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(&RATELIMIT_RESET, HeaderValue::from(reset));
}

/// Of two decisions that both apply (server and route), the one a client should be told
/// about: the one with less left.
pub(crate) fn tighter(a: Option<Decision>, b: Decision) -> Decision {
    match a {
        Some(a) if a.remaining < b.remaining => a,
        _ => b,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limit(key: &str) -> RateLimit {
        let config: sekisho_config::RateLimit = toml::from_str(&format!(
            "algorithm = \"fixed_window\"\nlimit = 2\nwindow = \"1m\"\nkey = \"{key}\"\n"
        ))
        .unwrap();
        let metrics = LimitMetrics {
            allowed: Counter::default(),
            limited: Counter::default(),
            store_errors: Counter::default(),
            store_latency: Histogram::new([0.001]),
            known_over: Counter::default(),
        };
        let local = Arc::new(LocalLimiter::new(limit_of(&config), 16));
        RateLimit::new("api", &config, None, local, metrics)
    }

    fn source<'a>(headers: &'a HeaderMap, ip: &str) -> KeySource<'a> {
        KeySource {
            client_ip: ip.parse().unwrap(),
            headers,
            route: Some("api"),
            user: None,
            at: Instant::now(),
        }
    }

    #[test]
    fn keys_join_their_parts_and_fall_back_to_the_address() {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static("acme"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer tok-1"));
        let both = limit("client_ip+header:X-Tenant");
        assert_eq!(
            both.key_of(&source(&headers, "10.0.0.1")),
            "api|ip=10.0.0.1|h=acme"
        );
        assert_eq!(
            limit("api_key").key_of(&source(&headers, "10.0.0.1")),
            "api|key=tok-1"
        );
        let bare = HeaderMap::new();
        assert_eq!(
            limit("header:X-Tenant").key_of(&source(&bare, "10.0.0.2")),
            "api|ip=10.0.0.2"
        );
        assert_eq!(
            limit("route").key_of(&source(&bare, "10.0.0.2")),
            "api|route=api"
        );
    }

    #[tokio::test]
    async fn a_local_limit_refuses_beyond_its_quota_per_key() {
        let limit = limit("client_ip");
        let headers = HeaderMap::new();
        let first = source(&headers, "10.0.0.1");
        assert!(limit.check(&first).await.is_ok());
        let second = limit.check(&first).await.unwrap();
        assert_eq!((second.limit, second.remaining), (2, 0));
        match limit.check(&first).await {
            Err(GatewayError::RateLimited { decision, .. }) => {
                assert!(decision.retry_after > Duration::ZERO)
            }
            other => panic!("{other:?}"),
        }
        assert!(limit.check(&source(&headers, "10.0.0.9")).await.is_ok());
        assert_eq!(limit.metrics.limited.get(), 1);
        assert_eq!(limit.metrics.allowed.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_redis_refused_is_refused_in_process_until_its_retry_after_only() {
        let known = KnownOver::default();
        let asked = Instant::now();
        let refused = Decision {
            allowed: false,
            limit: 5,
            remaining: 0,
            reset: Duration::from_secs(3),
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(known.refusal("k", asked), None, "nothing known yet");
        known.record("k", asked, &refused);
        tokio::time::advance(Duration::from_millis(400)).await;
        let again = known.refusal("k", Instant::now()).unwrap();
        assert!(!again.allowed);
        assert_eq!(again.retry_after, Duration::from_millis(600));
        assert_eq!(again.reset, Duration::from_millis(2_600));
        assert_eq!(known.refusal("other", Instant::now()), None);
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(
            known.refusal("k", Instant::now()),
            None,
            "at retry_after Redis is asked again"
        );
        // An admission forgets a refusal; a refusal without a retry_after is not kept.
        known.record("k", Instant::now(), &refused);
        let admitted = Decision {
            allowed: true,
            retry_after: Duration::ZERO,
            ..refused
        };
        known.record("k", Instant::now(), &admitted);
        assert_eq!(known.refusal("k", Instant::now()), None);
        known.record(
            "k",
            Instant::now(),
            &Decision {
                retry_after: Duration::ZERO,
                ..refused
            },
        );
        assert_eq!(known.refusal("k", Instant::now()), None);
    }

    #[test]
    fn headers_round_the_reset_up_and_report_the_tighter_limit() {
        let decision = Decision {
            allowed: true,
            limit: 10,
            remaining: 3,
            reset: Duration::from_millis(1500),
            retry_after: Duration::ZERO,
        };
        let mut headers = HeaderMap::new();
        add_headers(&mut headers, &decision);
        assert_eq!(headers["ratelimit-limit"], "10");
        assert_eq!(headers["ratelimit-remaining"], "3");
        assert_eq!(headers["ratelimit-reset"], "2");
        let looser = Decision {
            remaining: 7,
            ..decision
        };
        assert_eq!(tighter(Some(looser), decision).remaining, 3);
        assert_eq!(tighter(Some(decision), looser).remaining, 3);
    }
}
