//! Alert state across restarts: what a previous run knew, read back from the database when the
//! gateway starts, so that a restart neither announces a firing alert again nor forgets the
//! `resolved` of one that cleared while the gateway was down.
//!
//! Two tables hold it: `alert_history`'s open episodes (the alerts firing when the gateway
//! stopped: labels, annotations, severity, since when, acknowledged) and `alert_notified`
//! (migration 4: which receiver believes which alert firing, and at which severity). The
//! monitor's cycle says what each notification told ([`Told`], [`crate::Monitor::take_told`]);
//! the binary writes it once the notification's rows are in the outbox — never before, so a
//! kill in between costs at most a repeated notification, never a lost one.
//!
//! On start, [`crate::History::restorable`] gives each alert to put back ([`RestoredAlert`]):
//! every open episode, with the receivers told; and every alert some receiver still believes
//! firing whose episode has closed (it cleared, and the gateway stopped before the `resolved`
//! was written), as resolved. [`crate::Monitor::restore`] hands them to the alert manager and
//! the rules' evaluator: a condition still true goes on quietly (no second `firing`), one that
//! is no longer true resolves at the first evaluation, and a `resolved` goes only to the
//! receivers that were told `firing`.

use crate::manager::Severity;

/// What a notification told a receiver about one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Told {
    /// That it fires, at this severity.
    Firing {
        /// The alert's fingerprint.
        fingerprint: String,
        /// The receiver.
        receiver: String,
        /// Its severity then.
        severity: Severity,
    },
    /// That it resolved: the receiver believes nothing of it any more.
    Resolved {
        /// The alert's fingerprint.
        fingerprint: String,
        /// The receiver.
        receiver: String,
    },
}

/// An alert a previous run knew, to be put back (the alert manager's type: it takes them).
pub use crate::manager::RestoredAlert;
