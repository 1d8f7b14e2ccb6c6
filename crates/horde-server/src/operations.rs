//! Moderators' operations and ratings: IP timeouts enforced on every endpoint, worker address
//! blocks, the timeout a blocked prompt earns its sender, and image ratings into reputation.
//!
//! **Where a timeout holds.** The rate-limit layer (`ratelimit.rs`) asks [`guard_address`]
//! first, for every `/api/v2/` route but the heartbeat and `/operations/…` itself (a moderator
//! whose own address was caught must be able to lift it; those routes need a moderator's key
//! anyway). Loopback clients are never held: a proxy on the same machine that forwards no
//! address would otherwise shut out everybody behind it.
//!
//! **Across coordinators.** Timeouts live in the database; each coordinator reads them through
//! [`IpTimeouts`], a copy at most [`CACHE_MS`] old on PostgreSQL (on SQLite this process is
//! the only writer, so its copy is reloaded after each of its own writes and never expires).
//!
//! **Who sent it.** [`guard_address`] runs the rest of the request inside a task-local
//! [`Origin`], so the services below it (a pop's check-in, a prompt the filters block) know the
//! client's address without every handler passing it down.

use crate::clock::{now, now_ms};
use crate::error::{refused, ApiError, ApiResult};
use crate::state::{AppState, SharedState};
use axum::response::{IntoResponse, Response};
use horde_api::operations::{
    AddTimeoutIp, AestheticsPayload, BlockWorkerIp, DeleteTimeoutIp, IpTimeout, RateResponse,
    SimpleMessage,
};
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::ip_timeouts::{self, Network, TimedOut, Timeout};
use horde_core::ratings::{self, RatingSummary};
use horde_core::Image;
use horde_store::ratings::{ImageRating, RequestRating};
use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use uuid::Uuid;

/// How old a coordinator's copy of the timeouts may be on PostgreSQL.
pub const CACHE_MS: i64 = 2_000;

/// This coordinator's copy of the stored timeouts, and the address each worker last popped from.
#[derive(Default)]
pub struct IpTimeouts {
    copy: RwLock<Copy>,
    /// One reload at a time: the others wait for it and read its copy.
    reload: tokio::sync::Mutex<()>,
    worker_addresses: Mutex<HashMap<Uuid, IpAddr>>,
}

#[derive(Default)]
struct Copy {
    /// When it was read (unix ms); `None`: never, or a write made it stale.
    loaded_ms: Option<i64>,
    timeouts: Arc<Vec<Timeout>>,
}

impl IpTimeouts {
    fn fresh(&self, clustered: bool, now_ms: i64) -> Option<Arc<Vec<Timeout>>> {
        let copy = self.copy.read().expect("timeouts lock");
        let loaded = copy.loaded_ms?;
        (!clustered || now_ms - loaded < CACHE_MS).then(|| copy.timeouts.clone())
    }

    fn replace(&self, timeouts: Vec<Timeout>, now_ms: i64) -> Arc<Vec<Timeout>> {
        let timeouts = Arc::new(timeouts);
        *self.copy.write().expect("timeouts lock") = Copy {
            loaded_ms: Some(now_ms),
            timeouts: timeouts.clone(),
        };
        timeouts
    }

    fn invalidate(&self) {
        self.copy.write().expect("timeouts lock").loaded_ms = None;
    }
}

tokio::task_local! {
    static ORIGIN: Origin;
}

/// Who sent the request being served, and what the services found out about it.
struct Origin {
    client: IpAddr,
    blocked_prompt: Cell<bool>,
}

/// The address of the client whose request is being served (`None` outside a request).
pub fn client_address() -> Option<IpAddr> {
    ORIGIN.try_with(|o| o.client).ok()
}

/// Marks the request being served as one whose prompt the filters blocked: its sender is
/// timed out once the answer is made (`filters.rs`; moderators are never marked).
pub fn note_blocked_prompt() {
    let _ = ORIGIN.try_with(|o| o.blocked_prompt.set(true));
}

/// Whether requests to `route` (a matched route template) are held by timeouts.
fn held(route: &str) -> bool {
    route.starts_with("/api/v2/")
        && route != "/api/v2/status/heartbeat"
        && !route.starts_with("/api/v2/operations/")
}

