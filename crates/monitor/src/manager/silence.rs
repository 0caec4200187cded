//! Silences: label matchers and an end.

use std::time::Instant;

use super::Labels;

/// One label matcher of a silence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// The label has this value.
    Equal(String, String),
    /// The label is absent or has another value.
    NotEqual(String, String),
}

impl Matcher {
    pub(super) fn matches(&self, labels: &Labels) -> bool {
        match self {
            Self::Equal(name, value) => labels.get(name) == Some(value),
            Self::NotEqual(name, value) => labels.get(name) != Some(value),
        }
    }
}

/// A silence: alerts matching every matcher are muted until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silence {
    /// What it matches (all of them).
    pub matchers: Vec<Matcher>,
    /// When it ends.
    pub until: Instant,
    /// Why, and who.
    pub comment: String,
}
