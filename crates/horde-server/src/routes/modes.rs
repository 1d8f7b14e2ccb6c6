//! The horde's modes (`/status/modes`), news (`/status/news`) and documents
//! (`/documents/…`) (issue 29, point 4); the users list (`GET /users`), account deletion
//! (`DELETE /users/{id}`, routed beside the other `/users/{id}` methods in `lib.rs`) and awards
//! (`POST /kudos/award`) (point 5). The rules are `horde_core::modes`, the service `modes.rs`.

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::{ApiKey, HordeJson, HordeQuery};
use crate::modes::Document;
use crate::state::SharedState;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use horde_api::modes::{
    DocumentFormat, DocumentQuery, HordeDocument, HordeModes, HordeModesChange, KudosAwardRequest,
    KudosAwarded, Newspiece, SimpleResponse, UsersQuery,
};
use horde_api::user::UserDetails;
use horde_api::ErrorBody;
use utoipa::OpenApi;

/// This area's routes, merged into the server's router (`lib.rs`) before the rate-limit layer.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/api/v2/status/modes", get(get_modes).put(put_modes))
        .route("/api/v2/status/news", get(news))
        .route("/api/v2/documents/terms", get(terms))
        .route("/api/v2/documents/privacy", get(privacy))
        .route("/api/v2/documents/sponsors", get(sponsors))
        .route("/api/v2/users", get(users))
        .route("/api/v2/kudos/award", post(award))
}

/// This area's operations, merged into the served OpenAPI document (`openapi::document`).
#[derive(OpenApi)]
#[openapi(
    paths(
        get_modes,
        put_modes,
        news,
        terms,
        privacy,
        sponsors,
        users,
        delete_user,
        award
    ),
    components(schemas(
        HordeModes,
        HordeModesChange,
        Newspiece,
        HordeDocument,
        DocumentFormat,
        KudosAwardRequest,
        KudosAwarded,
        SimpleResponse
    ))
)]
pub struct Doc;

/// Whether the horde is in maintenance mode (no new requests) or worker invite-only mode;
/// with a moderator's key, also raid mode. Any other key sent is refused (403 `NotModerator`).
#[utoipa::path(get, path = "/api/v2/status/modes", tag = "v2", params(("apikey" = Option<String>, Header)),
    responses((status = 200, body = HordeModes), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn get_modes(
    State(state): State<SharedState>,
    key: ApiKey,
) -> ApiResult<Json<HordeModes>> {
    state.shown_modes(&key).await.map(Json)
}

/// Change the horde's modes: maintenance (administrators: new requests are refused with 400
/// `MaintenanceMode`, jobs handed out still finish), invite-only and raid (moderators). The
/// answer lists the modes changed.
#[utoipa::path(put, path = "/api/v2/status/modes", tag = "v2", params(("apikey" = String, Header)),
    request_body = HordeModesChange,
    responses((status = 200, body = HordeModesChange), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn put_modes(
    State(state): State<SharedState>,
    caller: Caller<HordeJson<HordeModesChange>>,
) -> ApiResult<Json<HordeModesChange>> {
    let HordeJson(change) = &caller.body;
    state.change_modes(&caller.user, change).await.map(Json)
}

/// The horde's news, newest first: the operator's (`documents.news`), or the built-in.
#[utoipa::path(get, path = "/api/v2/status/news", tag = "v2",
    responses((status = 200, body = Vec<Newspiece>)))]
pub async fn news(State(state): State<SharedState>) -> ApiResult<Json<Vec<Newspiece>>> {
    state.news().await.map(Json)
}

async fn document(
    state: &SharedState,
    document: Document,
    query: DocumentQuery,
) -> ApiResult<Json<HordeDocument>> {
    let format = query.format.unwrap_or_default();
    state.document(document, format).await.map(Json)
}

/// The horde's terms of service, as `html` (the default) or `markdown`.
#[utoipa::path(get, path = "/api/v2/documents/terms", tag = "v2", params(DocumentQuery),
    responses((status = 200, body = HordeDocument)))]
pub async fn terms(
    State(state): State<SharedState>,
    HordeQuery(query): HordeQuery<DocumentQuery>,
) -> ApiResult<Json<HordeDocument>> {
    document(&state, Document::Terms, query).await
}

/// The horde's privacy policy, as `html` (the default) or `markdown`.
#[utoipa::path(get, path = "/api/v2/documents/privacy", tag = "v2", params(DocumentQuery),
    responses((status = 200, body = HordeDocument)))]
pub async fn privacy(
    State(state): State<SharedState>,
    HordeQuery(query): HordeQuery<DocumentQuery>,
) -> ApiResult<Json<HordeDocument>> {
    document(&state, Document::Privacy, query).await
}

/// The horde's sponsors, as `html` (the default) or `markdown`.
#[utoipa::path(get, path = "/api/v2/documents/sponsors", tag = "v2", params(DocumentQuery),
    responses((status = 200, body = HordeDocument)))]
pub async fn sponsors(
    State(state): State<SharedState>,
    HordeQuery(query): HordeQuery<DocumentQuery>,
) -> ApiResult<Json<HordeDocument>> {
    document(&state, Document::Sponsors, query).await
}

/// A page of 25 users as anyone sees them, by kudos (most first, the default) or by age
/// (`sort=age`, oldest first); deleted accounts are left out.
#[utoipa::path(get, path = "/api/v2/users", tag = "v2", params(UsersQuery),
    responses((status = 200, body = Vec<UserDetails>), (status = 400, body = ErrorBody)))]
pub async fn users(
    State(state): State<SharedState>,
    HordeQuery(query): HordeQuery<UsersQuery>,
) -> ApiResult<Json<Vec<UserDetails>>> {
    state.users_list(&query).await.map(Json)
}

/// Delete an account: the user themself or a moderator (not a moderator's account). The first
/// call makes it unusable at once (403 `DeletedUser`); a second one, 30 days later or more,
/// wipes its name, identity, key and shared keys.
#[utoipa::path(delete, path = "/api/v2/users/{id}", tag = "v2", params(("id" = String, Path), ("apikey" = String, Header)),
    responses((status = 200, body = SimpleResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_user(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller,
) -> ApiResult<Json<SimpleResponse>> {
    state.delete_user(&caller.user, &id).await.map(Json)
}

/// Award kudos from the horde to a user (`alias#id`): administrators only.
#[utoipa::path(post, path = "/api/v2/kudos/award", tag = "v2", params(("apikey" = String, Header)),
    request_body = KudosAwardRequest,
    responses((status = 200, body = KudosAwarded), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn award(
    State(state): State<SharedState>,
    caller: Caller<HordeJson<KudosAwardRequest>>,
) -> ApiResult<Json<KudosAwarded>> {
    let HordeJson(body) = &caller.body;
    state.award_kudos_to(&caller.user, body).await.map(Json)
}
