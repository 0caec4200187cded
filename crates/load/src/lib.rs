//! sekisho-load: the tools that put sekisho under pressure.
//!
//! What it is for: the chaos upstream ([`ChaosServer`]) that demos and tests put behind the
//! gateway, and (with a later issue) the scenario load generator.
//!
//! What it refuses to do: reach beyond the addresses it is given, speak TLS, proxy anywhere, or
//! buffer a whole body (echoes stream, `/bytes/N` is generated chunk by chunk); its misbehaviour
//! is only what it was told (and can be changed at run time), and its own shutdown never takes
//! more than 5 s, hung requests included.

mod chaos;

pub use chaos::{ChaosHandle, ChaosOptions, ChaosServer, ChaosState};
