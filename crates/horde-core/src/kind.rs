//! Kinds of work: what the horde queues, matches, prices and times is written once, over
//! [`JobKind`]; each kind says only what is its own. Image generation ([`Image`]) is the first;
//! text generation and interrogation each add a type implementing `JobKind` (its request body,
//! what its workers declare, its matching rules, its unit of work) and get the queue
//! ([`Queue`](crate::Queue)`<K>`), the request lifecycle ([`LiveRequest`]`<K>`: jobs, submits,
//! counts, cancel, refunds), routing by reliability ([`Standby`](crate::Standby)`<K>`), wait
//! estimates and deadlines without copying the image path.
//!
//! What stays per kind, on purpose: the wire types (`horde-api`), the request rules
//! (`request_rules` for images) and the price of a job (`pricing` for images), which differ
//! in substance between kinds.

use crate::deadline::{self, DeadlineBounds};
use crate::matching::{self, SkipReason, WorkerCaps};
use crate::request::LiveRequest;
use crate::work;
use horde_api::image::ImageRequest;
use std::fmt::Debug;
use uuid::Uuid;

/// What the queue needs to know of a worker declaration, whatever the kind.
pub trait Capabilities: Debug + Clone {
    fn worker_id(&self) -> Uuid;
    /// The models it serves.
    fn models(&self) -> &[String];
    /// The requested models it may stand in for (model fallback), beside its own.
    fn stands_in_for(&self) -> Vec<&str>;
    /// The users whose requests it serves first (the owner among them).
    fn priority_user_ids(&self) -> &[i64];
}

/// A kind of work (see the module documentation).
pub trait JobKind: Debug + Clone + Copy + PartialEq + Send + Sync + 'static {
    /// What a client asks for, as accepted (normalised); stored as JSON with the request.
    type Body: Debug
        + Clone
        + PartialEq
        + Send
        + Sync
        + serde::Serialize
        + serde::de::DeserializeOwned;
    /// What a worker of this kind declares, with what the coordinator knows of it.
    type Caps: Capabilities;

    /// The kind's name in the API: `type` of `/status/models` and `/workers`.
    const NAME: &'static str;

    /// The models a request names (none: any worker's model will do).
    fn models(body: &Self::Body) -> &[String];

    /// Whether a worker may take a job of `request`, or the first reason it may not (the
    /// public horde's `skipped` keys).
    fn can_take(request: &LiveRequest<Self>, worker: &Self::Caps) -> Result<(), SkipReason>;

    /// The model the worker runs `request` with.
    fn chosen_model(request: &LiveRequest<Self>, worker: &Self::Caps) -> Option<String>;

    /// How many jobs of `request` the worker takes in one pop.
    fn batch_size(request: &LiveRequest<Self>, worker: &Self::Caps) -> u32;

    /// Whether jobs of `other` may run in the same pass of a worker as jobs of `request` (a
    /// batch of prompts: the same batch, everything but the prompt and seed alike). A worker
    /// that runs per-job prompts gets such requests' jobs in one pop (`Queue::add_companions`).
    /// None by default.
    fn shares_pass(_request: &LiveRequest<Self>, _other: &LiveRequest<Self>) -> bool {
        false
    }

    /// How many jobs one pass of `worker` holds when it runs `request` with the requests that
    /// share its pass (by default what it takes of `request` alone).
    fn pass_capacity(request: &LiveRequest<Self>, worker: &Self::Caps) -> u32 {
        Self::batch_size(request, worker)
    }

    /// The seed of the next job handed out (from `rng` when the request set none).
    fn next_seed(request: &LiveRequest<Self>, rng: &mut impl rand::Rng) -> u64;

    /// The work of `jobs` jobs of `body`, in the kind's unit (megapixelsteps for images),
    /// which speeds, wait estimates and reputation measure in.
    fn work(body: &Self::Body, jobs: u32) -> f64;

    /// Seconds a worker that does `speed` units of work a second gets for `batch` jobs.
    fn deadline_secs(
        body: &Self::Body,
        batch: u32,
        speed: Option<f64>,
        bounds: DeadlineBounds,
    ) -> i64;

    /// The kudos basis of one job (the public horde's `wp.kudos`), of which the requester's
    /// charge and the worker's reward are made.
    fn job_kudos(body: &Self::Body) -> f64;

    /// What the requester pays for one delivered job whose basis (the job's kudos, with the
    /// model's multiplier) is `job_kudos`; the worker's reward is made from the basis alone.
    fn requester_charge(body: &Self::Body, job_kudos: f64) -> f64;
}

