//! Teams (`/teams…`) and moderators' messages to workers (`/workers/messages…`)
//! (issue 29, points 2 and 3). `DELETE /workers/{id}` is `routes/workers.rs::delete`, routed
//! beside the worker's other methods in `lib.rs` and listed here.

use crate::auth::Registered;
use crate::error::ApiResult;
use crate::extract::{HordeJson, HordeQuery};
use crate::state::SharedState;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use horde_api::teams::{
    DeletedTeam, DeletedWorker, ModifyTeam, TeamDetails, TeamInput, TeamModel, TeamPatch,
    TeamWorker, Validity, WorkerMessage, WorkerMessageInput, WorkerMessageQuery,
};
use horde_api::ErrorBody;
use utoipa::OpenApi;

/// This area's routes, merged into the server's router (`lib.rs`) before the rate-limit layer.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/api/v2/teams", get(list).post(create))
        .route("/api/v2/teams/{id}", get(one).patch(modify).delete(delete))
        .route("/api/v2/workers/messages", get(messages).post(post_message))
        .route(
            "/api/v2/workers/messages/{id}",
            get(message).delete(delete_message),
        )
}

/// This area's operations, merged into the served OpenAPI document (`openapi::document`).
#[derive(OpenApi)]
#[openapi(
    paths(
        list,
        create,
        one,
        modify,
        delete,
        messages,
        post_message,
        message,
        delete_message,
        crate::routes::workers::delete
    ),
    components(schemas(
        TeamDetails,
        TeamWorker,
        TeamModel,
        TeamInput,
        TeamPatch,
        ModifyTeam,
        DeletedTeam,
        DeletedWorker,
        WorkerMessage,
        WorkerMessageInput,
        Validity
    ))
)]
pub struct Doc;

/// Every team, with its figures summed over its workers.
#[utoipa::path(get, path = "/api/v2/teams", tag = "v2",
    responses((status = 200, body = Vec<TeamDetails>)))]
pub async fn list(State(state): State<SharedState>) -> ApiResult<Json<Vec<TeamDetails>>> {
    state.teams_details().await.map(Json)
}

/// Create a team (trusted users only).
#[utoipa::path(post, path = "/api/v2/teams", tag = "v2", params(("apikey" = String, Header)),
    request_body = TeamInput,
    responses((status = 200, body = ModifyTeam), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(state): State<SharedState>,
    caller: Registered<HordeJson<TeamInput>>,
) -> ApiResult<Json<ModifyTeam>> {
    let HordeJson(body) = caller.body;
    state.create_team(&caller.user, body).await.map(Json)
}

/// One team.
#[utoipa::path(get, path = "/api/v2/teams/{id}", tag = "v2", params(("id" = String, Path)),
    responses((status = 200, body = TeamDetails), (status = 404, body = ErrorBody)))]
pub async fn one(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TeamDetails>> {
    state.team_details(&id).await.map(Json)
}

/// Change a team's name or info (its creator or a moderator).
#[utoipa::path(patch, path = "/api/v2/teams/{id}", tag = "v2", params(("id" = String, Path), ("apikey" = String, Header)),
    request_body = TeamPatch,
    responses((status = 200, body = ModifyTeam), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn modify(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Registered<HordeJson<TeamPatch>>,
) -> ApiResult<Json<ModifyTeam>> {
    let HordeJson(body) = caller.body;
    state.modify_team(&caller.user, &id, body).await.map(Json)
}

/// Delete a team (its creator or a moderator); its workers are left in no team.
#[utoipa::path(delete, path = "/api/v2/teams/{id}", tag = "v2", params(("id" = String, Path), ("apikey" = String, Header)),
    responses((status = 200, body = DeletedTeam), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Registered,
) -> ApiResult<Json<DeletedTeam>> {
    state.delete_team(&caller.user, &id).await.map(Json)
}

/// A page of 50 messages, newest first: the caller's own, or anyone's for a moderator.
#[utoipa::path(get, path = "/api/v2/workers/messages", tag = "v2", params(WorkerMessageQuery, ("apikey" = String, Header)),
    responses((status = 200, body = Vec<WorkerMessage>), (status = 403, body = ErrorBody)))]
pub async fn messages(
    State(state): State<SharedState>,
    HordeQuery(query): HordeQuery<WorkerMessageQuery>,
    caller: Registered,
) -> ApiResult<Json<Vec<WorkerMessage>>> {
    state
        .list_worker_messages(&caller.user, query)
        .await
        .map(Json)
}

/// Send a message to a worker, shown in its pops until it expires: a moderator to any worker,
/// an owner to their own.
#[utoipa::path(post, path = "/api/v2/workers/messages", tag = "v2", params(("apikey" = String, Header)),
    request_body = WorkerMessageInput,
    responses((status = 200, body = WorkerMessage), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn post_message(
    State(state): State<SharedState>,
    caller: Registered<HordeJson<WorkerMessageInput>>,
) -> ApiResult<Json<WorkerMessage>> {
    let HordeJson(body) = caller.body;
    state
        .post_worker_message(&caller.user, body)
        .await
        .map(Json)
}

/// One message.
#[utoipa::path(get, path = "/api/v2/workers/messages/{id}", tag = "v2", params(("id" = String, Path)),
    responses((status = 200, body = WorkerMessage), (status = 404, body = ErrorBody)))]
pub async fn message(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkerMessage>> {
    state.worker_message(&id).await.map(Json)
}

/// Delete a message (its author or a moderator).
#[utoipa::path(delete, path = "/api/v2/workers/messages/{id}", tag = "v2", params(("id" = String, Path), ("apikey" = String, Header)),
    responses((status = 200, description = "{\"message\": \"OK\"}"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_message(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Registered,
) -> ApiResult<Json<serde_json::Value>> {
    state.delete_worker_message(&caller.user, &id).await?;
    Ok(Json(serde_json::json!({"message": "OK"})))
}
