//! Teams (`/teams…`) and moderators' messages to workers (`/workers/messages…`)
//! (issue 29, points 2 and 3).

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
