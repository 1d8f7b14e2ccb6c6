//! The live requests: every unfinished (and recently finished) request in memory, the order in
//! which changes to them are committed, and when each job in flight was handed out. This is
//! the only code that locks the queue; everything else reads through [`LiveRequests::read`] and
//! the named queries, and changes through [`LiveRequests::change`] and
//! [`LiveRequests::update`], holding a [`WriteTurn`] when the change is to be stored.
//!
//! A change to a live request is made in memory, then written to the store, then answered.
//! Two changes of the same request must reach the store in the order they were made (else a
//! crash could keep a counter whose job row was never written), so every path that changes and
//! stores takes its [`WriteTurn`] first and keeps it until the write is done. With several
//! coordinators on one PostgreSQL, a write may find that another coordinator changed the row
//! first: [`retry_on_conflict`] runs the attempt again from the stored copy.
//!
//! Clients may wait for a request to change (`?wait=` on check and status, the event stream:
//! `waiting.rs`, `streaming.rs`) without polling: each watched request has a change signal
//! (a `tokio::sync::watch`), made when its first watcher comes and dropped when its last
//! leaves. Every change goes through this component, so it is this component that wakes the
//! watchers: [`LiveRequests::update`] and [`LiveRequests::insert`] name their request, and the
//! closure given to [`LiveRequests::change`] works on a [`QueueChange`], which lets it change
//! the queue only through methods that note the requests they touch. A closure cannot change
//! a request without its watchers being woken.

use crate::error::{ApiError, ApiResult};
use crate::group_commit::RequestWriter;
use horde_api::Rc;
use horde_core::request::{Job, LiveRequest};
use horde_core::{Assignment, DeadlineTerms, Image, PopOutcome, Queue, Standby};
use horde_store::StoredKind;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use uuid::Uuid;

/// Attempts at storing a change (a pop, a result, a cancel, a reputation) when other
/// coordinators keep changing the same row first: each attempt starts from the stored copy, so
/// one of the contenders always wins.
pub const MAX_WRITE_ATTEMPTS: usize = 8;

/// Entries of jobs never submitted (timed out, lost) are dropped from the hand-out clock after
/// this long.
const FORGET_HANDED_OUT_AFTER_MS: u64 = 24 * 3600 * 1000;

/// The live requests of one kind of work and their write ordering (see the module
/// documentation); `AppState` holds one for each kind it serves.
///
/// Lock order, for the locks of this component and the others of `AppState`: a
/// [`WriteTurn`] (async, the only lock held across an `.await`) before any other; then the
/// queue before the hand-out clock. No closure given to [`LiveRequests::read`],
/// [`LiveRequests::change`] or [`LiveRequests::update`] takes another component's lock: what
/// a path needs from the workers or the model reference it reads before or after.
pub struct LiveRequests<K: StoredKind = Image> {
    queue: Mutex<Queue<K>>,
    write_order: tokio::sync::Mutex<()>,
    writer: RequestWriter<K>,
    /// When each job in flight was handed out, in unix milliseconds: speeds measured from it
    /// are precise for jobs of a few seconds (the stored `started` has whole seconds). Not
    /// persisted; after a restart the stored seconds are used.
    handed_out_ms: Mutex<HashMap<Uuid, u64>>,
    /// The change signals of watched requests (after the queue in the lock order; never held
    /// with it).
    watches: Arc<Mutex<Watches>>,
    /// Set once, when the coordinator shuts down: every watcher is let go.
    closed: watch::Sender<bool>,
}

/// The turn to change live requests and store the change: held from the change in memory
/// until the change is committed, so commits happen in the order of the changes. The watchers
/// of what changed while it was held are woken when it is let go: after the commit, so a
/// waiting client never reads a change (or its image) before it is stored.
pub struct WriteTurn<'a> {
    _turn: tokio::sync::MutexGuard<'a, ()>,
    watches: &'a Mutex<Watches>,
}

impl Drop for WriteTurn<'_> {
    fn drop(&mut self) {
        let mut watches = self.watches.lock().expect("watches lock");
        watches.turn_held = false;
        for id in std::mem::take(&mut watches.deferred) {
            if let Some(signal) = watches.signals.get(&id) {
                signal.send_replace(());
            }
        }
    }
}

/// What one attempt at storing a change came to.
pub enum Attempt<T> {
    /// Stored; the answer.
    Stored(T),
    /// Another coordinator changed the row first; the attempt reloaded the stored copy, so the
    /// next attempt starts from it.
    Conflicted,
}

