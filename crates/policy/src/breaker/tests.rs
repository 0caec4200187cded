#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn call(breaker: &Breaker, failed: bool, duration: Duration, now: Instant) {
    let permit = breaker.try_acquire(now).unwrap();
    breaker.record(permit, Outcome { failed, duration }, now);
}

fn count_based(size: u32, minimum: u32) -> BreakerConfig {
    BreakerConfig {
        window: Window::Calls(size),
        minimum_calls: minimum,
        open_for: ms(1000),
        half_open_calls: 2,
        ..BreakerConfig::default()
    }
}

#[test]
fn opens_at_the_failure_rate_once_the_window_has_enough_calls() {
    let t0 = Instant::now();
    let breaker = Breaker::new_at(count_based(10, 4), t0);
    call(&breaker, true, ms(1), t0);
    call(&breaker, true, ms(1), t0);
    call(&breaker, true, ms(1), t0);
    assert_eq!(breaker.state(t0), State::Closed, "3 calls < minimum_calls");
    call(&breaker, false, ms(1), t0);
    // 3 of 4 failed: 75 % ≥ 50 %.
    assert_eq!(breaker.state(t0), State::Open);
    let rejected = breaker.try_acquire(t0 + ms(400)).unwrap_err();
    assert_eq!(rejected.retry_after, ms(600));
    assert_eq!(breaker.figures(t0).opened, 1);
}

#[test]
fn slow_calls_open_it_too() {
    let t0 = Instant::now();
    let config = BreakerConfig {
        slow_call_threshold: ms(100),
        slow_call_rate_threshold: 0.5,
        ..count_based(4, 4)
    };
    let breaker = Breaker::new_at(config, t0);
    for duration in [150, 150, 10, 10] {
        call(&breaker, false, ms(duration), t0);
    }
    assert_eq!(breaker.state(t0), State::Open);
}

#[test]
fn half_open_admits_its_probes_only_and_closes_when_they_succeed() {
    let t0 = Instant::now();
    let breaker = Breaker::new_at(count_based(4, 2), t0);
    call(&breaker, true, ms(1), t0);
    call(&breaker, true, ms(1), t0);
    assert_eq!(breaker.state(t0), State::Open);
    let t1 = t0 + ms(1000);
    assert_eq!(breaker.state(t1), State::HalfOpen);
    let first = breaker.try_acquire(t1).unwrap();
    let second = breaker.try_acquire(t1).unwrap();
    assert_eq!(breaker.try_acquire(t1).unwrap_err().state, State::HalfOpen);
    breaker.record(
        first,
        Outcome {
            failed: false,
            duration: ms(1),
        },
        t1,
    );
    assert_eq!(breaker.state(t1), State::HalfOpen, "one probe still out");
    breaker.record(
        second,
        Outcome {
            failed: false,
            duration: ms(1),
        },
        t1,
    );
    assert_eq!(breaker.state(t1), State::Closed);
    assert_eq!(breaker.figures(t1).calls, 0, "the window starts empty");
    let states: Vec<State> = breaker.transitions().iter().map(|t| t.to).collect();
    assert_eq!(states, [State::Open, State::HalfOpen, State::Closed]);
}

#[test]
fn a_failed_probe_round_reopens_for_longer() {
    let t0 = Instant::now();
    let config = BreakerConfig {
        open_for_multiplier: 2.0,
        max_open_for: Some(ms(3000)),
        ..count_based(4, 2)
    };
    let breaker = Breaker::new_at(config, t0);
    call(&breaker, true, ms(1), t0);
    call(&breaker, true, ms(1), t0);
    let mut now = t0;
    for expected in [2000, 3000, 3000] {
        now += breaker.try_acquire(now).unwrap_err().retry_after;
        call(&breaker, true, ms(1), now);
        call(&breaker, false, ms(1), now);
        // 1 of 2 probes failed: 50 % ≥ 50 %: open again, for longer, capped.
        assert_eq!(
            breaker.try_acquire(now).unwrap_err().retry_after,
            ms(expected)
        );
    }
}

#[test]
fn consecutive_failures_open_it_whatever_the_rate() {
    let t0 = Instant::now();
    let config = BreakerConfig {
        consecutive_failures: Some(3),
        minimum_calls: 100,
        ..count_based(100, 100)
    };
    let breaker = Breaker::new_at(config, t0);
    for _ in 0..5 {
        call(&breaker, false, ms(1), t0);
    }
    call(&breaker, true, ms(1), t0);
    call(&breaker, true, ms(1), t0);
    call(&breaker, false, ms(1), t0);
    call(&breaker, true, ms(1), t0);
    call(&breaker, true, ms(1), t0);
    assert_eq!(breaker.state(t0), State::Closed);
    call(&breaker, true, ms(1), t0);
    assert_eq!(breaker.state(t0), State::Open);
}

