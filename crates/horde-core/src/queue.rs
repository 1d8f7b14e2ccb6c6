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
        self.requests.insert(id, Box::new(request));
        self.reindex(id);
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
                let deadline =
                    now + K::deadline_secs(&request.body, batch, terms.speed, terms.bounds);
                let mut jobs = Vec::with_capacity(batch as usize);
                for _ in 0..batch {
                    let job = Job {
                        // Time-ordered (UUIDv7 from `now`): job rows are appended to the
                        // id index, not spread over it.
                        id: uuid::Builder::from_unix_timestamp_millis(
                            now.max(0) as u64 * 1000,
                            &rng.random(),
                        )
                        .into_uuid(),
                        request_id,
                        worker_id: worker.worker_id(),
                        worker_name: worker_name.to_string(),
                        model: model.clone(),
                        seed: request.next_seed(rng),
                        started: now,
                        deadline,
                        state: JobState::Processing,
                        censored: false,
                        gen_metadata: vec![],
                        reward: 0.0,
                    };
                    request.n_remaining -= 1;
                    request.jobs.push(job.clone());
                    jobs.push(job);
                }
                Assignment {
                    request_id,
                    model,
                    jobs,
                }
            })
            .expect("chosen request exists");
        PopOutcome::Assigned(assignment)
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
pub(crate) mod tests {
    use super::*;
    use crate::matching::WorkerCaps;
    use crate::request::tests::request_from;
    use serde_json::json;

    /// Jobs due back `secs` after they are handed out, whatever the worker's speed.
    pub(crate) fn fixed_deadline(secs: i64) -> DeadlineTerms {
        DeadlineTerms {
            speed: None,
            bounds: DeadlineBounds {
                floor_secs: secs,
                ceiling_secs: secs,
            },
        }
    }

    pub(crate) fn worker(models: &[&str]) -> WorkerCaps {
        WorkerCaps {
            worker_id: Uuid::new_v4(),
            owner_id: 99,
            owner_trusted: false,
            models: models.iter().map(|m| m.to_string()).collect(),
            max_pixels: 1024 * 1024,
            nsfw: true,
            blacklist: vec![],
            allow_img2img: true,
            allow_painting: true,
            allow_post_processing: true,
            declared_post_processors: None,
            allow_lora: false,
            allow_controlnet: false,
            amount: 1,
            bridge_agent: "AI Horde Worker reGen:9.0.1:x".into(),
            priority_user_ids: vec![99],
            maintenance: false,
            require_upfront_kudos: false,
            speed_mps: None,
            extra_slow: false,
            step_limits: None,
            fallback: vec![],
        }
    }

    pub(crate) fn add(
        queue: &mut Queue,
        body: serde_json::Value,
        priority: i64,
        user: i64,
    ) -> Uuid {
        let mut r = request_from(body);
        r.priority = priority;
        r.user_id = user;
        r.seq = queue.next_seq();
        let id = r.id;
        queue.insert(r);
        id
    }

    #[test]
    fn waiting_images_per_user_follow_every_change() {
        let brute = |q: &Queue, user: i64| -> u64 {
            q.requests()
                .filter(|r| r.user_id == user && r.is_waiting())
                .map(|r| u64::from(r.n_remaining))
                .sum()
        };
        let mut q = Queue::new();
        let a = add(&mut q, json!({"prompt": "a", "params": {"n": 2}}), 0, 5);
        add(&mut q, json!({"prompt": "b", "params": {"n": 3}}), 0, 5);
        add(&mut q, json!({"prompt": "c", "params": {"n": 4}}), 0, 6);
        assert_eq!(q.waiting_images_of_user(5), 5);
        let w = worker(&["stable_diffusion"]);
        popped(&mut q, &w);
        popped(&mut q, &w);
        popped(&mut q, &w);
        for user in [5, 6, 7] {
            assert_eq!(
                q.waiting_images_of_user(user),
                brute(&q, user),
                "user {user}"
            );
        }
        q.update(a, |r| r.cancelled = true);
        q.remove(a);
        for user in [5, 6] {
            assert_eq!(
                q.waiting_images_of_user(user),
                brute(&q, user),
                "user {user}"
            );
        }
    }

    fn popped(queue: &mut Queue, w: &WorkerCaps) -> Option<Uuid> {
        match queue.pop(
            w,
            "w",
            0,
            fixed_deadline(150),
            &mut Standby::none(),
            &mut rand::rng(),
        ) {
            PopOutcome::Assigned(a) => Some(a.request_id),
            PopOutcome::Nothing(_) => None,
        }
    }

    /// The jobs of one pop: what the queue decided for `rng`.
    fn popped_jobs(
        queue: &mut Queue,
        w: &WorkerCaps,
        rng: &mut impl rand::Rng,
    ) -> Vec<(Uuid, u64)> {
        match queue.pop(
            w,
            "w",
            1_700_000_000,
            fixed_deadline(150),
            &mut Standby::none(),
            rng,
        ) {
            PopOutcome::Assigned(a) => a.jobs.iter().map(|j| (j.id, j.seed)).collect(),
            PopOutcome::Nothing(_) => vec![],
        }
    }

    #[test]
    fn the_same_randomness_hands_out_the_same_job_ids_and_seeds() {
        use rand::SeedableRng;
        let request = request_from(json!({"prompt": "p", "models": ["m"], "params": {"n": 3}}));
        let run = |seed: u64| {
            let mut queue = Queue::new();
            queue.insert(request.clone());
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            popped_jobs(&mut queue, &worker(&["m"]), &mut rng)
        };
        let (first, again, other) = (run(7), run(7), run(8));
        assert!(!first.is_empty());
        assert_eq!(first, again, "reproducible from the randomness passed in");
        assert_ne!(first, other, "and drawn from it");
    }

