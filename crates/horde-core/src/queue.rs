//! The queue of live requests and the pop: which waiting request a worker gets. Written once
//! for every kind of work (`crate::kind`): `Queue<K>` holds the live requests of kind `K`.
//!
//! Waiting requests are indexed by model and by requester, each index ordered by (priority
//! descending, acceptance order ascending), as the public horde orders its queue. A pop walks only
//! the requests for the worker's models, first those of the users the worker prioritises, and
//! stops at the first it may take: it never scans the whole queue.

use crate::deadline::DeadlineBounds;
use crate::kind::{Capabilities, Image, JobKind};
use crate::matching::SkipReason;
use crate::request::{Job, JobState, LiveRequest};
use crate::routing::Standby;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use uuid::Uuid;

/// Order of the queue: higher priority first, then older first.
type QueueKey = (Reverse<i64>, u64, Uuid);

/// Waiting requests gain this much priority per second (the public horde adds 50 every 10 s),
/// so that old requests overtake richer newcomers. Since every waiting request gains the same,
/// the order is that of `priority − rate × acceptance time`, a key that never changes.
pub const PRIORITY_AGING_PER_SEC: i64 = 5;

fn key_of<K: JobKind>(request: &LiveRequest<K>) -> QueueKey {
    let aged = request
        .priority
        .saturating_sub(PRIORITY_AGING_PER_SEC.saturating_mul(request.created));
    (Reverse(aged), request.seq, request.id)
}

/// Requests that name no model: any worker may take them.
const ANY_MODEL: &str = "";

/// Live requests of kind `K` (waiting, in flight, or finished and not yet expired) and their
/// indexes.
#[derive(Debug)]
pub struct Queue<K: JobKind = Image> {
    /// Boxed: a request is about a kilobyte, and growing the map moves every value it holds
    /// (with 100 000 queued, a growth moved 100 MB under the queue lock).
    requests: HashMap<Uuid, Box<LiveRequest<K>>>,
    job_owner: HashMap<Uuid, Uuid>,
    by_model: HashMap<String, BTreeSet<QueueKey>>,
    by_user: HashMap<i64, BTreeSet<QueueKey>>,
    /// Images still waiting per user (the sum of `n_remaining` over `by_user`), kept so the
    /// concurrency check is O(1).
    waiting_images: HashMap<i64, u64>,
    /// All waiting requests, for queue positions.
    waiting: BTreeSet<QueueKey>,
    /// Waiting members of each batch of prompts, so a pop finds the members that may share a
    /// pass with the one it took without a scan.
    by_batch: HashMap<Uuid, BTreeSet<QueueKey>>,
    /// Every live member of each batch, by its place in the batch.
    batches: HashMap<Uuid, BTreeSet<(u32, Uuid)>>,
    /// Jobs in flight by deadline, so late ones are found without a scan.
    deadlines: BTreeSet<(i64, Uuid)>,
    next_seq: u64,
}

/// Jobs handed to a worker by one pop.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub request_id: Uuid,
    pub model: String,
    pub jobs: Vec<Job>,
    /// Jobs of other requests that share this one's pass (members of the same batch of
    /// prompts, `Queue::add_companions`), one assignment per request; empty for a plain pop.
    pub companions: Vec<Assignment>,
}

/// Who a pop's jobs go to, with which model, and when they are due back.
struct HandOut<'a> {
    worker_id: Uuid,
    worker_name: &'a str,
    model: &'a str,
    now: i64,
    deadline: i64,
}