/// Image generation (`/generate/…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Image;

impl Capabilities for WorkerCaps {
    fn worker_id(&self) -> Uuid {
        self.worker_id
    }

    fn models(&self) -> &[String] {
        &self.models
    }

    fn stands_in_for(&self) -> Vec<&str> {
        self.fallback
            .iter()
            .map(|(wanted, _)| wanted.as_str())
            .collect()
    }

    fn priority_user_ids(&self) -> &[i64] {
        &self.priority_user_ids
    }
}

impl JobKind for Image {
    type Body = ImageRequest;
    type Caps = WorkerCaps;

    const NAME: &'static str = "image";

    fn models(body: &ImageRequest) -> &[String] {
        &body.models
    }

    fn can_take(request: &LiveRequest, worker: &WorkerCaps) -> Result<(), SkipReason> {
        matching::can_generate(request, worker)
    }

    fn chosen_model(request: &LiveRequest, worker: &WorkerCaps) -> Option<String> {
        matching::chosen_model(request, worker)
    }

    fn batch_size(request: &LiveRequest, worker: &WorkerCaps) -> u32 {
        matching::batch_size(request, worker)
    }

    fn shares_pass(request: &LiveRequest, other: &LiveRequest) -> bool {
        matching::shares_pass(request, other)
    }

    fn pass_capacity(request: &LiveRequest, worker: &WorkerCaps) -> u32 {
        matching::pass_capacity(request, worker)
    }

    fn next_seed(request: &LiveRequest, rng: &mut impl rand::Rng) -> u64 {
        let index = request.jobs_total - request.n_remaining;
        match (request.base_seed, request.body.params.seed_variation) {
            (Some(base), Some(variation)) => crate::seed::varied_seed(base, variation, index),
            (Some(base), None) => base,
            (None, _) => crate::seed::random_seed(rng),
        }
    }

    fn work(body: &ImageRequest, jobs: u32) -> f64 {
        work::megapixelsteps(&body.params, jobs)
    }

    fn deadline_secs(
        body: &ImageRequest,
        batch: u32,
        speed: Option<f64>,
        bounds: DeadlineBounds,
    ) -> i64 {
        deadline::job_deadline_secs(&body.params, batch, speed, bounds)
    }

    fn job_kudos(body: &ImageRequest) -> f64 {
        crate::pricing::job_kudos(body)
    }

    fn requester_charge(body: &ImageRequest, job_kudos: f64) -> f64 {
        crate::pricing::requester_charge(body, job_kudos)
    }
}

#[cfg(test)]
mod tests {
    //! A second kind, written only as its own rules, runs on the same queue and request
    //! lifecycle: what text generation and interrogation will do.
    use super::*;
    use crate::queue::{DeadlineTerms, PopOutcome, Queue};
    use crate::request::{JobState, LiveRequest};
    use crate::routing::Standby;
    use horde_api::image::SubmitState;

