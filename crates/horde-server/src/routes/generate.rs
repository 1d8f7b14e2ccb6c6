//! `/api/v2/generate/…`: image requests and jobs, plus the upload and download of images.

use crate::auth::{Requester, Submitter, WorkerOwner};
use crate::error::{ApiError, ApiResult};
use crate::extract::HordeJson;
use crate::requests::Accepted;
use crate::state::SharedState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use horde_api::image::{
    AsyncResponse, ImageRequest, PopRequest, PopResponse, RequestStatus, RequestStatusCheck,
    SubmitRequest, SubmitResponse,
};
use horde_api::{ErrorBody, Rc};
use serde::Deserialize;

/// Submit an image request.
#[utoipa::path(post, path = "/api/v2/generate/async", tag = "v2",
    params(("apikey" = String, Header, description = "API key; 0000000000 for anonymous")),
    request_body = ImageRequest,
    responses((status = 202, body = AsyncResponse), (status = 200, description = "dry run", body = AsyncResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Not allowed for this user: kudos needed upfront, a shared key's limits, a role", body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn generate_async(
    State(state): State<SharedState>,
    requester: Requester<HordeJson<ImageRequest>>,
) -> ApiResult<Response> {
    let Requester {
        user,
        shared_key,
        body: HordeJson(body),
    } = requester;
    let (user, shared_key, downgraded) = state
        .downgrade_empty_shared_key(user, shared_key, &body)
        .await?;
    Ok(
        match state
            .accept_request(&user, shared_key.as_ref(), body)
            .await?
        {
            Accepted::Queued(mut r) => {
                r.warnings.extend(downgraded);
                (StatusCode::ACCEPTED, Json(r)).into_response()
            }
            Accepted::DryRun(mut r) => {
                r.warnings.extend(downgraded);
                (StatusCode::OK, Json(r)).into_response()
            }
        },
    )
}

/// Light status of a request (no images).
#[utoipa::path(get, path = "/api/v2/generate/check/{id}", tag = "v2",
    params(("id" = String, Path)), responses((status = 200, body = RequestStatusCheck), (status = 404, body = ErrorBody)))]
pub async fn check(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RequestStatusCheck>> {
    state.check_request(&id).await.map(Json)
}

/// Full status of a request, with its images.
#[utoipa::path(get, path = "/api/v2/generate/status/{id}", tag = "v2",
    params(("id" = String, Path)), responses((status = 200, body = RequestStatus), (status = 404, body = ErrorBody)))]
pub async fn status(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RequestStatus>> {
    state.request_status(&id).await.map(Json)
}

/// Cancel a request; finished images are kept and returned.
#[utoipa::path(delete, path = "/api/v2/generate/status/{id}", tag = "v2",
    params(("id" = String, Path)), responses((status = 200, body = RequestStatus), (status = 404, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RequestStatus>> {
    state.cancel_request(&id).await.map(Json)
}

/// A worker asks for a job.
#[utoipa::path(post, path = "/api/v2/generate/pop", tag = "v2",
    params(("apikey" = String, Header)), request_body = PopRequest,
    responses((status = 200, body = PopResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn pop(
    State(state): State<SharedState>,
    owner: WorkerOwner<HordeJson<PopRequest>>,
) -> ApiResult<Json<PopResponse>> {
    let HordeJson(body) = owner.body;
    state.pop(&owner.user, body).await.map(Json)
}

/// A worker submits a job's result.
#[utoipa::path(post, path = "/api/v2/generate/submit", tag = "v2",
    params(("apikey" = String, Header)), request_body = SubmitRequest,
    responses((status = 200, body = SubmitResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn submit(
    State(state): State<SharedState>,
    owner: Submitter<HordeJson<SubmitRequest>>,
) -> ApiResult<Json<SubmitResponse>> {
    let HordeJson(body) = owner.body;
    state.submit(&owner.user, body).await.map(Json)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// Unix seconds after which the URL is refused.
    expires: i64,
    /// The URL's signature.
    sig: String,
}

/// The upload URL of a job (`r2_upload`): the worker PUTs the WebP (or PNG) here, once, before
/// submitting `"R2"`.
#[utoipa::path(put, path = "/api/v2/uploads/{job_id}", tag = "v2",
    params(("job_id" = String, Path), UploadQuery),
    request_body(content = Vec<u8>, content_type = "image/webp"),
    responses((status = 200, description = "Stored"), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn upload(
    State(state): State<SharedState>,
    Path(job_id): Path<String>,
    Query(q): Query<UploadQuery>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    state
        .upload(&job_id, q.expires, &q.sig, body.to_vec())
        .await?;
    Ok(StatusCode::OK)
}

/// A finished image, by job id (`{job}.webp`): the URLs of `r2` requests' generations.
#[utoipa::path(get, path = "/api/v2/images/{file}", tag = "v2", params(("file" = String, Path)),
    responses((status = 200, content_type = "image/webp", body = Vec<u8>), (status = 404, body = ErrorBody)))]
pub async fn image(
    State(state): State<SharedState>,
    Path(file): Path<String>,
) -> ApiResult<Response> {
    let not_found = || ApiError::new(Rc::ThingNotFound, "Image not found.");
    let id = file
        .strip_suffix(".webp")
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .ok_or_else(not_found)?;
    let bytes = state.images.read(id).await.ok_or_else(not_found)?;
    Ok(([(header::CONTENT_TYPE, "image/webp")], bytes).into_response())
}
