//! The cascade: one upstream behind the gateway slows from 100 ms to 5 s mid-run.

use std::future::Future;

use serde::Serialize;

use super::ScenarioOptions;
use crate::report::Report;
use crate::LoadError;

/// What the cascade scenario found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CascadeFindings {}

impl CascadeFindings {
    pub(crate) fn summary(&self) -> String {
        String::new()
    }
}

/// One phase's figures for one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseFigures {}

pub(super) async fn run(
    options: &ScenarioOptions,
    _stop: impl Future<Output = ()>,
) -> Result<Report, LoadError> {
    Err(LoadError::NotYet(options.scenario.name()))
}