/// The rate-limit layer's first step: refuses a client in timeout with 403 `TimeoutIP`, else
/// serves `serve` as that client's request and, when its prompt was blocked, times it out.
pub async fn guard_address(
    state: &SharedState,
    route: &str,
    client: IpAddr,
    serve: impl Future<Output = Response>,
) -> Response {
    if held(route) && !ip_timeouts::unmapped(client).is_loopback() {
        match state.timeout_of(client).await {
            Ok(Some(seconds_left)) => {
                return refused(TimedOut { seconds_left })
                    .retry_after(seconds_left.max(1))
                    .into_response()
            }
            Ok(None) => {}
            Err(error) => return error.into_response(),
        }
    }
    let origin = Origin {
        client,
        blocked_prompt: Cell::new(false),
    };
    let (response, blocked) = ORIGIN
        .scope(origin, async {
            let response = serve.await;
            (response, ORIGIN.with(|o| o.blocked_prompt.get()))
        })
        .await;
    if blocked {
        if let Err(error) = state.time_out_blocked_prompt(client).await {
            tracing::warn!(error = ?error.body, "could not time out a blocked prompt's sender");
        }
    }
    response
}

fn bad_address(refusal: ip_timeouts::NetworkRefusal) -> ApiError {
    refused(refusal)
}

fn shown(timeout: &Timeout, now_ms: i64) -> IpTimeout {
    IpTimeout {
        ipaddr: timeout.network.to_string(),
        seconds: timeout.seconds_left(now_ms),
    }
}

impl AppState {
    /// The live timeouts, from this coordinator's copy (reloaded when stale).
    async fn ip_timeouts(&self) -> ApiResult<Arc<Vec<Timeout>>> {
        let now_ms = now_ms() as i64;
        let clustered = self.is_clustered();
        if let Some(copy) = self.ip_timeouts.fresh(clustered, now_ms) {
            return Ok(copy);
        }
        let _one = self.ip_timeouts.reload.lock().await;
        if let Some(copy) = self.ip_timeouts.fresh(clustered, now_ms) {
            return Ok(copy);
        }
        let stored = self.store.live_ip_timeouts(now_ms).await?;
        let timeouts = stored
            .into_iter()
            .filter_map(|(network, expires_ms)| {
                let network = Network::parse(&network).ok()?;
                Some(Timeout {
                    network,
                    expires_ms,
                })
            })
            .collect();
        Ok(self.ip_timeouts.replace(timeouts, now_ms))
    }

    /// Seconds left of the longest timeout holding `client`, `None` when it is free.
    pub async fn timeout_of(&self, client: IpAddr) -> ApiResult<Option<u64>> {
        let timeouts = self.ip_timeouts().await?;
        Ok(ip_timeouts::seconds_left_for(
            &timeouts,
            client,
            now_ms() as i64,
        ))
    }

    /// Stores a timeout and makes this coordinator's copy stale. Timeouts and suspicion that
    /// ended are forgotten first (writes are rare, so the table stays as small as what holds).
    async fn put_timeout(&self, network: Network, expires_ms: i64, extend: bool) -> ApiResult<()> {
        self.store.prune_ip_timeouts(now_ms() as i64).await?;
        let stored = self
            .store
            .put_ip_timeout(&network.to_string(), expires_ms, extend)
            .await;
        self.ip_timeouts.invalidate();
        stored?;
        Ok(())
    }

    /// `GET /operations/ipaddr`: every live timeout with its seconds left.
    pub async fn list_ip_timeouts(&self) -> ApiResult<Vec<IpTimeout>> {
        let now_ms = now_ms() as i64;
        let timeouts = self.ip_timeouts().await?;
        Ok(timeouts
            .iter()
            .filter(|t| t.seconds_left(now_ms) > 0)
            .map(|t| shown(t, now_ms))
            .collect())
    }

    /// `GET /operations/ipaddr/{ipaddr}`: the live timeouts holding one address.
    pub async fn ip_timeouts_holding(&self, ipaddr: &str) -> ApiResult<Vec<IpTimeout>> {
        let address = Network::parse_address(ipaddr).map_err(bad_address)?;
        let now_ms = now_ms() as i64;
        let timeouts = self.ip_timeouts().await?;
        Ok(ip_timeouts::matching(&timeouts, address, now_ms)
            .iter()
            .map(|t| shown(t, now_ms))
            .collect())
    }

