//! The model references, as this coordinator loaded them (`GET /reference/image`,
//! `GET /reference/text`; beyond the public horde, issue 30). A worker that downloads its models
//! by name needs each model's `config.download` (where to fetch it) and `config.files` (its
//! checksums), which the parsed reference drops; and it must agree with its coordinator on the
//! names, baselines and checksums, so it reads the very text the coordinator parsed (the
//! built-in copy, the operator's file or URL, as last reloaded) rather than GitHub's copy.
//! Public: a reference holds nothing secret.

use crate::state::SharedState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use utoipa::OpenApi;

/// This area's routes, merged into the server's router (`lib.rs`).
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/api/v2/reference/image", get(image_reference))
        .route("/api/v2/reference/text", get(text_reference))
}

/// This area's operations, merged into the served OpenAPI document (`openapi::full_openapi`).
#[derive(OpenApi)]
#[openapi(paths(image_reference, text_reference))]
pub struct Doc;

/// The image model reference this horde loaded, unchanged: each model by name with its
/// baseline, its `config.files` (with their `sha256sum`) and `config.download` (`file_url`).
/// Beyond the public horde: workers download their models by it.
#[utoipa::path(get, path = "/api/v2/reference/image", tag = "v2",
    responses((status = 200, description = "The image model reference (JSON, as loaded)",
        body = Object, content_type = "application/json")))]
pub async fn image_reference(State(state): State<SharedState>) -> impl IntoResponse {
    as_json(state.catalogue.image_reference_json())
}

/// The text model reference this horde loaded, unchanged. Beyond the public horde.
#[utoipa::path(get, path = "/api/v2/reference/text", tag = "v2",
    responses((status = 200, description = "The text model reference (JSON, as loaded)",
        body = Object, content_type = "application/json")))]
pub async fn text_reference(State(state): State<SharedState>) -> impl IntoResponse {
    as_json(state.catalogue.text_reference_json())
}

/// `text` as a JSON answer, byte for byte.
fn as_json(text: std::sync::Arc<str>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        text.to_string(),
    )
}
