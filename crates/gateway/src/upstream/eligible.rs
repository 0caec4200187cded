//! Which targets may take a request: a [`Snapshot`] rebuilt only when something it depends on
//! changed, and the balancer's view of it during one pick ([`Candidates`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sekisho_config::{Balance, PanicMode};
use sekisho_policy::balance::{TargetLoad, TargetSet};
use tokio::time::Instant;

use super::{NoTarget, UpstreamGroup};
use crate::clock::Millis;

/// Which targets may take a request now; rebuilt when anything it depends on changes.
#[derive(Debug)]
pub(super) struct Snapshot {
    /// `UpstreamState::changes` when it was built.
    changes: u64,
    /// Rebuild at this time (an ejection or a slow start ends); `u64::MAX`: no deadline.
    valid_until: Millis,
    eligible: Vec<usize>,
    pub(super) mask: Vec<bool>,
    /// Any eligible target is in slow start.
    ramping: bool,
    /// Largest configured (scaled) weight among the eligible: a bound of their effective ones.
    max_weight: u32,
    /// Distinct per snapshot of this group (never 0): the balancer may cache per id.
    id: u64,
    /// Nothing was usable and `panic = "spread"` let every target in.
    pub(super) panicking: bool,
}

/// Scale of effective weights, so that slow start can give a fraction of a weight of 1.
const WEIGHT_SCALE: u32 = 100;
/// A target in slow start gets at least this share of its weight.
const SLOW_START_FLOOR: f64 = 0.1;

impl Snapshot {
    /// A snapshot that no pick will use: the first one is built at once.
    pub(super) fn unbuilt() -> Self {
        Self {
            changes: u64::MAX,
            valid_until: 0,
            eligible: Vec::new(),
            mask: Vec::new(),
            ramping: false,
            max_weight: 1,
            id: 1,
            panicking: false,
        }
    }
}

