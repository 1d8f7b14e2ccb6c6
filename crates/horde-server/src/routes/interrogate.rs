//! `/api/v2/interrogate/…`: interrogation ("alchemy") requests and forms (the service is
//! `interrogations/`).

use crate::auth::{Requester, Submitter, WorkerOwner};
use crate::error::ApiResult;
use crate::extract::HordeJson;
use crate::state::SharedState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use horde_api::image::SubmitResponse;
use horde_api::interrogation::{
    InterrogationAsyncResponse, InterrogationPopRequest, InterrogationPopResponse,
    InterrogationRequest, InterrogationStatus, InterrogationSubmitRequest,
};
use horde_api::ErrorBody;

/// Submit an interrogation: forms run on one image.
#[utoipa::path(post, path = "/api/v2/interrogate/async", tag = "v2",
    params(("apikey" = String, Header, description = "API key; 0000000000 for anonymous")),
    request_body = InterrogationRequest,
    responses((status = 202, body = InterrogationAsyncResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn interrogate_async(
    State(state): State<SharedState>,
    requester: Requester<HordeJson<InterrogationRequest>>,
) -> ApiResult<(StatusCode, Json<InterrogationAsyncResponse>)> {
    let HordeJson(body) = requester.body;
    let accepted = state.accept_interrogation(&requester.user, body).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// The state of an interrogation and of each of its forms, with their results.
#[utoipa::path(get, path = "/api/v2/interrogate/status/{id}", tag = "v2",
    params(("id" = String, Path)),
    responses((status = 200, body = InterrogationStatus), (status = 404, body = ErrorBody)))]
pub async fn status(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<InterrogationStatus>> {
    state.interrogation_status(&id).await.map(Json)
}

/// Cancel an interrogation; finished forms are kept and returned.
#[utoipa::path(delete, path = "/api/v2/interrogate/status/{id}", tag = "v2",
    params(("id" = String, Path)),
    responses((status = 200, body = InterrogationStatus), (status = 404, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<InterrogationStatus>> {
    state.cancel_interrogation(&id).await.map(Json)
}

/// An alchemist asks for a form.
#[utoipa::path(post, path = "/api/v2/interrogate/pop", tag = "v2",
    params(("apikey" = String, Header)), request_body = InterrogationPopRequest,
    responses((status = 200, body = InterrogationPopResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn pop(
    State(state): State<SharedState>,
    owner: WorkerOwner<HordeJson<InterrogationPopRequest>>,
) -> ApiResult<Json<InterrogationPopResponse>> {
    let HordeJson(body) = owner.body;
    state.interrogation_pop(&owner.user, body).await.map(Json)
}

/// An alchemist submits a form's result.
#[utoipa::path(post, path = "/api/v2/interrogate/submit", tag = "v2",
    params(("apikey" = String, Header)), request_body = InterrogationSubmitRequest,
    responses((status = 200, body = SubmitResponse), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn submit(
    State(state): State<SharedState>,
    owner: Submitter<HordeJson<InterrogationSubmitRequest>>,
) -> ApiResult<Json<SubmitResponse>> {
    let HordeJson(body) = owner.body;
    state
        .interrogation_submit(&owner.user, body)
        .await
        .map(Json)
}
