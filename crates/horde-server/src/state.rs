//! The coordinator's shared state: the store, and the few components that own everything kept
//! in memory, each in its own module with private fields and its own locks:
//!
//! * [`LiveRequests`] — the queue of live requests of one kind of work (images, texts) and the
//!   order in which changes to them are committed (`live_requests.rs`);
//! * [`Workers`] — the worker registry, the recent speeds, the matching view (`workers/`);
//! * [`Accounts`] — key hashing and the user cache (`accounts.rs`);
//! * [`Catalogue`] — the model reference and the prompt filters (`catalogue.rs`).
//!
//! The service methods on `AppState` (in `requests.rs`, `jobs.rs`, `workers/`, `users.rs`,
//! …) combine them; routes, the dashboard, the sweeper and the tests read through the
//! components' query methods, never through a lock.
//!
//! **Lock order.** Every lock is a `std::sync` one held only inside a component's method or
//! the closure given to it, except the live requests' [`WriteTurn`](crate::live_requests::WriteTurn),
//! which is async and held across the store's `.await`s. So: a write turn first, then at most
//! one component's locks at a time (a closure given to one component never calls another),
//! and inside a component the order its module documents (the queue before the hand-out
//! clock; the registry before the matching cache). `clippy::await_holding_lock` is denied.

use crate::accounts::Accounts;
use crate::catalogue::Catalogue;
use crate::config::ServerConfig;
use crate::images::ImageStore;
use crate::live_requests::LiveRequests;
use crate::metrics::Metrics;
use crate::workers::Workers;
use horde_core::ratelimit::FixedWindows;
use horde_store::Store;
use std::sync::{Arc, Mutex};

pub type SharedState = Arc<AppState>;

pub struct AppState {
    pub config: ServerConfig,
    pub store: Store,
    pub live: LiveRequests,
    /// The live text requests (`texts/`).
    pub live_text: LiveRequests<horde_core::text::Text>,
    /// The live interrogation requests (`interrogations/`).
    pub live_alchemy: LiveRequests<horde_core::alchemy::Alchemy>,
    pub workers: Workers,
    pub accounts: Accounts,
    pub catalogue: Catalogue,
    /// The Prometheus counters and histograms of this coordinator (`metrics.rs`).
    pub metrics: Metrics,
    /// Wakes the webhook sender when calls were stored (`webhooks.rs`).
    pub webhooks: crate::webhooks::Outbox,
    /// The rate limiter's windows (`ratelimit.rs` is the only user).
    pub(crate) limiter: Mutex<FixedWindows>,
    /// The reverse proxies whose forwarded-for headers name the client.
    pub trusted_proxies: crate::client_ip::TrustedProxies,
    pub images: ImageStore,
    /// Secret that signs upload URLs (persisted in the database).
    pub(crate) upload_secret: String,
    /// Base URL of this coordinator as seen by workers and clients.
    pub public_url: String,
    /// Value of the `Horde-Node` header.
    pub node_name: String,
    /// Set when the coordinator starts shutting down: endless answers (the dashboard's live
    /// events) end, so the graceful shutdown does not wait for them forever.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// The horde's modes as last read from the database (`modes.rs`).
    pub modes: crate::modes::ModeCache,
    /// The IP timeouts as last read from the database, and workers' addresses (`operations.rs`).
    pub ip_timeouts: crate::operations::IpTimeouts,
}
