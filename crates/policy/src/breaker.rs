//! A circuit breaker with resilience4j's semantics, free of I/O and of clocks: every call passes
//! the time in.
//!
//! - **Closed**: calls pass; each outcome (failed? slow?) goes into a sliding window, either the
//!   last `N` calls ([`Window::Calls`]) or the calls of the last `N` seconds in one-second
//!   buckets ([`Window::Time`]). Once the window holds at least `minimum_calls`, a failure rate
//!   or slow-call rate at or above its threshold opens the circuit. In consecutive-failures
//!   mode, `n` failures in a row open it as well.
//! - **Open**: calls are rejected at once with the time left ([`Rejected::retry_after`]). After
//!   `open_for` (multiplied by `open_for_multiplier` for each reopening in a row, up to
//!   `max_open_for`) the next call finds it half-open.
//! - **Half-open**: `half_open_calls` probes are admitted, no more. When all have answered:
//!   closed (window cleared) if their failure and slow rates are under the thresholds, open
//!   again otherwise.
//! - An operator may force it open, force it closed (calls pass and are counted, it never
//!   opens), disable it (calls pass, nothing is counted) or reset it to closed with an empty
//!   window.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use sekisho_policy::breaker::{Breaker, BreakerConfig, Outcome, State, Window};
//!
//! let config = BreakerConfig {
//!     window: Window::Calls(4),
//!     minimum_calls: 4,
//!     ..BreakerConfig::default()
//! };
//! let breaker = Breaker::new(config);
//! let now = Instant::now();
//! for _ in 0..4 {
//!     let permit = breaker.try_acquire(now).unwrap();
//!     breaker.record(permit, Outcome { failed: true, duration: Duration::from_millis(5) }, now);
//! }
//! assert_eq!(breaker.state(now), State::Open);
//! assert!(breaker.try_acquire(now).is_err());
//! ```

mod window;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use window::Counts;

/// The sliding window the rates are judged over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `n` calls.
    Calls(u32),
    /// The calls of the last `n` whole seconds (one-second buckets).
    Time(u32),
}

/// Settings of a breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// The window.
    pub window: Window,
    /// Rates are judged only once the window holds this many calls.
    pub minimum_calls: u32,
    /// Open at a failure rate at or above this (0–1).
    pub failure_rate_threshold: f64,
    /// A call slower than this is slow.
    pub slow_call_threshold: Duration,
    /// Open at a slow-call rate at or above this (0–1).
    pub slow_call_rate_threshold: f64,
    /// Open for this long, then half-open.
    pub open_for: Duration,
    /// Each reopening in a row multiplies `open_for` by this (≥ 1).
    pub open_for_multiplier: f64,
    /// Upper bound of a growing `open_for`.
    pub max_open_for: Option<Duration>,
    /// Probes admitted while half-open.
    pub half_open_calls: u32,
    /// Consecutive-failures mode: also open after this many failures in a row.
    pub consecutive_failures: Option<u32>,
}

impl State {
    /// The contract's name of the state.
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::ForcedClosed => "forced_closed",
            State::Disabled => "disabled",
        }
    }
}

impl Default for BreakerConfig {
    /// The contract's defaults: 60 s window, 10 calls, 50 % failures, 2 s slow calls judged
    /// at 100 %, 30 s open, 3 probes.
    fn default() -> Self {
        Self {
            window: Window::Time(60),
            minimum_calls: 10,
            failure_rate_threshold: 0.5,
            slow_call_threshold: Duration::from_secs(2),
            slow_call_rate_threshold: 1.0,
            open_for: Duration::from_secs(30),
            open_for_multiplier: 1.0,
            max_open_for: None,
            half_open_calls: 3,
            consecutive_failures: None,
        }
    }
}

/// Where the circuit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls pass and are judged.
    Closed,
    /// Calls are rejected.
    Open,
    /// A few probes pass.
    HalfOpen,
    /// Forced open by an operator: every call is rejected until reset.
    ForcedOpen,
    /// Forced closed by an operator: every call passes and is counted, but the circuit does not
    /// open, until reset.
    ForcedClosed,
    /// Disabled by an operator: every call passes, nothing is judged, until reset.
    Disabled,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// It counts as a failure (the caller decides: status, timeout, connect error).
    pub failed: bool,
    /// How long it took.
    pub duration: Duration,
}

