//! Background duties: taking back jobs past their deadline, removing expired requests and
//! their images.
//!
//! One step is a plain function tests can call; the loop only sleeps, makes sure this
//! coordinator leads, and calls it.

use crate::clock::now;
use crate::state::SharedState;
use std::time::Duration;

/// One sweep: takes back late jobs, then removes requests past their expiry with nothing in
/// flight; returns how many requests were removed.
pub async fn step(state: &SharedState, now: i64) -> usize {
    if let Err(err) = state.take_back_late_jobs(now).await {
        tracing::warn!(error = ?err.body, "taking back late jobs failed");
    }
    if state.is_clustered() {
        /// Rate-limit windows are at most a day long.
        const KEEP_WINDOWS_MS: u64 = 2 * 86_400_000;
        let before = (now.max(0) as u64 * 1000).saturating_sub(KEEP_WINDOWS_MS);
        if let Err(error) = state.store.prune_rate_windows(before).await {
            tracing::warn!(%error, "could not forget old rate-limit windows");
        }
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

/// Sweeps every `sweep_interval_secs` while this coordinator leads (always, on SQLite; on
/// PostgreSQL one coordinator of those sharing the database at a time: `horde_store::Lease`).
pub async fn run(state: SharedState) {
    let interval = Duration::from_secs(state.config.requests.sweep_interval_secs.max(1));
    let mut lease: Option<horde_store::Lease> = None;
    loop {
        tokio::time::sleep(interval).await;
        if let Some(held) = &mut lease {
            if !held.is_held().await {
                tracing::warn!("lost the sweeper's lease");
                lease = None;
            }
        }
        if lease.is_none() {
            lease = match state.store.try_lead().await {
                Ok(Some(new)) => {
                    if state.is_clustered() {
                        tracing::info!("this coordinator now runs the background duties");
                    }
                    Some(new)
                }
                Ok(None) => None,
                Err(error) => {
                    tracing::warn!(%error, "could not ask for the sweeper's lease");
                    None
                }
            };
        }
        if lease.is_some() {
            step(&state, now()).await;
        }
    }
}
