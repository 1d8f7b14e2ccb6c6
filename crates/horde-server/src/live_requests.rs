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

use crate::error::{ApiError, ApiResult};
use crate::group_commit::RequestWriter;
use horde_api::Rc;
use horde_core::request::{Job, LiveRequest};
use horde_core::{Image, Queue};
use horde_store::StoredKind;
use std::collections::HashMap;
use std::sync::Mutex;
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
}

/// The turn to change live requests and store the change: held from the change in memory
/// until the change is committed, so commits happen in the order of the changes.
pub struct WriteTurn<'a> {
    _turn: tokio::sync::MutexGuard<'a, ()>,
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
        }
    }

    /// Waits for the turn to change and store (see [`WriteTurn`]).
    pub async fn write_turn(&self) -> WriteTurn<'_> {
        WriteTurn {
            _turn: self.write_order.lock().await,
        }
    }

    /// `f` of the queue as it stands.
    pub fn read<R>(&self, f: impl FnOnce(&Queue<K>) -> R) -> R {
        f(&self.queue.lock().expect("queue lock"))
    }

    /// `f` applied to the queue in memory. A change that is to be stored is made holding a
    /// [`WriteTurn`].
    pub fn change<R>(&self, f: impl FnOnce(&mut Queue<K>) -> R) -> R {
        f(&mut self.queue.lock().expect("queue lock"))
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
        self.change(|queue| queue.next_seq())
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
