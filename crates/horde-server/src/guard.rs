//! What wraps every answer: bounded request lines and headers, the AI Horde error body on every
//! error (whichever layer made it), and the security headers.
//!
//! Errors made below the handlers (axum's rejections of a bad query string or path encoding,
//! the body limit's 413, the body timeout's 408, the Swagger UI's catch-all route) come as
//! plain text or empty; clients decode every answer as JSON, so [`json_errors`] rewrites any
//! error answer that is not JSON into `{message, rc}`, keeping its status and headers.

use crate::error::ApiError;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use horde_api::Rc;

/// The longest request target (path and query) accepted, in bytes; longer is 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header fields accepted; more is 431.
pub const MAX_HEADERS: usize = 100;
/// The most header bytes (names and values) accepted; more is 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The longest plain-text error kept as the `message` of the AI Horde body.
const MAX_MESSAGE_BYTES: usize = 500;

/// The Swagger UI's pages, which exist for GET only.
const DOCUMENTATION_PAGES: &[&str] = &["/api", "/api/", "/api/swagger.json"];

/// Refuses an over-long request target (414) or too many or too large headers (431) with the
/// AI Horde body, before anything else reads them.
pub async fn bounded_request(request: Request, next: Next) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return ApiError::new(
            Rc::UriTooLong,
            format!("The request target is longer than {MAX_URI_BYTES} bytes."),
        )
        .into_response();
    }
    let headers = request.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            Rc::RequestHeaderFieldsTooLarge,
            format!(
                "At most {MAX_HEADERS} header fields of {MAX_HEADER_BYTES} bytes in all are accepted."
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// Every error answer in the AI Horde body: JSON ones pass; others get `{message, rc}` with
/// their status, the plain-text reason (if any) as the message, and their other headers.
/// Paths under `/api/` no route matches reach the Swagger UI's catch-all, which answers an
/// empty 404 (GET) or 405 (other methods): both become 404, except a wrong method on the
/// documentation's own pages, which is 405 with `Allow: GET`.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    let is_error = status.is_client_error() || status.is_server_error();
    // The dashboard's pages answer their own errors in HTML; the API and empty answers get
    // the AI Horde body.
    let api_or_empty =
        path.starts_with("/api") || !response.headers().contains_key(header::CONTENT_TYPE);
    if !is_error || !api_or_empty || is_json(&response) {
        return response;
    }
    // Our routes answer a wrong method in JSON already: a bare 405 is the Swagger UI's.
    if status == StatusCode::METHOD_NOT_ALLOWED {
        if !DOCUMENTATION_PAGES.contains(&path.as_str()) {
            return not_found().await.into_response();
        }
        let mut answer = method_not_allowed().await.into_response();
        answer
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return answer;
    }
    if status == StatusCode::NOT_FOUND {
        return not_found().await.into_response();
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_MESSAGE_BYTES * 4)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("Error").to_string()
    } else {
        truncated(&text, MAX_MESSAGE_BYTES)
    };
    let mut error = ApiError::new(rc_for(status), message);
    error.status = status;
    let mut answer = error.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// `X-Content-Type-Options: nosniff` on every answer, and a Content-Security-Policy on the
/// Swagger UI and the dashboard's SVG chart (the dashboard's pages set their own).
pub async fn security_headers(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let policy = if path.ends_with(".svg") {
        Some("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'")
    } else if path == "/api" || path.starts_with("/api/") && !path.starts_with("/api/v2/") {
        Some(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
             script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
        )
    } else {
        None
    };
    if let Some(policy) = policy {
        if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(policy),
            );
        }
    }
    response
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The answer for a path no route has (the router's fallback too).
pub async fn not_found() -> ApiError {
    ApiError::new(
        Rc::ThingNotFound,
        "The requested URL was not found on this server.",
    )
}

/// The answer for a method a route does not take (the routes' fallback too; axum adds `Allow`).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        Rc::MethodNotAllowed,
        "The method is not allowed for the requested URL.",
    )
}

/// The return code of an error the handlers did not make, by its status.
fn rc_for(status: StatusCode) -> Rc {
    match status.as_u16() {
        401 => Rc::InvalidAPIKey,
        403 => Rc::Forbidden,
        405 => Rc::MethodNotAllowed,
        408 => Rc::RequestTimeout,
        413 => Rc::PayloadTooLarge,
        414 => Rc::UriTooLong,
        415 => Rc::UnsupportedMediaType,
        431 => Rc::RequestHeaderFieldsTooLarge,
        429 => Rc::RateLimited,
        s if s >= 500 => Rc::InternalServerError,
        _ => Rc::BadRequest,
    }
}

fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