#[test]
fn a_time_window_forgets_calls_older_than_its_seconds() {
    let t0 = Instant::now();
    let config = BreakerConfig {
        window: Window::Time(2),
        minimum_calls: 3,
        ..BreakerConfig::default()
    };
    let breaker = Breaker::new_at(config, t0);
    call(&breaker, true, ms(1), t0);
    call(&breaker, true, ms(1), t0 + ms(500));
    // Two seconds later both have rolled out: three new successes and one failure stay closed.
    let t2 = t0 + ms(2000);
    assert_eq!(breaker.figures(t2).calls, 0);
    for _ in 0..3 {
        call(&breaker, false, ms(1), t2);
    }
    call(&breaker, true, ms(1), t2);
    assert_eq!(breaker.state(t2), State::Closed);
}

#[test]
fn operators_force_open_disable_and_reset() {
    let t0 = Instant::now();
    let breaker = Breaker::new_at(count_based(4, 2), t0);
    breaker.force_open(t0);
    assert_eq!(
        breaker.try_acquire(t0).unwrap_err().state,
        State::ForcedOpen
    );
    breaker.disable(t0);
    for _ in 0..10 {
        call(&breaker, true, ms(1), t0);
    }
    assert_eq!(
        breaker.state(t0),
        State::Disabled,
        "nothing is judged while disabled"
    );
    breaker.reset(t0);
    assert_eq!(breaker.state(t0), State::Closed);
    assert_eq!(breaker.figures(t0).calls, 0);
}

#[test]
fn a_cancelled_probe_frees_its_slot() {
    let t0 = Instant::now();
    let breaker = Breaker::new_at(count_based(4, 2), t0);
    call(&breaker, true, ms(1), t0);
    call(&breaker, true, ms(1), t0);
    let t1 = t0 + ms(1000);
    let a = breaker.try_acquire(t1).unwrap();
    let _b = breaker.try_acquire(t1).unwrap();
    assert!(breaker.try_acquire(t1).is_err());
    breaker.cancel(a);
    assert!(breaker.try_acquire(t1).is_ok());
}

/// The reference: the same rules written the plain way, keeping every call of the window.
#[derive(Debug)]
struct Model {
    config: BreakerConfig,
    epoch: Instant,
    state: State,
    /// Calls judged since the window was last cleared: (second, failed, slow).
    history: Vec<(u64, bool, bool)>,
    in_a_row: u32,
    open_until: Instant,
    reopenings: i32,
    round: u64,
    probes_out: u32,
    probes: Vec<(bool, bool)>,
}

