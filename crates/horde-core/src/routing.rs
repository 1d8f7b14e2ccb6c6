//! Routing by reliability: which of several idle workers gets the most important request.
//!
//! Workers pull jobs, so the coordinator only chooses when more than one worker is waiting for
//! work. The rule: when a worker pops, every *more reliable* worker that is standing by (its last
//! pop found nothing, a moment ago) and could take the same request reserves one request for
//! itself, walking the queue from the top. The popping worker gets the first request nobody more
//! reliable reserved. So the highest-priority requests go to the most reliable idle workers, and
//! the rest still go out at once: nothing waits for a better worker unless a better worker is
//! idle right now, and never longer than the hold time.
//!
//! Routing by loaded model (issue 30): a worker that declares the models it holds in memory
//! (`loaded_models`) would first spend a minute or more loading a model it does not hold. So
//! when the model it would run a request with is not among them, and another worker standing by
//! holds that model and could take the request, the request is left for that worker (one
//! reservation each, the same hold time). A worker that declares nothing is treated as holding
//! all its models, so public-horde workers route as before.

use crate::kind::{Capabilities, Image, JobKind};
use crate::matching::holds_model;
use crate::request::LiveRequest;
use std::collections::HashSet;
use uuid::Uuid;

/// The workers (of kind `K`) standing by while one worker pops: the more reliable ones, and
/// those holding models the popping worker would have to load.
#[derive(Debug)]
pub struct Standby<K: JobKind = Image> {
    better: Vec<K::Caps>,
    /// The popping worker and the models it declared loaded (`None`: it declared nothing).
    popper: Option<(K::Caps, Vec<String>)>,
    /// Workers standing by, each with the models it declared loaded.
    holders: Vec<(K::Caps, Vec<String>)>,
    /// The workers (by id) that reserved a request at this pop.
    reserved: HashSet<Uuid>,
    now: i64,
    hold_secs: i64,
}

impl<K: JobKind> Default for Standby<K> {
    fn default() -> Self {
        Standby {
            better: vec![],
            popper: None,
            holders: vec![],
            reserved: HashSet::new(),
            now: 0,
            hold_secs: 0,
        }
    }
}

impl<K: JobKind> Standby<K> {
    /// No routing by reliability: the popping worker gets the best request it can take.
    pub fn none() -> Self {
        Standby::default()
    }

    /// `better`: the waiting workers more reliable than the one popping, most reliable first.
    /// A request accepted `hold_secs` or more ago is no longer held back for them.
    pub fn new(better: Vec<K::Caps>, now: i64, hold_secs: i64) -> Self {
        Standby {
            better,
            now,
            hold_secs,
            ..Standby::default()
        }
    }

    /// Adds routing by loaded model: `popper` is the worker popping and `loaded` the models it
    /// declared in memory (`None`: it declared nothing, and nothing is left for holders);
    /// `holders` the other workers standing by, each with the models it declared loaded.
    pub fn with_holders(
        mut self,
        popper: &K::Caps,
        loaded: Option<&[String]>,
        holders: Vec<(K::Caps, Vec<String>)>,
    ) -> Self {
        self.popper = loaded.map(|held| (popper.clone(), held.to_vec()));
        self.holders = holders;
        self
    }

    /// Whether `request` is left for a more reliable waiting worker, or for a waiting worker
    /// that holds the model the popping worker would have to load; if so, that worker's one
    /// reservation is used up.
    pub fn leaves_for_better(&mut self, request: &LiveRequest<K>) -> bool {
        if self.hold_secs <= 0 || self.now - request.created >= self.hold_secs {
            return false;
        }
        let reserved = &self.reserved;
        let taker = self
            .better
            .iter()
            .find(|w| !reserved.contains(&w.worker_id()) && K::can_take(request, w).is_ok())
            .or_else(|| self.holder_for(request))
            .map(Capabilities::worker_id);
        match taker {
            Some(id) => self.reserved.insert(id),
            None => false,
        }
    }