/// Leave to make a call; give it back to [`Breaker::record`] (or drop it: a call that never
/// happened is not judged, and a half-open probe slot is given back).
#[derive(Debug)]
#[must_use = "record the call's outcome with Breaker::record"]
pub struct Permit {
    /// The half-open round it belongs to, if it is a probe.
    probe_round: Option<u64>,
}

/// The call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// Until the circuit turns half-open (zero when forced open or when half-open probes are
    /// all out: try again soon).
    pub retry_after: Duration,
    /// The state that rejected it.
    pub state: State,
}

/// A change of state, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// From.
    pub from: State,
    /// To.
    pub to: State,
    /// When.
    pub at: Instant,
}

/// Figures of the window, for the admin API and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// The state now.
    pub state: State,
    /// Calls in the window.
    pub calls: u32,
    /// Failed calls in the window.
    pub failures: u32,
    /// Slow calls in the window.
    pub slow: u32,
    /// Failure rate of the window (0 when empty).
    pub failure_rate: f64,
    /// Slow-call rate of the window (0 when empty).
    pub slow_rate: f64,
    /// Times it opened.
    pub opened: u64,
}

/// A circuit breaker; see the module docs. One mutex guards its state: a decision is a few
/// additions, so the lock is held for nanoseconds.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    window: Counts,
    in_a_row: u32,
    /// Open until (while Open).
    open_until: Option<Instant>,
    /// Reopenings in a row (grows `open_for`).
    reopenings: u32,
    /// Half-open round: probes handed out and outcomes received.
    round: u64,
    probes_out: u32,
    probes_done: u32,
    probe_failures: u32,
    probe_slow: u32,
    opened: u64,
    transitions: VecDeque<Transition>,
}

/// Transitions kept for the admin API.
const TRANSITIONS_KEPT: usize = 32;

