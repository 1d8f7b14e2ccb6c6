//! What the status endpoints and the dashboard report about the horde's work, from the online
//! workers and the live requests: the models in use (`/status/models`) and the work waiting
//! (`/status/performance`, the dashboard). The dashboard and the endpoints call the same
//! functions, so they cannot disagree.

use crate::accounts::Worker;
use crate::performance::ModelPerformance;
use crate::request::LiveRequest;
use crate::work;
use horde_api::status::ActiveModel;
use std::collections::BTreeMap;

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
/// `performance` the model's recent speed (pixelsteps/s), `eta` how long the queue takes at
/// that speed.
pub fn active_models<'a, 'b>(
    online_workers: impl IntoIterator<Item = &'a Worker>,
    requests: impl IntoIterator<Item = &'b LiveRequest>,
    speeds: &ModelPerformance,
    now: i64,
) -> BTreeMap<String, ActiveModel> {
    let mut models: BTreeMap<String, ActiveModel> = BTreeMap::new();
    for worker in online_workers.into_iter().filter(|w| !w.maintenance) {
        for model in &worker.flags.models {
            entry(&mut models, model).count += worker.threads;
        }
    }
    for request in requests {
        let counts = request.counts();
        if counts.waiting + counts.processing == 0 {
            continue;
        }
        let queued = work::pixelsteps(&request.body.params) * f64::from(counts.waiting);
        for model in &request.body.models {
            let e = entry(&mut models, model);
            e.queued += queued;
            e.jobs += f64::from(counts.waiting + counts.processing);
        }
    }
    for model in models.values_mut() {
        model.performance = speeds.average(&model.name, now);
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

fn entry<'a>(models: &'a mut BTreeMap<String, ActiveModel>, name: &str) -> &'a mut ActiveModel {
    models
        .entry(name.to_string())
        .or_insert_with(|| ActiveModel {
            name: name.to_string(),
            count: 0,
            performance: 0.0,
            queued: 0.0,
            jobs: 0.0,
            eta: 0,
            kind: "image".into(),
        })
}