    /// The first unreserved waiting worker that holds the model the popping worker would run
    /// `request` with, when the popping worker does not hold it, and that could take it.
    fn holder_for(&self, request: &LiveRequest<K>) -> Option<&K::Caps> {
        let (popper, loaded) = self.popper.as_ref()?;
        let model = K::chosen_model(request, popper)?;
        if holds_model(Some(loaded), &model) {
            return None;
        }
        self.holders
            .iter()
            .filter(|(w, held)| !self.reserved.contains(&w.worker_id()) && held.contains(&model))
            .map(|(w, _)| w)
            .find(|w| K::can_take(request, w).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::Standby;
    use crate::queue::tests::{add, fixed_deadline, worker};
    use crate::queue::{PopOutcome, Queue};
    use crate::WorkerCaps;
    use serde_json::json;
    use uuid::Uuid;

    const HOLD: i64 = 5;

    /// A queue holding requests for model "m" of the given priorities, accepted at time 0.
    fn queue_of(priorities: &[i64]) -> (Queue, Vec<Uuid>) {
        let mut queue = Queue::new();
        let ids = priorities
            .iter()
            .map(|&p| add(&mut queue, json!({"prompt": "p", "models": ["m"]}), p, 1))
            .collect();
        (queue, ids)
    }

    fn popped(queue: &mut Queue, w: &WorkerCaps, standby: &mut Standby) -> Option<Uuid> {
        match queue.pop(w, "w", 1, fixed_deadline(100), standby, &mut rand::rng()) {
            PopOutcome::Assigned(a) => Some(a.request_id),
            PopOutcome::Nothing(_) => None,
        }
    }

    #[test]
    fn the_most_important_requests_are_left_to_more_reliable_waiting_workers() {
        let (mut queue, ids) = queue_of(&[10, 50, 30]);
        let better = vec![worker(&["m"]), worker(&["m"])];
        let mut standby = Standby::new(better, 1, HOLD);
        // Two better workers wait: they reserve priorities 50 and 30; the less reliable gets 10.
        assert_eq!(
            popped(&mut queue, &worker(&["m"]), &mut standby),
            Some(ids[0])
        );
    }

    #[test]
    fn a_worker_takes_the_top_request_when_no_better_one_waits() {
        let (mut queue, ids) = queue_of(&[10, 50, 30]);
        let mut standby = Standby::none();
        assert_eq!(
            popped(&mut queue, &worker(&["m"]), &mut standby),
            Some(ids[1])
        );
    }

    #[test]
    fn better_workers_that_cannot_take_a_request_reserve_nothing() {
        let (mut queue, ids) = queue_of(&[10, 50]);
        let mut standby = Standby::new(vec![worker(&["other"])], 1, HOLD);
        assert_eq!(
            popped(&mut queue, &worker(&["m"]), &mut standby),
            Some(ids[1])
        );
    }

    #[test]
    fn with_every_request_reserved_the_less_reliable_worker_gets_nothing() {
        let (mut queue, _) = queue_of(&[50]);
        let mut standby = Standby::new(vec![worker(&["m"])], 1, HOLD);
        assert_eq!(popped(&mut queue, &worker(&["m"]), &mut standby), None);
    }

    #[test]
    fn requests_older_than_the_hold_go_to_whoever_asks() {
        let (mut queue, ids) = queue_of(&[10, 50]);
        let mut standby = Standby::new(vec![worker(&["m"])], HOLD, HOLD);
        assert_eq!(
            popped(&mut queue, &worker(&["m"]), &mut standby),
            Some(ids[1])
        );
    }

    #[test]
    fn the_owners_own_requests_are_never_held_back() {
        let mut queue = Queue::new();
        let own = add(&mut queue, json!({"prompt": "p", "models": ["m"]}), 0, 99);
        add(&mut queue, json!({"prompt": "p", "models": ["m"]}), 50, 1);
        let mut standby = Standby::new(vec![worker(&["m"]), worker(&["m"])], 1, HOLD);
        assert_eq!(popped(&mut queue, &worker(&["m"]), &mut standby), Some(own));
    }

    /// A worker serving "a" and "b" that declared `loaded` in memory.
    fn holding(loaded: &[&str]) -> (WorkerCaps, Vec<String>) {
        let mut w = worker(&["a", "b"]);
        let held: Vec<String> = loaded.iter().map(|m| m.to_string()).collect();
        w.loaded_models = Some(held.clone());
        (w, held)
    }

    /// A queue holding one request for model `model`, accepted at time 0.
    fn one_request(model: &str) -> (Queue, Uuid) {
        let mut queue = Queue::new();
        let id = add(&mut queue, json!({"prompt": "p", "models": [model]}), 10, 1);
        (queue, id)
    }

    /// The popping worker (which holds `popper_loaded`) with `holders` standing by, at `now`.
    fn by_model(popper: &WorkerCaps, holders: Vec<(WorkerCaps, Vec<String>)>, now: i64) -> Standby {
        Standby::new(vec![], now, HOLD).with_holders(
            popper,
            popper.loaded_models.as_deref(),
            holders,
        )
    }

    #[test]
    fn a_request_is_left_for_a_waiting_worker_holding_its_model() {
        let (mut queue, _) = one_request("a");
        let (popper, _) = holding(&["b"]);
        let mut standby = by_model(&popper, vec![holding(&["a"])], 1);
        assert_eq!(popped(&mut queue, &popper, &mut standby), None);
    }

    #[test]
    fn with_nobody_holding_the_model_the_popping_worker_takes_it() {
        let (mut queue, id) = one_request("a");
        let (popper, _) = holding(&["b"]);
        let mut standby = by_model(&popper, vec![holding(&["b"])], 1);
        assert_eq!(popped(&mut queue, &popper, &mut standby), Some(id));
    }

    #[test]
    fn a_worker_holding_the_model_itself_takes_it() {
        let (mut queue, id) = one_request("a");
        let (popper, _) = holding(&["a"]);
        let mut standby = by_model(&popper, vec![holding(&["a"])], 1);
        assert_eq!(popped(&mut queue, &popper, &mut standby), Some(id));
    }

    #[test]
    fn a_worker_that_declares_nothing_is_treated_as_holding_all_its_models() {
        let (mut queue, id) = one_request("a");
        let popper = worker(&["a", "b"]);
        let mut standby = by_model(&popper, vec![holding(&["a"])], 1);
        assert_eq!(popped(&mut queue, &popper, &mut standby), Some(id));
    }

    #[test]
    fn requests_older_than_the_hold_are_not_left_for_holders() {
        let (mut queue, id) = one_request("a");
        let (popper, _) = holding(&["b"]);
        let mut standby = by_model(&popper, vec![holding(&["a"])], HOLD);
        assert_eq!(popped(&mut queue, &popper, &mut standby), Some(id));
    }

    #[test]
    fn each_holder_reserves_one_request() {
        let mut queue = Queue::new();
        add(&mut queue, json!({"prompt": "p", "models": ["a"]}), 50, 1);
        let second = add(&mut queue, json!({"prompt": "p", "models": ["a"]}), 10, 1);
        let (popper, _) = holding(&["b"]);
        let mut standby = by_model(&popper, vec![holding(&["a"])], 1);
        assert_eq!(popped(&mut queue, &popper, &mut standby), Some(second));
    }

    #[test]
    fn a_holder_that_cannot_take_the_request_reserves_nothing() {
        let (mut queue, id) = one_request("a");
        let (popper, _) = holding(&["b"]);
        let (mut holder, held) = holding(&["a"]);
        holder.max_pixels = 64 * 64;
        let mut standby = by_model(&popper, vec![(holder, held)], 1);
        assert_eq!(popped(&mut queue, &popper, &mut standby), Some(id));
    }
}
