//! Waiting out an error that repeats: the receive and accept loops of every server.
//!
//! A loop that `continue`s on an error spins at 100 % CPU when the error persists (`EMFILE` once the
//! file descriptors run out: every `accept` fails at once until one is closed; a UDP socket whose
//! reads keep failing), starving the connections it already serves on the same runtime thread.
//! [`ErrorBackoff`] makes the loop sleep between consecutive errors, 1 ms doubling up to 1 s, and
//! forgets once a call succeeds.

use std::time::Duration;

/// The first wait after an error.
pub const FIRST: Duration = Duration::from_millis(1);
/// The longest wait between two attempts.
pub const MAX: Duration = Duration::from_secs(1);

/// The wait before the next attempt after consecutive errors.
#[derive(Debug)]
pub struct ErrorBackoff {
    next: Duration,
}

impl Default for ErrorBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl ErrorBackoff {
    pub fn new() -> Self {
        Self { next: FIRST }
    }

    /// Sleeps after an error, longer for each consecutive one.
    pub async fn wait(&mut self) {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX);
        tokio::time::sleep(wait).await;
    }

    /// The last attempt succeeded: the next error waits [`FIRST`] again.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_double_up_to_the_cap_and_reset_on_success() {
        let mut backoff = ErrorBackoff::new();
        let mut waited = Vec::new();
        for _ in 0..12 {
            let started = tokio::time::Instant::now();
            backoff.wait().await;
            waited.push(started.elapsed().as_millis());
        }
        assert_eq!(waited, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000]);
        backoff.reset();
        let started = tokio::time::Instant::now();
        backoff.wait().await;
        assert_eq!(started.elapsed(), FIRST);
    }
}
