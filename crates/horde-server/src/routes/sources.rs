//! `/api/v2/sources/…`: the download URLs of requests' source images, handed to workers that
//! pop with `r2_source`. The signature is the authorisation (no API key), as for the upload
//! URLs beside them.

use crate::error::ApiResult;
use crate::state::SharedState;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use horde_api::ErrorBody;
use serde::Deserialize;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SourceQuery {
    /// Unix seconds after which the URL is refused.
    expires: i64,
    /// The URL's signature.
    sig: String,
}

/// A request's source image, mask or extra image (`role`: `source_image`, `source_mask`,
/// `extra_0`…`extra_4`) as lossless WebP: the `source_image`, `source_mask` and
/// `extra_source_images` URLs of a pop by a worker with `r2_source`.
#[utoipa::path(get, path = "/api/v2/sources/{request_id}/{role}", tag = "v2",
    params(("request_id" = String, Path), ("role" = String, Path), SourceQuery),
    responses((status = 200, content_type = "image/webp", body = Vec<u8>),
        (status = 403, description = "A forged or expired URL", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn download(
    State(state): State<SharedState>,
    Path((request_id, role)): Path<(String, String)>,
    Query(q): Query<SourceQuery>,
) -> ApiResult<Response> {
    let bytes = state
        .source_download(&request_id, &role, q.expires, &q.sig)
        .await?;
    Ok(([(header::CONTENT_TYPE, "image/webp")], bytes).into_response())
}
