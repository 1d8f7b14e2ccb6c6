//! Styles and collections: `/styles/image…`, `/styles/text…`, `/collections…`,
//! `/collection_by_name/…` (issue 29, point 1). The rules are `horde_core::styles`, the
//! service `crate::styles`.

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::{HordeJson, HordeQuery};
use crate::state::SharedState;
use axum::extract::{Path, State};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use horde_api::styles::{
    CollectionDetails, CollectionInput, CollectionPatch, CollectionQuery, StyleBrief, StyleDetails,
    StyleExample, StyleExampleInput, StyleExamplePatch, StyleInput, StyleModified, StylePatch,
    StyleQuery, TextStyleInput, TextStylePatch, MAX_TAG_CHARS,
};
use horde_api::ErrorBody;
use horde_core::styles::StyleKind;
use serde_json::{json, Value};
use utoipa::OpenApi;

/// This area's routes, merged into the server's router (`lib.rs`) before the rate-limit layer.
pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/api/v2/styles/image", get(image_list).post(image_create))
        .route(
            "/api/v2/styles/image/{style_id}",
            get(image_one).patch(image_modify).delete(image_delete),
        )
        .route(
            "/api/v2/styles/image_by_name/{style_name}",
            get(image_by_name),
        )
        .route("/api/v2/styles/image/{style_id}/example", post(example_add))
        .route(
            "/api/v2/styles/image/{style_id}/example/{example_id}",
            patch(example_modify).delete(example_delete),
        )
        .route("/api/v2/styles/text", get(text_list).post(text_create))
        .route(
            "/api/v2/styles/text/{style_id}",
            get(text_one).patch(text_modify).delete(text_delete),
        )
        .route(
            "/api/v2/styles/text_by_name/{style_name}",
            get(text_by_name),
        )
        .route(
            "/api/v2/collections",
            get(collection_list).post(collection_create),
        )
        .route(
            "/api/v2/collections/{collection_id}",
            get(collection_one)
                .patch(collection_modify)
                .delete(collection_delete),
        )
        .route(
            "/api/v2/collection_by_name/{collection_name}",
            get(collection_by_name),
        )
}

/// This area's operations, merged into the served OpenAPI document (`openapi::document`).
#[derive(OpenApi)]
#[openapi(
    paths(
        image_list,
        image_create,
        image_one,
        image_modify,
        image_delete,
        image_by_name,
        example_add,
        example_modify,
        example_delete,
        text_list,
        text_create,
        text_one,
        text_modify,
        text_delete,
        text_by_name,
        collection_list,
        collection_create,
        collection_one,
        collection_modify,
        collection_delete,
        collection_by_name
    ),
    components(schemas(
        StyleInput,
        StylePatch,
        StyleDetails,
        StyleExample,
        StyleModified,
        StyleExampleInput,
        StyleExamplePatch,
        CollectionInput,
        CollectionPatch,
        CollectionDetails,
        StyleBrief,
        TextStyleInput,
        TextStylePatch
    ))
)]
pub struct Doc;

/// Writes into the served document what the attributes cannot say: an image template holds
/// `{p}` and `{np}`, a text template `{p}`; `params` are the request's params of that kind;
/// each tag, model and named style is bounded. The text bodies' schemas are the image ones'
/// with those differences. Called from `openapi::input_rules`.
pub fn spec_rules(schemas: &mut Value) {
    schemas["TextStyleInput"] = schemas["StyleInput"].clone();
    schemas["TextStylePatch"] = schemas["StylePatch"].clone();
    let both = r"\{p\}[\s\S]*\{np\}|\{np\}[\s\S]*\{p\}";
    let kinds = [
        ("StyleInput", both, "ImageParams"),
        ("StylePatch", both, "ImageParams"),
        ("TextStyleInput", r"\{p\}", "TextParams"),
        ("TextStylePatch", r"\{p\}", "TextParams"),
    ];
    for (schema, template, params) in kinds {
        let properties = &mut schemas[schema]["properties"];
        if let Value::Object(prompt) = &mut properties["prompt"] {
            prompt.insert("pattern".into(), json!(template));
        }
        // Read whole (unknown properties too): no NUL anywhere, as `openapi::NO_NUL` says.
        let whole = json!({"type": "object", "propertyNames": {"pattern": "^[^\\x00]*$"},
            "additionalProperties": {"$ref": "#/components/schemas/JsonWithoutNul"}});
        let params = json!({"$ref": format!("#/components/schemas/{params}")});
        properties["params"] = json!({"anyOf": [{"type": "null"}, {"allOf": [params, whole]}]});
        let items = [("tags", 1, MAX_TAG_CHARS), ("models", 1, 255)];
        for (list, min, max) in items {
            let entry = json!({"type": "string", "minLength": min, "maxLength": max});
            if let Value::Object(list) = &mut properties[list] {
                list.insert("items".into(), entry);
            }
        }
    }
    for schema in ["CollectionInput", "CollectionPatch"] {
        if let Value::Object(styles) = &mut schemas[schema]["properties"]["styles"] {
            styles.insert("items".into(), json!({"type": "string", "maxLength": 1024}));
        }
    }
}

