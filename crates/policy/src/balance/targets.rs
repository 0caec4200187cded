//! What a balancer sees of an upstream's targets during one pick: the [`TargetSet`] trait, and
//! [`StaticTargets`], a pool of fixed weights for tests, benches and examples.

use super::{splitmix64, TargetLoad};

/// What a balancer may see of an upstream's targets during one pick.
///
/// Targets are numbered `0..len` in config order, and that numbering is the one the
/// [`Balancer`](super::Balancer) was built with.
pub trait TargetSet {
    /// Indices of the targets that may be picked now, ascending.
    fn eligible(&self) -> &[usize];
    /// Whether `target` may be picked now (agrees with [`TargetSet::eligible`]).
    fn is_eligible(&self, target: usize) -> bool;
    /// Effective weight of `target` now: its configured weight, reduced during slow start.
    /// Never 0 for an eligible target.
    fn weight(&self, target: usize) -> u32;
    /// Live figures of `target`.
    fn load(&self, target: usize) -> &TargetLoad;
    /// Whether every target's effective weight is its configured one now (no slow start): the
    /// weights the [`Balancer`](super::Balancer) was built with, or one common multiple of all of them. Smooth
    /// weighted round robin then follows the period it precomputed from the configured
    /// weights; `false` is always safe.
    fn weights_as_configured(&self) -> bool {
        false
    }
    /// An identifier of what this pool shows: two picks that see the same non-zero id see the
    /// same eligible targets with the same effective weights. Smooth weighted round robin then
    /// keeps the period of that set and follows it instead of scanning. 0 (the default): no
    /// such promise, nothing is cached.
    fn set_id(&self) -> u64 {
        0
    }
    /// The largest effective weight among the eligible targets (a pool that keeps it at hand
    /// should say so; this default scans).
    fn max_weight(&self) -> u32 {
        self.eligible()
            .iter()
            .map(|&t| self.weight(t))
            .max()
            .unwrap_or(1)
    }
}

/// A [`TargetSet`] over fixed weights and every target eligible; for tests, benches and examples.
#[derive(Debug)]
pub struct StaticTargets<'a> {
    // `pub(super)` for the balance tests, which copy a pool.
    pub(super) weights: &'a [u32],
    pub(super) loads: &'a [TargetLoad],
    eligible: Vec<usize>,
    max_weight: u32,
    id: u64,
}

impl<'a> StaticTargets<'a> {
    /// Every target eligible with its weight.
    pub fn new(weights: &'a [u32], loads: &'a [TargetLoad]) -> Self {
        Self {
            weights,
            loads,
            eligible: (0..weights.len()).collect(),
            max_weight: weights.iter().copied().max().unwrap_or(1),
            id: set_id_of(weights, &(0..weights.len()).collect::<Vec<_>>()),
        }
    }

    /// Only `eligible` (ascending indices) may be picked.
    pub fn with_eligible(mut self, eligible: &[usize]) -> Self {
        self.eligible = eligible.to_vec();
        self.max_weight = self
            .eligible
            .iter()
            .map(|&t| self.weight(t))
            .max()
            .unwrap_or(1);
        self.id = set_id_of(self.weights, &self.eligible);
        self
    }
}

impl TargetSet for StaticTargets<'_> {
    fn eligible(&self) -> &[usize] {
        &self.eligible
    }

    fn is_eligible(&self, target: usize) -> bool {
        self.eligible.binary_search(&target).is_ok()
    }

    fn weight(&self, target: usize) -> u32 {
        self.weights.get(target).copied().unwrap_or(1)
    }

    fn load(&self, target: usize) -> &TargetLoad {
        &self.loads[target]
    }

    fn max_weight(&self) -> u32 {
        self.max_weight
    }

    fn weights_as_configured(&self) -> bool {
        true
    }

    fn set_id(&self) -> u64 {
        self.id
    }
}

/// A non-zero fingerprint of fixed weights and an eligible set.
fn set_id_of(weights: &[u32], eligible: &[usize]) -> u64 {
    let mut id = splitmix64(eligible.len() as u64);
    for &target in eligible {
        let weight = weights.get(target).copied().unwrap_or(1);
        id = splitmix64(id ^ ((target as u64) << 32 | u64::from(weight)));
    }
    id.max(1)
}
