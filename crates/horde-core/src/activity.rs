//! What the status endpoints and the dashboard report about the horde's work, from the online
//! workers and the live requests: the models in use (`/status/models`) and the work waiting
//! (`/status/performance`, the dashboard). The dashboard and the endpoints call the same
//! functions, so they cannot disagree.

use crate::accounts::Worker;
use crate::kind::JobKind;
use crate::request::LiveRequest;
use crate::work;
use horde_api::status::ActiveModel;
use std::collections::{BTreeMap, HashMap};

/// The `eta` of a model with work queued and no measured speed (the public horde's value).
const UNKNOWN_ETA_SECS: i64 = 10_000;

/// The work of the live requests that is not done.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueuedWork {
    /// Images waiting or in flight (the public horde's `queued_requests`).
    pub images: u64,
    /// Megapixelsteps of the images waiting, each request counted once.
    pub megapixelsteps: f64,
}

/// The work of `requests` that is not done.
pub fn queued_work<'a>(requests: impl IntoIterator<Item = &'a LiveRequest>) -> QueuedWork {
    requests
        .into_iter()
        .fold(QueuedWork::default(), |total, request| {
            let counts = request.counts();
            QueuedWork {
                images: total.images + u64::from(counts.waiting + counts.processing),
                megapixelsteps: total.megapixelsteps
                    + work::megapixelsteps(&request.body.params, counts.waiting),
            }
        })
}

/// `/status/models`: every model an online worker (not in maintenance) serves, with its
/// workers' threads, and every model a request with work left names. As the public horde:
/// `queued` is the pixelsteps of the waiting images under each model the request names (a
/// request naming two models counts under both), `jobs` its images waiting or in flight,
/// `performance` the model's recent speed (pixelsteps/s, from `speeds`:
/// `ModelPerformance::averages`), `eta` how long the queue takes at that speed.
pub fn active_models<'a, 'b>(
    online_workers: impl IntoIterator<Item = &'a Worker>,
    requests: impl IntoIterator<Item = &'b LiveRequest>,
    speeds: &HashMap<String, f64>,
) -> BTreeMap<String, ActiveModel> {
    active_models_of(online_workers, requests, speeds, |body, waiting| {
        work::pixelsteps(&body.params) * f64::from(waiting)
    })
}

/// [`active_models`] for the requests of kind `K`, whose `waiting` jobs of a body are
/// `queued(body, waiting)` units of work (the unit `speeds` are in).
pub fn active_models_of<'a, 'b, K: JobKind>(
    online_workers: impl IntoIterator<Item = &'a Worker>,
    requests: impl IntoIterator<Item = &'b LiveRequest<K>>,
    speeds: &HashMap<String, f64>,
    queued: impl Fn(&K::Body, u32) -> f64,
) -> BTreeMap<String, ActiveModel> {
    let mut models: BTreeMap<String, ActiveModel> = BTreeMap::new();
    for worker in online_workers.into_iter().filter(|w| !w.maintenance) {
        for model in &worker.flags.models {
            entry(&mut models, model, K::NAME).count += worker.threads;
        }
    }
    for request in requests {
        let counts = request.counts();
        if counts.waiting + counts.processing == 0 {
            continue;
        }
        let waiting_work = queued(&request.body, counts.waiting);
        for model in K::models(&request.body) {
            let e = entry(&mut models, model, K::NAME);
            e.queued += waiting_work;
            e.jobs += f64::from(counts.waiting + counts.processing);
        }
    }
    for model in models.values_mut() {
        model.performance = speeds.get(&model.name).copied().unwrap_or(0.0);
        model.eta = if model.performance > 0.0 && model.count > 0 {
            (model.queued / (f64::from(model.count) * model.performance)) as i64
        } else if model.queued > 0.0 {
            UNKNOWN_ETA_SECS
        } else {
            0
        };
    }
    models
}

fn entry<'a>(
    models: &'a mut BTreeMap<String, ActiveModel>,
    name: &str,
    kind: &str,
) -> &'a mut ActiveModel {
    models
        .entry(name.to_string())
        .or_insert_with(|| ActiveModel {
            name: name.to_string(),
            count: 0,
            performance: 0.0,
            queued: 0.0,
            jobs: 0.0,
            eta: 0,
            kind: kind.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::tests::request_from;
    use serde_json::json;

    fn worker(models: &[&str], threads: u32, maintenance: bool) -> Worker {
        Worker {
            id: uuid::Uuid::new_v4(),
            user_id: 1,
            name: "w".into(),
            info: None,
            created: 0,
            last_check_in: 0,
            bridge_agent: String::new(),
            threads,
            max_pixels: 0,
            nsfw: false,
            flags: crate::accounts::WorkerFlags {
                models: models.iter().map(|m| m.to_string()).collect(),
                ..Default::default()
            },
            maintenance,
            maintenance_msg: None,
            paused: false,
            kudos_generated: 0.0,
            kudos_uptime: 0.0,
            uptime: 0,
            uptime_rewarded: 0,
            reputation: Default::default(),
        }
    }

    #[test]
    fn models_count_threads_and_waiting_work_and_their_eta() {
        let workers = [
            worker(&["a"], 2, false),
            worker(&["a", "b"], 1, false),
            worker(&["c"], 4, true),
        ];
        let both = request_from(json!({"prompt": "p", "models": ["a", "b"],
            "params": {"n": 2, "width": 512, "height": 512, "steps": 10}}));
        let speeds = HashMap::from([("a".to_string(), 2_621_440.0)]);
        let models = active_models(&workers, [&both], &speeds);
        let pixelsteps = 2.0 * 512.0 * 512.0 * 10.0;
        let a = &models["a"];
        assert_eq!((a.count, a.jobs, a.queued), (3, 2.0, pixelsteps));
        // 5 242 880 pixelsteps over 3 threads at 2 621 440 a second.
        assert_eq!(a.eta, 0);
        let b = &models["b"];
        assert_eq!(
            (b.count, b.queued, b.eta),
            (1, pixelsteps, UNKNOWN_ETA_SECS)
        );
        assert!(
            !models.contains_key("c"),
            "a worker in maintenance serves nothing"
        );
        let queued = queued_work([&both]);
        assert_eq!(queued.images, 2);
        assert!(
            (queued.megapixelsteps - pixelsteps / 1e6).abs() < 1e-9,
            "once, not per model"
        );
    }
}
