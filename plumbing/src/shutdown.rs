//! Shutdown plumbing: a shutdown future becomes a `CancellationToken` that every task clones, and
//! drains are bounded by a grace period (STYLE.md §5).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A token cancelled when `shutdown` completes (or when the token is cancelled directly).
pub fn token_from(shutdown: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => child.cancel(),
            _ = child.cancelled() => {}
        }
    });
    token
}

/// Closes `tracker` and waits for its tasks, at most `grace`. Returns false if the grace expired.
pub async fn drain(tracker: &TaskTracker, grace: Duration, component: &str) -> bool {
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(component, grace_ms = grace.as_millis() as u64, "drain did not finish within the grace period");
        return false;
    }
    true
}
