//! What the gateway has learnt about each upstream and target, kept across reloads: health,
//! ejections, latency estimates, requests in flight, the circuit breaker and bulkhead. A config
//! generation's [`super::UpstreamGroup`] finds its targets' state here by upstream name and
//! target address ([`UpstreamStates::upstream`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sekisho_policy::balance::TargetLoad;
use sekisho_policy::breaker::{Breaker, BreakerConfig};
use sekisho_policy::bulkhead::Bulkhead;
use tokio::time::Instant;

use crate::body::{Held, Release};
use crate::clock::{Clock, Millis};
use crate::sync::lock;

/// What is known about one target, kept across reloads.
#[derive(Debug)]
pub(crate) struct TargetState {
    /// In flight, latency estimate and error rate, as the balancers read them.
    pub load: TargetLoad,
    /// Passing the active health checks (true until checks say otherwise).
    pub(super) healthy: AtomicBool,
    /// Failures in a row, for outlier detection.
    pub(super) consecutive_failures: AtomicU32,
    /// Ejected until this time; 0: not ejected.
    pub(super) ejected_until: AtomicU64,
    /// Ejections that still count towards the next ejection's length (decays while healthy).
    pub(super) ejection_level: AtomicU32,
    /// Ejections since the target appeared.
    pub(super) ejections_total: AtomicU64,
    /// When it last came back into service, for slow start; 0: not ramping.
    pub(super) returned_at: AtomicU64,
    /// Requests and failures in the current outlier window.
    pub(super) window_requests: AtomicU64,
    pub(super) window_failures: AtomicU64,
    /// Times a balancer chose it.
    pub(super) picks: AtomicU64,
    /// The last active check.
    last_check: Mutex<Option<CheckRecord>>,
}

/// The outcome of one active health check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckRecord {
    /// Unix time in milliseconds.
    pub at_unix_ms: u64,
    /// Whether it passed.
    pub ok: bool,
    /// What it found: a status, or what went wrong.
    pub detail: String,
    /// How long it took.
    pub duration_ms: f64,
}

impl TargetState {
    fn new(clock: &Clock, returned_at: Millis) -> Self {
        Self {
            load: TargetLoad::new(clock.epoch().into_std()),
            healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejection_level: AtomicU32::new(0),
            ejections_total: AtomicU64::new(0),
            returned_at: AtomicU64::new(returned_at),
            window_requests: AtomicU64::new(0),
            window_failures: AtomicU64::new(0),
            picks: AtomicU64::new(0),
            last_check: Mutex::new(None),
        }
    }

    /// Passing the active checks.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Ejected by outlier detection at `now`.
    pub(crate) fn is_ejected(&self, now: Millis) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Times ejected.
    pub(crate) fn ejections(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    /// Times picked.
    pub(crate) fn picks(&self) -> u64 {
        self.picks.load(Ordering::Relaxed)
    }

    /// The last active check, if any.
    pub(crate) fn last_check(&self) -> Option<CheckRecord> {
        lock(&self.last_check).clone()
    }

    pub(crate) fn set_last_check(&self, record: CheckRecord) {
        *lock(&self.last_check) = Some(record);
    }

    /// Back into service at `at`: the failure streak starts over and slow start from `at`.
    fn back_in_service(&self, at: Millis) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.returned_at.store(at, Ordering::Relaxed);
    }

    /// Ends the ejection that runs until `until`, once, whoever tries (a request rebuilding the
    /// snapshot, a passing check): true for the one that did.
    pub(super) fn end_ejection(&self, until: Millis, back_at: Millis) -> bool {
        let ended = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if ended {
            self.back_in_service(back_at);
        }
        ended
    }

    /// Marks it healthy or not after its active checks crossed a threshold; a target coming
    /// back ramps up. Returns whether anything changed.
    pub(crate) fn set_health(&self, upstream: &UpstreamState, healthy: bool, now: Millis) -> bool {
        if self.healthy.swap(healthy, Ordering::Relaxed) == healthy {
            return false;
        }
        if healthy {
            self.back_in_service(now);
        }
        upstream.changed();
        true
    }

    /// A passing active check ends an ejection early (a success brings the target back).
    pub(crate) fn uneject(&self, upstream: &UpstreamState, now: Millis) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until <= now || !self.end_ejection(until, now) {
            return false;
        }
        upstream.changed();
        true
    }
}