/// Runs `attempt` until it stores its change, at most [`MAX_WRITE_ATTEMPTS`] times: `None`
/// when every attempt lost to another coordinator. An error ends the attempts.
pub async fn retry_on_conflict<T, Fut>(mut attempt: impl FnMut() -> Fut) -> ApiResult<Option<T>>
where
    Fut: std::future::Future<Output = ApiResult<Attempt<T>>>,
{
    for _ in 0..MAX_WRITE_ATTEMPTS {
        if let Attempt::Stored(answer) = attempt().await? {
            return Ok(Some(answer));
        }
    }
    Ok(None)
}

/// The answer when every attempt lost to another coordinator.
pub fn changed_too_often(what: &str) -> ApiError {
    ApiError::new(
        Rc::InternalServerError,
        format!("The {what} changed too often while this change was stored; try again."),
    )
}

impl<K: StoredKind> LiveRequests<K> {
    /// The live requests `stored` (read at start), committing new ones through `writer`.
    pub fn new(stored: Vec<LiveRequest<K>>, writer: RequestWriter<K>) -> Self {
        let mut queue = Queue::new();
        for request in stored {
            queue.insert(request);
        }
        LiveRequests {
            queue: Mutex::new(queue),
            write_order: tokio::sync::Mutex::new(()),
            writer,
            handed_out_ms: Mutex::new(HashMap::new()),
            watches: Arc::default(),
            closed: watch::Sender::new(false),
        }
    }

    /// Waits for the turn to change and store (see [`WriteTurn`]).
    pub async fn write_turn(&self) -> WriteTurn<'_> {
        let turn = self.write_order.lock().await;
        self.watches.lock().expect("watches lock").turn_held = true;
        WriteTurn {
            _turn: turn,
            watches: &self.watches,
        }
    }

    /// `f` of the queue as it stands.
    pub fn read<R>(&self, f: impl FnOnce(&Queue<K>) -> R) -> R {
        f(&self.queue.lock().expect("queue lock"))
    }

    /// `f` applied to the queue in memory; the watchers of the requests it changed are woken
    /// once the queue is unlocked. A change that is to be stored is made holding a
    /// [`WriteTurn`].
    pub fn change<R>(&self, f: impl FnOnce(&mut QueueChange<'_, K>) -> R) -> R {
        let (result, touched) = {
            let mut queue = self.queue.lock().expect("queue lock");
            let mut change = QueueChange {
                queue: &mut queue,
                touched: Vec::new(),
            };
            let result = f(&mut change);
            (result, change.touched)
        };
        self.wake(&touched);
        result
    }

    /// `f` applied to request `id`, `None` if it is not live.
    pub fn update<R>(&self, id: Uuid, f: impl FnOnce(&mut LiveRequest<K>) -> R) -> Option<R> {
        self.change(|queue| queue.update(id, f))
    }

    /// A copy of request `id`, if live.
    pub fn get(&self, id: Uuid) -> Option<LiveRequest<K>> {
        self.read(|queue| queue.get(id).cloned())
    }

    /// Whether request `id` is live here.
    pub fn contains(&self, id: Uuid) -> bool {
        self.read(|queue| queue.get(id).is_some())
    }

    /// Whether the request of job `job_id` is live here.
    pub fn knows_job(&self, job_id: Uuid) -> bool {
        self.read(|queue| queue.request_of_job(job_id).is_some())
    }

    /// How many requests are live (waiting, in flight, or finished and kept).
    pub fn len(&self) -> usize {
        self.read(Queue::<K>::len)
    }

    /// Whether no request is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many requests have jobs waiting.
    pub fn waiting_count(&self) -> usize {
        self.read(Queue::<K>::waiting_count)
    }

    /// The sequence number of the next accepted request (its place in the queue's order).
    pub fn next_seq(&self) -> u64 {
        self.queue.lock().expect("queue lock").next_seq()
    }

    /// Commits a newly accepted request (many to a transaction: `group_commit`) and returns it
    /// once it is durable; [`LiveRequests::insert`] then queues it.
    pub async fn commit_new(&self, request: LiveRequest<K>) -> ApiResult<LiveRequest<K>> {
        self.writer.store(request).await
    }

    /// Queues a committed request.
    pub fn insert(&self, request: LiveRequest<K>) {
        self.change(|queue| queue.insert(request));
    }

    /// Remembers when `jobs` were handed out, to the millisecond.
    pub fn note_handed_out(&self, jobs: &[Job], now_ms: u64) {
        let mut handed_out = self.handed_out_ms.lock().expect("hand-out clock lock");
        if handed_out.len() > 100_000 {
            handed_out.retain(|_, at| now_ms.saturating_sub(*at) < FORGET_HANDED_OUT_AFTER_MS);
        }
        handed_out.extend(jobs.iter().map(|j| (j.id, now_ms)));
    }

    /// When job `job_id` was handed out (unix ms), forgetting it: the job is being finished.
    pub fn take_handed_out(&self, job_id: Uuid) -> Option<u64> {
        self.handed_out_ms
            .lock()
            .expect("hand-out clock lock")
            .remove(&job_id)
    }

    /// `f` of every job in flight, its request, and when it was handed out (unix ms; its
    /// stored start in whole seconds after a restart).
    pub fn for_each_in_flight(&self, mut f: impl FnMut(&Job, &LiveRequest<K>, u64)) {
        let queue = self.queue.lock().expect("queue lock");
        let handed_out = self.handed_out_ms.lock().expect("hand-out clock lock");
        for (job, request) in queue.in_flight() {
            let started_ms = handed_out
                .get(&job.id)
                .copied()
                .unwrap_or(job.started.max(0) as u64 * 1000);
            f(job, request, started_ms);
        }
    }
}

