//! Which worker's event loop runs the current thread (`server.worker_model = "per_worker"`).
//!
//! Each worker thread runs a current-thread runtime of its own, and a task spawned on it never
//! leaves it: what a worker keeps for itself — its idle upstream connections (`pool`), its
//! scheduling-delay probe (`lag`) — is found by this index, read from a thread-local. The main
//! runtime is worker 0, and so is every thread that is not a worker's (a shared runtime's,
//! a blocking pool's). This module imports nothing of the gateway.

use std::cell::Cell;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker whose event loop runs this thread (0 when none does).
pub(crate) fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Marks this thread as worker `index`'s, for as long as it lives.
pub(crate) fn enter(index: usize) {
    INDEX.with(|cell| cell.set(index));
}

/// The entry of `items` kept for the current worker (the first when there are fewer entries
/// than workers).
pub(crate) fn own<T>(items: &[T]) -> &T {
    let index = index();
    items.get(index).unwrap_or(&items[0])
}
