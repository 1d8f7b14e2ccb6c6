//! Several coordinators sharing one PostgreSQL database.
//!
//! PostgreSQL holds the state and arbitrates; each coordinator keeps its own in-memory copy of
//! the live requests (the `Queue`) for fast pops and checks, and keeps it fresh this way:
//!
//! * every change to a request's row is conditional on the row's `version` (the store refuses
//!   a write over a version it did not expect), so a coordinator acting on an out-of-date copy
//!   never overwrites another's change: it reloads the stored copy and tries again (a pop picks
//!   again; a result is applied again);
//! * every change is announced with `NOTIFY` in its own transaction (`horde_store::notify`);
//!   [`spawn_listener`] reloads the requests whose announced version is newer than the local
//!   copy, a batch at a time, so a request accepted on one coordinator can be popped on all
//!   of them a few milliseconds later;
//! * a request, job or worker asked for by id and missing locally is looked up in the
//!   database (a client may check a request here before the notification arrived);
//! * the workers that checked in elsewhere, and the prompt filters, are brought in every few
//!   seconds ([`spawn_refresh`]): their check-ins, settings (paused, maintenance, name) and
//!   reputations, so every coordinator lists the same online workers, counts them for
//!   `is_possible` and wait estimates, and stops handing jobs to a worker paused elsewhere;
//! * background duties (deadlines, expiry) run on one coordinator at a time: the sweeper's
//!   leader holds a PostgreSQL advisory lock on a connection of its own (`Leadership`), which
//!   PostgreSQL releases when that process dies.
//!
//! On SQLite there is one process: nothing here runs, and every lookup stays in memory.

use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, SharedState};
use horde_api::Rc;
use horde_core::request::LiveRequest;
use horde_core::Reputation;
use horde_store::notify::{Listener, REMOVED};
use horde_store::Backend;
use horde_store::StoreError;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// Attempts at storing a change (a pop, a result, a cancel, a reputation) when other
/// coordinators keep changing the same row first: each attempt starts from the stored copy, so
/// one of the contenders always wins.
pub(crate) const MAX_WRITE_ATTEMPTS: usize = 8;

/// The answer when every attempt lost to another coordinator.
pub(crate) fn changed_too_often(what: &str) -> ApiError {
    ApiError::new(
        Rc::InternalServerError,
        format!("The {what} changed too often while this change was stored; try again."),
    )
}

impl AppState {
    /// Whether other coordinators may share this one's database.
    pub fn is_clustered(&self) -> bool {
        self.store.backend() == Backend::Postgres
    }

    /// Makes sure request `id`, if stored, is in the local queue (another coordinator may
    /// have accepted it moments ago).
    pub async fn load_request(&self, id: Uuid) -> ApiResult<()> {
        if !self.is_clustered() || self.queue.lock().expect("queue lock").get(id).is_some() {
            return Ok(());
        }
        let _ordered = self.write_order.lock().await;
        self.load_request_ordered(id).await
    }

    /// [`AppState::load_request`], for a caller holding `write_order`.
    pub(crate) async fn load_request_ordered(&self, id: Uuid) -> ApiResult<()> {
        if !self.is_clustered() || self.queue.lock().expect("queue lock").get(id).is_some() {
            return Ok(());
        }
        self.resync_request_ordered(id).await
    }

    /// Makes sure the request of job `job_id` is in the local queue, as of its stored state
    /// when the local copy does not know the job yet. The caller holds `write_order`.
    pub(crate) async fn load_request_of_job_ordered(&self, job_id: Uuid) -> ApiResult<()> {
        if !self.is_clustered() {
            return Ok(());
        }
        let known = self
            .queue
            .lock()
            .expect("queue lock")
            .request_of_job(job_id)
            .is_some();
        if known {
            return Ok(());
        }
        match self.store.request_id_of_job(job_id).await? {
            Some(request_id) => self.resync_request_ordered(request_id).await,
            None => Ok(()),
        }
    }

    /// Replaces the local copy of request `id` by the stored one (or drops it when it is no
    /// longer stored). The caller holds `write_order`.
    pub(crate) async fn resync_request_ordered(&self, id: Uuid) -> ApiResult<()> {
        match self.store.load_request(id).await? {
            Some(request) => self.install(vec![request], []).await,
            None => self.install(vec![], [id]).await,
        }
    }

