//! Retrying calls to the horde: transport errors, 5xx and 429 are retried with exponential
//! backoff and jitter; other answers are final.

use horde_client::ClientError;
use rand::Rng;
use std::future::Future;
use std::time::Duration;

/// Whether an error is worth retrying.
pub fn is_transient(error: &ClientError) -> bool {
    match error {
        ClientError::Transport(_) => true,
        ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
            status.is_server_error() || status.as_u16() == 429
        }
        ClientError::TooLarge { .. } => false,
    }
}

/// The delay before retry `attempt` (0-based): 0.5 s doubling to at most `cap`, ±25 % jitter.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(500)
        .saturating_mul(1 << attempt.min(16))
        .min(cap);
    base.mul_f64(rand::rng().random_range(0.75..1.25))
}

/// The wait after the `failures`-th failed pop in a row (0-based): a growing backoff for a
/// transient failure, `cap` for a final one (the horde refused: it will not change soon).
pub fn pop_failure_delay(
    error: &ClientError,
    failures: u32,
    cap: Duration,
    what: &str,
) -> Duration {
    let delay = if is_transient(error) {
        backoff(failures, cap)
    } else {
        cap
    };
    tracing::warn!(%error, retry_in = ?delay, "{what} pop failed");
    delay
}

/// The wait after a pop that found no job: the configured poll interval, at least 50 ms.
pub fn idle_delay(poll_interval_secs: f64) -> Duration {
    Duration::from_secs_f64(poll_interval_secs.max(0.05))
}

/// Sleeps `delay`, or less when `shutdown` changes first.
pub async fn pause(delay: Duration, shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}

/// Runs `call` until it succeeds, fails for good, or `attempts` are used up.
pub async fn with_retries<T, F, Fut>(
    attempts: u32,
    cap: Duration,
    mut call: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if is_transient(&error) && attempt + 1 < attempts => {
                let delay = backoff(attempt, cap);
                tracing::warn!(%error, retry_in = ?delay, "horde call failed; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let cap = Duration::from_secs(30);
        let first = backoff(0, cap);
        assert!(first >= Duration::from_millis(375) && first <= Duration::from_millis(625));
        let late = backoff(20, cap);
        assert!(late >= Duration::from_millis(22_500) && late <= Duration::from_millis(37_500));
    }
}
