//! Styles and collections: `/styles/image…`, `/styles/text…`, `/collections…`,
//! `/collection_by_name/…` (issue 29, point 1).

use crate::state::SharedState;
use axum::Router;
use utoipa::OpenApi;

/// This area's routes, merged into the server's router (`lib.rs`) before the rate-limit layer.
pub fn routes() -> Router<SharedState> {
    Router::new()
}

/// This area's operations, merged into the served OpenAPI document (`openapi::document`).
#[derive(OpenApi)]
#[openapi()]
pub struct Doc;