    /// Puts stored requests in place of the local copies and drops `removed`, after loading the
    /// workers holding their jobs. The caller holds `write_order`, so no local change is
    /// waiting to be stored: the stored copy is the truth (after a failed write the local copy
    /// even holds a change that was never stored).
    async fn install(
        &self,
        stored: Vec<LiveRequest>,
        removed: impl IntoIterator<Item = Uuid>,
    ) -> ApiResult<()> {
        for request in &stored {
            self.load_workers_of(request).await?;
        }
        let mut queue = self.queue.lock().expect("queue lock");
        for id in removed {
            queue.remove(id);
        }
        for request in stored {
            queue.replace(request);
        }
        Ok(())
    }

    /// Applies announced changes: reloads the requests whose announced version is newer than
    /// the local copy, and drops the removed ones.
    async fn apply_announcements(&self, changes: BTreeMap<Uuid, i64>) -> ApiResult<()> {
        let _ordered = self.write_order.lock().await;
        let (stale, removed): (Vec<Uuid>, Vec<Uuid>) = {
            let queue = self.queue.lock().expect("queue lock");
            let mut stale = vec![];
            let mut removed = vec![];
            for (id, version) in changes {
                let local = queue.get(id).map(|r| r.version as i64);
                match (version, local) {
                    (REMOVED, Some(_)) => removed.push(id),
                    (REMOVED, None) => {}
                    (v, Some(local)) if v <= local => {}
                    _ => stale.push(id),
                }
            }
            (stale, removed)
        };
        let loaded = self.store.load_requests_by_id(&stale).await?;
        self.install(loaded, removed).await
    }

    /// Puts a worker's stored reputation back in the registry, after a change counted in
    /// memory was not stored (another coordinator changed the job's request first).
    pub(crate) async fn reload_reputation(&self, worker_id: Uuid) -> ApiResult<()> {
        if let Some(stored) = self.store.worker_by_id(worker_id).await? {
            if let Some(entry) = self
                .workers
                .write()
                .expect("registry lock")
                .get_mut(worker_id)
            {
                entry.worker.reputation = stored.reputation;
            }
        }
        Ok(())
    }

    /// Applies `change` to worker `id`'s reputation and stores it; when another coordinator
    /// wrote it first, reloads the stored one and applies the change to that. The caller
    /// holds `write_order`. Returns the stored reputation (`None`: no such worker here).
    pub(crate) async fn change_reputation_ordered(
        &self,
        id: Uuid,
        change: impl Fn(&mut Reputation),
    ) -> ApiResult<Option<Reputation>> {
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let snapshot = {
                let mut registry = self.workers.write().expect("registry lock");
                let Some(entry) = registry.get_mut(id) else {
                    return Ok(None);
                };
                change(&mut entry.worker.reputation);
                entry.worker.reputation.clone()
            };
            match self.store.save_reputation(id, &snapshot).await {
                Ok(()) => {
                    self.note_reputations_stored([(id, &snapshot)]);
                    return Ok(Some(snapshot));
                }
                Err(StoreError::WorkerConflict(_)) => self.reload_reputation(id).await?,
                Err(other) => return Err(other.into()),
            }
        }
        Err(changed_too_often("worker"))
    }

    /// Records in the registry that these reputations were stored (each as the version after
    /// the one it was read at).
    pub(crate) fn note_reputations_stored<'a>(
        &self,
        written: impl IntoIterator<Item = (Uuid, &'a Reputation)>,
    ) {
        let mut registry = self.workers.write().expect("registry lock");
        for (id, reputation) in written {
            if let Some(entry) = registry.get_mut(id) {
                let stored = reputation.version + 1;
                entry.worker.reputation.version = entry.worker.reputation.version.max(stored);
            }
        }
    }

    /// Loads into the registry the workers holding jobs of `request` that registered on
    /// another coordinator.
    async fn load_workers_of(&self, request: &LiveRequest) -> ApiResult<()> {
        for job in &request.jobs {
            self.load_worker(job.worker_id).await?;
        }
        Ok(())
    }
}

