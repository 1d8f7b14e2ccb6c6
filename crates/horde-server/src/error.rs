//! The server's error type and its HTTP rendering as the AI Horde error body.
//!
//! 5xx bodies are opaque; their cause is logged, never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use horde_api::{ErrorBody, Rc};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    /// Seconds after which trying again may succeed (sent as `Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(rc: Rc, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(rc.status()).unwrap_or(StatusCode::BAD_REQUEST),
            body: ErrorBody::new(rc, message),
            retry_after: None,
        }
    }

    /// This error, telling the client when to try again.
    pub fn retry_after(self, secs: u64) -> Self {
        ApiError {
            retry_after: Some(secs),
            ..self
        }
    }

    /// A schema-validation failure (400 with an `errors` map).
    pub fn validation(body: ErrorBody) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body,
            retry_after: None,
        }
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: ErrorBody {
                message: "Internal Server Error".into(),
                rc: Some(Rc::InternalServerError.as_str().into()),
                errors: None,
            },
            retry_after: None,
        }
    }
}

impl From<horde_store::StoreError> for ApiError {
    fn from(err: horde_store::StoreError) -> Self {
        ApiError::internal(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<horde_core::request_rules::RequestRefusal> for ApiError {
    fn from(refusal: horde_core::request_rules::RequestRefusal) -> Self {
        refused(refusal)
    }
}

/// The answer to a rule's refusal (`horde_core::Refusal`): 400 with its `rc` and message.
pub fn refused(refusal: impl horde_core::Refusal) -> ApiError {
    ApiError::new(refusal.rc(), refusal.message())
}
