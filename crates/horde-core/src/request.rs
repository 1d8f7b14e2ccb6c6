//! A request's life: its jobs, their states, and the counts clients see.
//!
//! A `LiveRequest` is an accepted request of some kind of work (an image request: the public
//! horde's "WaitingPrompt") with the jobs handed out so far (its "ProcessingGenerations"). The
//! methods here are the only place where a request's counters change; they are the same for
//! every kind (`crate::kind`).

use crate::kind::{Image, JobKind};
use horde_api::image::{GenMetadata, SubmitState};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A request is faulted once this many of its jobs faulted or were taken back (the public
/// horde's rule; `[jobs] max_restarts` in the coordinator's config).
pub const FAULTS_BEFORE_REQUEST_FAILS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Handed to a worker, no result yet.
    Processing,
    Ok,
    Censored,
    Csam,
    /// Reported faulted by the worker, or taken back.
    Faulted,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Processing => "processing",
            JobState::Ok => "ok",
            JobState::Censored => "censored",
            JobState::Csam => "csam",
            JobState::Faulted => "faulted",
        }
    }
    pub fn parse(text: &str) -> Option<JobState> {
        Some(match text {
            "processing" => JobState::Processing,
            "ok" => JobState::Ok,
            "censored" => JobState::Censored,
            "csam" => JobState::Csam,
            "faulted" => JobState::Faulted,
            _ => return None,
        })
    }
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Ok | JobState::Censored | JobState::Csam)
    }
}

/// One image handed to one worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: Uuid,
    pub request_id: Uuid,
    pub worker_id: Uuid,
    pub worker_name: String,
    pub model: String,
    pub seed: u64,
    /// Unix seconds when it was handed out.
    pub started: i64,
    /// Unix seconds after which it may be taken back.
    pub deadline: i64,
    pub state: JobState,
    pub censored: bool,
    pub gen_metadata: Vec<GenMetadata>,
    /// Kudos the worker earned for it.
    pub reward: f64,
}

/// An accepted request of kind `K` (images unless said) and its jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveRequest<K: JobKind = Image> {
    pub id: Uuid,
    pub user_id: i64,
    /// The request as accepted, with the server's defaults filled in.
    pub body: K::Body,
    /// Seed of the first image, when the requester gave one.
    pub base_seed: Option<u64>,
    pub created: i64,
    /// Order of acceptance; ties in priority go to the older request.
    pub seq: u64,
    pub priority: i64,
    /// Images not yet handed out.
    pub n_remaining: u32,
    /// Images the requester will get (lowered by a cancel to what finished).
    pub jobs_total: u32,
    /// Per-image kudos basis (the public horde's `wp.kudos`).
    pub job_kudos: f64,
    pub consumed_kudos: f64,
    pub faulted: bool,
    pub cancelled: bool,
    /// The requester could pay for the images upfront when the request was accepted (trusted,
    /// or a balance above the floor worth an image): workers that `require_upfront_kudos` take
    /// only such requests.
    pub can_pay_upfront: bool,
    /// The shared key (its hash) the request was made with, if any.
    pub shared_key: Option<String>,
    /// Unix seconds after which the request and its images are removed.
    pub expiry: i64,
    /// How many times its stored row was changed. Each change bumps it in memory first, and
    /// the store writes the change only over the version before: a coordinator acting on an
    /// out-of-date copy (another one sharing the database changed the row) fails its write
    /// instead of overwriting the other's change.
    pub version: u64,
    /// The batch of prompts it was accepted in (`POST /generate/batch`), `None` when it was
    /// made alone. Members of one batch may share a worker's pass (`JobKind::shares_pass`).
    pub batch_id: Option<Uuid>,
    /// Its place in its batch's prompts (0 when it was made alone).
    pub batch_index: u32,
    pub jobs: Vec<Job>,
}

/// The counters of a check or status answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCounts {
    pub finished: u32,
    pub processing: u32,
    pub restarted: u32,
    pub waiting: u32,
    pub done: bool,
    pub faulted: bool,
}

