//! Why a valid config could not be put in force. This module imports nothing of the gateway.

/// Why a config could not be put in force (the config itself was valid): an unreadable
/// certificate, a target address that is not an authority.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);
