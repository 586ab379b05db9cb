//! Exponential backoff for connecting to a dependency that may not be up
//! yet, or has just gone away.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// Doubling delays with jitter (`backon`): each delay is the doubled one
/// plus a random part of up to as much again, so a hundred processes that
/// lost a dependency together do not all knock again in the same instant.
pub struct Backoff {
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        let delays = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(max)
            .with_jitter()
            .without_max_times()
            .build();
        Backoff { delays, max }
    }

    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// Tries `attempt` until it succeeds or `shutdown` fires (then `None`),
/// logging each failure with the dependency's name.
pub async fn until_ok<T, E, F, Fut>(what: &str, shutdown: &CancellationToken, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut backoff = Backoff::default();
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return None,
            outcome = attempt() => outcome,
        };
        match outcome {
            Ok(value) => return Some(value),
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(dependency = what, error = %error, retry_in_ms = delay.as_millis() as u64, "not reachable yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling_with_jitter_on_top() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        for (delay, base) in delays.iter().zip([100, 200, 350, 350, 350]) {
            assert!((base..2 * base).contains(delay), "{delays:?}");
        }
    }

    #[test]
    fn processes_that_fail_together_spread_their_retries() {
        let firsts: std::collections::HashSet<u128> =
            (0..20).map(|_| Backoff::default().next_delay().as_millis()).collect();
        assert!(firsts.len() > 5, "20 backoffs gave only {firsts:?}");
    }
}