/// Why a worker's submission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitRefusal {
    /// The job already has a result.
    Duplicate,
    /// The job was faulted or taken back.
    Aborted,
}

impl crate::Refusal for SubmitRefusal {
    fn rc(&self) -> horde_api::Rc {
        match self {
            SubmitRefusal::Duplicate => horde_api::Rc::DuplicateGen,
            SubmitRefusal::Aborted => horde_api::Rc::AbortedGen,
        }
    }

    fn message(&self) -> String {
        match self {
            SubmitRefusal::Duplicate => "Processing Generation has already been submitted.",
            SubmitRefusal::Aborted => "This job was aborted or faulted and cannot be submitted.",
        }
        .into()
    }
}

impl<K: JobKind> LiveRequest<K> {
    pub fn counts(&self) -> StatusCounts {
        let mut counts = StatusCounts {
            finished: 0,
            processing: 0,
            restarted: 0,
            waiting: 0,
            done: false,
            faulted: self.faulted,
        };
        for job in &self.jobs {
            match job.state {
                JobState::Processing => counts.processing += 1,
                JobState::Faulted => counts.restarted += 1,
                _ => counts.finished += 1,
            }
        }
        let unassigned = self
            .jobs_total
            .saturating_sub(counts.processing + counts.finished);
        counts.waiting = self.n_remaining.min(unassigned);
        // The public horde's rule: done when nothing waits and (finished − processing) ≥ jobs.
        counts.done = self.faulted
            || (self.n_remaining == 0 && counts.finished >= self.jobs_total + counts.processing);
        counts
    }

    pub fn is_done(&self) -> bool {
        self.counts().done
    }

    /// The work of all the jobs asked for, in the kind's unit (what daily quotas count).
    pub fn work_requested(&self) -> f64 {
        K::work(&self.body, self.jobs_total)
    }

    /// The work of the jobs not yet handed out.
    pub fn work_waiting(&self) -> f64 {
        K::work(&self.body, self.n_remaining)
    }

    /// Whether the request still has images waiting for a worker.
    pub fn is_waiting(&self) -> bool {
        self.n_remaining > 0 && !self.faulted && !self.cancelled
    }

    pub fn job(&self, job_id: Uuid) -> Option<&Job> {
        self.jobs.iter().find(|j| j.id == job_id)
    }

    /// The seed of the next job handed out (drawn from `rng` when the request set none).
    pub fn next_seed(&self, rng: &mut impl rand::Rng) -> u64 {
        K::next_seed(self, rng)
    }

    /// Records a worker's result for `job_id`. Returns the job as updated.
    pub fn apply_submit(
        &mut self,
        job_id: Uuid,
        state: SubmitState,
        seed: Option<u64>,
        gen_metadata: Vec<GenMetadata>,
        reward: f64,
        max_faults: u32,
    ) -> Result<&Job, SubmitRefusal> {
        let index = self
            .jobs
            .iter()
            .position(|j| j.id == job_id)
            .expect("caller checked the job belongs to this request");
        match self.jobs[index].state {
            JobState::Processing => {}
            JobState::Faulted => return Err(SubmitRefusal::Aborted),
            _ => return Err(SubmitRefusal::Duplicate),
        }
        let censored_by_metadata = gen_metadata
            .iter()
            .any(|m| m.kind == "censorship" && matches!(m.value.as_str(), "nsfw" | "csam"));
        let new_state = match state {
            SubmitState::Ok if censored_by_metadata => JobState::Censored,
            SubmitState::Ok => JobState::Ok,
            SubmitState::Censored => JobState::Censored,
            SubmitState::Csam => JobState::Csam,
            SubmitState::Faulted => JobState::Faulted,
        };
        if new_state == JobState::Faulted {
            self.fault_job(index, max_faults);
        } else {
            let job = &mut self.jobs[index];
            job.state = new_state;
            job.censored = new_state != JobState::Ok;
            job.reward = reward;
            if let Some(seed) = seed {
                job.seed = seed;
            }
            job.gen_metadata = gen_metadata;
        }
        Ok(&self.jobs[index])
    }

