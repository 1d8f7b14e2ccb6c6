//! `/api/v2/users/{id}`, `/api/v2/find_user` and the test-only `/api/v2/dev/test-user`.

use crate::auth::{Caller, KeyHolder, Registered, Viewer};
use crate::error::{ApiError, ApiResult};
use crate::extract::{HordeJson, HordeQuery};
use crate::state::SharedState;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::Json;
use horde_api::user::{
    KudosTransferRequest, KudosTransferred, LedgerEntry, LedgerQuery, ModifyUser,
    ModifyUserResponse, NewApiKey, TestUserRequest, TestUserResponse, UserDetails,
};
use horde_api::webhook::WebhookSecret;
use horde_api::{ErrorBody, Rc};
use std::net::SocketAddr;

/// A user. With the user's own `apikey`, also their active requests and escrow; with a
/// moderator's, also monthly kudos, suspicion and the admin comment. An unknown key sees what
/// anyone sees.
#[utoipa::path(get, path = "/api/v2/users/{id}", tag = "v2", params(("id" = String, Path), ("apikey" = Option<String>, Header)),
    responses((status = 200, body = UserDetails), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> ApiResult<Json<UserDetails>> {
    state
        .user_details_by_id(&id, viewer.0.as_ref())
        .await
        .map(Json)
}

/// The user owning the sent API key; 404 `UserNotFound` when no user has it.
#[utoipa::path(get, path = "/api/v2/find_user", tag = "v2", params(("apikey" = String, Header)),
    responses((status = 200, body = UserDetails), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn find_user(
    State(state): State<SharedState>,
    holder: KeyHolder,
) -> ApiResult<Json<UserDetails>> {
    state.find_user(&holder.user).await.map(Json)
}

/// Test-only: create a user (or rotate its key) and return the key. Enabled by config, and only
/// for callers on loopback.
#[utoipa::path(post, path = "/api/v2/dev/test-user", tag = "dev", request_body = TestUserRequest,
    responses((status = 201, body = TestUserResponse), (status = 200, body = TestUserResponse), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn test_user(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    HordeJson(body): HordeJson<TestUserRequest>,
) -> ApiResult<(StatusCode, Json<TestUserResponse>)> {
    if !state.config.api.test_users {
        return Err(ApiError::new(
            Rc::ThingNotFound,
            "Test users are disabled on this server.",
        ));
    }
    if !peer.ip().is_loopback() {
        return Err(ApiError::new(
            Rc::TestUsersDisabled,
            "Test users can only be created from loopback.",
        ));
    }
    let (created, answer) = state.test_user(body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)))
}

/// Send kudos to another user (`alias#id`).
#[utoipa::path(post, path = "/api/v2/kudos/transfer", tag = "v2", params(("apikey" = String, Header)),
    request_body = KudosTransferRequest,
    responses((status = 200, body = KudosTransferred), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn transfer(
    State(state): State<SharedState>,
    sender: Caller<HordeJson<KudosTransferRequest>>,
) -> ApiResult<Json<KudosTransferred>> {
    let HordeJson(body) = &sender.body;
    state.transfer_kudos(&sender.user, body).await.map(Json)
}

/// Change a user: balances and moderators (administrators), roles and limits (moderators),
/// name and profile (the user themself).
#[utoipa::path(put, path = "/api/v2/users/{id}", tag = "v2", params(("id" = String, Path), ("apikey" = String, Header)),
    request_body = ModifyUser,
    responses((status = 200, body = ModifyUserResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn modify(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Registered<HordeJson<ModifyUser>>,
) -> ApiResult<Json<ModifyUserResponse>> {
    let HordeJson(body) = caller.body;
    state.modify_user(&caller.user, &id, body).await.map(Json)
}

/// Replace your API key: the new one is shown once, the old one stops working (not in the
/// public horde, where keys are reset by logging in again).
#[utoipa::path(post, path = "/api/v2/users/{id}/reset_key", tag = "v2", params(("id" = String, Path), ("apikey" = String, Header)),
    responses((status = 200, body = NewApiKey), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn reset_key(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Registered,
) -> ApiResult<Json<NewApiKey>> {
    state.reset_api_key(&caller.user, &id).await.map(Json)
}

/// The newest rows of a user's kudos ledger, newest first: for the user themself and
/// moderators (not in the public horde).
#[utoipa::path(get, path = "/api/v2/users/{id}/ledger", tag = "v2",
    params(("id" = String, Path), ("apikey" = String, Header), LedgerQuery),
    responses((status = 200, body = Vec<LedgerEntry>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn ledger(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    HordeQuery(page): HordeQuery<LedgerQuery>,
    caller: Registered,
) -> ApiResult<Json<Vec<LedgerEntry>>> {
    page.validate().map_err(ApiError::validation)?;
    state
        .ledger_of(&caller.user, &id, page.before, page.limit())
        .await
        .map(Json)
}

/// Your webhook secret, which signs the calls to your requests' webhooks (made the first time
/// it is asked for; not in the public horde, whose calls are not signed). See
/// `docs/webhooks.md`.
#[utoipa::path(get, path = "/api/v2/users/{id}/webhook_secret", tag = "v2", params(("id" = String, Path), ("apikey" = String, Header)),
    responses((status = 200, body = WebhookSecret), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn webhook_secret(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Registered,
) -> ApiResult<Json<WebhookSecret>> {
    let webhook_secret = state.read_webhook_secret(&caller.user, &id).await?;
    Ok(Json(WebhookSecret { webhook_secret }))
}

/// Replace your webhook secret: calls made from now on, including those waiting for a retry,
/// are signed with the new one.
#[utoipa::path(post, path = "/api/v2/users/{id}/webhook_secret", tag = "v2", params(("id" = String, Path), ("apikey" = String, Header)),
    responses((status = 200, body = WebhookSecret), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn rotate_webhook_secret(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Registered,
) -> ApiResult<Json<WebhookSecret>> {
    let webhook_secret = state.rotate_webhook_secret(&caller.user, &id).await?;
    Ok(Json(WebhookSecret { webhook_secret }))
}
