//! The alert manager's view of an alert a previous run knew (`restore.rs` reads them back).

use std::collections::BTreeMap;

use super::{Labels, Severity};

/// An alert a previous run knew, to be put back.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredAlert {
    /// Its fingerprint.
    pub fingerprint: String,
    /// Its labels (`alertname`, `target`, the rule's).
    pub labels: Labels,
    /// Its annotations as last seen.
    pub annotations: Labels,
    /// Its latest severity.
    pub severity: Severity,
    /// When it fired (Unix ms).
    pub fired_at: i64,
    /// When it resolved (Unix ms), for one that cleared before its `resolved` was written.
    pub resolved_at: Option<i64>,
    /// Acknowledged.
    pub acked: bool,
    /// The receivers that believe it firing, and at which severity.
    pub told: BTreeMap<String, Severity>,
}
