//! The text models in use now, for `/status/models?type=text` and the dashboard: as the image
//! side (`crate::activity`), with work in tokens.

use crate::accounts::Worker;
use crate::activity::UNKNOWN_ETA_SECS;
use crate::kind::JobKind;
use crate::request::LiveRequest;
use crate::text::Text;
use horde_api::status::ActiveModel;
use std::collections::{BTreeMap, HashMap};

/// Every model online text workers serve, counted in threads, and every model a text request
/// with work left names: `queued` its waiting tokens (`max_length` a text, under each model
/// it names), `jobs` its texts waiting or in flight, `performance` the model's recent tokens a
/// second (`speeds`), `eta` how long the queue takes at that speed.
pub fn active_models<'a, 'b>(
    online_workers: impl IntoIterator<Item = &'a Worker>,
    requests: impl IntoIterator<Item = &'b LiveRequest<Text>>,
    speeds: &HashMap<String, f64>,
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
        let queued = Text::work(&request.body, counts.waiting);
        for model in Text::models(&request.body) {
            let e = entry(&mut models, model);
            e.queued += queued;
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
            kind: "text".into(),
        })
}
