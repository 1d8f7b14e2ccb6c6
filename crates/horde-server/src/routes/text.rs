//! `/api/v2/generate/text/…`: text requests and jobs (the service is `texts/`).

use crate::auth::{Requester, Submitter, WorkerOwner};
use crate::error::ApiResult;
use crate::extract::HordeJson;
use crate::state::SharedState;
use crate::texts::TextAccepted;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use horde_api::image::{AsyncResponse, SubmitResponse};
use horde_api::text::{
    TextPopRequest, TextPopResponse, TextRequest, TextRequestStatus, TextSubmitRequest,
};
use horde_api::ErrorBody;

/// Submit a text request.
#[utoipa::path(post, path = "/api/v2/generate/text/async", tag = "v2",
    params(("apikey" = String, Header, description = "API key; 0000000000 for anonymous")),
    request_body = TextRequest,
    responses((status = 202, body = AsyncResponse), (status = 200, description = "dry run", body = AsyncResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Not allowed for this user: kudos needed upfront, a shared key's limits, a role", body = ErrorBody),
        (status = 404, description = "The style or collection named does not exist", body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn generate_async(
    State(state): State<SharedState>,
    requester: Requester<HordeJson<TextRequest>>,
) -> ApiResult<Response> {
    let Requester {
        user,
        shared_key,
        body: HordeJson(body),
    } = requester;
    Ok(
        match state
            .accept_text_request(&user, shared_key.as_ref(), body)
            .await?
        {
            TextAccepted::Queued(r) => (StatusCode::ACCEPTED, Json(r)).into_response(),
            TextAccepted::DryRun(r) => (StatusCode::OK, Json(r)).into_response(),
        },
    )
}

/// Status of a text request, with its finished texts.
#[utoipa::path(get, path = "/api/v2/generate/text/status/{id}", tag = "v2",
    params(("id" = String, Path)),
    responses((status = 200, body = TextRequestStatus), (status = 404, body = ErrorBody)))]
pub async fn status(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TextRequestStatus>> {
    state.text_request_status(&id).await.map(Json)
}

/// Cancel a text request; finished texts are kept and returned.
#[utoipa::path(delete, path = "/api/v2/generate/text/status/{id}", tag = "v2",
    params(("id" = String, Path)),
    responses((status = 200, body = TextRequestStatus), (status = 404, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<TextRequestStatus>> {
    state.cancel_text_request(&id).await.map(Json)
}

/// A text worker asks for a job.
#[utoipa::path(post, path = "/api/v2/generate/text/pop", tag = "v2",
    params(("apikey" = String, Header)), request_body = TextPopRequest,
    responses((status = 200, body = TextPopResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn pop(
    State(state): State<SharedState>,
    owner: WorkerOwner<HordeJson<TextPopRequest>>,
) -> ApiResult<Json<TextPopResponse>> {
    let HordeJson(body) = owner.body;
    state.text_pop(&owner.user, body).await.map(Json)
}

/// A text worker submits a job's text.
#[utoipa::path(post, path = "/api/v2/generate/text/submit", tag = "v2",
    params(("apikey" = String, Header)), request_body = TextSubmitRequest,
    responses((status = 200, body = SubmitResponse), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn submit(
    State(state): State<SharedState>,
    owner: Submitter<HordeJson<TextSubmitRequest>>,
) -> ApiResult<Json<SubmitResponse>> {
    let HordeJson(body) = owner.body;
    state.text_submit(&owner.user, body).await.map(Json)
}
