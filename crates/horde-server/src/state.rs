//! The coordinator's shared state: the store, the live queue, the worker registry, limits.
//!
//! Locks here are `std::sync` and never held across an `.await`: the queue is changed in
//! memory under its lock, then the change is written to the store, then the answer is sent.

use crate::config::ServerConfig;
use crate::images::ImageStore;
use crate::workers::WorkerRegistry;
use horde_core::ratelimit::FixedWindows;
use horde_core::Queue;
use horde_store::Store;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

pub type SharedState = Arc<AppState>;

pub struct AppState {
    pub config: ServerConfig,
    pub store: Store,
    pub queue: Mutex<Queue>,
    /// Held from a change to a live request in memory until that change is committed, so
    /// commits happen in the order of the changes: a request's row is always written from a
    /// snapshot no newer than what is already durable (else a crash could keep a counter
    /// whose job row was never written).
    pub write_order: tokio::sync::Mutex<()>,
    pub workers: RwLock<WorkerRegistry>,
    /// The image model reference, replaced whole on reload.
    pub models: RwLock<std::sync::Arc<horde_core::registry::ModelRegistry>>,
    /// The moderators' prompt filters, compiled; replaced whole on every change.
    pub filters: RwLock<std::sync::Arc<horde_core::prompt_filter::FilterSet>>,
    pub limiter: Mutex<FixedWindows>,
    /// The reverse proxies whose forwarded-for headers name the client.
    pub trusted_proxies: crate::client_ip::TrustedProxies,
    /// Stores accepted requests, many to a commit.
    pub request_writer: crate::group_commit::RequestWriter,
    /// Bumped when a worker joins, changes what it serves, or is paused or resumed.
    pub workers_generation: std::sync::atomic::AtomicU64,
    /// The last matching view: (unix second, workers generation, view).
    pub matching_cache: Mutex<Option<(i64, u64, Arc<crate::models::MatchingView>)>>,
    /// Users by API-key hash, with when they were read (unix ms): every worker pops every
    /// second or two and clients submit often, while roles rarely change. Cleared whenever a
    /// user's roles, key or kudos change through the API.
    pub user_cache: Mutex<HashMap<String, (horde_core::User, u64)>>,
    /// When each job in flight was handed out, in unix milliseconds: speeds measured from it are
    /// precise for jobs of a few seconds (the stored `started` has whole seconds). Not
    /// persisted; after a restart the stored seconds are used.
    pub handed_out_ms: Mutex<HashMap<uuid::Uuid, u64>>,
    pub performance: Mutex<ModelPerformance>,
    pub images: ImageStore,
    /// Salt of API-key hashes (persisted in the database).
    pub key_salt: String,
    /// Secret that signs upload URLs (persisted in the database).
    pub upload_secret: String,
    /// Base URL of this coordinator as seen by workers and clients.
    pub public_url: String,
    /// Value of the `Horde-Node` header.
    pub node_name: String,
    /// Set when the coordinator starts shutting down: endless answers (the dashboard's live
    /// events) end, so the graceful shutdown does not wait for them forever.
    pub shutting_down: std::sync::atomic::AtomicBool,
}

/// Recent speeds (pixelsteps per second) of finished jobs, by model.
#[derive(Debug, Default)]
pub struct ModelPerformance {
    samples: HashMap<String, VecDeque<(i64, f64)>>,
}

impl ModelPerformance {
    const WINDOW_SECS: i64 = 3600;
    const MAX_SAMPLES: usize = 200;

    pub fn record(&mut self, model: &str, now: i64, pixelsteps_per_sec: f64) {
        let samples = self.samples.entry(model.to_string()).or_default();
        samples.push_back((now, pixelsteps_per_sec));
        while samples.len() > Self::MAX_SAMPLES
            || samples
                .front()
                .is_some_and(|s| s.0 < now - Self::WINDOW_SECS)
        {
            samples.pop_front();
        }
    }

    /// Average pixelsteps per second over the last hour, 0 without samples.
    pub fn average(&self, model: &str, now: i64) -> f64 {
        let Some(samples) = self.samples.get(model) else {
            return 0.0;
        };
        let recent: Vec<f64> = samples
            .iter()
            .filter(|s| s.0 >= now - Self::WINDOW_SECS)
            .map(|s| s.1)
            .collect();
        if recent.is_empty() {
            0.0
        } else {
            recent.iter().sum::<f64>() / recent.len() as f64
        }
    }

    /// Pixelsteps finished in the last `secs` seconds.
    pub fn all_models_average(&self, now: i64) -> f64 {
        let models: Vec<&String> = self.samples.keys().collect();
        let speeds: Vec<f64> = models
            .iter()
            .map(|m| self.average(m, now))
            .filter(|s| *s > 0.0)
            .collect();
        if speeds.is_empty() {
            0.0
        } else {
            speeds.iter().sum::<f64>() / speeds.len() as f64
        }
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