/// The queue as a closure given to [`LiveRequests::change`] sees it: every read of
/// [`Queue`] (through `Deref`), and only those changes that note the requests they touch, so
/// that their watchers are woken. A new way of changing the queue is added here, noting what
/// it touches.
pub struct QueueChange<'a, K: StoredKind> {
    queue: &'a mut Queue<K>,
    touched: Vec<Uuid>,
}

impl<K: StoredKind> std::ops::Deref for QueueChange<'_, K> {
    type Target = Queue<K>;

    fn deref(&self) -> &Queue<K> {
        self.queue
    }
}

impl<K: StoredKind> QueueChange<'_, K> {
    /// [`Queue::pop`], noting the request it hands jobs of.
    pub fn pop(
        &mut self,
        worker: &K::Caps,
        worker_name: &str,
        now: i64,
        terms: DeadlineTerms,
        standby: &mut Standby<K>,
        rng: &mut impl rand::Rng,
    ) -> PopOutcome {
        let outcome = self
            .queue
            .pop(worker, worker_name, now, terms, standby, rng);
        if let PopOutcome::Assigned(assignment) = &outcome {
            self.touched.push(assignment.request_id);
        }
        outcome
    }

    /// [`Queue::add_companions`], noting the requests that joined the assignment.
    pub fn add_companions(
        &mut self,
        assignment: &mut Assignment,
        worker: &K::Caps,
        worker_name: &str,
        now: i64,
        terms: DeadlineTerms,
        rng: &mut impl rand::Rng,
    ) {
        self.queue
            .add_companions(assignment, worker, worker_name, now, terms, rng);
        self.touched.push(assignment.request_id);
        self.touched
            .extend(assignment.companions.iter().map(|c| c.request_id));
    }

    /// [`Queue::update`], noting the request.
    pub fn update<T>(
        &mut self,
        id: Uuid,
        edit: impl FnOnce(&mut LiveRequest<K>) -> T,
    ) -> Option<T> {
        self.touched.push(id);
        self.queue.update(id, edit)
    }

    /// [`Queue::insert`], noting the request.
    pub fn insert(&mut self, request: LiveRequest<K>) {
        self.touched.push(request.id);
        self.queue.insert(request);
    }

    /// [`Queue::replace`], noting the request.
    pub fn replace(&mut self, request: LiveRequest<K>) {
        self.touched.push(request.id);
        self.queue.replace(request);
    }

    /// [`Queue::remove`], noting the request.
    pub fn remove(&mut self, id: Uuid) -> Option<LiveRequest<K>> {
        self.touched.push(id);
        self.queue.remove(id)
    }

    /// [`Queue::take_back_late_jobs`], noting the requests of the jobs taken back.
    pub fn take_back_late_jobs(&mut self, now: i64, max_faults: u32) -> Vec<(Uuid, Uuid)> {
        let taken = self.queue.take_back_late_jobs(now, max_faults);
        self.touched
            .extend(taken.iter().map(|(request, _)| *request));
        taken
    }
}