/// What an upstream has learnt, kept across reloads: its targets' states and a counter of
/// changes that invalidate snapshots.
#[derive(Debug)]
pub(crate) struct UpstreamState {
    name: Arc<str>,
    targets: Mutex<HashMap<String, Arc<TargetState>>>,
    pub(super) changes: AtomicU64,
    /// End of the current outlier window.
    pub(super) window_end: AtomicU64,
    /// The circuit breaker and the settings it was made with (kept while they do not change).
    breaker: Mutex<Option<(BreakerConfig, Arc<Breaker>)>>,
    /// The bulkhead and its settings (kept while they do not change, so that requests in
    /// flight across a reload still count against the same limit).
    bulkhead: Mutex<Option<(BulkheadSettings, Arc<Bulkhead>)>>,
}

impl UpstreamState {
    /// Something changed that may change which targets are eligible.
    pub(crate) fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// The upstream's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The bulkhead for `config`: the one in use if its settings are the same, a new one
    /// otherwise.
    pub(super) fn bulkhead(&self, config: &sekisho_config::Bulkhead) -> Arc<Bulkhead> {
        let settings = (
            config.max_concurrent.0,
            config.max_queued,
            config.max_wait.0,
        );
        let mut slot = lock(&self.bulkhead);
        match &*slot {
            Some((current, bulkhead)) if *current == settings => Arc::clone(bulkhead),
            _ => {
                let bulkhead = Arc::new(Bulkhead::new(settings.0, settings.1, settings.2));
                *slot = Some((settings, Arc::clone(&bulkhead)));
                bulkhead
            }
        }
    }

    /// The breaker for `config`: the one in use if its settings are the same (its state and
    /// window survive a reload), a new closed one otherwise.
    pub(super) fn breaker(&self, config: BreakerConfig) -> Arc<Breaker> {
        let mut slot = lock(&self.breaker);
        match &*slot {
            Some((current, breaker)) if *current == config => Arc::clone(breaker),
            _ => {
                let breaker = Arc::new(Breaker::new(config.clone()));
                *slot = Some((config, Arc::clone(&breaker)));
                breaker
            }
        }
    }
}

/// A bulkhead's `max_concurrent`, `max_queued` and `max_wait`.
type BulkheadSettings = (u32, u32, Duration);

/// Every upstream's state, by name, on one clock; kept across reloads.
#[derive(Debug)]
pub(crate) struct UpstreamStates {
    clock: Clock,
    upstreams: Mutex<HashMap<String, Arc<UpstreamState>>>,
}

impl Default for UpstreamStates {
    fn default() -> Self {
        Self {
            clock: Clock::new(),
            upstreams: Mutex::new(HashMap::new()),
        }
    }
}

impl UpstreamStates {
    /// The clock of target state.
    pub(crate) fn clock(&self) -> Clock {
        self.clock
    }

    /// The state of `upstream` and its `targets`: existing entries are kept, new targets start
    /// healthy (ramping up when `slow_start` applies and the upstream existed before).
    pub(super) fn upstream(
        &self,
        name: &str,
        addresses: &[&str],
    ) -> (Arc<UpstreamState>, Vec<Arc<TargetState>>) {
        let mut upstreams = lock(&self.upstreams);
        let existed = upstreams.contains_key(name);
        let state = Arc::clone(upstreams.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(UpstreamState {
                name: Arc::from(name),
                targets: Mutex::new(HashMap::new()),
                changes: AtomicU64::new(0),
                window_end: AtomicU64::new(0),
                breaker: Mutex::new(None),
                bulkhead: Mutex::new(None),
            })
        }));
        drop(upstreams);
        let now = self.clock.millis(Instant::now());
        let mut targets = lock(&state.targets);
        let states = addresses
            .iter()
            .map(|address| {
                Arc::clone(targets.entry((*address).to_owned()).or_insert_with(|| {
                    // A target added by a reload is new to the traffic: it ramps up.
                    Arc::new(TargetState::new(&self.clock, if existed { now } else { 0 }))
                }))
            })
            .collect();
        drop(targets);
        (state, states)
    }

    /// Forgets upstreams and targets that `config` no longer names.
    pub(crate) fn retain(&self, config: &sekisho_config::Config) {
        let mut upstreams = lock(&self.upstreams);
        upstreams.retain(|name, state| {
            let Some((_, upstream)) = config.upstreams.iter().find(|(n, _)| n.get_ref() == name)
            else {
                return false;
            };
            lock(&state.targets).retain(|address, _| {
                upstream
                    .targets
                    .get_ref()
                    .iter()
                    .any(|t| &t.address == address)
            });
            true
        });
    }
}

/// A target's load counts one more call in flight; the count drops with the [`Held`] that
/// [`TargetState::begin`] returns (the response body keeps it to its last byte).
impl Release for TargetState {
    fn release(&self) {
        self.load.release();
    }
}

impl TargetState {
    /// A call begins: counted in flight until the returned hold is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Held {
        self.load.begin();
        Held::new(Arc::clone(self) as Arc<dyn Release>)
    }
}
