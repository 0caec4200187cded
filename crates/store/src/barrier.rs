//! "Seen by every instance" for messages sent over pub/sub.
//!
//! Redis delivers a published message to each subscriber's socket, but an instance applies it
//! only when its listener task reads it: a request reaching another instance right after a
//! logout returned could still find the revoked session in that instance's in-process cache.
//! A barrier closes that gap. After publishing a change, the publisher publishes a barrier on
//! the same channel, naming a counter key; Redis answers with the number of subscribers it was
//! delivered to. Each subscriber (the cache's `subscribe`) applies its messages in order,
//! so when it reaches the barrier it has applied the change, and it increments the counter.
//! The publisher returns once the counter reaches the number of receivers, or gives up at its
//! deadline (an instance that is stuck, or of an older version that does not acknowledge) and
//! says so: the change itself is already stored, and only its propagation was slow.
//!
//! The publisher polls the counter (every 250 µs at first, backing off to 5 ms) rather than
//! blocking on a list: a blocking command would stall every other call pipelined on the shared
//! multiplexed connection, and barriers follow rare operations (logouts, role changes, purges).

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio::time::Instant;

use crate::{within, StoreError};

/// How a barrier message starts; the rest is the counter's key. The control character keeps
/// it apart from every payload sekisho publishes.
pub(crate) const MARKER: &str = "\u{1}barrier ";

/// How long a barrier's counter outlives it.
const COUNTER_TTL_MS: u64 = 60_000;

/// Why a barrier did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BarrierError {
    /// Redis failed or did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Some subscribers had not acknowledged by the deadline.
    #[error("{acknowledged} of {receivers} instances acknowledged within {waited:?}")]
    Incomplete {
        /// Subscribers the barrier reached.
        receivers: i64,
        /// Those that acknowledged.
        acknowledged: i64,
        /// How long the publisher waited.
        waited: Duration,
    },
}

/// Publishes a barrier on `channel` and waits, at most `timeout`, until every subscriber it
/// reached has applied what was published on `channel` before it. Returns the number of
/// subscribers that acknowledged.
pub async fn barrier(
    conn: &ConnectionManager,
    channel: &str,
    timeout: Duration,
) -> Result<i64, BarrierError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let key = format!("{channel}:barrier:{:016x}", fastrand::u64(..));
    let mut conn = conn.clone();
    let receivers: i64 = within(timeout, conn.publish(channel, format!("{MARKER}{key}"))).await?;
    let mut pause = Duration::from_micros(250);
    let mut acknowledged = 0;
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let read: Result<Option<i64>, StoreError> =
            within(left.max(Duration::from_millis(1)), conn.get(&key)).await;
        acknowledged = match read {
            Ok(count) => count.unwrap_or(0),
            // A read cut short by the deadline itself: the barrier is incomplete, not broken.
            Err(StoreError::Timeout(_)) if Instant::now() >= deadline => {
                break Err(BarrierError::Incomplete {
                    receivers,
                    acknowledged,
                    waited: started.elapsed(),
                });
            }
            Err(error) => break Err(error.into()),
        };
        if acknowledged >= receivers {
            break Ok(acknowledged);
        }
        if Instant::now() + pause > deadline {
            break Err(BarrierError::Incomplete {
                receivers,
                acknowledged,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(5));
    };
    if receivers > 0 {
        let _: Result<i64, _> = within(timeout, conn.del(&key)).await;
    }
    result
}

/// The counter key of a barrier message, if `message` is one.
pub(crate) fn counter_of(message: &str) -> Option<&str> {
    message.strip_prefix(MARKER)
}

/// Acknowledges a barrier: the subscriber has applied everything before it.
pub(crate) async fn acknowledge(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Result<(), StoreError> {
    let mut pipe = redis::pipe();
    pipe.cmd("INCR")
        .arg(key)
        .ignore()
        .cmd("PEXPIRE")
        .arg(key)
        .arg(COUNTER_TTL_MS)
        .ignore();
    within(crate::DEFAULT_CONNECT_TIMEOUT, pipe.query_async::<()>(conn)).await
}

/// [`barrier`], logging instead of failing: for callers whose change is already stored, for
/// whom a slow propagation is worth a warning but not an error.
pub async fn settle(conn: &ConnectionManager, channel: &str, timeout: Duration) {
    if let Err(error) = barrier(conn, channel, timeout).await {
        tracing::warn!(%error, channel, "a change may reach some instances late");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use futures_util::StreamExt;

    use super::*;

    fn url() -> String {
        std::env::var("SEKISHO_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    #[tokio::test]
    async fn a_listener_that_never_acknowledges_makes_the_barrier_give_up_at_its_deadline() {
        let conn = crate::connect(&url())
            .await
            .expect("redis (scripts/test starts it)");
        let channel = format!("sekisho:test:barrier:{:016x}", fastrand::u64(..));
        // A bare subscriber (an older instance): it receives, but never acknowledges.
        let client = redis::Client::open(url()).expect("url");
        let mut old = client.get_async_pubsub().await.expect("pubsub");
        old.subscribe(&channel).await.expect("subscribe");
        let received = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&received);
        tokio::spawn(async move {
            let mut messages = old.on_message();
            while messages.next().await.is_some() {
                seen.store(true, Ordering::SeqCst);
            }
        });
        let error = barrier(&conn, &channel, Duration::from_millis(100))
            .await
            .expect_err("nobody acknowledges");
        match error {
            BarrierError::Incomplete {
                receivers,
                acknowledged,
                ..
            } => assert_eq!((receivers, acknowledged), (1, 0)),
            other => panic!("{other}"),
        }
        // Nobody listening: nothing to wait for.
        let lonely = format!("{channel}:nobody");
        assert_eq!(
            barrier(&conn, &lonely, Duration::from_millis(100))
                .await
                .expect("no receivers"),
            0
        );
    }
}