impl UpstreamGroup {
    /// The target for a request with `key` (hashed) at `now`, leaving out `excluded` targets
    /// (those a retry already tried).
    pub(crate) fn pick(
        &self,
        key: Option<u64>,
        now: Instant,
        excluded: &[usize],
    ) -> Result<usize, NoTarget> {
        let millis = self.clock.millis(now);
        let snapshot = self.current_snapshot(millis);
        let std_now = now.into_std();
        let picked = if excluded.is_empty() {
            let pool = Candidates {
                group: self,
                eligible: &snapshot.eligible,
                mask: &snapshot.mask,
                ramping: snapshot.ramping,
                max_weight: snapshot.max_weight,
                id: snapshot.id,
                now: millis,
            };
            let mut picked = self.balancer.pick(&pool, key, std_now);
            // Round robin ignores weights: a target in slow start is skipped in proportion to
            // how far it still has to ramp.
            if snapshot.ramping && self.balance == Balance::RoundRobin {
                if let Some(target) = picked {
                    let share = pool.ramp_share(target);
                    if share < 1.0 && fastrand::f64() >= share {
                        picked = self.balancer.pick(&pool, key, std_now).or(picked);
                    }
                }
            }
            picked
        } else {
            // A retry after failed connects: eligibility again, without the failed targets, so
            // that losing primaries can bring the backups in for this very request.
            let (eligible, _) = self.eligible_set(millis, excluded);
            let mask = mask_of(self.targets.len(), &eligible);
            let pool = Candidates {
                group: self,
                eligible: &eligible,
                mask: &mask,
                ramping: snapshot.ramping,
                max_weight: snapshot.max_weight,
                id: 0,
                now: millis,
            };
            self.balancer.pick(&pool, key, std_now)
        };
        let target = picked.ok_or(NoTarget)?;
        if let Some(chosen) = self.targets.get(target) {
            chosen.state.picks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(target)
    }

    /// Whether no target is usable and `panic = "spread"` is spreading over all of them.
    pub(crate) fn is_panicking(&self) -> bool {
        self.current_snapshot(self.clock.millis(Instant::now()))
            .panicking
    }

    pub(super) fn current_snapshot(&self, now: Millis) -> arc_swap::Guard<Arc<Snapshot>> {
        let snapshot = self.snapshot.load();
        let changes = self.state.changes.load(Ordering::Acquire);
        if snapshot.changes == changes && now < snapshot.valid_until {
            return snapshot;
        }
        drop(snapshot);
        self.rebuild(now);
        self.snapshot.load()
    }

    /// Recomputes which targets are eligible. One thread at a time; others use the snapshot in
    /// force meanwhile.
    pub(super) fn rebuild(&self, now: Millis) {
        let Ok(_rebuilding) = self.rebuilding.try_lock() else {
            return;
        };
        // Read the counter first: a change after this point makes the next pick rebuild again.
        let changes = self.state.changes.load(Ordering::Acquire);
        let mut valid_until = u64::MAX;
        for target in &self.targets {
            let until = target.state.ejected_until.load(Ordering::Relaxed);
            if until != 0 && until <= now {
                // The ejection ran out: back in service, ramping up.
                if target.state.end_ejection(until, until) {
                    tracing::info!(upstream = %self.name, target = %target.address, "ejection ended; target back in service");
                }
            } else if until > now {
                valid_until = valid_until.min(until);
            }
        }
        let (eligible, panicking) = self.eligible_set(now, &[]);
        let mask = mask_of(self.targets.len(), &eligible);
        let mut ramping = false;
        if !self.slow_start.is_zero() {
            let ramp = self.slow_start.as_millis() as u64;
            for &i in &eligible {
                let returned = self.targets[i].state.returned_at.load(Ordering::Relaxed);
                if returned != 0 && now < returned + ramp {
                    ramping = true;
                    valid_until = valid_until.min(returned + ramp);
                }
            }
        }
        let max_weight = eligible
            .iter()
            .map(|&i| self.targets[i].weight.saturating_mul(WEIGHT_SCALE))
            .max()
            .unwrap_or(1);
        self.snapshot.store(Arc::new(Snapshot {
            changes,
            valid_until,
            eligible,
            mask,
            ramping,
            max_weight,
            id: self.snapshots.fetch_add(1, Ordering::Relaxed) + 2,
            panicking,
        }));
    }

    /// Which targets may be picked at `now`, with `excluded` ones (whose connect just failed)
    /// counted as unusable: the usable primaries, plus the usable backups when too few
    /// primaries are usable; every target in `panic = "spread"` when nothing is usable.
    fn eligible_set(&self, now: Millis, excluded: &[usize]) -> (Vec<usize>, bool) {
        let usable = |i: usize| {
            let state = &self.targets[i].state;
            state.is_healthy() && !state.is_ejected(now) && !excluded.contains(&i)
        };
        let primaries = self.targets.iter().filter(|t| !t.backup).count();
        let mut eligible: Vec<usize> = (0..self.targets.len())
            .filter(|&i| !self.targets[i].backup && usable(i))
            .collect();
        let share = if primaries == 0 {
            0.0
        } else {
            eligible.len() as f64 / primaries as f64
        };
        if share < self.failover_threshold || eligible.is_empty() {
            eligible
                .extend((0..self.targets.len()).filter(|&i| self.targets[i].backup && usable(i)));
            eligible.sort_unstable();
        }
        if eligible.is_empty() && self.panic == PanicMode::Spread {
            let all: Vec<usize> = (0..self.targets.len())
                .filter(|i| !excluded.contains(i))
                .collect();
            return (all, true);
        }
        (eligible, false)
    }
}

/// `eligible` as one flag per target.
fn mask_of(targets: usize, eligible: &[usize]) -> Vec<bool> {
    let mut mask = vec![false; targets];
    for &target in eligible {
        mask[target] = true;
    }
    mask
}

/// The balancer's view of a group during one pick.
struct Candidates<'a> {
    group: &'a UpstreamGroup,
    eligible: &'a [usize],
    mask: &'a [bool],
    ramping: bool,
    max_weight: u32,
    /// The snapshot's id, or 0 for an ad-hoc set (a retry's).
    id: u64,
    now: Millis,
}

impl Candidates<'_> {
    /// Share of its weight a target has now: 1 unless it is in slow start.
    fn ramp_share(&self, target: usize) -> f64 {
        if !self.ramping {
            return 1.0;
        }
        let Some(t) = self.group.targets.get(target) else {
            return 1.0;
        };
        let returned = t.state.returned_at.load(Ordering::Relaxed);
        if returned == 0 {
            return 1.0;
        }
        let ramp = self.group.slow_start.as_millis() as f64;
        let elapsed = self.now.saturating_sub(returned) as f64;
        (elapsed / ramp).clamp(SLOW_START_FLOOR, 1.0)
    }
}

impl TargetSet for Candidates<'_> {
    fn eligible(&self) -> &[usize] {
        self.eligible
    }

    fn is_eligible(&self, target: usize) -> bool {
        self.mask.get(target).copied().unwrap_or(false)
    }

    fn weight(&self, target: usize) -> u32 {
        let weight = self
            .group
            .targets
            .get(target)
            .map_or(1, |t| t.weight)
            .saturating_mul(WEIGHT_SCALE);
        if !self.ramping {
            return weight;
        }
        ((f64::from(weight) * self.ramp_share(target)).ceil() as u32).max(1)
    }

    fn load(&self, target: usize) -> &TargetLoad {
        &self.group.targets[target].state.load
    }

    fn max_weight(&self) -> u32 {
        self.max_weight
    }

    fn weights_as_configured(&self) -> bool {
        !self.ramping
    }

    fn set_id(&self) -> u64 {
        // While a target ramps its weight changes with every pick: nothing to cache.
        if self.ramping {
            0
        } else {
            self.id
        }
    }
}