fn rate(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) / f64::from(whole)
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        let epoch = Instant::now();
        Self::new_at(config, epoch)
    }

    /// A closed breaker whose time-window buckets count whole seconds from `epoch`.
    pub fn new_at(config: BreakerConfig, epoch: Instant) -> Self {
        let window = Counts::new(config.window, epoch);
        Self {
            config,
            inner: Mutex::new(Inner {
                state: State::Closed,
                window,
                in_a_row: 0,
                open_until: None,
                reopenings: 0,
                round: 0,
                probes_out: 0,
                probes_done: 0,
                probe_failures: 0,
                probe_slow: 0,
                opened: 0,
                transitions: VecDeque::new(),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leave for one call at `now`, or why not.
    pub fn try_acquire(&self, now: Instant) -> Result<Permit, Rejected> {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        match inner.state {
            State::Closed | State::Disabled | State::ForcedClosed => {
                Ok(Permit { probe_round: None })
            }
            State::Open => Err(Rejected {
                retry_after: inner
                    .open_until
                    .map_or(Duration::ZERO, |until| until.saturating_duration_since(now)),
                state: State::Open,
            }),
            State::ForcedOpen => Err(Rejected {
                retry_after: Duration::ZERO,
                state: State::ForcedOpen,
            }),
            State::HalfOpen => {
                if inner.probes_out < self.config.half_open_calls.max(1) {
                    inner.probes_out += 1;
                    Ok(Permit {
                        probe_round: Some(inner.round),
                    })
                } else {
                    Err(Rejected {
                        retry_after: Duration::ZERO,
                        state: State::HalfOpen,
                    })
                }
            }
        }
    }

    /// The outcome of the call `permit` allowed.
    pub fn record(&self, permit: Permit, outcome: Outcome, now: Instant) {
        let mut inner = self.lock();
        let slow = outcome.duration > self.config.slow_call_threshold;
        match (inner.state, permit.probe_round) {
            (State::HalfOpen, Some(round)) if round == inner.round => {
                inner.probes_done += 1;
                inner.probe_failures += u32::from(outcome.failed);
                inner.probe_slow += u32::from(slow);
                let probes = self.config.half_open_calls.max(1);
                if inner.probes_done >= probes {
                    let failure_rate = rate(inner.probe_failures, inner.probes_done);
                    let slow_rate = rate(inner.probe_slow, inner.probes_done);
                    if failure_rate >= self.config.failure_rate_threshold
                        || slow_rate >= self.config.slow_call_rate_threshold
                    {
                        self.open(&mut inner, now, true);
                    } else {
                        inner.window.clear();
                        inner.in_a_row = 0;
                        inner.reopenings = 0;
                        self.transition(&mut inner, State::Closed, now);
                    }
                }
            }
            (State::Closed, None) => {
                inner.window.add(outcome.failed, slow, now);
                inner.in_a_row = if outcome.failed {
                    inner.in_a_row + 1
                } else {
                    0
                };
                if self
                    .config
                    .consecutive_failures
                    .is_some_and(|limit| inner.in_a_row >= limit.max(1))
                {
                    self.open(&mut inner, now, false);
                    return;
                }
                let (calls, failures, slow_calls) = inner.window.totals(now);
                if calls >= self.config.minimum_calls.max(1)
                    && (rate(failures, calls) >= self.config.failure_rate_threshold
                        || rate(slow_calls, calls) >= self.config.slow_call_rate_threshold)
                {
                    self.open(&mut inner, now, false);
                }
            }
            (State::ForcedClosed, None) => inner.window.add(outcome.failed, slow, now),
            // A late answer from another state or round: not judged.
            _ => {}
        }
    }

    /// Gives back a permit whose call never happened (a half-open probe slot becomes free).
    pub fn cancel(&self, permit: Permit) {
        let mut inner = self.lock();
        if let (State::HalfOpen, Some(round)) = (inner.state, permit.probe_round) {
            if round == inner.round {
                inner.probes_out = inner.probes_out.saturating_sub(1);
            }
        }
    }

    /// The state at `now` (an open circuit whose time is up reads half-open).
    pub fn state(&self, now: Instant) -> State {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        inner.state
    }

    /// The window's figures at `now`.
    pub fn figures(&self, now: Instant) -> Figures {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        let (calls, failures, slow) = inner.window.totals(now);
        Figures {
            state: inner.state,
            calls,
            failures,
            slow,
            failure_rate: rate(failures, calls),
            slow_rate: rate(slow, calls),
            opened: inner.opened,
        }
    }

    /// The last transitions, oldest first.
    pub fn transitions(&self) -> Vec<Transition> {
        self.lock().transitions.iter().copied().collect()
    }

    /// Operator: reject every call until [`Breaker::reset`].
    pub fn force_open(&self, now: Instant) {
        let mut inner = self.lock();
        self.transition(&mut inner, State::ForcedOpen, now);
    }

    /// Operator: let every call through, counted but never opening, until [`Breaker::reset`].
    pub fn force_closed(&self, now: Instant) {
        let mut inner = self.lock();
        self.transition(&mut inner, State::ForcedClosed, now);
    }

    /// Operator: let every call through unjudged until [`Breaker::reset`].
    pub fn disable(&self, now: Instant) {
        let mut inner = self.lock();
        self.transition(&mut inner, State::Disabled, now);
    }

    /// Operator: closed, with an empty window and no memory of past openings.
    pub fn reset(&self, now: Instant) {
        let mut inner = self.lock();
        inner.window.clear();
        inner.in_a_row = 0;
        inner.reopenings = 0;
        inner.open_until = None;
        self.transition(&mut inner, State::Closed, now);
    }

    fn advance(&self, inner: &mut Inner, now: Instant) {
        if inner.state == State::Open && inner.open_until.is_some_and(|until| now >= until) {
            inner.round += 1;
            inner.probes_out = 0;
            inner.probes_done = 0;
            inner.probe_failures = 0;
            inner.probe_slow = 0;
            self.transition(inner, State::HalfOpen, now);
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant, from_half_open: bool) {
        inner.reopenings = if from_half_open {
            inner.reopenings + 1
        } else {
            0
        };
        let factor = self
            .config
            .open_for_multiplier
            .max(1.0)
            .powi(inner.reopenings as i32);
        let mut open_for = self.config.open_for.mul_f64(factor.min(1e6));
        if let Some(max) = self.config.max_open_for {
            open_for = open_for.min(max);
        }
        inner.open_until = Some(now + open_for);
        inner.opened += 1;
        inner.in_a_row = 0;
        self.transition(inner, State::Open, now);
    }

    fn transition(&self, inner: &mut Inner, to: State, at: Instant) {
        if inner.state == to {
            return;
        }
        if inner.transitions.len() == TRANSITIONS_KEPT {
            inner.transitions.pop_front();
        }
        inner.transitions.push_back(Transition {
            from: inner.state,
            to,
            at,
        });
        inner.state = to;
    }
}

#[cfg(test)]
mod tests;
