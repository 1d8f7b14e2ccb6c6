//! Moderators' operations: IP timeouts (`/operations/ipaddr…`) and worker address blocks
//! (`/operations/block_worker_ipaddr/…`); and ratings (`/generate/rate/{id}`) (issue 29,
//! points 6 and 7).

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