    #[test]
    fn waiting_requests_gain_priority_until_old_ones_overtake_richer_newcomers() {
        let mut queue = Queue::new();
        let body = json!({"prompt": "p", "models": ["m"]});
        let mut add_at = |priority: i64, created: i64| {
            let mut r = request_from(body.clone());
            (r.priority, r.created, r.seq) = (priority, created, queue.next_seq());
            let id = r.id;
            queue.insert(r);
            id
        };
        let old_poor = add_at(100, 0);
        let newer_rich = add_at(200, 30); // 100 more kudos, but 30 s later: 150 points of aging
        let recent_rich = add_at(300, 10); // 200 more kudos, 10 s later: 50 points of aging
        let w = worker(&["m"]);
        assert_eq!(popped(&mut queue, &w), Some(recent_rich));
        assert_eq!(popped(&mut queue, &w), Some(old_poor));
        assert_eq!(popped(&mut queue, &w), Some(newer_rich));
    }

    #[test]
    fn higher_priority_then_older_first() {
        let mut q = Queue::new();
        let low = add(&mut q, json!({"prompt": "a"}), 1, 1);
        let high_old = add(&mut q, json!({"prompt": "b"}), 5, 2);
        let high_new = add(&mut q, json!({"prompt": "c"}), 5, 3);
        let w = worker(&["stable_diffusion"]);
        assert_eq!(q.position(high_new), 2);
        assert_eq!(popped(&mut q, &w), Some(high_old));
        assert_eq!(popped(&mut q, &w), Some(high_new));
        assert_eq!(popped(&mut q, &w), Some(low));
        assert_eq!(popped(&mut q, &w), None);
        assert_eq!(q.waiting_count(), 0);
    }

    #[test]
    fn late_jobs_go_back_ahead_of_newer_work_until_the_restart_limit() {
        let mut q = Queue::new();
        let old = add(&mut q, json!({"prompt": "a"}), 0, 1);
        let w = worker(&["stable_diffusion"]);
        assert_eq!(popped(&mut q, &w), Some(old));
        let newer = add(&mut q, json!({"prompt": "b"}), 0, 2);
        assert!(
            q.take_back_late_jobs(150, 2).is_empty(),
            "not before the deadline"
        );
        let taken = q.take_back_late_jobs(151, 2);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, old);
        let counts = q.get(old).unwrap().counts();
        assert_eq!(
            (counts.restarted, counts.waiting, counts.processing),
            (1, 1, 0)
        );
        match q.pop(
            &w,
            "w",
            200,
            fixed_deadline(150),
            &mut Standby::none(),
            &mut rand::rng(),
        ) {
            PopOutcome::Assigned(a) => assert_eq!(
                a.request_id, old,
                "the restarted image goes before newer work"
            ),
            other => panic!("{other:?}"),
        }
        assert!(
            q.take_back_late_jobs(300, 2).is_empty(),
            "the new job has its own deadline"
        );
        assert_eq!(q.take_back_late_jobs(1000, 2).len(), 1);
        let request = q.get(old).unwrap();
        assert!(
            request.faulted && request.counts().done,
            "two restarts fault the request"
        );
        assert_eq!(popped(&mut q, &w), Some(newer));
        assert_eq!(popped(&mut q, &w), None);
    }

    #[test]
    fn the_owners_requests_come_first() {
        let mut q = Queue::new();
        let rich = add(&mut q, json!({"prompt": "a"}), 1000, 1);
        let own = add(&mut q, json!({"prompt": "b"}), -5, 99);
        let w = worker(&["stable_diffusion"]);
        assert_eq!(popped(&mut q, &w), Some(own));
        assert_eq!(popped(&mut q, &w), Some(rich));
    }

    #[test]
    fn only_requests_for_the_workers_models_are_considered() {
        let mut q = Queue::new();
        add(&mut q, json!({"prompt": "a", "models": ["other"]}), 10, 1);
        let any = add(&mut q, json!({"prompt": "b", "models": []}), 0, 1);
        let w = worker(&["stable_diffusion"]);
        assert_eq!(popped(&mut q, &w), Some(any));
        assert_eq!(popped(&mut q, &w), None);
    }

    #[test]
    fn skipped_counts_say_why() {
        let mut q = Queue::new();
        add(
            &mut q,
            json!({"prompt": "a", "params": {"width": 2048, "height": 2048}}),
            0,
            1,
        );
        add(
            &mut q,
            json!({"prompt": "a", "trusted_workers": true}),
            0,
            1,
        );
        let w = worker(&["stable_diffusion"]);
        match q.pop(
            &w,
            "w",
            0,
            fixed_deadline(150),
            &mut Standby::none(),
            &mut rand::rng(),
        ) {
            PopOutcome::Nothing(skipped) => {
                assert_eq!(skipped.get("max_pixels"), Some(&1));
                assert_eq!(skipped.get("untrusted"), Some(&1));
            }
            other => panic!("expected nothing, got {other:?}"),
        }
    }

    #[test]
    fn a_request_with_n_2_is_split_over_two_workers_then_leaves_the_waiting_set() {
        let mut q = Queue::new();
        let id = add(&mut q, json!({"prompt": "a", "params": {"n": 2}}), 0, 1);
        let w = worker(&["stable_diffusion"]);
        assert_eq!(popped(&mut q, &w), Some(id));
        assert_eq!(q.position(id), 1);
        assert_eq!(popped(&mut q, &w), Some(id));
        assert_eq!(q.position(id), 0);
        assert_eq!(q.get(id).unwrap().jobs.len(), 2);
        let job = q.get(id).unwrap().jobs[0].id;
        assert_eq!(q.request_of_job(job).unwrap().id, id);
    }
}