    /// `POST /operations/ipaddr`: times an address (its subject) or a block out.
    pub async fn add_ip_timeout(
        &self,
        moderator: &User,
        body: AddTimeoutIp,
    ) -> ApiResult<SimpleMessage> {
        body.validate().map_err(ApiError::validation)?;
        let network = Network::parse(&body.ipaddr).map_err(bad_address)?;
        let expires_ms = now_ms() as i64 + i64::from(body.hours) * 3_600_000;
        self.put_timeout(network, expires_ms, false).await?;
        tracing::info!(
            moderator = moderator.id,
            hours = body.hours,
            "address timed out"
        );
        Ok(SimpleMessage::ok())
    }

    /// `DELETE /operations/ipaddr`: lifts a timeout (and the address's prompt suspicion).
    pub async fn delete_ip_timeout(
        &self,
        moderator: &User,
        body: DeleteTimeoutIp,
    ) -> ApiResult<SimpleMessage> {
        body.validate().map_err(ApiError::validation)?;
        let network = Network::parse(&body.ipaddr).map_err(bad_address)?;
        let lifted = self.store.delete_ip_timeout(&network.to_string()).await;
        self.ip_timeouts.invalidate();
        if lifted? {
            tracing::info!(moderator = moderator.id, "address timeout lifted");
        }
        Ok(SimpleMessage::ok())
    }

    /// The subject of the address worker `id` last popped from (404 for an unknown worker).
    async fn worker_subject(&self, id: &str) -> ApiResult<Network> {
        let unknown = || {
            ApiError::new(
                Rc::WorkerNotFound,
                format!("Worker with ID '{id}' not found."),
            )
        };
        let id = Uuid::parse_str(id).map_err(|_| unknown())?;
        if self.store.worker_by_id(id).await?.is_none() {
            return Err(unknown());
        }
        let known = self
            .ip_timeouts
            .worker_addresses
            .lock()
            .expect("addresses lock")
            .get(&id)
            .copied();
        let address = match known {
            Some(address) => Some(address),
            None => self
                .store
                .worker_address(&id.to_string())
                .await?
                .and_then(|a| a.parse().ok()),
        };
        let address = address.ok_or_else(|| {
            ApiError::new(
                Rc::BadRequest,
                format!("Worker with ID '{id}' has not popped from any address yet."),
            )
        })?;
        Ok(Network::subject_of(address))
    }

    /// `PUT /operations/block_worker_ipaddr/{id}`: times the worker's address out for `days`
    /// (an IPv6 address as its /64), so the worker can neither pop nor submit from it.
    pub async fn block_worker_ip(
        &self,
        moderator: &User,
        worker_id: &str,
        body: BlockWorkerIp,
    ) -> ApiResult<SimpleMessage> {
        body.validate().map_err(ApiError::validation)?;
        let subject = self.worker_subject(worker_id).await?;
        let expires_ms = now_ms() as i64 + i64::from(body.days) * 24 * 3_600_000;
        self.put_timeout(subject, expires_ms, false).await?;
        tracing::info!(
            moderator = moderator.id,
            worker = worker_id,
            days = body.days,
            "worker address blocked"
        );
        Ok(SimpleMessage::ok())
    }

    /// `DELETE /operations/block_worker_ipaddr/{id}`: lifts the timeout of the worker's address.
    pub async fn unblock_worker_ip(
        &self,
        moderator: &User,
        worker_id: &str,
    ) -> ApiResult<SimpleMessage> {
        let subject = self.worker_subject(worker_id).await?;
        let lifted = self.store.delete_ip_timeout(&subject.to_string()).await;
        self.ip_timeouts.invalidate();
        lifted?;
        tracing::info!(
            moderator = moderator.id,
            worker = worker_id,
            "worker address unblocked"
        );
        Ok(SimpleMessage::ok())
    }