/// Listens for the other coordinators' announcements and applies them, a batch at a time.
/// Reconnects after a lost connection, then reloads every live request (announcements sent
/// meanwhile are lost).
pub fn spawn_listener(state: SharedState, url: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(error) = listen(&state, &url).await {
                tracing::warn!(%error, "lost the cluster's announcements; reconnecting");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

async fn listen(state: &SharedState, url: &str) -> Result<(), horde_store::StoreError> {
    let mut listener = Listener::connect(url).await?;
    // Whatever changed before the listener was up.
    if let Err(error) = state.resync_all().await {
        tracing::warn!(error = ?error.body, "could not reload the live requests");
    }
    loop {
        let changes = listener.next_batch().await?;
        if let Err(error) = state.apply_announcements(changes).await {
            tracing::warn!(error = ?error.body, "could not apply the cluster's changes");
        }
    }
}

/// How often what other coordinators stored about workers and filters is brought in.
const REFRESH: Duration = Duration::from_secs(5);

/// Brings in, every few seconds, what other coordinators stored about the online workers, and
/// the moderators' prompt filters (a handful of regexes, compiled again).
pub fn spawn_refresh(state: SharedState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(REFRESH).await;
            if let Err(error) = state.refresh_workers().await {
                tracing::warn!(error = ?error.body, "could not bring in the other coordinators' workers");
            }
            if let Err(error) = state.reload_filters().await {
                tracing::warn!(error = ?error.body, "could not reload the prompt filters");
            }
        }
    })
}

impl AppState {
    /// Adds the online workers this coordinator does not know, and takes the newer check-ins,
    /// settings and reputations of those it knows from the database.
    pub async fn refresh_workers(&self) -> ApiResult<()> {
        let since = crate::state::now() - self.config.workers.online_window_secs;
        let stored = self.store.workers_seen_since(since).await?;
        let mut unknown = vec![];
        {
            let mut registry = self.workers.write().expect("registry lock");
            for worker in stored {
                if registry.get(worker.id).is_none() {
                    unknown.push(worker);
                    continue;
                }
                if registry
                    .get(worker.id)
                    .is_some_and(|e| e.worker.name != worker.name)
                {
                    registry.rename(worker.id, &worker.name);
                }
                let entry = registry.get_mut(worker.id).expect("present");
                take_stored(entry, worker);
            }
        }
        for worker in unknown {
            self.add_stored_worker(worker).await?;
        }
        self.workers_changed();
        Ok(())
    }
}

/// Takes into a registry entry what another coordinator stored since: a later check-in, the
/// owner's settings, a newer reputation.
fn take_stored(entry: &mut crate::workers::WorkerEntry, stored: horde_core::Worker) {
    let w = &mut entry.worker;
    if stored.last_check_in > w.last_check_in {
        w.last_check_in = stored.last_check_in;
        w.flags = stored.flags;
        w.max_pixels = stored.max_pixels;
        w.nsfw = stored.nsfw;
        w.threads = stored.threads;
        w.bridge_agent = stored.bridge_agent;
        entry.persisted_check_in = entry.persisted_check_in.max(stored.last_check_in);
    }
    w.uptime = w.uptime.max(stored.uptime);
    w.info = stored.info;
    w.maintenance = stored.maintenance;
    w.maintenance_msg = stored.maintenance_msg;
    w.paused = stored.paused;
    if stored.reputation.version > w.reputation.version {
        w.reputation = stored.reputation;
    }
}

impl AppState {
    /// Reloads every stored live request in place of the local copies. A local request that
    /// is no longer stored is dropped only if it was here before the reload began: requests
    /// accepted meanwhile (the group commit does not wait for `write_order`) stay.
    async fn resync_all(&self) -> ApiResult<()> {
        let _ordered = self.write_order.lock().await;
        let before: std::collections::HashSet<Uuid> = self
            .queue
            .lock()
            .expect("queue lock")
            .requests()
            .map(|r| r.id)
            .collect();
        let stored = self.store.load_requests().await?;
        let kept: std::collections::HashSet<Uuid> = stored.iter().map(|r| r.id).collect();
        let gone: Vec<Uuid> = before.difference(&kept).copied().collect();
        self.install(stored, gone).await
    }
}
