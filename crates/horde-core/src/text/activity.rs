//! The text models in use now, for `/status/models?type=text` and the dashboard: the image
//! side's function (`crate::activity::active_models_of`) with work in tokens.

use crate::accounts::Worker;
use crate::activity::active_models_of;
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
    active_models_of(online_workers, requests, speeds, Text::work)
}