impl HandOut<'_> {
    /// Hands `count` jobs of `request` out (its waiting images go down by as many), each with
    /// its own id and seed drawn from `rng`.
    fn jobs<K: JobKind>(
        &self,
        request: &mut LiveRequest<K>,
        count: u32,
        rng: &mut impl rand::Rng,
    ) -> Vec<Job> {
        let mut jobs = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let job = Job {
                // Time-ordered (UUIDv7 from `now`): job rows are appended to the id index,
                // not spread over it.
                id: uuid::Builder::from_unix_timestamp_millis(
                    self.now.max(0) as u64 * 1000,
                    &rng.random(),
                )
                .into_uuid(),
                request_id: request.id,
                worker_id: self.worker_id,
                worker_name: self.worker_name.to_string(),
                model: self.model.to_string(),
                seed: request.next_seed(rng),
                started: self.now,
                deadline: self.deadline,
                state: JobState::Processing,
                censored: false,
                gen_metadata: vec![],
                reward: 0.0,
            };
            request.n_remaining -= 1;
            request.jobs.push(job.clone());
            jobs.push(job);
        }
        jobs
    }
}

#[derive(Debug, Clone)]
pub enum PopOutcome {
    Assigned(Assignment),
    Nothing(BTreeMap<String, u64>),
}

impl<K: JobKind> Default for Queue<K> {
    fn default() -> Self {
        Queue {
            requests: HashMap::new(),
            job_owner: HashMap::new(),
            by_model: HashMap::new(),
            by_user: HashMap::new(),
            waiting_images: HashMap::new(),
            waiting: BTreeSet::new(),
            by_batch: HashMap::new(),
            batches: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_seq: 0,
        }
    }
}

/// How long the worker popping gets for its jobs: its measured speed (`None` before its first
/// job) and the operator's bounds.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineTerms {
    pub speed: Option<f64>,
    pub bounds: DeadlineBounds,
}

