//! `/api/v2/invites…`: moderators create, list and delete the invite codes `/register` asks
//! for when `[registration] mode = "invite"` (our extension; the service is `invites.rs`).

use crate::auth::Moderator;
use crate::error::ApiResult;
use crate::extract::HordeJson;
use crate::state::SharedState;
use axum::extract::{Path, State};
use axum::routing::{delete, get};
use axum::{Json, Router};
use horde_api::invite::{InviteDetails, InviteInput};
use horde_api::ErrorBody;
use utoipa::OpenApi;

/// This area's routes, merged into the server's router (`lib.rs`) before the rate-limit layer.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/api/v2/invites", get(list).post(create))
        .route("/api/v2/invites/{id}", delete(remove))
}

/// This area's operations, merged into the served OpenAPI document (`openapi::document`).
#[derive(OpenApi)]
#[openapi(
    paths(create, list, remove),
    components(schemas(InviteInput, InviteDetails))
)]
pub struct Doc;

/// Create an invite code (moderators): good for `uses` accounts for `hours`; the `code` is in
/// this answer only (it is stored as a salted hash).
#[utoipa::path(post, path = "/api/v2/invites", tag = "v2", params(("apikey" = String, Header)),
    request_body = InviteInput,
    responses((status = 200, body = InviteDetails), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(state): State<SharedState>,
    moderator: Moderator<HordeJson<InviteInput>>,
) -> ApiResult<Json<InviteDetails>> {
    let HordeJson(body) = moderator.body;
    state.create_invite(&moderator.user, body).await.map(Json)
}

/// Every invite kept (moderators), newest first, without its code.
#[utoipa::path(get, path = "/api/v2/invites", tag = "v2", params(("apikey" = String, Header)),
    responses((status = 200, body = Vec<InviteDetails>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<SharedState>,
    _: Moderator,
) -> ApiResult<Json<Vec<InviteDetails>>> {
    state.list_invites().await.map(Json)
}

/// Delete an invite (moderators): its code stops working at once.
#[utoipa::path(delete, path = "/api/v2/invites/{id}", tag = "v2", params(("id" = String, Path), ("apikey" = String, Header)),
    responses((status = 200, description = "{\"message\": \"OK\"}"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    moderator: Moderator,
) -> ApiResult<Json<serde_json::Value>> {
    state.delete_invite(&moderator.user, &id).await?;
    Ok(Json(serde_json::json!({"message": "OK"})))
}
