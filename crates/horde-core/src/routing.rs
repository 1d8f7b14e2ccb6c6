//! Routing by reliability: which of several idle workers gets the most important request.
//!
//! Workers pull jobs, so the coordinator only chooses when more than one worker is waiting for
//! work. The rule: when a worker pops, every *more reliable* worker that is standing by (its last
//! pop found nothing, a moment ago) and could take the same request reserves one request for
//! itself, walking the queue from the top. The popping worker gets the first request nobody more
//! reliable reserved. So the highest-priority requests go to the most reliable idle workers, and
//! the rest still go out at once: nothing waits for a better worker unless a better worker is
//! idle right now, and never longer than the hold time.

use crate::kind::{Image, JobKind};
use crate::request::LiveRequest;

/// The more reliable workers (of kind `K`) standing by while one worker pops.
#[derive(Debug)]
pub struct Standby<K: JobKind = Image> {
    better: Vec<K::Caps>,
    reserved: Vec<bool>,
    now: i64,
    hold_secs: i64,
}

impl<K: JobKind> Default for Standby<K> {
    fn default() -> Self {
        Standby {
            better: vec![],
            reserved: vec![],
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
        let reserved = vec![false; better.len()];
        Standby {
            better,
            reserved,
            now,
            hold_secs,
        }
    }

    /// Whether `request` is left for a more reliable waiting worker; if so, that worker's one
    /// reservation is used up.
    pub fn leaves_for_better(&mut self, request: &LiveRequest<K>) -> bool {
        if self.now - request.created >= self.hold_secs {
            return false;
        }
        let taker = self
            .better
            .iter()
            .zip(&self.reserved)
            .position(|(worker, reserved)| !reserved && K::can_take(request, worker).is_ok());
        match taker {
            Some(index) => {
                self.reserved[index] = true;
                true
            }
            None => false,
        }
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
}