    /// Marks a job faulted and puts its image back in the queue, unless the request has now
    /// faulted too often.
    pub fn fault_job(&mut self, index: usize, max_faults: u32) {
        self.jobs[index].state = JobState::Faulted;
        let faults = self
            .jobs
            .iter()
            .filter(|j| j.state == JobState::Faulted)
            .count() as u32;
        if faults >= max_faults.max(1) {
            self.faulted = true;
            self.n_remaining = 0;
        } else if !self.cancelled {
            self.n_remaining += 1;
        }
    }

    /// Takes back a job whose deadline passed: its image goes back to the queue (the request
    /// keeps its place, ahead of newer work) unless the request has been restarted too often.
    /// Returns whether the job was still in flight.
    pub fn time_out_job(&mut self, job_id: Uuid, max_faults: u32) -> bool {
        match self
            .jobs
            .iter()
            .position(|j| j.id == job_id && j.state == JobState::Processing)
        {
            Some(index) => {
                self.fault_job(index, max_faults);
                true
            }
            None => false,
        }
    }

    /// Returns the activation `fee` of a request that faulted without delivering anything (the
    /// requester paid only the fee, and got nothing for it); the amount refunded, once.
    pub fn refund_if_faulted_unserved(&mut self, fee: f64) -> f64 {
        if self.faulted && fee > 0.0 && (self.consumed_kudos - fee).abs() < 1e-9 {
            self.consumed_kudos = 0.0;
            fee
        } else {
            0.0
        }
    }

