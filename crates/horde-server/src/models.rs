//! The model registry while the coordinator runs: loaded at start from the built-in copy, a
//! file or a URL (`[models]`), reloaded on an interval without a restart, and consulted when
//! requests arrive (unknown models), when workers check in (models they may serve) and when
//! images are priced (the baseline's kudos multiplier).

use crate::config::ModelsConfig;
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, SharedState};
use crate::workers::WorkerEntry;
use horde_api::image::ImageRequest;
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::registry::{ModelRegistry, BUILTIN_BASELINES, BUILTIN_MODELS};
use horde_core::WorkerCaps;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The registry `config` names.
pub async fn load_registry(config: &ModelsConfig) -> Result<ModelRegistry, String> {
    let models = read_source(&config.reference, BUILTIN_MODELS).await?;
    let baselines = read_source(&config.baselines, BUILTIN_BASELINES).await?;
    ModelRegistry::parse(&models, &baselines)
}

async fn read_source(source: &str, builtin: &str) -> Result<String, String> {
    if source.is_empty() || source == "builtin" {
        return Ok(builtin.to_string());
    }
    if source.starts_with("http://") || source.starts_with("https://") {
        let answer = reqwest::get(source)
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("{source}: {e}"))?;
        return answer.text().await.map_err(|e| format!("{source}: {e}"));
    }
    tokio::fs::read_to_string(source)
        .await
        .map_err(|e| format!("{source}: {e}"))
}

/// Reloads the registry every `reload_interval_secs`; a failed reload keeps the old one.
pub async fn run_reloads(state: SharedState) {
    let secs = state.config.models.reload_interval_secs;
    if secs == 0 {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        state.reload_models().await;
    }
}

/// (a requested model nobody online serves, the worker's model that may run it) pairs.
type StandIns = Vec<(String, String)>;

/// What matching needs to know beyond one worker: the registry, and which models online
/// workers serve (a model nobody serves may be stood in for, when a request allows it).
pub struct MatchingView {
    registry: Arc<ModelRegistry>,
    served: HashSet<String>,
    /// Stand-ins by the model list a worker offers (workers often offer the same list).
    fallbacks: Mutex<HashMap<Vec<String>, StandIns>>,
}

impl MatchingView {
    /// The matching view of `entry`: its own capabilities, its step limits per model when it
    /// limits steps, and the models it may stand in for.
    pub fn caps(&self, entry: &WorkerEntry) -> WorkerCaps {
        let mut caps = entry.caps();
        if entry.worker.flags.limit_max_steps {
            caps.step_limits = Some(
                caps.models
                    .iter()
                    .map(|m| (m.clone(), self.registry.step_limit(m)))
                    .collect(),
            );
        }
        caps.fallback = self
            .fallbacks
            .lock()
            .expect("fallbacks lock")
            .entry(caps.models.clone())
            .or_insert_with(|| self.registry.fallbacks(&caps.models, &self.served))
            .clone();
        caps
    }

    /// Whether some online worker serves `model`.
    pub fn is_served(&self, model: &str) -> bool {
        self.served.contains(model)
    }
}

impl AppState {
    /// The registry and the models online workers serve. Rebuilt when a worker joins, changes
    /// what it serves or is paused, and at least every second (workers go offline by time);
    /// otherwise shared, since every pop and check needs it.
    pub fn matching_view(&self) -> Arc<MatchingView> {
        let now = crate::state::now();
        let generation = self.workers_generation.load(Ordering::SeqCst);
        let mut cache = self.matching_cache.lock().expect("matching cache");
        if let Some((at, seen, view)) = cache.as_ref() {
            if *at == now && *seen == generation {
                return view.clone();
            }
        }
        let served = self
            .workers
            .read()
            .expect("registry lock")
            .online(now)
            .filter(|w| !w.worker.paused)
            .flat_map(|w| w.worker.flags.models.iter().cloned())
            .collect();
        let view = Arc::new(MatchingView {
            registry: self.registry(),
            served,
            fallbacks: Mutex::default(),
        });
        *cache = Some((now, generation, view.clone()));
        view
    }

    /// Marks the set of workers or what they serve as changed.
    pub fn workers_changed(&self) {
        self.workers_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The registry as now loaded.
    pub fn registry(&self) -> Arc<ModelRegistry> {
        self.models.read().expect("models lock").clone()
    }

    /// Reads the reference again; returns whether it was replaced.
    pub async fn reload_models(&self) -> bool {
        match load_registry(&self.config.models).await {
            Ok(registry) => {
                tracing::info!(models = registry.len(), "model reference reloaded");
                *self.models.write().expect("models lock") = Arc::new(registry);
                true
            }
            Err(error) => {
                tracing::warn!(%error, "model reference reload failed; keeping the loaded one");
                false
            }
        }
    }

    /// Refuses a request naming models outside the reference (unless the operator allows
    /// custom models).
    pub fn check_request_models(&self, body: &ImageRequest) -> ApiResult<()> {
        if self.config.models.allow_custom {
            return Ok(());
        }
        let registry = self.registry();
        let unknown = registry.unknown(&body.models);
        if unknown.is_empty() {
            return Ok(());
        }
        Err(ApiError::new(
            Rc::UnsupportedModel,
            format!(
                "Unknown models: {}. This horde serves the models of its model reference (GET /api/v2/status/models lists those with workers).",
                unknown.join(", ")
            ),
        ))
    }

    /// Splits the models a worker offers into those it may serve and those ignored: outside the
    /// reference, a model is served only by a customizer's worker or with custom models allowed.
    pub fn servable_models(&self, owner: &User, offered: &[String]) -> (Vec<String>, Vec<String>) {
        if self.config.models.allow_custom || owner.customizer {
            return (offered.to_vec(), vec![]);
        }
        let registry = self.registry();
        offered
            .iter()
            .cloned()
            .partition(|model| registry.is_known(model))
    }

    /// The kudos of one image of `request` run on `model`: the request's base price times the
    /// model's baseline multiplier (SDXL 2, Flux 8, ...).
    pub fn gen_kudos(&self, request: &horde_core::LiveRequest, model: &str) -> f64 {
        let family = self
            .registry()
            .kudos_multiplier(model, request.body.params.hires_fix);
        request.job_kudos * family
    }

    /// The baseline multiplier used to project a request's cost: its first model's, as on the
    /// public horde.
    pub fn projected_family(&self, body: &ImageRequest) -> f64 {
        self.registry().request_multiplier(body)
    }
}
