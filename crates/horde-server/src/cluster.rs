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
//! * a status, the answer that carries the results, compares the local copy's version with
//!   the stored one and answers from the stored copy when it is newer ([`AppState::fresh_copy`]):
//!   a client told "done" by one coordinator and sent to another by a load balancer sees every
//!   result, though the announcement may still be on its way (up to a second under load);
//! * a write the database refuses for another reason than a conflict puts the stored copy
//!   back (`restore_after_failed_write`), so no local copy holds a version the database never
//!   had (the announcement of another coordinator's change of that version would be taken for
//!   it);
//! * the workers that checked in elsewhere, and the prompt filters, are brought in every few
//!   seconds ([`spawn_refresh`]): their check-ins, settings (paused, maintenance, name) and
//!   reputations, so every coordinator lists the same online workers, counts them for
//!   `is_possible` and wait estimates, and stops handing jobs to a worker paused elsewhere;
//! * background duties (deadlines, expiry) run on one coordinator at a time: the sweeper's
//!   leader holds a PostgreSQL advisory lock on a connection of its own (`Leadership`), which
//!   PostgreSQL releases when that process dies.
//!
//! On SQLite there is one process: nothing here runs, and every lookup stays in memory.

use crate::error::ApiResult;
use crate::kinds::ServedKind;
use crate::live_requests::WriteTurn;
use crate::state::{AppState, SharedState};
use horde_core::alchemy::Alchemy;
use horde_core::request::LiveRequest;
use horde_core::text::Text;
use horde_core::Image;
use horde_store::notify::{Listener, REMOVED};
use horde_store::Backend;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

impl AppState {
    /// Whether other coordinators may share this one's database.
    pub fn is_clustered(&self) -> bool {
        self.store.backend() == Backend::Postgres
    }

    /// Makes sure request `id` of kind `K`, if stored, is in the local queue (another
    /// coordinator may have accepted it moments ago).
    pub async fn load_request<K: ServedKind>(&self, id: Uuid) -> ApiResult<()> {
        if !self.is_clustered() || K::live(self).contains(id) {
            return Ok(());
        }
        let turn = K::live(self).write_turn().await;
        self.load_request_ordered::<K>(&turn, id).await
    }

    /// [`AppState::load_request`], for a caller holding a write turn of kind `K`.
    pub(crate) async fn load_request_ordered<K: ServedKind>(
        &self,
        turn: &WriteTurn<'_>,
        id: Uuid,
    ) -> ApiResult<()> {
        if !self.is_clustered() || K::live(self).contains(id) {
            return Ok(());
        }
        self.resync_request_ordered::<K>(turn, id).await
    }

    /// `local`, or the stored copy of its request when another coordinator changed it since
    /// (the listener brings the change in a moment later, up to a second or so under load):
    /// what a status answers from, so that a client sent here by a load balancer after another
    /// coordinator said "done" sees every result. One look at the request's row.
    pub(crate) async fn fresh_copy<K: ServedKind>(
        &self,
        local: LiveRequest<K>,
    ) -> ApiResult<LiveRequest<K>> {
        if !self.is_clustered() {
            return Ok(local);
        }
        match self.store.request_version(local.id).await? {
            Some(stored) if stored > local.version => Ok(self
                .store
                .load_request::<K>(local.id)
                .await?
                .unwrap_or(local)),
            _ => Ok(local),
        }
    }

    /// Makes sure the request of job `job_id` is in the local queue of kind `K`, as of its
    /// stored state when the local copy does not know the job yet. The caller holds a write
    /// turn of that kind.
    pub(crate) async fn load_request_of_job_ordered<K: ServedKind>(
        &self,
        turn: &WriteTurn<'_>,
        job_id: Uuid,
    ) -> ApiResult<()> {
        if !self.is_clustered() || K::live(self).knows_job(job_id) {
            return Ok(());
        }
        match self.store.request_id_of_job(job_id).await? {
            Some(request_id) => self.resync_request_ordered::<K>(turn, request_id).await,
            None => Ok(()),
        }
    }

    /// Replaces the local copy of request `id` of kind `K` by the stored one (or drops it when
    /// it is no longer stored). The caller holds a write turn of that kind.
    pub(crate) async fn resync_request_ordered<K: ServedKind>(
        &self,
        turn: &WriteTurn<'_>,
        id: Uuid,
    ) -> ApiResult<()> {
        match self.store.load_request::<K>(id).await? {
            Some(request) => self.install(turn, vec![request], []).await,
            None => self.install::<K>(turn, vec![], [id]).await,
        }
    }

