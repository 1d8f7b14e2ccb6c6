//! Invite codes (`/invites`, our extension for `[registration] mode = "invite"`): the body a
//! moderator sends, the answer, and their bounds.

use crate::error::{ErrorBody, FieldErrors};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The most accounts one code may create.
pub const MAX_INVITE_USES: u32 = 1000;
/// The longest an invite may last: a year.
pub const MAX_INVITE_HOURS: u32 = 8760;
/// How long an invite lasts when the moderator does not say: a week.
pub const DEFAULT_INVITE_HOURS: u32 = 168;
/// The longest note a moderator may keep with an invite (who it is for).
pub const MAX_NOTE_CHARS: usize = 100;

fn one() -> u32 {
    1
}
fn a_week() -> u32 {
    DEFAULT_INVITE_HOURS
}

/// The body of `POST /invites`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InviteInput {
    /// How many accounts the code may create (1: single use).
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 1000, default = 1)]
    pub uses: u32,
    /// Hours until the code expires (a week when not sent).
    #[serde(default = "a_week")]
    #[schema(minimum = 1, maximum = 8760, default = 168)]
    pub hours: u32,
    /// Who the code is for, for the moderators' list.
    #[serde(default)]
    #[schema(max_length = 100)]
    pub note: Option<String>,
}

impl InviteInput {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        errors.range("uses", self.uses, 1, MAX_INVITE_USES);
        errors.range("hours", self.hours, 1, MAX_INVITE_HOURS);
        if let Some(note) = &self.note {
            errors.max_chars("note", note, MAX_NOTE_CHARS);
        }
        errors.into_result()
    }
}

/// One invite: `code` only in the answer to `POST /invites` (it is stored as a salted hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InviteDetails {
    /// The invite's handle, for `DELETE /invites/{id}`; not the code.
    pub id: String,
    /// The code to give the invitee: shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub note: String,
    /// How many accounts the code may create.
    pub uses: u32,
    /// How many it created.
    pub used: u32,
    /// When it expires (RFC 3339, UTC).
    pub expires: String,
    /// The moderator who created it (`name#id`).
    pub created_by: String,
}
