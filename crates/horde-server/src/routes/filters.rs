//! `/api/v2/filters…`: moderators manage the regex prompt filters and check prompts with them.

use crate::auth::Moderator;
use crate::error::ApiResult;
use crate::extract::{HordeJson, HordeQuery};
use crate::state::SharedState;
use axum::extract::{Path, State};
use axum::Json;
use horde_api::filter::{
    FilterDetails, FilterPatch, FilterPromptSuspicion, FilterQuery, FilterRegex, NewFilter,
    PromptCheck,
};
use horde_api::ErrorBody;

/// The stored filters, optionally of one type or with a description containing some text.
#[utoipa::path(get, path = "/api/v2/filters", tag = "v2", params(FilterQuery, ("apikey" = String, Header)),
    responses((status = 200, body = Vec<FilterDetails>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<SharedState>,
    HordeQuery(query): HordeQuery<FilterQuery>,
    _: Moderator,
) -> ApiResult<Json<Vec<FilterDetails>>> {
    state.list_filters(&query).await.map(Json)
}

/// Add a filter.
#[utoipa::path(put, path = "/api/v2/filters", tag = "v2", params(("apikey" = String, Header)),
    request_body = NewFilter,
    responses((status = 200, body = FilterDetails), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn add(
    State(state): State<SharedState>,
    moderator: Moderator<HordeJson<NewFilter>>,
) -> ApiResult<Json<FilterDetails>> {
    let HordeJson(body) = moderator.body;
    state.add_filter(&moderator.user, body).await.map(Json)
}

/// How suspicious a prompt is (2 would be blocked), and what matched.
#[utoipa::path(post, path = "/api/v2/filters", tag = "v2", params(("apikey" = String, Header)),
    request_body = PromptCheck,
    responses((status = 200, body = FilterPromptSuspicion), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn check(
    State(state): State<SharedState>,
    moderator: Moderator<HordeJson<PromptCheck>>,
) -> ApiResult<Json<FilterPromptSuspicion>> {
    let HordeJson(body) = moderator.body;
    state.check_prompt(body).map(Json)
}

/// Each screening type's combined regex.
#[utoipa::path(get, path = "/api/v2/filters/regex", tag = "v2", params(FilterQuery, ("apikey" = String, Header)),
    responses((status = 200, body = Vec<FilterRegex>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn regex(
    State(state): State<SharedState>,
    HordeQuery(query): HordeQuery<FilterQuery>,
    _: Moderator,
) -> Json<Vec<FilterRegex>> {
    Json(state.filter_regexes(&query))
}

#[utoipa::path(get, path = "/api/v2/filters/{id}", tag = "v2", params(("id" = uuid::Uuid, Path, description = "The filter's UUID (so never `regex`, which is `GET /filters/regex`)"), ("apikey" = String, Header)),
    responses((status = 200, body = FilterDetails), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    _: Moderator,
) -> ApiResult<Json<FilterDetails>> {
    state.get_filter(&id).await.map(Json)
}

#[utoipa::path(patch, path = "/api/v2/filters/{id}", tag = "v2", params(("id" = uuid::Uuid, Path, description = "The filter's UUID (so never `regex`, which is `GET /filters/regex`)"), ("apikey" = String, Header)),
    request_body = FilterPatch,
    responses((status = 200, body = FilterDetails), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn modify(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    moderator: Moderator<HordeJson<FilterPatch>>,
) -> ApiResult<Json<FilterDetails>> {
    let HordeJson(body) = moderator.body;
    state
        .modify_filter(&moderator.user, &id, body)
        .await
        .map(Json)
}

#[utoipa::path(delete, path = "/api/v2/filters/{id}", tag = "v2", params(("id" = uuid::Uuid, Path, description = "The filter's UUID (so never `regex`, which is `GET /filters/regex`)"), ("apikey" = String, Header)),
    responses((status = 200, description = "{\"message\": \"OK\"}"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    moderator: Moderator,
) -> ApiResult<Json<serde_json::Value>> {
    state.delete_filter(&moderator.user, &id).await?;
    Ok(Json(serde_json::json!({"message": "OK"})))
}

/// `PATCH /filters/regex`: the path of the regex list is never a filter's id (ids are UUIDs),
/// so it is answered as `/filters/{id}` answers an id it does not know, not with the router's
/// 405 (not in the OpenAPI document: the `{id}` operation describes it).
pub async fn modify_regex_path(
    State(state): State<SharedState>,
    moderator: Moderator<HordeJson<FilterPatch>>,
) -> ApiResult<Json<FilterDetails>> {
    let HordeJson(body) = moderator.body;
    state
        .modify_filter(&moderator.user, "regex", body)
        .await
        .map(Json)
}

/// `DELETE /filters/regex`: as [`modify_regex_path`], an id no filter has.
pub async fn delete_regex_path(
    State(state): State<SharedState>,
    moderator: Moderator,
) -> ApiResult<Json<serde_json::Value>> {
    state.delete_filter(&moderator.user, "regex").await?;
    Ok(Json(serde_json::json!({"message": "OK"})))
}
