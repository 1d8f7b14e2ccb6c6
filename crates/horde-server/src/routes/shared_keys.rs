//! `/api/v2/sharedkeys…`

use crate::auth::Registered;
use crate::error::ApiResult;
use crate::extract::HordeJson;
use crate::state::SharedState;
use axum::extract::{Path, State};
use axum::Json;
use horde_api::shared_key::{SharedKeyDetails, SharedKeyInput, SharedKeyPatch};
use horde_api::ErrorBody;

/// Create a shared key; its `id` is the key, shown here once.
#[utoipa::path(put, path = "/api/v2/sharedkeys", tag = "v2", params(("apikey" = String, Header)),
    request_body = SharedKeyInput,
    responses((status = 200, body = SharedKeyDetails), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(state): State<SharedState>,
    owner: Registered<HordeJson<SharedKeyInput>>,
) -> ApiResult<Json<SharedKeyDetails>> {
    let HordeJson(body) = owner.body;
    state.create_shared_key(&owner.user, body).await.map(Json)
}

#[utoipa::path(get, path = "/api/v2/sharedkeys/{id}", tag = "v2", params(("id" = String, Path)),
    responses((status = 200, body = SharedKeyDetails), (status = 403, body = ErrorBody, description = "The shared key's account was deleted (`DeletedUser`)."), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<SharedKeyDetails>> {
    state.shared_key_details(&id).await.map(Json)
}

/// Change a shared key (its owner only).
#[utoipa::path(patch, path = "/api/v2/sharedkeys/{id}", tag = "v2", params(("id" = String, Path), ("apikey" = String, Header)),
    request_body = SharedKeyPatch,
    responses((status = 200, body = SharedKeyDetails), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn modify(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Registered<HordeJson<SharedKeyPatch>>,
) -> ApiResult<Json<SharedKeyDetails>> {
    let HordeJson(body) = caller.body;
    state
        .modify_shared_key(&caller.user, &id, body)
        .await
        .map(Json)
}

/// Delete a shared key (its owner only).
#[utoipa::path(delete, path = "/api/v2/sharedkeys/{id}", tag = "v2", params(("id" = String, Path), ("apikey" = String, Header)),
    responses((status = 200, description = "{\"message\": \"OK\"}"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Registered,
) -> ApiResult<Json<serde_json::Value>> {
    state.delete_shared_key(&caller.user, &id).await?;
    Ok(Json(serde_json::json!({"message": "OK"})))
}
