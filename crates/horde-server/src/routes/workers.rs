//! `/api/v2/workers…`

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiKey, HordeJson};
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::Json;
use horde_api::worker::{ModifyWorker, WorkerDetails};
use horde_api::{ErrorBody, Rc};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct WorkersQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
}

/// Online workers.
#[utoipa::path(get, path = "/api/v2/workers", tag = "v2", responses((status = 200, body = Vec<WorkerDetails>)))]
pub async fn list(
    State(state): State<SharedState>,
    Query(q): Query<WorkersQuery>,
) -> Json<Vec<WorkerDetails>> {
    if q.kind.as_deref().is_some_and(|k| k != "image") {
        return Json(vec![]);
    }
    Json(state.online_worker_details(q.name.as_deref()))
}

fn parse_worker_id(id: &str) -> ApiResult<uuid::Uuid> {
    uuid::Uuid::parse_str(id).map_err(|_| {
        ApiError::new(
            Rc::WorkerNotFound,
            format!("Worker with ID '{id}' not found."),
        )
    })
}

#[utoipa::path(get, path = "/api/v2/workers/{id}", tag = "v2", params(("id" = String, Path)),
    responses((status = 200, body = WorkerDetails), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<WorkerDetails>> {
    state.worker_details(parse_worker_id(&id)?).map(Json)
}

#[utoipa::path(get, path = "/api/v2/workers/name/{name}", tag = "v2", params(("name" = String, Path)),
    responses((status = 200, body = WorkerDetails), (status = 404, body = ErrorBody)))]
pub async fn by_name(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<WorkerDetails>> {
    state.worker_details_by_name(&name).map(Json)
}

/// Change a worker's settings (owner; `paused` needs a moderator).
#[utoipa::path(put, path = "/api/v2/workers/{id}", tag = "v2", params(("id" = String, Path), ("apikey" = String, Header)),
    request_body = ModifyWorker, responses((status = 200, body = ModifyWorker), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn modify(
    State(state): State<SharedState>,
    key: ApiKey,
    Path(id): Path<String>,
    HordeJson(body): HordeJson<ModifyWorker>,
) -> ApiResult<Json<ModifyWorker>> {
    let user = state
        .authenticate_registered(&key, Rc::AnonForbidden)
        .await?;
    state
        .modify_worker(&user, parse_worker_id(&id)?, body)
        .await
        .map(Json)
}
