//! Locks that survive a panic elsewhere.
//!
//! Every mutex in the gateway guards state that stays consistent between statements (a map, an
//! `Option`), so a thread that panicked while holding one leaves nothing half-done: the next
//! holder takes the data as it is instead of turning one panic into a panic on every request.
//! This module imports nothing of the gateway.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering the data if a previous holder panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
