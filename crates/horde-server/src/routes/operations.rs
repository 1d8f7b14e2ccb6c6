//! Moderators' operations: IP timeouts (`/operations/ipaddr…`) and worker address blocks
//! (`/operations/block_worker_ipaddr/…`); and ratings (`/generate/rate/{id}`) (issue 29,
//! points 6 and 7). The service is `operations.rs`; the rules `horde_core::ip_timeouts` and
//! `horde_core::ratings`.

use crate::auth::Moderator;
use crate::error::ApiResult;
use crate::extract::HordeJson;
use crate::state::SharedState;
use axum::extract::{Path, State};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use horde_api::operations::{
    AddTimeoutIp, AestheticRating, AestheticsPayload, BlockWorkerIp, DeleteTimeoutIp, IpTimeout,
    RateResponse, SimpleMessage,
};
use horde_api::ErrorBody;
use utoipa::OpenApi;

/// This area's routes, merged into the server's router (`lib.rs`) before the rate-limit layer.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route(
            "/api/v2/operations/ipaddr",
            get(list_timeouts).post(add_timeout).delete(delete_timeout),
        )
        .route("/api/v2/operations/ipaddr/{ipaddr}", get(timeouts_holding))
        .route(
            "/api/v2/operations/block_worker_ipaddr/{worker_id}",
            put(block_worker).delete(unblock_worker),
        )
        .route("/api/v2/generate/rate/{id}", post(rate))
}

/// This area's operations, merged into the served OpenAPI document (`openapi::document`).
#[derive(OpenApi)]
#[openapi(
    paths(
        list_timeouts,
        add_timeout,
        delete_timeout,
        timeouts_holding,
        block_worker,
        unblock_worker,
        rate
    ),
    components(schemas(
        IpTimeout,
        AddTimeoutIp,
        DeleteTimeoutIp,
        BlockWorkerIp,
        SimpleMessage,
        AestheticRating,
        AestheticsPayload,
        RateResponse
    ))
)]
pub struct Doc;

/// Every address and block in timeout, with the seconds left.
#[utoipa::path(get, path = "/api/v2/operations/ipaddr", tag = "v2", params(("apikey" = String, Header)),
    responses((status = 200, body = Vec<IpTimeout>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_timeouts(
    State(state): State<SharedState>,
    _: Moderator,
) -> ApiResult<Json<Vec<IpTimeout>>> {
    state.list_ip_timeouts().await.map(Json)
}

/// Time an address or a CIDR block out for `hours`: every endpoint refuses it (403
/// `TimeoutIP`). An IPv6 address is timed out as its /64.
#[utoipa::path(post, path = "/api/v2/operations/ipaddr", tag = "v2", params(("apikey" = String, Header)),
    request_body = AddTimeoutIp,
    responses((status = 200, body = SimpleMessage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn add_timeout(
    State(state): State<SharedState>,
    moderator: Moderator<HordeJson<AddTimeoutIp>>,
) -> ApiResult<Json<SimpleMessage>> {
    let HordeJson(body) = moderator.body;
    state.add_ip_timeout(&moderator.user, body).await.map(Json)
}

/// Lift an address's or block's timeout (and forget the address's prompt suspicion).
#[utoipa::path(delete, path = "/api/v2/operations/ipaddr", tag = "v2", params(("apikey" = String, Header)),
    request_body = DeleteTimeoutIp,
    responses((status = 200, body = SimpleMessage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn delete_timeout(
    State(state): State<SharedState>,
    moderator: Moderator<HordeJson<DeleteTimeoutIp>>,
) -> ApiResult<Json<SimpleMessage>> {
    let HordeJson(body) = moderator.body;
    state
        .delete_ip_timeout(&moderator.user, body)
        .await
        .map(Json)
}

/// The timeouts that hold one address.
#[utoipa::path(get, path = "/api/v2/operations/ipaddr/{ipaddr}", tag = "v2",
    params(("ipaddr" = String, Path, pattern = "^(((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])|(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|:((:[0-9a-fA-F]{1,4}){1,7}|:)))$", description = "An IPv4 or IPv6 address"),
        ("apikey" = String, Header)),
    responses((status = 200, body = Vec<IpTimeout>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn timeouts_holding(
    State(state): State<SharedState>,
    Path(ipaddr): Path<String>,
    _: Moderator,
) -> ApiResult<Json<Vec<IpTimeout>>> {
    state.ip_timeouts_holding(&ipaddr).await.map(Json)
}

/// Time the address a worker last popped from out for `days` (an IPv6 address as its /64):
/// it can neither pop nor submit from there.
#[utoipa::path(put, path = "/api/v2/operations/block_worker_ipaddr/{worker_id}", tag = "v2",
    params(("worker_id" = uuid::Uuid, Path), ("apikey" = String, Header)),
    request_body = BlockWorkerIp,
    responses((status = 200, body = SimpleMessage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn block_worker(
    State(state): State<SharedState>,
    Path(worker_id): Path<String>,
    moderator: Moderator<HordeJson<BlockWorkerIp>>,
) -> ApiResult<Json<SimpleMessage>> {
    let HordeJson(body) = moderator.body;
    state
        .block_worker_ip(&moderator.user, &worker_id, body)
        .await
        .map(Json)
}

/// Lift the timeout of the address a worker last popped from.
#[utoipa::path(delete, path = "/api/v2/operations/block_worker_ipaddr/{worker_id}", tag = "v2",
    params(("worker_id" = uuid::Uuid, Path), ("apikey" = String, Header)),
    responses((status = 200, body = SimpleMessage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn unblock_worker(
    State(state): State<SharedState>,
    Path(worker_id): Path<String>,
    moderator: Moderator,
) -> ApiResult<Json<SimpleMessage>> {
    state
        .unblock_worker_ip(&moderator.user, &worker_id)
        .await
        .map(Json)
}

/// Rate the images of a shared, finished request (the id is the secret, as on the public
/// horde). Each rated image's worker gets the rating in its reputation, one voice per
/// requester; a request is rated once. No kudos are awarded (`reward` is 0).
#[utoipa::path(post, path = "/api/v2/generate/rate/{id}", tag = "v2",
    params(("id" = uuid::Uuid, Path, description = "The request's id")),
    request_body = AestheticsPayload,
    responses((status = 200, body = RateResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn rate(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    HordeJson(body): HordeJson<AestheticsPayload>,
) -> ApiResult<Json<RateResponse>> {
    state.rate_request(&id, body).await.map(Json)
}
