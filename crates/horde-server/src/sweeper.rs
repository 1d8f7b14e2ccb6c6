//! Background duties: removing expired requests and their images.
//!
//! One step is a plain function tests can call; the loop only sleeps and calls it.

use crate::state::{now, SharedState};
use std::time::Duration;

/// One sweep: removes requests past their expiry with nothing in flight.
pub async fn step(state: &SharedState, now: i64) -> usize {
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
