//! Prompt filter bodies: `/filters`, `/filters/regex`, `/filters/{id}` (moderators only).

use crate::error::{ErrorBody, FieldErrors};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A stored filter as the public horde shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FilterDetails {
    /// The filter's UUID.
    pub id: String,
    pub regex: String,
    /// 10..29; types 10 and 11 (one group) and 20 (another) screen image prompts.
    pub filter_type: i32,
    pub description: Option<String>,
    /// What a type-10 match is replaced with when a blocked prompt is rewritten.
    pub replacement: Option<String>,
    /// The moderator who added or last changed it (`name#id`).
    pub user: String,
}

/// The body of `PUT /filters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewFilter {
    #[schema(min_length = 1, max_length = 10000)]
    pub regex: String,
    #[schema(minimum = 10, maximum = 29)]
    pub filter_type: i32,
    #[serde(default)]
    #[schema(max_length = 32000)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(max_length = 32000)]
    pub replacement: Option<String>,
}

/// The body of `PATCH /filters/{id}`: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FilterPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 10000)]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 10, maximum = 29)]
    pub filter_type: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 32000)]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 32000)]
    pub replacement: Option<String>,
}

/// The body of `POST /filters`: a prompt to check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PromptCheck {
    #[schema(max_length = 32000)]
    pub prompt: String,
    /// Check against this type only.
    #[serde(default)]
    #[schema(minimum = 10, maximum = 29)]
    pub filter_type: Option<i32>,
}

/// The answer of `POST /filters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FilterPromptSuspicion {
    /// 0, 1 or 2; 2 means the prompt would be blocked.
    pub suspicion: u32,
    /// What matched.
    pub matches: Vec<String>,
}

/// One type's combined regex (`GET /filters/regex`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FilterRegex {
    pub filter_type: i32,
    pub regex: String,
}

/// The query of `GET /filters` and `GET /filters/regex`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilterQuery {
    /// Only filters of this type.
    pub filter_type: Option<i32>,
    /// Only filters whose description contains this text.
    pub contains: Option<String>,
}

/// The longest description, replacement or checked prompt.
const MAX_FILTER_TEXT: usize = 32_000;

fn texts(errors: &mut FieldErrors, description: Option<&str>, replacement: Option<&str>) {
    for (field, text) in [("description", description), ("replacement", replacement)] {
        if let Some(text) = text {
            errors.max_chars(field, text, MAX_FILTER_TEXT);
        }
    }
}

fn check(errors: &mut FieldErrors, regex: Option<&str>, filter_type: Option<i32>) {
    if let Some(r) = regex {
        errors.range("regex", r.chars().count(), 1, 10_000);
    }
    if let Some(t) = filter_type {
        errors.range("filter_type", t, 10, 29);
    }
}

impl NewFilter {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        check(&mut errors, Some(&self.regex), Some(self.filter_type));
        texts(
            &mut errors,
            self.description.as_deref(),
            self.replacement.as_deref(),
        );
        errors.into_result()
    }
}

impl FilterPatch {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        check(&mut errors, self.regex.as_deref(), self.filter_type);
        texts(
            &mut errors,
            self.description.as_deref(),
            self.replacement.as_deref(),
        );
        errors.into_result()
    }

    pub fn is_empty(&self) -> bool {
        self == &FilterPatch::default()
    }
}

impl PromptCheck {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        check(&mut errors, None, self.filter_type);
        errors.max_chars("prompt", &self.prompt, MAX_FILTER_TEXT);
        errors.into_result()
    }
}
