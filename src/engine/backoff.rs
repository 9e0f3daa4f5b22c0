//! Retrying transient failures with capped exponential backoff.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::control::ControlError;
use crate::migration::MigrationError;

/// How often and how patiently a transient failure is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all (the first try included) before the migration fails.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// An error that says whether retrying may cure it.
pub trait Retryable: std::fmt::Display {
    /// True for connection losses, serialization failures, servers restarting.
    fn is_transient(&self) -> bool;
}

impl Retryable for MigrationError {
    fn is_transient(&self) -> bool {
        MigrationError::is_transient(self)
    }
}

impl Retryable for ControlError {
    fn is_transient(&self) -> bool {
        ControlError::is_transient(self)
    }
}

/// Runs `op` until it succeeds, fails persistently, runs out of attempts, or `stop` fires during a wait (then the
/// last error is returned). `on_retry` hears about each retry before its wait.
pub async fn with_retries<T, E, F, Fut>(
    policy: &RetryPolicy,
    stop: &CancellationToken,
    mut on_retry: impl FnMut(u32, &E, Duration),
    mut op: F,
) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(err) if err.is_transient() && attempt < policy.max_attempts => {
                let wait = policy.backoff(attempt);
                on_retry(attempt, &err, wait);
                tokio::select! {
                    _ = stop.cancelled() => return Err(err),
                    _ = tokio::time::sleep(wait) => {}
                }
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(1), Duration::from_millis(500));
        assert_eq!(policy.backoff(2), Duration::from_secs(1));
        assert_eq!(policy.backoff(20), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let result = with_retries(
            &RetryPolicy::default(),
            &CancellationToken::new(),
            |_, _, _| {},
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(MigrationError::Transient("connection reset".into())),
                    _ => Ok(7),
                }
            },
        )
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn persistent_errors_and_exhausted_attempts_are_returned() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retries(
            &policy,
            &CancellationToken::new(),
            |_, _, _| {},
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(MigrationError::Transient("down".into()))
            },
        )
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let result: Result<(), _> = with_retries(
            &policy,
            &CancellationToken::new(),
            |_, _, _| {},
            || async { Err(MigrationError::Invalid("no such column".into())) },
        )
        .await;
        assert!(matches!(result, Err(MigrationError::Invalid(_))));
    }
}