impl<K: JobKind> Queue<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The acceptance number the next request gets.
    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Adds (or re-adds after a restart) a live request.
    pub fn insert(&mut self, request: LiveRequest<K>) {
        self.next_seq = self.next_seq.max(request.seq);
        for job in &request.jobs {
            self.job_owner.insert(job.id, request.id);
        }
        let id = request.id;
        if let Some(batch) = request.batch_id {
            let members = self.batches.entry(batch).or_default();
            members.insert((request.batch_index, id));
        }
        self.requests.insert(id, Box::new(request));
        self.reindex(id);
    }

    /// The live members of batch `batch_id`, in the order of its prompts.
    pub fn batch_members(&self, batch_id: Uuid) -> Vec<&LiveRequest<K>> {
        self.batches
            .get(&batch_id)
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| self.requests.get(id).map(|r| &**r))
            .collect()
    }

    pub fn get(&self, id: Uuid) -> Option<&LiveRequest<K>> {
        self.requests.get(&id).map(|r| &**r)
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    pub fn requests(&self) -> impl Iterator<Item = &LiveRequest<K>> {
        self.requests.values().map(|r| &**r)
    }

    /// The request a job belongs to.
    pub fn request_of_job(&self, job_id: Uuid) -> Option<&LiveRequest<K>> {
        self.job_owner
            .get(&job_id)
            .and_then(|r| self.requests.get(r))
            .map(|r| &**r)
    }

    /// Changes a request through `edit` and keeps the indexes true.
    pub fn update<T>(
        &mut self,
        id: Uuid,
        edit: impl FnOnce(&mut LiveRequest<K>) -> T,
    ) -> Option<T> {
        self.unindex(id);
        let result = self.requests.get_mut(&id).map(|r| edit(r));
        if let Some(request) = self.requests.get(&id) {
            for job in &request.jobs {
                self.job_owner.insert(job.id, id);
            }
        }
        self.reindex(id);
        result
    }

    /// Puts `request` in place of the copy with its id (the stored one, after another
    /// coordinator changed it), or adds it.
    pub fn replace(&mut self, request: LiveRequest<K>) {
        self.remove(request.id);
        self.insert(request);
    }

    pub fn remove(&mut self, id: Uuid) -> Option<LiveRequest<K>> {
        self.unindex(id);
        let request = self.requests.remove(&id)?;
        for job in &request.jobs {
            self.job_owner.remove(&job.id);
        }
        if let Some(batch) = request.batch_id {
            if let Some(members) = self.batches.get_mut(&batch) {
                members.remove(&(request.batch_index, id));
                if members.is_empty() {
                    self.batches.remove(&batch);
                }
            }
        }
        Some(*request)
    }

    /// Takes back every job in flight whose deadline is before `now`: each image goes back to
    /// the queue, ahead of newer work (its request keeps its place), unless its request has now
    /// been restarted `max_faults` times. Returns (request, job) of each job taken back.
    pub fn take_back_late_jobs(&mut self, now: i64, max_faults: u32) -> Vec<(Uuid, Uuid)> {
        let late: Vec<(i64, Uuid)> = self
            .deadlines
            .range(..(now, Uuid::nil()))
            .copied()
            .collect();
        let mut taken = Vec::new();
        for (_, job_id) in late {
            let Some(&request_id) = self.job_owner.get(&job_id) else {
                continue;
            };
            if self.update(request_id, |r| r.time_out_job(job_id, max_faults)) == Some(true) {
                taken.push((request_id, job_id));
            }
        }
        taken
    }

    /// Ids of requests whose expiry has passed.
    pub fn expired(&self, now: i64) -> Vec<Uuid> {
        self.requests
            .values()
            .filter(|r| r.expiry <= now)
            .map(|r| r.id)
            .collect()
    }

    /// 1-based position among waiting requests, 0 when nothing of it waits.
    pub fn position(&self, id: Uuid) -> usize {
        match self.requests.get(&id) {
            Some(r) if r.is_waiting() => self.waiting.range(..key_of(r)).count() + 1,
            _ => 0,
        }
    }

    /// Images still waiting in this user's requests (the concurrency limit counts them).
    pub fn waiting_images_of_user(&self, user_id: i64) -> u64 {
        self.waiting_images.get(&user_id).copied().unwrap_or(0)
    }

    /// Every job in flight, with its request.
    pub fn in_flight(&self) -> impl Iterator<Item = (&Job, &LiveRequest<K>)> {
        self.deadlines.iter().filter_map(|(_, job_id)| {
            let request = self.requests.get(self.job_owner.get(job_id)?)?;
            let job = request.jobs.iter().find(|j| j.id == *job_id)?;
            Some((job, &**request))
        })
    }

    /// The waiting requests ahead of (and including) request `id`, in queue order, at most
    /// `limit` of them.
    pub fn waiting_up_to(&self, id: Uuid, limit: usize) -> Vec<&LiveRequest<K>> {
        let Some(request) = self.requests.get(&id).filter(|r| r.is_waiting()) else {
            return vec![];
        };
        self.waiting
            .range(..=key_of(request))
            .take(limit)
            .map(|k| &*self.requests[&k.2])
            .collect()
    }

    /// Picks the best request `worker` may take and hands it a batch of jobs. Requests of the
    /// users the worker prioritises come first; among the rest, those that more reliable
    /// waiting workers in `standby` could take are left to them. The jobs are due back by the
    /// kind's deadline on `terms`; their ids and random seeds are drawn from `rng`.
    pub fn pop(
        &mut self,
        worker: &K::Caps,
        worker_name: &str,
        now: i64,
        terms: DeadlineTerms,
        standby: &mut Standby<K>,
        rng: &mut impl rand::Rng,
    ) -> PopOutcome {
        let mut skipped: HashMap<SkipReason, u64> = HashMap::new();
        let chosen = self
            .find_for(worker, &mut skipped, None)
            .or_else(|| self.find_for(worker, &mut skipped, Some(standby)));
        let Some(request_id) = chosen else {
            return PopOutcome::Nothing(
                skipped
                    .into_iter()
                    .map(|(k, v)| (k.key().to_string(), v))
                    .collect(),
            );
        };
        let assignment = self
            .update(request_id, |request| {
                let model = K::chosen_model(request, worker).unwrap_or_default();
                let batch = K::batch_size(request, worker);
                let hand_out = HandOut {
                    worker_id: worker.worker_id(),
                    worker_name,
                    model: &model,
                    now,
                    deadline: now
                        + K::deadline_secs(&request.body, batch, terms.speed, terms.bounds),
                };
                let jobs = hand_out.jobs(request, batch, rng);
                Assignment {
                    request_id,
                    model,
                    jobs,
                    companions: vec![],
                }
            })
            .expect("chosen request exists");
        PopOutcome::Assigned(assignment)
    }

    /// Adds to a pop's `assignment` the jobs of waiting requests that may share its pass
    /// (`JobKind::shares_pass`: members of its batch of prompts) and that `worker` may take with
    /// the same model, in queue order, up to the pass's capacity (`JobKind::pass_capacity`).
    /// Each such request's jobs are one more assignment in `companions`, with their own ids and
    /// seeds; every job of the pass, the first request's included, is then due back at the
    /// deadline of the whole pass. Only for a worker that runs a different prompt per job.
    pub fn add_companions(
        &mut self,
        assignment: &mut Assignment,
        worker: &K::Caps,
        worker_name: &str,
        now: i64,
        terms: DeadlineTerms,
        rng: &mut impl rand::Rng,
    ) {
        let chosen = self.companions_of(assignment, worker);
        let Some(first) = self.requests.get(&assignment.request_id) else {
            return;
        };
        if chosen.is_empty() {
            return;
        }
        let total = assignment.jobs.len() as u32 + chosen.iter().map(|(_, n)| n).sum::<u32>();
        let deadline = now + K::deadline_secs(&first.body, total, terms.speed, terms.bounds);
        let ids: HashSet<Uuid> = assignment.jobs.iter().map(|j| j.id).collect();
        self.update(assignment.request_id, |r| {
            for job in r.jobs.iter_mut().filter(|j| ids.contains(&j.id)) {
                job.deadline = deadline;
            }
        });
        for job in &mut assignment.jobs {
            job.deadline = deadline;
        }
        let model = assignment.model.clone();
        let hand_out = HandOut {
            worker_id: worker.worker_id(),
            worker_name,
            model: &model,
            now,
            deadline,
        };
        for (request_id, count) in chosen {
            let jobs = self.update(request_id, |r| hand_out.jobs(r, count, rng));
            assignment.companions.push(Assignment {
                request_id,
                model: model.clone(),
                jobs: jobs.expect("a waiting member exists"),
                companions: vec![],
            });
        }
    }

    /// The waiting requests (with how many of their jobs) that may join `assignment`'s pass.
    fn companions_of(&self, assignment: &Assignment, worker: &K::Caps) -> Vec<(Uuid, u32)> {
        let Some(first) = self.requests.get(&assignment.request_id) else {
            return vec![];
        };
        let Some(members) = first.batch_id.and_then(|b| self.by_batch.get(&b)) else {
            return vec![];
        };
        let capacity = K::pass_capacity(first, worker) as usize;
        let mut room = capacity.saturating_sub(assignment.jobs.len()) as u32;
        let mut chosen = vec![];
        for key in members {
            if room == 0 {
                break;
            }
            let other = &self.requests[&key.2];
            let fits = other.id != first.id
                && K::shares_pass(first, other)
                && K::can_take(other, worker).is_ok()
                && K::chosen_model(other, worker).unwrap_or_default() == assignment.model;
            if fits {
                let count = other.n_remaining.min(room);
                room -= count;
                chosen.push((other.id, count));
            }
        }
        chosen
    }

    /// Walks candidates in queue order; the first the worker may take wins. Without a
    /// `standby`, only the requests of the worker's priority users are walked.
    fn find_for(
        &self,
        worker: &K::Caps,
        skipped: &mut HashMap<SkipReason, u64>,
        mut standby: Option<&mut Standby<K>>,
    ) -> Option<Uuid> {
        let priority_users = standby.is_none();
        let mut seen = HashSet::new();
        let candidates: Box<dyn Iterator<Item = &QueueKey>> = if priority_users {
            let sets = worker
                .priority_user_ids()
                .iter()
                .filter_map(|u| self.by_user.get(u));
            Box::new(merge(sets.collect()))
        } else {
            let stood_in_for = worker.stands_in_for();
            let mut sets: Vec<&BTreeSet<QueueKey>> = worker
                .models()
                .iter()
                .map(String::as_str)
                .chain(stood_in_for)
                .filter_map(|m| self.by_model.get(m))
                .collect();
            if let Some(any) = self.by_model.get(ANY_MODEL) {
                sets.push(any);
            }
            Box::new(merge(sets))
        };
        for key in candidates {
            let id = key.2;
            if !seen.insert(id) {
                continue;
            }
            let request = &self.requests[&id];
            match K::can_take(request, worker) {
                Ok(()) => {
                    let left_for_better = standby
                        .as_deref_mut()
                        .is_some_and(|s| s.leaves_for_better(request));
                    if !left_for_better {
                        return Some(id);
                    }
                }
                Err(reason) if !priority_users => *skipped.entry(reason).or_default() += 1,
                Err(_) => {}
            }
        }
        None
    }

    fn unindex(&mut self, id: Uuid) {
        let Some(request) = self.requests.get(&id) else {
            return;
        };
        for job in request
            .jobs
            .iter()
            .filter(|j| j.state == JobState::Processing)
        {
            self.deadlines.remove(&(job.deadline, job.id));
        }
        let key = key_of(request);
        self.waiting.remove(&key);
        if let Some(batch) = request.batch_id {
            if let Some(set) = self.by_batch.get_mut(&batch) {
                set.remove(&key);
                if set.is_empty() {
                    self.by_batch.remove(&batch);
                }
            }
        }
        for model in model_keys(request) {
            if let Some(set) = self.by_model.get_mut(model) {
                set.remove(&key);
                if set.is_empty() {
                    self.by_model.remove(model);
                }
            }
        }
        if let Some(set) = self.by_user.get_mut(&request.user_id) {
            if set.remove(&key) {
                let images = self.waiting_images.entry(request.user_id).or_default();
                *images -= u64::from(request.n_remaining);
                if *images == 0 {
                    self.waiting_images.remove(&request.user_id);
                }
            }
            if set.is_empty() {
                self.by_user.remove(&request.user_id);
            }
        }
    }

    fn reindex(&mut self, id: Uuid) {
        let Some(request) = self.requests.get(&id) else {
            return;
        };
        for job in request
            .jobs
            .iter()
            .filter(|j| j.state == JobState::Processing)
        {
            self.deadlines.insert((job.deadline, job.id));
        }
        if !request.is_waiting() {
            return;
        }
        let key = key_of(request);
        self.waiting.insert(key);
        if let Some(batch) = request.batch_id {
            self.by_batch.entry(batch).or_default().insert(key);
        }
        for model in model_keys(request) {
            self.by_model
                .entry(model.to_string())
                .or_default()
                .insert(key);
        }
        if self.by_user.entry(request.user_id).or_default().insert(key) {
            *self.waiting_images.entry(request.user_id).or_default() +=
                u64::from(request.n_remaining);
        }
    }
}

fn model_keys<K: JobKind>(request: &LiveRequest<K>) -> Vec<&str> {
    let models = K::models(&request.body);
    if models.is_empty() {
        vec![ANY_MODEL]
    } else {
        models.iter().map(String::as_str).collect()
    }
}

/// Merges ordered sets into one ordered stream (duplicates are left to the caller).
fn merge<'a>(sets: Vec<&'a BTreeSet<QueueKey>>) -> impl Iterator<Item = &'a QueueKey> + 'a {
    let mut iters: Vec<_> = sets.into_iter().map(|s| s.iter().peekable()).collect();
    std::iter::from_fn(move || {
        let best = iters
            .iter_mut()
            .enumerate()
            .filter_map(|(i, it)| it.peek().map(|k| (i, *k)))
            .min_by(|a, b| a.1.cmp(b.1))?
            .0;
        iters[best].next()
    })
}

#[cfg(test)]
pub(crate) mod tests;