impl Model {
    fn new(config: BreakerConfig, epoch: Instant) -> Self {
        Self {
            config,
            epoch,
            state: State::Closed,
            history: Vec::new(),
            in_a_row: 0,
            open_until: epoch,
            reopenings: 0,
            round: 0,
            probes_out: 0,
            probes: Vec::new(),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.duration_since(self.epoch).as_secs()
    }

    fn window(&self, now: Instant) -> Vec<(bool, bool)> {
        let calls: Vec<(bool, bool)> = match self.config.window {
            Window::Calls(n) => {
                let skip = self.history.len().saturating_sub(n as usize);
                self.history[skip..].iter().map(|c| (c.1, c.2)).collect()
            }
            Window::Time(s) => {
                let now_second = self.second(now);
                self.history
                    .iter()
                    .filter(|c| c.0 + u64::from(s) > now_second)
                    .map(|c| (c.1, c.2))
                    .collect()
            }
        };
        calls
    }

    fn tick(&mut self, now: Instant) {
        if self.state == State::Open && now >= self.open_until {
            self.state = State::HalfOpen;
            self.round += 1;
            self.probes_out = 0;
            self.probes.clear();
        }
    }

    fn open(&mut self, now: Instant, again: bool) {
        self.reopenings = if again { self.reopenings + 1 } else { 0 };
        let mut open_for = self
            .config
            .open_for
            .mul_f64(self.config.open_for_multiplier.powi(self.reopenings));
        if let Some(max) = self.config.max_open_for {
            open_for = open_for.min(max);
        }
        self.open_until = now + open_for;
        self.in_a_row = 0;
        self.state = State::Open;
    }

    /// Some(round of the probe, if a probe) when admitted.
    fn acquire(&mut self, now: Instant) -> Option<Option<u64>> {
        self.tick(now);
        match self.state {
            State::Closed | State::Disabled => Some(None),
            State::HalfOpen if self.probes_out < self.config.half_open_calls => {
                self.probes_out += 1;
                Some(Some(self.round))
            }
            _ => None,
        }
    }

    fn record(&mut self, probe: Option<u64>, failed: bool, duration: Duration, now: Instant) {
        let slow = duration > self.config.slow_call_threshold;
        if self.state == State::HalfOpen && probe == Some(self.round) {
            self.probes.push((failed, slow));
            if self.probes.len() as u32 >= self.config.half_open_calls {
                let n = self.probes.len() as f64;
                let failures = self.probes.iter().filter(|p| p.0).count() as f64;
                let slows = self.probes.iter().filter(|p| p.1).count() as f64;
                if failures / n >= self.config.failure_rate_threshold
                    || slows / n >= self.config.slow_call_rate_threshold
                {
                    self.open(now, true);
                } else {
                    self.state = State::Closed;
                    self.history.clear();
                    self.in_a_row = 0;
                    self.reopenings = 0;
                }
            }
        } else if self.state == State::Closed && probe.is_none() {
            let second = self.second(now);
            self.history.push((second, failed, slow));
            self.in_a_row = if failed { self.in_a_row + 1 } else { 0 };
            if self
                .config
                .consecutive_failures
                .is_some_and(|n| self.in_a_row >= n)
            {
                self.open(now, false);
                return;
            }
            let window = self.window(now);
            let n = window.len() as f64;
            let failures = window.iter().filter(|c| c.0).count() as f64;
            let slows = window.iter().filter(|c| c.1).count() as f64;
            if window.len() as u32 >= self.config.minimum_calls
                && (failures / n >= self.config.failure_rate_threshold
                    || slows / n >= self.config.slow_call_rate_threshold)
            {
                self.open(now, false);
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    /// Record the outstanding permit at this position (modulo), failed?, duration in ms.
    Record(usize, bool, u64),
    /// Time passes, in ms.
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        4 => (any::<usize>(), any::<bool>(), 0u64..300).prop_map(|(i, f, d)| Op::Record(i, f, d)),
        2 => (0u64..1500).prop_map(Op::Advance),
    ]
}

fn config() -> impl Strategy<Value = BreakerConfig> {
    (
        prop_oneof![
            (1u32..8).prop_map(Window::Calls),
            (1u32..4).prop_map(Window::Time)
        ],
        1u32..6,
        prop_oneof![Just(0.25), Just(0.5), Just(1.0)],
        prop_oneof![Just(0.5), Just(1.0)],
        1u32..4,
        prop_oneof![Just(None), (1u32..4).prop_map(Some)],
        prop_oneof![Just(1.0), Just(2.0)],
    )
        .prop_map(
            |(
                window,
                minimum_calls,
                failure_rate_threshold,
                slow_call_rate_threshold,
                half_open_calls,
                consecutive_failures,
                open_for_multiplier,
            )| {
                BreakerConfig {
                    window,
                    minimum_calls,
                    failure_rate_threshold,
                    slow_call_threshold: ms(200),
                    slow_call_rate_threshold,
                    open_for: ms(1000),
                    open_for_multiplier,
                    max_open_for: Some(ms(3000)),
                    half_open_calls,
                    consecutive_failures,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn the_breaker_agrees_with_the_reference_model(
        config in config(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let t0 = Instant::now();
        let breaker = Breaker::new_at(config.clone(), t0);
        let mut model = Model::new(config, t0);
        let mut now = t0;
        // Outstanding permits, with the model's view of each.
        let mut outstanding: Vec<(Permit, Option<u64>)> = Vec::new();
        for op in ops {
            match op {
                Op::Acquire => {
                    let real = breaker.try_acquire(now);
                    let expected = model.acquire(now);
                    prop_assert_eq!(real.is_ok(), expected.is_some(), "acquire at {:?}", now - t0);
                    if let (Ok(permit), Some(probe)) = (real, expected) {
                        outstanding.push((permit, probe));
                    }
                }
                Op::Record(index, failed, duration) => {
                    if outstanding.is_empty() {
                        continue;
                    }
                    let (permit, probe) = outstanding.remove(index % outstanding.len());
                    breaker.record(permit, Outcome { failed, duration: ms(duration) }, now);
                    model.record(probe, failed, ms(duration), now);
                }
                Op::Advance(step) => now += ms(step),
            }
            model.tick(now);
            prop_assert_eq!(breaker.state(now), model.state);
            if model.state == State::Closed {
                let figures = breaker.figures(now);
                let window = model.window(now);
                prop_assert_eq!(figures.calls as usize, window.len());
                prop_assert_eq!(figures.failures as usize, window.iter().filter(|c| c.0).count());
            }
        }
    }
}