    /// A prompt from `client` was blocked: its subject's suspicion rises and it is timed out
    /// for `(2s + 1) × 3` minutes (`horde_core::ip_timeouts::suspicion_timeout_minutes`).
    pub async fn time_out_blocked_prompt(&self, client: IpAddr) -> ApiResult<()> {
        let subject = Network::subject_of(client);
        let now_ms = now_ms() as i64;
        let prior = self
            .store
            .raise_ip_suspicion(
                &subject.to_string(),
                now_ms,
                now_ms + ip_timeouts::SUSPICION_MEMORY_MS,
            )
            .await?;
        let minutes = ip_timeouts::suspicion_timeout_minutes(prior);
        self.put_timeout(subject, now_ms + minutes as i64 * 60_000, true)
            .await?;
        tracing::info!(
            suspicion = prior + 1,
            minutes,
            "blocked prompt: sender timed out"
        );
        Ok(())
    }

    /// Records the address the request being served came from as worker `id`'s (stored only
    /// when it changed).
    pub async fn note_worker_address(&self, id: Uuid) -> ApiResult<()> {
        let Some(client) = client_address() else {
            return Ok(());
        };
        let changed = self
            .ip_timeouts
            .worker_addresses
            .lock()
            .expect("addresses lock")
            .insert(id, client)
            != Some(client);
        if changed {
            let stored = self
                .store
                .save_worker_address(&id.to_string(), &client.to_string(), now_ms() as i64)
                .await;
            if stored.is_err() {
                self.ip_timeouts
                    .worker_addresses
                    .lock()
                    .expect("addresses lock")
                    .remove(&id);
            }
            stored?;
        }
        Ok(())
    }

    /// `POST /generate/rate/{id}`: a shared, finished image request rated once; each rated
    /// image's worker gets the rating in its reputation (one voice per requester).
    pub async fn rate_request(&self, id: &str, body: AestheticsPayload) -> ApiResult<RateResponse> {
        body.validate().map_err(ApiError::validation)?;
        let request_id = crate::requests::parse_request_id(id)?;
        self.load_request::<Image>(request_id).await?;
        let request = self
            .live
            .get(request_id)
            .ok_or_else(|| crate::lifecycle::not_found(request_id))?;
        if !request.counts().done {
            return Err(refused(ratings::RatingRefusal::NotCompleted));
        }
        if !request.body.shared {
            return Err(refused(ratings::RatingRefusal::NotShared));
        }
        let finished: Vec<_> = request
            .jobs
            .iter()
            .filter(|j| j.state.is_finished())
            .collect();
        let images: Vec<String> = finished.iter().map(|j| j.id.to_string()).collect();
        let rated = body.ratings.clone().unwrap_or_default();
        let rated_ids: Vec<&str> = rated.iter().map(|r| r.id.as_str()).collect();
        ratings::check_rating(&images, &rated_ids, body.best.as_deref()).map_err(refused)?;
        let worker_of = |image: &str| {
            finished
                .iter()
                .find(|j| j.id.to_string() == image)
                .map(|j| j.worker_id)
        };
        let rows: Vec<ImageRating> = rated
            .iter()
            .filter_map(|r| {
                Some(ImageRating {
                    image_id: r.id.clone(),
                    worker_id: worker_of(&r.id)?.to_string(),
                    rating: r.rating,
                    artifacts: r.artifacts,
                })
            })
            .collect();
        let rating = RequestRating {
            request_id: request_id.to_string(),
            requester_id: request.user_id,
            best_image: body.best.clone(),
            images: rows,
            rated_at: now(),
        };
        if !self.store.save_rating(&rating).await? {
            return Err(refused(ratings::RatingRefusal::AlreadyRated));
        }
        let mut workers: Vec<Uuid> = rated.iter().filter_map(|r| worker_of(&r.id)).collect();
        workers.sort();
        workers.dedup();
        for worker in workers {
            self.refresh_rating(worker).await?;
        }
        Ok(RateResponse { reward: 0.0 })
    }

    /// Puts worker `id`'s ratings, as stored, into its reputation.
    async fn refresh_rating(&self, id: Uuid) -> ApiResult<()> {
        let means = self.store.rater_means(&id.to_string()).await?;
        let summary = RatingSummary::from_rater_means(means);
        self.load_worker(id).await?;
        let turn = self.live.write_turn().await;
        self.change_reputation_ordered(&turn, id, |r| r.rating = summary)
            .await?;
        Ok(())
    }
}
