//! Request extractors: JSON bodies with the public horde's validation answers, and the caller's
//! API key and address.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use horde_api::{ErrorBody, Rc};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// A JSON body parsed into `T`. Schema errors answer 400 with `errors` naming the field, a NUL
/// byte answers 400 `NulByteInPayload`, a body over the limit 413 `PayloadTooLarge`.
pub struct HordeJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for HordeJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(Rc::PayloadTooLarge, "The request body is too large.")
            } else if is_body_timeout(&rejection) {
                ApiError::new(
                    Rc::RequestTimeout,
                    "The request body did not arrive in time.",
                )
            } else {
                ApiError::new(Rc::BadRequest, "The request body could not be read.")
            }
        })?;
        parse_json(&bytes).map(HordeJson)
    }
}

/// Whether reading the body failed because it did not arrive within `api.body_timeout_secs`.
fn is_body_timeout(rejection: &axum::extract::rejection::BytesRejection) -> bool {
    use std::error::Error;
    let mut cause: Option<&(dyn Error + 'static)> = Some(rejection);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Parses a JSON body the way the public horde validates one: exactly one JSON value of the
/// expected shape (trailing data, a second value or an array for an object are 400).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) || bytes.contains(&0) {
        return Err(ApiError::new(
            Rc::NulByteInPayload,
            "Payload cannot contain NUL bytes.",
        ));
    }
    // Most bodies are valid: parse them directly, and only a body that fails is parsed again
    // to name the field that failed.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." || path.is_empty() {
            "payload".to_string()
        } else {
            path
        };
        let mut errors = BTreeMap::new();
        errors.insert(field, err.inner().to_string());
        ApiError::validation(ErrorBody::validation(errors))
    })?;
    // The first parse failed but this one read a whole value: what follows it is the fault.
    deserializer.end().map_err(|err| {
        let mut errors = BTreeMap::new();
        errors.insert("payload".to_string(), err.to_string());
        ApiError::validation(ErrorBody::validation(errors))
    })?;
    Ok(parsed)
}

/// A query string parsed into `T`; a malformed one answers 400 `ValidationError` naming it.
pub struct HordeQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for HordeQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| HordeQuery(q.0))
            .map_err(|rejection| {
                let mut errors = BTreeMap::new();
                errors.insert("query".to_string(), rejection.body_text());
                ApiError::validation(ErrorBody::validation(errors))
            })
    }
}

/// The `apikey` header, if present.
pub struct ApiKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ApiKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ApiKey(
            parts
                .headers
                .get("apikey")
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        ))
    }
}