    /// A toy kind: a request asks for `words` words of one model; a job's work is its words.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Words;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct WordsBody {
        models: Vec<String>,
        words: u32,
    }

    #[derive(Debug, Clone)]
    struct WordsWorker {
        id: Uuid,
        models: Vec<String>,
        max_words: u32,
    }

    impl Capabilities for WordsWorker {
        fn worker_id(&self) -> Uuid {
            self.id
        }
        fn models(&self) -> &[String] {
            &self.models
        }
        fn stands_in_for(&self) -> Vec<&str> {
            vec![]
        }
        fn priority_user_ids(&self) -> &[i64] {
            &[]
        }
    }

    impl JobKind for Words {
        type Body = WordsBody;
        type Caps = WordsWorker;
        const NAME: &'static str = "words";

        fn models(body: &WordsBody) -> &[String] {
            &body.models
        }
        fn can_take(request: &LiveRequest<Words>, worker: &WordsWorker) -> Result<(), SkipReason> {
            if request.body.words > worker.max_words {
                return Err(SkipReason::MaxPixels);
            }
            Ok(())
        }
        fn chosen_model(request: &LiveRequest<Words>, _: &WordsWorker) -> Option<String> {
            request.body.models.first().cloned()
        }
        fn batch_size(_: &LiveRequest<Words>, _: &WordsWorker) -> u32 {
            1
        }
        fn next_seed(_: &LiveRequest<Words>, _: &mut impl rand::Rng) -> u64 {
            0
        }
        fn work(body: &WordsBody, jobs: u32) -> f64 {
            f64::from(body.words * jobs)
        }
        fn deadline_secs(body: &WordsBody, batch: u32, _: Option<f64>, _: DeadlineBounds) -> i64 {
            i64::from(body.words * batch)
        }
        fn job_kudos(body: &WordsBody) -> f64 {
            f64::from(body.words) / 10.0
        }
        fn requester_charge(_: &WordsBody, job_kudos: f64) -> f64 {
            job_kudos + 1.0
        }
    }

    fn request(words: u32) -> LiveRequest<Words> {
        let body = WordsBody {
            models: vec!["poet".into()],
            words,
        };
        LiveRequest {
            id: Uuid::new_v4(),
            user_id: 1,
            job_kudos: Words::job_kudos(&body),
            body,
            base_seed: None,
            created: 0,
            seq: 0,
            priority: 0,
            n_remaining: 2,
            jobs_total: 2,
            consumed_kudos: 0.0,
            faulted: false,
            cancelled: false,
            can_pay_upfront: true,
            shared_key: None,
            expiry: 1000,
            version: 0,
            batch_id: None,
            batch_index: 0,
            jobs: vec![],
        }
    }

    #[test]
    fn another_kind_is_queued_matched_timed_and_finished_by_the_same_code() {
        let mut queue: Queue<Words> = Queue::new();
        let (small, large) = (request(50), request(500));
        queue.insert(large.clone());
        queue.insert(small.clone());
        let worker = WordsWorker {
            id: Uuid::new_v4(),
            models: vec!["poet".into()],
            max_words: 100,
        };
        let terms = DeadlineTerms {
            speed: None,
            bounds: DeadlineBounds {
                floor_secs: 0,
                ceiling_secs: 0,
            },
        };
        let mut rng = rand::rng();
        let PopOutcome::Assigned(assignment) =
            queue.pop(&worker, "w", 100, terms, &mut Standby::none(), &mut rng)
        else {
            panic!("the worker takes the request its rules allow");
        };
        assert_eq!(
            assignment.request_id, small.id,
            "the large one is not for it"
        );
        let job = &assignment.jobs[0];
        assert_eq!(job.deadline, 100 + 50, "the kind's own deadline rule");
        assert_eq!(job.model, "poet");
        assert_eq!(queue.get(small.id).unwrap().work_waiting(), 50.0);
        let done = queue
            .update(small.id, |r| {
                r.apply_submit(job.id, SubmitState::Ok, None, vec![], 1.0, 3)
                    .map(|j| j.state)
            })
            .unwrap();
        assert_eq!(done, Ok(JobState::Ok));
        let counts = queue.get(small.id).unwrap().counts();
        assert_eq!((counts.finished, counts.waiting), (1, 1));
    }
}