/// Who watches a request: a client waiting for its end (`?wait=`), or an event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watcher {
    Wait,
    Stream,
}

/// The change signals of the watched requests, and how many watchers of each sort there are.
#[derive(Default)]
struct Watches {
    signals: HashMap<Uuid, watch::Sender<()>>,
    waits: usize,
    streams: usize,
    /// A write turn is held: changes are woken when it is let go (they are not stored yet).
    /// A change made meanwhile without the turn (a request queued after its commit) waits for
    /// it too: late by one commit, never early.
    turn_held: bool,
    /// The watched requests changed while the turn was held.
    deferred: Vec<Uuid>,
}

impl Watches {
    fn count(&mut self, watcher: Watcher) -> &mut usize {
        match watcher {
            Watcher::Wait => &mut self.waits,
            Watcher::Stream => &mut self.streams,
        }
    }
}

/// What ended a watcher's wait ([`RequestWatch::next_change`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The request changed (or was removed).
    Changed,
    /// The deadline passed first.
    TimeUp,
    /// The coordinator is shutting down.
    Closed,
}

/// One watcher of one request: holds the request's change signal while it lives, and lets it
/// go (the signal too, when it was the last) when dropped. A few hundred bytes, no task.
pub struct RequestWatch {
    id: Uuid,
    watcher: Watcher,
    changes: Option<watch::Receiver<()>>,
    closed: watch::Receiver<bool>,
    watches: Arc<Mutex<Watches>>,
}

impl RequestWatch {
    /// Waits for the next change of the request after this watch began or last woke, until
    /// `deadline` at most.
    pub async fn next_change(&mut self, deadline: tokio::time::Instant) -> Woken {
        let Some(changes) = self.changes.as_mut() else {
            return Woken::Closed;
        };
        tokio::select! {
            changed = changes.changed() => match changed {
                Ok(()) => Woken::Changed,
                Err(_) => Woken::Closed,
            },
            _ = self.closed.changed() => Woken::Closed,
            _ = tokio::time::sleep_until(deadline) => Woken::TimeUp,
        }
    }
}

impl Drop for RequestWatch {
    fn drop(&mut self) {
        drop(self.changes.take());
        let mut watches = self.watches.lock().expect("watches lock");
        *watches.count(self.watcher) -= 1;
        let unwatched = watches
            .signals
            .get(&self.id)
            .is_some_and(|signal| signal.receiver_count() == 0);
        if unwatched {
            watches.signals.remove(&self.id);
        }
    }
}

impl<K: StoredKind> LiveRequests<K> {
    /// Starts watching request `id` (live or not: the caller checks), as `watcher`; `None`
    /// when `max` watchers of that sort are already watching or the coordinator is shutting
    /// down, so the caller answers at once.
    pub fn watch(&self, id: Uuid, watcher: Watcher, max: usize) -> Option<RequestWatch> {
        let closed = self.closed.subscribe();
        if *closed.borrow() {
            return None;
        }
        let mut watches = self.watches.lock().expect("watches lock");
        if *watches.count(watcher) >= max {
            return None;
        }
        *watches.count(watcher) += 1;
        let changes = watches
            .signals
            .entry(id)
            .or_insert_with(|| watch::Sender::new(()))
            .subscribe();
        Some(RequestWatch {
            id,
            watcher,
            changes: Some(changes),
            closed,
            watches: self.watches.clone(),
        })
    }

    /// How many watchers of the sort `watcher` there are now.
    pub fn watchers(&self, watcher: Watcher) -> usize {
        *self.watches.lock().expect("watches lock").count(watcher)
    }

    /// How many requests have a change signal now (one per request with watchers).
    pub fn watched_requests(&self) -> usize {
        self.watches.lock().expect("watches lock").signals.len()
    }

    /// Lets every watcher go, now and from now on: the coordinator is shutting down.
    pub fn close_watches(&self) {
        self.closed.send_replace(true);
    }

    /// Wakes the watchers of `ids` (called with the queue unlocked), or, while a write turn is
    /// held, when it is let go (see [`WriteTurn`]).
    fn wake(&self, ids: &[Uuid]) {
        let mut watches = self.watches.lock().expect("watches lock");
        if watches.signals.is_empty() {
            return;
        }
        for id in ids {
            if !watches.signals.contains_key(id) {
                continue;
            }
            if watches.turn_held {
                watches.deferred.push(*id);
            } else {
                watches.signals[id].send_replace(());
            }
        }
    }
}
