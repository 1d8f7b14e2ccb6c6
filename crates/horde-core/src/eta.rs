//! How long a waiting request will wait: the work queued ahead of it (and its own) that the
//! workers able to serve it will have to do, over their measured throughput.
//!
//! Each request ahead is shared among all the workers able to take it, in proportion to their
//! speeds, so work that other workers will take is not counted against this request's workers.
//! Work in progress counts too: what is left of the jobs the serving workers hold.

use crate::kind::{Image, JobKind};
use crate::request::LiveRequest;

/// One online worker of kind `K` as the estimate sees it.
#[derive(Debug, Clone)]
pub struct WorkerThroughput<K: JobKind = Image> {
    pub caps: K::Caps,
    /// Work (megapixelsteps for images) per second over all its threads.
    pub mps: f64,
    /// Work left of the jobs it holds now.
    pub in_flight_mps: f64,
}

/// Seconds until the last image of `ahead.last()` is finished, or `None` when no worker can
/// serve it. `ahead` is the waiting queue up to and including the request, in order.
pub fn estimate_wait_secs<K: JobKind>(
    ahead: &[&LiveRequest<K>],
    workers: &[WorkerThroughput<K>],
) -> Option<f64> {
    let target = ahead.last()?;
    let serving: Vec<bool> = workers
        .iter()
        .map(|w| K::can_take(target, &w.caps).is_ok())
        .collect();
    let throughput: f64 = workers
        .iter()
        .zip(&serving)
        .filter(|(_, s)| **s)
        .map(|(w, _)| w.mps)
        .sum();
    if throughput <= 0.0 {
        return None;
    }
    let mut work: f64 = workers
        .iter()
        .zip(&serving)
        .filter(|(_, s)| **s)
        .map(|(w, _)| w.in_flight_mps)
        .sum();
    for request in ahead {
        let (mut ours, mut all) = (0.0, 0.0);
        for (w, serves_target) in workers.iter().zip(&serving) {
            if K::can_take(request, &w.caps).is_ok() {
                all += w.mps;
                if *serves_target {
                    ours += w.mps;
                }
            }
        }
        if all > 0.0 {
            work += request.work_waiting() * ours / all;
        }
    }
    Some(work / throughput)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::tests::worker;
    use crate::request::tests::request_from;
    use serde_json::json;

    fn at(mps: f64, models: &[&str]) -> WorkerThroughput {
        WorkerThroughput {
            caps: worker(models),
            mps,
            in_flight_mps: 0.0,
        }
    }

    /// 512×512, 10 steps, `n` images: 2.62144 megapixelsteps each.
    fn request(model: &str, n: u32) -> LiveRequest {
        request_from(json!({"prompt": "c", "models": [model], "params": {"n": n, "steps": 10}}))
    }

    #[test]
    fn the_work_ahead_over_the_serving_workers_throughput() {
        let a = request("a", 2);
        let b = request("a", 1);
        let wait = estimate_wait_secs(&[&a, &b], &[at(1.0, &["a"]), at(2.0, &["a"])]).unwrap();
        assert!((wait - 3.0 * 2.62144 / 3.0).abs() < 1e-9, "{wait}");
    }

    #[test]
    fn work_others_will_take_is_not_counted() {
        // The request ahead can go to both workers; only the first serves the target, so it
        // takes a third of that work (its share of the speed).
        let shared = request("a", 3);
        let target = request("b", 1);
        let workers = [at(1.0, &["a", "b"]), at(2.0, &["a"])];
        let wait = estimate_wait_secs(&[&shared, &target], &workers).unwrap();
        let expected = (3.0 * 2.62144 / 3.0 + 2.62144) / 1.0;
        assert!((wait - expected).abs() < 1e-9, "{wait}");
    }

    #[test]
    fn what_the_serving_workers_hold_counts_first() {
        let target = request("a", 1);
        let mut busy = at(2.0, &["a"]);
        busy.in_flight_mps = 4.0;
        let mut elsewhere = at(2.0, &["b"]);
        elsewhere.in_flight_mps = 100.0;
        let wait = estimate_wait_secs(&[&target], &[busy, elsewhere]).unwrap();
        assert!((wait - (4.0 + 2.62144) / 2.0).abs() < 1e-9, "{wait}");
    }

    #[test]
    fn nobody_able_to_serve_means_no_estimate() {
        let target = request("b", 1);
        assert_eq!(estimate_wait_secs(&[&target], &[at(1.0, &["a"])]), None);
        assert_eq!(estimate_wait_secs(&[], &[at(1.0, &["a"])]), None);
    }
}
