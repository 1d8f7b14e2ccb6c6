//! Background duties: taking back jobs past their deadline, removing expired requests and
//! their images.
//!
//! One step is a plain function tests can call; the loop only sleeps and calls it.

use crate::state::{now, SharedState};
use std::time::Duration;

/// One sweep: takes back late jobs, then removes requests past their expiry with nothing in
/// flight; returns how many requests were removed.
pub async fn step(state: &SharedState, now: i64) -> usize {
    if let Err(err) = state.take_back_late_jobs(now).await {
        tracing::warn!(error = ?err.body, "taking back late jobs failed");
    }
    match state.sweep_expired(now).await {
        Ok(removed) => {
            if removed > 0 {
                tracing::info!(removed, "removed expired requests");
            }
            removed
        }
        Err(err) => {
            tracing::warn!(error = ?err.body, "sweep failed");
            0
        }
    }
}

pub async fn run(state: SharedState) {
    let interval = Duration::from_secs(state.config.requests.sweep_interval_secs.max(1));
    loop {
        tokio::time::sleep(interval).await;
        step(&state, now()).await;
    }
}
