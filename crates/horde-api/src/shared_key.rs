//! Shared key bodies: `PUT /sharedkeys`, `GET|PATCH|DELETE /sharedkeys/{id}`.

use crate::error::{ErrorBody, FieldErrors};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

fn default_kudos() -> i64 {
    5000
}
fn unlimited() -> i64 {
    -1
}

/// The body of `PUT /sharedkeys` (all fields have defaults) and of `PATCH /sharedkeys/{id}`
/// (only the fields sent change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SharedKeyInput {
    /// Budget in kudos; −1 for unlimited.
    #[serde(default = "default_kudos")]
    #[schema(minimum = -1, maximum = 50000000)]
    pub kudos: i64,
    /// Days until the key expires; −1 for never.
    #[serde(default = "unlimited")]
    #[schema(minimum = -1, maximum = 100000)]
    pub expiry: i64,
    #[serde(default)]
    #[schema(min_length = 3, max_length = 255)]
    pub name: Option<String>,
    #[serde(default = "unlimited")]
    #[schema(minimum = -1, maximum = 4194304)]
    pub max_image_pixels: i64,
    #[serde(default = "unlimited")]
    #[schema(minimum = -1, maximum = 500)]
    pub max_image_steps: i64,
    #[serde(default = "unlimited")]
    #[schema(minimum = -1, maximum = 500)]
    pub max_text_tokens: i64,
}

/// `PATCH /sharedkeys/{id}`: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SharedKeyPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -1, maximum = 50000000)]
    pub kudos: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -1, maximum = 100000)]
    pub expiry: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 3, max_length = 255)]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -1, maximum = 4194304)]
    pub max_image_pixels: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -1, maximum = 500)]
    pub max_image_steps: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -1, maximum = 500)]
    pub max_text_tokens: Option<i64>,
}

fn check(
    errors: &mut FieldErrors,
    kudos: Option<i64>,
    expiry: Option<i64>,
    name: Option<&str>,
    pixels: Option<i64>,
    steps: Option<i64>,
    tokens: Option<i64>,
) {
    if let Some(k) = kudos {
        errors.range("kudos", k, -1, 50_000_000);
    }
    if let Some(e) = expiry {
        errors.range("expiry", e, -1, 100_000);
    }
    if let Some(n) = name {
        errors.range("name", n.chars().count(), 3, 255);
    }
    if let Some(p) = pixels {
        errors.range("max_image_pixels", p, -1, 4_194_304);
    }
    if let Some(s) = steps {
        errors.range("max_image_steps", s, -1, 500);
    }
    if let Some(t) = tokens {
        errors.range("max_text_tokens", t, -1, 500);
    }
}

impl SharedKeyInput {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        check(
            &mut errors,
            Some(self.kudos),
            Some(self.expiry),
            self.name.as_deref(),
            Some(self.max_image_pixels),
            Some(self.max_image_steps),
            Some(self.max_text_tokens),
        );
        errors.into_result()
    }
}

impl SharedKeyPatch {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        check(
            &mut errors,
            self.kudos,
            self.expiry,
            self.name.as_deref(),
            self.max_image_pixels,
            self.max_image_steps,
            self.max_text_tokens,
        );
        errors.into_result()
    }
    pub fn is_empty(&self) -> bool {
        self == &SharedKeyPatch::default()
    }
}

/// A shared key as the public horde shows it. `id` is the key itself: whoever holds it may
/// generate on the owner's account, within the key's limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SharedKeyDetails {
    pub id: String,
    /// The owner's alias `name#id`.
    pub username: String,
    /// Empty when the key was made without one.
    pub name: String,
    /// Kudos still spendable, in whole kudos as the public horde shows them; −1 is unlimited.
    pub kudos: i64,
    /// When the key expires (RFC 3339), or null for never.
    pub expiry: Option<String>,
    /// Kudos spent through the key, in whole kudos.
    pub utilized: i64,
    pub max_image_pixels: i64,
    pub max_image_steps: i64,
    pub max_text_tokens: i64,
}
