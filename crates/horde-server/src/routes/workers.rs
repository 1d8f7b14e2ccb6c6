//! `/api/v2/workers…`

use crate::auth::{Registered, Viewer};
use crate::error::{ApiError, ApiResult};
use crate::extract::HordeJson;
use crate::state::SharedState;
use crate::workers;
use axum::extract::{Path, Query, State};
use axum::Json;
use horde_api::worker::{ModifyWorker, WorkerDetails, WorkerListQuery};
use horde_api::{ErrorBody, Rc};

/// Online workers, of one `type` (`image`, `text`, `interrogation`; empty or `all` for every
/// kind) or by `name` (which takes precedence). With the `apikey` of a moderator, every
/// worker's `owner` and `paused`; of an owner, the `owner` of their own.
#[utoipa::path(get, path = "/api/v2/workers", tag = "v2", params(("apikey" = Option<String>, Header),
    ("type" = Option<String>, Query), ("name" = Option<String>, Query)),
    responses((status = 200, body = Vec<WorkerDetails>)))]
pub async fn list(
    State(state): State<SharedState>,
    viewer: Viewer,
    Query(query): Query<WorkerListQuery>,
) -> Json<Vec<WorkerDetails>> {
    let viewer = workers::Viewer::of(viewer.0.as_ref());
    Json(state.online_worker_details(&query, viewer))
}

fn parse_worker_id(id: &str) -> ApiResult<uuid::Uuid> {
    uuid::Uuid::parse_str(id).map_err(|_| {
        ApiError::new(
            Rc::WorkerNotFound,
            format!("Worker with ID '{id}' not found."),
        )
    })
}

/// One worker; the `apikey` of its owner or a moderator shows more, as for the list.
#[utoipa::path(get, path = "/api/v2/workers/{id}", tag = "v2", params(("id" = String, Path), ("apikey" = Option<String>, Header)),
    responses((status = 200, body = WorkerDetails), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkerDetails>> {
    let id = parse_worker_id(&id)?;
    let viewer = workers::Viewer::of(viewer.0.as_ref());
    state.worker_details(id, viewer).map(Json)
}

#[utoipa::path(get, path = "/api/v2/workers/name/{name}", tag = "v2", params(("name" = String, Path), ("apikey" = Option<String>, Header)),
    responses((status = 200, body = WorkerDetails), (status = 404, body = ErrorBody)))]
pub async fn by_name(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path(name): Path<String>,
) -> ApiResult<Json<WorkerDetails>> {
    let viewer = workers::Viewer::of(viewer.0.as_ref());
    state.worker_details_by_name(&name, viewer).map(Json)
}

/// Change a worker's settings (owner; `paused` needs a moderator).
#[utoipa::path(put, path = "/api/v2/workers/{id}", tag = "v2", params(("id" = String, Path), ("apikey" = String, Header)),
    request_body = ModifyWorker, responses((status = 200, body = ModifyWorker), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn modify(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Registered<HordeJson<ModifyWorker>>,
) -> ApiResult<Json<ModifyWorker>> {
    let HordeJson(body) = caller.body;
    state
        .modify_worker(&caller.user, parse_worker_id(&id)?, body)
        .await
        .map(Json)
}

/// Delete a worker and its statistics (its owner or a moderator); the kudos it earned stay with
/// its owner. Refused with 423 while a job it was handed is still stored.
#[utoipa::path(delete, path = "/api/v2/workers/{id}", tag = "v2", params(("id" = String, Path), ("apikey" = String, Header)),
    responses((status = 200, body = horde_api::teams::DeletedWorker), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 423, body = ErrorBody)))]
pub async fn delete(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Registered,
) -> ApiResult<Json<horde_api::teams::DeletedWorker>> {
    state
        .delete_worker(&caller.user, parse_worker_id(&id)?)
        .await
        .map(Json)
}
