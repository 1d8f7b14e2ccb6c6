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
        (status = 404, description = "The style or collection named does not exist", body = ErrorBody),
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

/// `?wait=SECONDS` on check and status (`waiting.rs`).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds to wait for the request to be done, faulted or cancelled before answering
    /// (whole or decimal, 0 or more); the answer comes as soon as it is, or when the time is
    /// up, as the request then stands. At most 60: a longer wait is clamped to 60 and the
    /// answer carries `X-Horde-Wait-Clamped: 60`. When too many clients wait already
    /// (`api.max_waiters`) the answer comes at once.
    #[param(value_type = Option<f64>, minimum = 0)]
    wait: Option<String>,
}

/// The answer after a wait, with the clamp header when the wait was clamped.
fn waited<T: serde::Serialize>(answer: T, wait: crate::waiting::Wait) -> Response {
    let mut response = Json(answer).into_response();
    if wait.clamped {
        response.headers_mut().insert(
            crate::waiting::CLAMPED_HEADER,
            crate::waiting::MAX_WAIT_SECS.into(),
        );
    }
    response
}

/// Light status of a request (no images), after waiting for its end if asked.
#[utoipa::path(get, path = "/api/v2/generate/check/{id}", tag = "v2",
    params(("id" = String, Path), WaitQuery),
    responses((status = 200, body = RequestStatusCheck, headers(("X-Horde-Wait-Clamped" = u32, description = "Present when `wait` was over 60: the seconds waited at most"))),
        (status = 404, body = ErrorBody)))]
pub async fn check(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> ApiResult<Response> {
    let wait = crate::waiting::Wait::parse(query.wait.as_deref())?;
    let answer = state.check_request_waiting(&id, wait).await?;
    Ok(waited(answer, wait))
}

/// Full status of a request, with its images, after waiting for its end if asked.
#[utoipa::path(get, path = "/api/v2/generate/status/{id}", tag = "v2",
    params(("id" = String, Path), WaitQuery),
    responses((status = 200, body = RequestStatus, headers(("X-Horde-Wait-Clamped" = u32, description = "Present when `wait` was over 60: the seconds waited at most"))),
        (status = 404, body = ErrorBody)))]
pub async fn status(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
) -> ApiResult<Response> {
    let wait = crate::waiting::Wait::parse(query.wait.as_deref())?;
    let answer = state.request_status_waiting(&id, wait).await?;
    Ok(waited(answer, wait))
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

/// Submit a batch of prompts (beyond the public horde): the shared fields of `/generate/async`
/// and a list of prompts, each with its own seed and negative prompt if wanted; one request
/// per prompt under one batch id, accepted all together or not at all. A batch of N counts N
/// requests against `/generate/async`'s rate limits.
#[utoipa::path(post, path = "/api/v2/generate/batch", tag = "v2",
    params(("apikey" = String, Header, description = "API key; 0000000000 for anonymous")),
    request_body = horde_api::batch::BatchRequest,
    responses((status = 202, body = horde_api::batch::BatchResponse),
        (status = 200, description = "dry run", body = horde_api::batch::BatchResponse),
        (status = 400, description = "Malformed, an empty batch, one over the horde's maximum, or a member refused", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Not allowed for this user: kudos needed upfront, a shared key's limits, a role", body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn generate_batch(
    State(state): State<SharedState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    requester: Requester<HordeJson<crate::batches::BatchBody>>,
) -> ApiResult<Response> {
    let Requester {
        user,
        shared_key,
        body: HordeJson(crate::batches::BatchBody(body)),
    } = requester;
    let members = body.prompts.len() as u32;
    crate::ratelimit::count_batch_members(&state, peer, &headers, members).await?;
    Ok(
        match state.accept_batch(&user, shared_key.as_ref(), body).await? {
            crate::batches::BatchAccepted::Queued(r) => {
                (StatusCode::ACCEPTED, Json(r)).into_response()
            }
            crate::batches::BatchAccepted::DryRun(r) => (StatusCode::OK, Json(r)).into_response(),
        },
    )
}

/// Each member's progress in a batch of prompts, and the whole's (anyone with the batch's id).
#[utoipa::path(get, path = "/api/v2/generate/batch/{id}", tag = "v2",
    params(("id" = String, Path)),
    responses((status = 200, body = horde_api::batch::BatchStatus), (status = 404, body = ErrorBody)))]
pub async fn batch_status(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<horde_api::batch::BatchStatus>> {
    state.batch_status(&id).await.map(Json)
}

/// Cancels every member of a batch not done (anyone with the batch's id, as
/// `DELETE /generate/status/{id}`); finished images are kept. Answers the batch's status.
#[utoipa::path(delete, path = "/api/v2/generate/batch/{id}", tag = "v2",
    params(("id" = String, Path)),
    responses((status = 200, body = horde_api::batch::BatchStatus), (status = 404, body = ErrorBody)))]
pub async fn cancel_batch(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<horde_api::batch::BatchStatus>> {
    state.cancel_batch(&id).await.map(Json)
}