    /// Cancels: nothing more is handed out; jobs in flight may still finish.
    pub fn cancel(&mut self) {
        let finished = self.jobs.iter().filter(|j| j.state.is_finished()).count() as u32;
        self.cancelled = true;
        self.n_remaining = 0;
        self.jobs_total = finished;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use horde_api::image::ImageRequest;

    pub(crate) fn request_from(json: serde_json::Value) -> LiveRequest {
        let body: ImageRequest = serde_json::from_value(json).unwrap();
        let n = body.params.n;
        LiveRequest {
            id: Uuid::new_v4(),
            user_id: 1,
            body,
            base_seed: None,
            created: 0,
            seq: 0,
            priority: 0,
            n_remaining: n,
            jobs_total: n,
            job_kudos: 10.0,
            consumed_kudos: 0.0,
            faulted: false,
            cancelled: false,
            can_pay_upfront: true,
            shared_key: None,
            expiry: 1200,
            version: 0,
            batch_id: None,
            batch_index: 0,
            jobs: vec![],
        }
    }

    pub(crate) fn hand_out(request: &mut LiveRequest) -> Uuid {
        let id = Uuid::new_v4();
        request.n_remaining -= 1;
        request.jobs.push(Job {
            id,
            request_id: request.id,
            worker_id: Uuid::nil(),
            worker_name: "w".into(),
            model: "m".into(),
            seed: 1,
            started: 0,
            deadline: 150,
            state: JobState::Processing,
            censored: false,
            gen_metadata: vec![],
            reward: 0.0,
        });
        id
    }

    #[test]
    fn counts_follow_the_lifecycle() {
        let mut r = request_from(serde_json::json!({"prompt": "p", "params": {"n": 2}}));
        assert_eq!((r.counts().waiting, r.counts().done), (2, false));
        let a = hand_out(&mut r);
        let b = hand_out(&mut r);
        let c = r.counts();
        assert_eq!((c.waiting, c.processing, c.done), (0, 2, false));
        r.apply_submit(
            a,
            SubmitState::Ok,
            Some(5),
            vec![],
            1.0,
            FAULTS_BEFORE_REQUEST_FAILS,
        )
        .unwrap();
        assert_eq!(r.counts().finished, 1);
        assert!(!r.is_done());
        r.apply_submit(
            b,
            SubmitState::Ok,
            None,
            vec![],
            1.0,
            FAULTS_BEFORE_REQUEST_FAILS,
        )
        .unwrap();
        assert!(r.is_done());
        assert_eq!(r.job(a).unwrap().seed, 5);
    }

    #[test]
    fn a_second_submit_is_a_duplicate() {
        let mut r = request_from(serde_json::json!({"prompt": "p"}));
        let a = hand_out(&mut r);
        r.apply_submit(
            a,
            SubmitState::Ok,
            None,
            vec![],
            1.0,
            FAULTS_BEFORE_REQUEST_FAILS,
        )
        .unwrap();
        let again = r
            .apply_submit(
                a,
                SubmitState::Ok,
                None,
                vec![],
                1.0,
                FAULTS_BEFORE_REQUEST_FAILS,
            )
            .map(|_| ());
        assert_eq!(again, Err(SubmitRefusal::Duplicate));
    }

    #[test]
    fn a_faulted_job_goes_back_to_the_queue_and_three_fault_the_request() {
        let mut r = request_from(serde_json::json!({"prompt": "p"}));
        for round in 1..=3 {
            let a = hand_out(&mut r);
            r.apply_submit(
                a,
                SubmitState::Faulted,
                None,
                vec![],
                0.0,
                FAULTS_BEFORE_REQUEST_FAILS,
            )
            .unwrap();
            assert_eq!(r.counts().restarted, round);
        }
        assert!(r.faulted);
        assert!(r.is_done());
        assert_eq!(r.n_remaining, 0);
    }

    #[test]
    fn censorship_metadata_marks_the_image_censored() {
        let mut r = request_from(serde_json::json!({"prompt": "p"}));
        let a = hand_out(&mut r);
        let meta = vec![GenMetadata {
            kind: "censorship".into(),
            value: "nsfw".into(),
            r#ref: None,
        }];
        let job = r
            .apply_submit(
                a,
                SubmitState::Ok,
                None,
                meta,
                1.0,
                FAULTS_BEFORE_REQUEST_FAILS,
            )
            .unwrap();
        assert_eq!(job.state, JobState::Censored);
        assert!(job.censored);
    }

    #[test]
    fn the_fee_of_a_request_that_faulted_unserved_is_refunded_once() {
        let mut r = request_from(serde_json::json!({"prompt": "p"}));
        r.consumed_kudos = 1.0;
        assert_eq!(r.refund_if_faulted_unserved(1.0), 0.0, "not faulted");
        r.faulted = true;
        assert_eq!(r.refund_if_faulted_unserved(1.0), 1.0);
        assert_eq!(r.refund_if_faulted_unserved(1.0), 0.0, "only once");
        let mut served = request_from(serde_json::json!({"prompt": "p"}));
        (served.consumed_kudos, served.faulted) = (6.5, true);
        assert_eq!(
            served.refund_if_faulted_unserved(1.0),
            0.0,
            "an image was delivered"
        );
    }

    #[test]
    fn cancel_keeps_finished_and_in_flight_images() {
        let mut r = request_from(serde_json::json!({"prompt": "p", "params": {"n": 3}}));
        let a = hand_out(&mut r);
        let b = hand_out(&mut r);
        r.apply_submit(
            a,
            SubmitState::Ok,
            None,
            vec![],
            1.0,
            FAULTS_BEFORE_REQUEST_FAILS,
        )
        .unwrap();
        r.cancel();
        let c = r.counts();
        assert_eq!(
            (c.waiting, c.finished, c.processing, c.done),
            (0, 1, 1, false)
        );
        r.apply_submit(
            b,
            SubmitState::Ok,
            None,
            vec![],
            1.0,
            FAULTS_BEFORE_REQUEST_FAILS,
        )
        .unwrap();
        assert!(r.is_done());
    }

    #[test]
    fn seed_variation_steps_the_seed_per_image() {
        let mut r = request_from(
            serde_json::json!({"prompt": "p", "params": {"n": 3, "seed_variation": 10}}),
        );
        r.base_seed = Some(100);
        assert_eq!(r.next_seed(&mut rand::rng()), 100);
        hand_out(&mut r);
        assert_eq!(r.next_seed(&mut rand::rng()), 110);
    }
}
