//! Request extractors: JSON bodies with the public horde's validation answers, and the caller's
//! API key and address.

use crate::error::ApiError;
use crate::strict_json::Strict;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use horde_api::{ErrorBody, Rc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// A JSON body parsed into `T`. Schema errors answer 400 with `errors` naming the field, a NUL
/// byte in a field the server reads 400 `NulByteInPayload`, a body over the limit 413
/// `PayloadTooLarge`.
pub struct HordeJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Serialize> FromRequest<S> for HordeJson<T> {
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
/// expected shape (trailing data, a second value or an array for an object are 400), read as
/// the spec's JSON schemas read it (`strict_json`: `512.0` is an integer).
///
/// A NUL byte (which PostgreSQL cannot store in text) in any field the server reads refuses the
/// body; one in a field it ignores is ignored with the field, so that the spec can say which
/// bodies are accepted.
pub fn parse_json<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, ApiError> {
    let parsed = parse_body(bytes)?;
    if contains_nul(bytes) && serde_json::to_vec(&parsed).map_or(true, |read| contains_nul(&read)) {
        return Err(ApiError::new(
            Rc::NulByteInPayload,
            "Payload cannot contain NUL bytes.",
        ));
    }
    Ok(parsed)
}

fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let invalid = |field: String, reason: String| {
        let mut errors = BTreeMap::new();
        errors.insert(field, reason);
        ApiError::validation(ErrorBody::validation(errors))
    };
    // One JSON value and nothing after it, then read as the spec reads it (`strict_json`).
    let value: Value =
        serde_json::from_slice(bytes).map_err(|err| invalid("payload".into(), err.to_string()))?;
    serde_path_to_error::deserialize(Strict(value)).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." || path.is_empty() {
            "payload".to_string()
        } else {
            path
        };
        invalid(field, err.inner().to_string())
    })
}

/// Whether a JSON text holds a NUL byte, raw or escaped as `\u0000` (an escaped backslash
/// followed by `u0000` is text, not a NUL).
fn contains_nul(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0 => return true,
            b'\\' => {
                if bytes.get(i + 1) == Some(&b'u')
                    && bytes.get(i + 2..i + 6).is_some_and(|hex| hex == b"0000")
                {
                    return true;
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
    false
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

impl ApiKey {
    /// The `apikey` header of a request's head, trimmed; none when missing or empty.
    pub fn from_parts(parts: &Parts) -> ApiKey {
        ApiKey(
            parts
                .headers
                .get("apikey")
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ApiKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ApiKey::from_parts(parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Body {
        width: u32,
        seed: Option<i64>,
        scale: f64,
    }

    #[test]
    fn a_nul_is_found_raw_or_escaped_but_not_in_an_escaped_backslash() {
        assert!(contains_nul(br#"{"a": "x\u0000"}"#));
        assert!(contains_nul(br#"{"a\u0000": 1}"#), "in a property name");
        assert!(contains_nul(b"{\"a\": \"\0\"}"), "raw");
        assert!(!contains_nul(br#"{"a": "x\\u0000"}"#), "the text \\u0000");
        assert!(!contains_nul(br#"{"a": "\u0001"}"#));
    }

    #[test]
    fn a_nul_refuses_a_body_only_in_a_field_that_is_read() {
        let ignored: Result<Body, _> =
            parse_json(br#"{"width": 1, "scale": 1, "unknown\u0000": "\u0000"}"#);
        assert!(ignored.is_ok(), "an unknown field is ignored, NUL and all");
        #[derive(Debug, Deserialize, Serialize)]
        struct Named {
            name: String,
        }
        let read = parse_json::<Named>(br#"{"name": "a\u0000b"}"#).unwrap_err();
        assert_eq!(read.body.rc.as_deref(), Some("NulByteInPayload"));
    }

    #[test]
    fn integral_floats_fill_integer_fields_and_fractions_do_not() {
        let parsed: Body = parse_json(br#"{"width": 512.0, "seed": -3.0, "scale": 7.0}"#).unwrap();
        assert_eq!(
            parsed,
            Body {
                width: 512,
                seed: Some(-3),
                scale: 7.0
            }
        );
        let refused = parse_json::<Body>(br#"{"width": 512.5, "seed": 1, "scale": 7}"#);
        assert!(refused.is_err());
        let too_big = parse_json::<Body>(br#"{"width": 1e30, "seed": 1, "scale": 7}"#);
        assert!(too_big.is_err());
        let trailing = parse_json::<Body>(br#"{"width": 512.0, "seed": 1, "scale": 7} {}"#);
        assert!(trailing.is_err(), "still one value only");
    }

    #[test]
    fn a_struct_comes_as_an_object_at_every_depth() {
        #[derive(Debug, Deserialize, Serialize)]
        struct Outer {
            #[serde(default)]
            inner: Option<Inner>,
            #[serde(default)]
            list: Vec<Inner>,
        }
        #[derive(Debug, Default, Deserialize, Serialize)]
        struct Inner {
            #[serde(default)]
            n: u32,
        }
        assert!(parse_json::<Outer>(br#"{"inner": {"n": 2.0}, "list": [{"n": 1}]}"#).is_ok());
        for refused in [&br#"[]"#[..], br#"{"inner": []}"#, br#"{"list": [[3]]}"#] {
            let error = parse_json::<Outer>(refused).unwrap_err();
            assert_eq!(error.body.rc.as_deref(), Some("ValidationError"));
        }
    }
}
