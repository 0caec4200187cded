//! What the monitor crate's test files share.

use std::future::Future;
use std::time::Duration;

/// Polls `check` every 20 ms until it holds, for at most `within` (rows of a database: no event
/// to await).
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
