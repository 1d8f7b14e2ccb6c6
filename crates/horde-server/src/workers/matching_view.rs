//! What matching needs to know beyond one worker: the model reference, and which models online
//! workers serve (a model nobody serves may be stood in for, when a request allows it).

use super::registry::WorkerEntry;
use horde_core::model_reference::ModelReference;
use horde_core::WorkerCaps;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// (a requested model nobody online serves, the worker's model that may run it) pairs.
type StandIns = Vec<(String, String)>;

/// What matching needs to know beyond one worker: the registry, and which models online
/// workers serve (a model nobody serves may be stood in for, when a request allows it).
pub struct MatchingView {
    model_reference: Arc<ModelReference>,
    served: HashSet<String>,
    /// Stand-ins by the model list a worker offers (workers often offer the same list).
    fallbacks: Mutex<HashMap<Vec<String>, StandIns>>,
}

impl MatchingView {
    /// The view of `model_reference` with the models online workers serve.
    pub fn new(model_reference: Arc<ModelReference>, served: HashSet<String>) -> Self {
        MatchingView {
            model_reference,
            served,
            fallbacks: Mutex::default(),
        }
    }

    /// The matching view of `entry`: its own capabilities, its step limits per model when it
    /// limits steps, its inpainting models, and the models it may stand in for.
    pub fn caps(&self, entry: &WorkerEntry) -> WorkerCaps {
        let mut caps = entry.caps();
        if entry.worker.flags.limit_max_steps {
            caps.step_limits = Some(
                caps.models
                    .iter()
                    .map(|m| (m.clone(), self.model_reference.step_limit(m)))
                    .collect(),
            );
        }
        caps.inpainting_models = caps
            .models
            .iter()
            .filter(|m| {
                self.model_reference
                    .get(m)
                    .is_some_and(|info| info.inpainting)
            })
            .cloned()
            .collect();
        caps.fallback = self
            .fallbacks
            .lock()
            .expect("fallbacks lock")
            .entry(caps.models.clone())
            .or_insert_with(|| self.model_reference.fallbacks(&caps.models, &self.served))
            .clone();
        caps
    }

    /// Whether some online worker serves `model`.
    pub fn is_served(&self, model: &str) -> bool {
        self.served.contains(model)
    }
}
