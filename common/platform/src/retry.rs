//! Exponential backoff for connecting to a dependency that may not be up
//! yet, or has just gone away.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff { next: first, max }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
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
    fn backoff_doubles_up_to_its_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 350, 350]);
    }
}