fn ok() -> Json<Value> {
    Json(json!({"message": "OK"}))
}

/// A page of public image styles, most used (or newest) first, optionally with a tag or model.
#[utoipa::path(get, path = "/api/v2/styles/image", tag = "v2", params(StyleQuery),
    responses((status = 200, body = Vec<StyleDetails>), (status = 400, body = ErrorBody)))]
pub async fn image_list(
    State(state): State<SharedState>,
    HordeQuery(query): HordeQuery<StyleQuery>,
) -> ApiResult<Json<Vec<StyleDetails>>> {
    state.list_styles(StyleKind::Image, &query).await.map(Json)
}

/// Create an image style (customizers and trusted users). Its prompt holds `{p}` and `{np}`.
#[utoipa::path(post, path = "/api/v2/styles/image", tag = "v2", params(("apikey" = String, Header)),
    request_body = StyleInput,
    responses((status = 200, body = StyleModified), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn image_create(
    State(state): State<SharedState>,
    caller: Caller<HordeJson<StyleInput>>,
) -> ApiResult<Json<StyleModified>> {
    let HordeJson(body) = caller.body;
    state
        .create_style(&caller.user, StyleKind::Image, body)
        .await
        .map(Json)
}

/// One image style.
#[utoipa::path(get, path = "/api/v2/styles/image/{style_id}", tag = "v2", params(("style_id" = String, Path)),
    responses((status = 200, body = StyleDetails), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn image_one(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<StyleDetails>> {
    state.style_details(StyleKind::Image, &id).await.map(Json)
}

/// Change an image style (its owner only).
#[utoipa::path(patch, path = "/api/v2/styles/image/{style_id}", tag = "v2", params(("style_id" = String, Path), ("apikey" = String, Header)),
    request_body = StylePatch,
    responses((status = 200, body = StyleModified), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn image_modify(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller<HordeJson<StylePatch>>,
) -> ApiResult<Json<StyleModified>> {
    let HordeJson(body) = caller.body;
    state
        .modify_style(&caller.user, StyleKind::Image, &id, body)
        .await
        .map(Json)
}

/// Delete an image style (its owner or a moderator).
#[utoipa::path(delete, path = "/api/v2/styles/image/{style_id}", tag = "v2", params(("style_id" = String, Path), ("apikey" = String, Header)),
    responses((status = 200, description = "{\"message\": \"OK\"}"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn image_delete(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    state
        .delete_style(&caller.user, StyleKind::Image, &id)
        .await?;
    Ok(ok())
}

/// An image style by name: `alias#id::style::name`, or a bare name (the oldest public one).
#[utoipa::path(get, path = "/api/v2/styles/image_by_name/{style_name}", tag = "v2", params(("style_name" = String, Path)),
    responses((status = 200, body = StyleDetails), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn image_by_name(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<StyleDetails>> {
    state
        .style_details_by_name(StyleKind::Image, &name)
        .await
        .map(Json)
}

/// Add an example image to an image style (its owner or a moderator; at most four).
#[utoipa::path(post, path = "/api/v2/styles/image/{style_id}/example", tag = "v2", params(("style_id" = String, Path), ("apikey" = String, Header)),
    request_body = StyleExampleInput,
    responses((status = 200, body = StyleModified), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn example_add(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller<HordeJson<StyleExampleInput>>,
) -> ApiResult<Json<StyleModified>> {
    let HordeJson(body) = caller.body;
    state
        .add_style_example(&caller.user, &id, body)
        .await
        .map(Json)
}

/// Change an example of an image style.
#[utoipa::path(patch, path = "/api/v2/styles/image/{style_id}/example/{example_id}", tag = "v2",
    params(("style_id" = String, Path), ("example_id" = String, Path), ("apikey" = String, Header)),
    request_body = StyleExamplePatch,
    responses((status = 200, body = StyleModified), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn example_modify(
    State(state): State<SharedState>,
    Path((id, example_id)): Path<(String, String)>,
    caller: Caller<HordeJson<StyleExamplePatch>>,
) -> ApiResult<Json<StyleModified>> {
    let HordeJson(body) = caller.body;
    state
        .modify_style_example(&caller.user, &id, &example_id, body)
        .await
        .map(Json)
}

/// Delete an example of an image style.
#[utoipa::path(delete, path = "/api/v2/styles/image/{style_id}/example/{example_id}", tag = "v2",
    params(("style_id" = String, Path), ("example_id" = String, Path), ("apikey" = String, Header)),
    responses((status = 200, description = "{\"message\": \"OK\"}"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn example_delete(
    State(state): State<SharedState>,
    Path((id, example_id)): Path<(String, String)>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    state
        .delete_style_example(&caller.user, &id, &example_id)
        .await?;
    Ok(ok())
}

/// A page of public text styles.
#[utoipa::path(get, path = "/api/v2/styles/text", tag = "v2", params(StyleQuery),
    responses((status = 200, body = Vec<StyleDetails>), (status = 400, body = ErrorBody)))]
pub async fn text_list(
    State(state): State<SharedState>,
    HordeQuery(query): HordeQuery<StyleQuery>,
) -> ApiResult<Json<Vec<StyleDetails>>> {
    state.list_styles(StyleKind::Text, &query).await.map(Json)
}

/// Create a text style (customizers and trusted users). Its prompt holds `{p}`.
#[utoipa::path(post, path = "/api/v2/styles/text", tag = "v2", params(("apikey" = String, Header)),
    request_body = TextStyleInput,
    responses((status = 200, body = StyleModified), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn text_create(
    State(state): State<SharedState>,
    caller: Caller<HordeJson<StyleInput>>,
) -> ApiResult<Json<StyleModified>> {
    let HordeJson(body) = caller.body;
    state
        .create_style(&caller.user, StyleKind::Text, body)
        .await
        .map(Json)
}

/// One text style.
#[utoipa::path(get, path = "/api/v2/styles/text/{style_id}", tag = "v2", params(("style_id" = String, Path)),
    responses((status = 200, body = StyleDetails), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn text_one(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<StyleDetails>> {
    state.style_details(StyleKind::Text, &id).await.map(Json)
}

/// Change a text style (its owner only).
#[utoipa::path(patch, path = "/api/v2/styles/text/{style_id}", tag = "v2", params(("style_id" = String, Path), ("apikey" = String, Header)),
    request_body = TextStylePatch,
    responses((status = 200, body = StyleModified), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn text_modify(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller<HordeJson<StylePatch>>,
) -> ApiResult<Json<StyleModified>> {
    let HordeJson(body) = caller.body;
    state
        .modify_style(&caller.user, StyleKind::Text, &id, body)
        .await
        .map(Json)
}

/// Delete a text style (its owner or a moderator).
#[utoipa::path(delete, path = "/api/v2/styles/text/{style_id}", tag = "v2", params(("style_id" = String, Path), ("apikey" = String, Header)),
    responses((status = 200, description = "{\"message\": \"OK\"}"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn text_delete(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    state
        .delete_style(&caller.user, StyleKind::Text, &id)
        .await?;
    Ok(ok())
}

/// A text style by name.
#[utoipa::path(get, path = "/api/v2/styles/text_by_name/{style_name}", tag = "v2", params(("style_name" = String, Path)),
    responses((status = 200, body = StyleDetails), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn text_by_name(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<StyleDetails>> {
    state
        .style_details_by_name(StyleKind::Text, &name)
        .await
        .map(Json)
}

/// A page of public collections, of one type or all.
#[utoipa::path(get, path = "/api/v2/collections", tag = "v2", params(CollectionQuery),
    responses((status = 200, body = Vec<CollectionDetails>), (status = 400, body = ErrorBody)))]
pub async fn collection_list(
    State(state): State<SharedState>,
    HordeQuery(query): HordeQuery<CollectionQuery>,
) -> ApiResult<Json<Vec<CollectionDetails>>> {
    state.list_collections(&query).await.map(Json)
}

/// Create a collection of styles of one type (registered users).
#[utoipa::path(post, path = "/api/v2/collections", tag = "v2", params(("apikey" = String, Header)),
    request_body = CollectionInput,
    responses((status = 200, body = StyleModified), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn collection_create(
    State(state): State<SharedState>,
    caller: Caller<HordeJson<CollectionInput>>,
) -> ApiResult<Json<StyleModified>> {
    let HordeJson(body) = caller.body;
    state.create_collection(&caller.user, body).await.map(Json)
}

/// One collection.
#[utoipa::path(get, path = "/api/v2/collections/{collection_id}", tag = "v2", params(("collection_id" = String, Path)),
    responses((status = 200, body = CollectionDetails), (status = 404, body = ErrorBody)))]
pub async fn collection_one(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Json<CollectionDetails>> {
    state.collection_details(&id).await.map(Json)
}

/// Change a collection (its owner only).
#[utoipa::path(patch, path = "/api/v2/collections/{collection_id}", tag = "v2", params(("collection_id" = String, Path), ("apikey" = String, Header)),
    request_body = CollectionPatch,
    responses((status = 200, body = StyleModified), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn collection_modify(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller<HordeJson<CollectionPatch>>,
) -> ApiResult<Json<StyleModified>> {
    let HordeJson(body) = caller.body;
    state
        .modify_collection(&caller.user, &id, body)
        .await
        .map(Json)
}

/// Delete a collection (its owner or a moderator); its styles stay.
#[utoipa::path(delete, path = "/api/v2/collections/{collection_id}", tag = "v2", params(("collection_id" = String, Path), ("apikey" = String, Header)),
    responses((status = 200, description = "{\"message\": \"OK\"}"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn collection_delete(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    state.delete_collection(&caller.user, &id).await?;
    Ok(ok())
}

/// A collection by name: `alias#id::collection::name`, or a bare name.
#[utoipa::path(get, path = "/api/v2/collection_by_name/{collection_name}", tag = "v2", params(("collection_name" = String, Path)),
    responses((status = 200, body = CollectionDetails), (status = 404, body = ErrorBody)))]
pub async fn collection_by_name(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> ApiResult<Json<CollectionDetails>> {
    state.collection_details_by_name(&name).await.map(Json)
}
