//! sekisho-load: the tools that put sekisho under pressure.
//!
//! What it is for: the chaos upstream ([`ChaosServer`]) that demos and tests put behind the
//! gateway, the demo's services ([`ServiceServer`]) and its alert receiver ([`AlertInbox`]),
//! and the load generator of `sekisho load` ([`Generator`] for a plan of requests,
//! [`scenario::run`] for the built-in scenarios, [`Report`] for what a run found and whether it
//! passed).
//!
//! What it refuses to do: reach beyond the addresses it is given, speak TLS, proxy anywhere, or
//! buffer a whole body (echoes stream, `/bytes/N` is generated chunk by chunk; the generator
//! reads answers frame by frame and keeps only an error's small body); its misbehaviour is only
//! what it was told (and can be changed at run time), and its own shutdown never takes more than
//! 5 s, hung requests included. The generator never holds more than its bound of requests in
//! flight, nor waits longer than its timeout for one.

mod alert_inbox;
mod chaos;
mod generator;
mod report;
pub mod scenario;
mod serve;
mod services;

use std::path::PathBuf;

pub use alert_inbox::AlertInbox;
pub use chaos::{ChaosHandle, ChaosOptions, ChaosServer, ChaosState};
pub use generator::{
    parse_url, Dispatch, Endpoint, Generator, HttpVersion, LoadPlan, MarkHandle, Model, Progress,
    RunOutput,
};
pub use report::{
    AuthFigures, Check, Criteria, EndpointReport, GatewayFigures, Latency, Marker, Point, Report,
};
pub use services::{Service, ServiceServer, NOTIFICATIONS_PER_MINUTE};

/// What can go wrong before or around a run (a run itself records failures, it does not fail).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The target or another URL cannot be used.
    #[error("bad URL `{url}`: {why}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why not.
        why: String,
    },
    /// A number of the plan is out of range.
    #[error("{0}")]
    BadPlan(String),
    /// The gateway's metrics could not be read before the run.
    #[error("cannot read the gateway's metrics at {url}: {why}")]
    Metrics {
        /// The metrics URL.
        url: String,
        /// Why not.
        why: String,
    },
    /// The chaos upstream could not be driven.
    #[error("cannot drive the chaos upstream at {url}: {why}")]
    Chaos {
        /// Its `/_chaos` URL.
        url: String,
        /// Why not.
        why: String,
    },
    /// A report file could not be written.
    #[error("cannot write {path}: {error}")]
    Report {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}