    /// Puts stored requests in place of the local copies and drops `removed`, after loading the
    /// workers holding their jobs. The caller holds a write turn, so no local change is
    /// waiting to be stored: the stored copy is the truth (after a failed write the local copy
    /// even holds a change that was never stored).
    async fn install<K: ServedKind>(
        &self,
        _turn: &WriteTurn<'_>,
        stored: Vec<LiveRequest<K>>,
        removed: impl IntoIterator<Item = Uuid>,
    ) -> ApiResult<()> {
        for request in &stored {
            self.load_workers_of(request).await?;
        }
        K::live(self).change(|queue| {
            for id in removed {
                queue.remove(id);
            }
            for request in stored {
                queue.replace(request);
            }
        });
        Ok(())
    }

    /// Applies announced changes to every kind's live requests.
    async fn apply_announcements(&self, changes: BTreeMap<Uuid, i64>) -> ApiResult<()> {
        self.apply_announcements_of::<Image>(changes.clone())
            .await?;
        self.apply_announcements_of::<Text>(changes.clone()).await?;
        self.apply_announcements_of::<Alchemy>(changes).await
    }

    /// Applies announced changes to the live requests of kind `K`: reloads the requests whose
    /// announced version is newer than the local copy, and drops the removed ones. (An
    /// announced request of another kind is not found among this kind's rows.)
    async fn apply_announcements_of<K: ServedKind>(
        &self,
        changes: BTreeMap<Uuid, i64>,
    ) -> ApiResult<()> {
        let live = K::live(self);
        let turn = live.write_turn().await;
        let (stale, removed): (Vec<Uuid>, Vec<Uuid>) = live.read(|queue| {
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
        });
        let loaded = self.store.load_requests_by_id::<K>(&stale).await?;
        self.install(&turn, loaded, removed).await
    }

    /// Loads into the registry the workers holding jobs of `request` that registered on
    /// another coordinator.
    async fn load_workers_of<K: ServedKind>(&self, request: &LiveRequest<K>) -> ApiResult<()> {
        for job in &request.jobs {
            self.load_worker(job.worker_id).await?;
        }
        Ok(())
    }
}

/// Listens for the other coordinators' announcements and applies them, a batch at a time.
/// Reconnects after a lost connection, or a batch that could not be applied, then reloads
/// every live request (announcements sent meanwhile, or dropped, are lost: a finished request
/// is never announced again).
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
        return Ok(());
    }
    loop {
        let changes = listener.next_batch().await?;
        if let Err(error) = state.apply_announcements(changes).await {
            tracing::warn!(error = ?error.body, "could not apply the cluster's changes; reloading");
            return Ok(());
        }
    }
}

/// How often what other coordinators stored about workers and filters is brought in.
const REFRESH: Duration = Duration::from_secs(5);

/// Brings in, every few seconds, what other coordinators stored about the online workers, the
/// moderators' prompt filters (a handful of regexes, compiled again), and the workers' teams and
/// messages.
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
            // Teams and workers' messages changed on another coordinator.
            if let Err(error) = state.reload_teams_and_messages().await {
                tracing::warn!(%error, "could not reload teams and workers' messages");
            }
        }
    })
}

impl AppState {
    /// Adds the online workers this coordinator does not know, and takes the newer check-ins,
    /// settings and reputations of those it knows from the database.
    pub async fn refresh_workers(&self) -> ApiResult<()> {
        let since = crate::clock::now() - self.config.workers.online_window_secs;
        let stored = self.store.workers_seen_since(since).await?;
        let mut unknown = vec![];
        self.workers.change(|registry| {
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
        });
        for worker in unknown {
            self.add_stored_worker(worker).await?;
        }
        self.workers.changed();
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
    /// accepted meanwhile (the group commit does not wait for a write turn) stay.
    async fn resync_all(&self) -> ApiResult<()> {
        self.resync_all_of::<Image>().await?;
        self.resync_all_of::<Text>().await?;
        self.resync_all_of::<Alchemy>().await
    }

    /// [`AppState::resync_all`] for the live requests of kind `K`.
    async fn resync_all_of<K: ServedKind>(&self) -> ApiResult<()> {
        let live = K::live(self);
        let turn = live.write_turn().await;
        let before: std::collections::HashSet<Uuid> =
            live.read(|queue| queue.requests().map(|r| r.id).collect());
        let stored = self.store.load_requests::<K>().await?;
        let kept: std::collections::HashSet<Uuid> = stored.iter().map(|r| r.id).collect();
        let gone: Vec<Uuid> = before.difference(&kept).copied().collect();
        self.install(&turn, stored, gone).await
    }
}
