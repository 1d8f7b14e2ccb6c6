//! The image and text model references while the coordinator runs: loaded at start from the
//! built-in copies, a file or a URL (`[models]`, `[text]`), reloaded on an interval without a
//! restart, and consulted when
//! requests arrive (unknown models), when workers check in (models they may serve) and when
//! images are priced (the baseline's kudos multiplier).

use crate::config::ModelsConfig;
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, SharedState};
use crate::workers::matching_view::MatchingView;
use horde_api::image::ImageRequest;
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::model_reference::{ModelReference, BUILTIN_BASELINES, BUILTIN_MODELS};
use horde_core::text::reference::BUILTIN_TEXT_MODELS;
use horde_core::text::TextModelReference;
use std::sync::Arc;
use std::time::Duration;

/// The model reference `config` names, with the JSON text of its models as read.
pub async fn load(config: &ModelsConfig) -> Result<(ModelReference, String), String> {
    let models = read_source(&config.reference, BUILTIN_MODELS).await?;
    let baselines = read_source(&config.baselines, BUILTIN_BASELINES).await?;
    let parsed = ModelReference::parse(&models, &baselines)?;
    Ok((parsed, models))
}

/// The text model reference `source` names (`text.reference`), with its JSON text as read.
pub async fn load_text(source: &str) -> Result<(TextModelReference, String), String> {
    let models = read_source(source, BUILTIN_TEXT_MODELS).await?;
    let parsed = TextModelReference::parse(&models).map_err(|e| format!("{source}: {e}"))?;
    Ok((parsed, models))
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

/// Reloads the model reference every `reload_interval_secs`; a failed reload keeps the old one.
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

impl AppState {
    /// The model reference as now loaded.
    pub fn model_reference(&self) -> Arc<ModelReference> {
        self.catalogue.model_reference()
    }

    /// The matching view as of now (see [`Workers::matching_view`](crate::workers::Workers::matching_view)).
    pub fn matching_view(&self) -> Arc<MatchingView> {
        self.workers
            .matching_view(self.model_reference(), crate::clock::now())
    }

    /// The text model reference as now loaded.
    pub fn text_reference(&self) -> Arc<TextModelReference> {
        self.catalogue.text_reference()
    }

    /// Reads both references again; returns whether both were replaced (a failed one keeps
    /// the loaded copy).
    pub async fn reload_models(&self) -> bool {
        let text = match load_text(&self.config.text.reference).await {
            Ok((reference, json)) => {
                tracing::info!(models = reference.len(), "text model reference reloaded");
                self.catalogue.replace_text_reference(reference, json);
                true
            }
            Err(error) => {
                tracing::warn!(%error, "text model reference reload failed; keeping the loaded one");
                false
            }
        };
        text && self.reload_image_models().await
    }

    /// Reads the image reference again; returns whether it was replaced.
    async fn reload_image_models(&self) -> bool {
        match load(&self.config.models).await {
            Ok((model_reference, json)) => {
                tracing::info!(models = model_reference.len(), "model reference reloaded");
                self.catalogue
                    .replace_model_reference(model_reference, json);
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
        let model_reference = self.model_reference();
        let unknown = model_reference.unknown(&body.models);
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
        let model_reference = self.model_reference();
        offered
            .iter()
            .cloned()
            .partition(|model| model_reference.is_known(model))
    }

    /// The kudos of one image of `request` run on `model`: the request's base price times the
    /// model's baseline multiplier (SDXL 2, Flux 8, ...).
    pub fn gen_kudos(&self, request: &horde_core::LiveRequest, model: &str) -> f64 {
        let family = self
            .model_reference()
            .kudos_multiplier(model, request.body.params.hires_fix);
        request.job_kudos * family
    }

    /// The baseline multiplier used to project a request's cost: its first model's, as on the
    /// public horde.
    pub fn projected_family(&self, body: &ImageRequest) -> f64 {
        self.model_reference().request_multiplier(body)
    }
}
