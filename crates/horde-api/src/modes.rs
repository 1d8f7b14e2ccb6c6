//! Bodies of the horde's modes (`/status/modes`), its news (`/status/news`), its documents
//! (`/documents/…`), the users list (`GET /users`), account deletion (`DELETE /users/{id}`) and
//! awards (`POST /kudos/award`), with the public horde's field names and defaults.
//!
//! They live together because they are the horde's administration: what its operator and
//! moderators set and publish, rather than work a worker does.

use crate::error::{ErrorBody, FieldErrors};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The longest `sort` of `GET /users` accepted (the public horde reads any text, and sorts by
/// kudos unless it is `age`).
pub const MAX_USERS_SORT_CHARS: usize = 100;
/// Users on one page of `GET /users`.
pub const USERS_PAGE_SIZE: u32 = 25;
/// Pages past this one are empty (the public horde answers `[]` without reading).
pub const MAX_USERS_PAGE: i64 = 10_000;
/// The most kudos one award gives.
pub const MAX_AWARD: i64 = 10_000_000;

/// `GET /status/modes`: whether the horde is in maintenance (no new requests) or invite-only
/// mode (no new workers without an invitation); `raid_mode` only for moderators.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HordeModes {
    pub maintenance_mode: bool,
    pub invite_only_mode: bool,
    /// Shown to moderators only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid_mode: Option<bool>,
}

/// The body of `PUT /status/modes`: the modes to change (at least one). Maintenance needs an
/// administrator, the others a moderator. The answer lists the modes changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HordeModesChange {
    /// Start or stop maintenance mode (administrators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_mode: Option<bool>,
    /// Start or stop worker invite-only mode (moderators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_only_mode: Option<bool>,
    /// Start or stop raid mode (moderators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid_mode: Option<bool>,
}

impl HordeModesChange {
    /// True when no mode is named (`NoHordeModSelected`).
    pub fn is_empty(&self) -> bool {
        self.maintenance_mode.is_none()
            && self.invite_only_mode.is_none()
            && self.raid_mode.is_none()
    }
}

/// One piece of news (`GET /status/news`), as the public horde's `news.json` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Newspiece {
    /// The date it was published, `YYYY-MM-DD`.
    pub date_published: String,
    /// The news itself (markdown).
    pub newspiece: String,
    /// `Information`, `Workers`, `Crisis`…
    #[serde(default = "default_importance")]
    pub importance: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    pub more_info_urls: Vec<String>,
}

fn default_importance() -> String {
    "Information".into()
}

/// The format of a document (`?format=`); HTML when absent, as on the public horde.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DocumentFormat {
    #[default]
    Html,
    Markdown,
}

/// The query of `GET /documents/{terms,privacy,sponsors}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DocumentQuery {
    /// `html` (the default) or `markdown`.
    pub format: Option<DocumentFormat>,
}

/// A document: `html` or `markdown`, whichever was asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HordeDocument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub markdown: Option<String>,
}

/// The query of `GET /users`: a page of 25 users, by kudos (most first) or by age (oldest
/// first).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    /// From 1 (less counts as 1); past 10000 the page is empty.
    pub page: Option<i64>,
    /// `kudos` (the default) or `age`; anything else sorts by kudos, as on the public horde.
    #[param(max_length = 100)]
    pub sort: Option<String>,
}

/// How `GET /users` orders users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserSort {
    /// Most kudos first.
    Kudos,
    /// Oldest account first.
    Age,
}

impl UsersQuery {
    /// The page asked for, at least 1.
    pub fn page(&self) -> i64 {
        self.page.unwrap_or(1).max(1)
    }

    /// The order asked for: `age`, or kudos for anything else.
    pub fn sort(&self) -> UserSort {
        match self.sort.as_deref() {
            Some("age") => UserSort::Age,
            _ => UserSort::Kudos,
        }
    }

    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        if let Some(sort) = &self.sort {
            errors.max_chars("sort", sort, MAX_USERS_SORT_CHARS);
        }
        errors.into_result()
    }
}

fn default_award() -> i64 {
    100
}

/// The body of `POST /kudos/award` (administrators): kudos from the horde to a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KudosAwardRequest {
    /// The receiver as `alias#id`.
    #[schema(max_length = 255)]
    pub username: String,
    /// Whole kudos, 1 to 10,000,000; 100 when absent.
    #[serde(default = "default_award")]
    #[schema(minimum = 1, maximum = 10000000)]
    pub amount: i64,
}

impl KudosAwardRequest {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        errors.max_chars("username", &self.username, 255);
        errors.range("amount", self.amount, 1, MAX_AWARD);
        errors.into_result()
    }
}

/// The answer to `POST /kudos/award`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KudosAwarded {
    pub awarded: f64,
}

/// The answer to `DELETE /users/{id}` (and other operations that only succeed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SimpleResponse {
    /// `OK`.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_query_reads_as_the_public_horde_does() {
        let q = |page, sort: Option<&str>| UsersQuery {
            page,
            sort: sort.map(String::from),
        };
        assert_eq!(q(None, None).page(), 1);
        assert_eq!(q(Some(-4), None).page(), 1);
        assert_eq!(q(Some(3), None).page(), 3);
        assert_eq!(q(None, Some("age")).sort(), UserSort::Age);
        assert_eq!(q(None, Some("kudos")).sort(), UserSort::Kudos);
        assert_eq!(q(None, Some("name")).sort(), UserSort::Kudos);
        assert!(q(None, Some(&"x".repeat(101))).validate().is_err());
        assert!(q(None, Some(&"x".repeat(100))).validate().is_ok());
    }

    #[test]
    fn an_award_is_bounded_and_defaults_to_100() {
        let award: KudosAwardRequest = serde_json::from_str(r#"{"username": "a#2"}"#).unwrap();
        assert_eq!(award.amount, 100);
        assert!(award.validate().is_ok());
        for amount in [0, -5, MAX_AWARD + 1] {
            let errors = KudosAwardRequest {
                amount,
                ..award.clone()
            }
            .validate()
            .unwrap_err();
            assert!(errors.errors.unwrap().contains_key("amount"), "{amount}");
        }
    }

    #[test]
    fn a_document_format_is_html_or_markdown() {
        let q: DocumentFormat = serde_json::from_str(r#""markdown""#).unwrap();
        assert_eq!(q, DocumentFormat::Markdown);
        assert!(serde_json::from_str::<DocumentFormat>(r#""pdf""#).is_err());
        assert_eq!(DocumentFormat::default(), DocumentFormat::Html);
    }
}
