//! User bodies: `GET /users/{id}`, `/find_user`, and the test-only `POST /dev/test-user`.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageRecord {
    pub megapixelsteps: f64,
    pub tokens: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CountRecord {
    pub image: u64,
    pub text: u64,
    pub interrogation: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserRecords {
    pub usage: UsageRecord,
    pub contribution: UsageRecord,
    pub fulfillment: CountRecord,
    pub request: CountRecord,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserKudosDetails {
    pub accumulated: f64,
    pub gifted: f64,
    pub donated: f64,
    pub admin: f64,
    pub received: f64,
    pub recurring: f64,
    pub awarded: f64,
    pub styled: f64,
}

/// UserDetails as the public horde answers it; roles are booleans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserDetails {
    /// The alias `name#id`.
    pub username: String,
    pub id: i64,
    pub kudos: f64,
    pub kudos_details: UserKudosDetails,
    /// Obsolete on the public horde (always empty); kept for old clients.
    pub usage: serde_json::Value,
    /// Obsolete on the public horde (always empty); kept for old clients.
    pub contributions: serde_json::Value,
    pub records: UserRecords,
    pub concurrency: u32,
    pub worker_invited: u32,
    pub moderator: bool,
    pub trusted: bool,
    pub flagged: bool,
    pub pseudonymous: bool,
    pub customizer: bool,
    pub service: bool,
    pub education: bool,
    pub vpn: bool,
    pub special: bool,
    pub deleted: bool,
    /// The user's public styles (`alias#id::style::name`, id and type).
    #[serde(default)]
    pub styles: Vec<crate::styles::StyleBrief>,
    pub worker_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_ids: Option<Vec<String>>,
    pub account_age: u64,
    /// The user's unfinished requests (the user themself and moderators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_generations: Option<ActiveGenerations>,
    /// The user's shared keys (the user themself and moderators). Shared keys are stored only
    /// as salted hashes, so a key is shown once, when it is made; these are their handles,
    /// which `/sharedkeys/{id}` accepts in place of the key (they make no request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharedkey_ids: Option<Vec<String>>,
    /// How to reach the user (the user themself and moderators); none is kept here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<Option<String>>,
    /// Kudos held in escrow (half the earnings of untrusted worker owners): the user themself
    /// and moderators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluating_kudos: Option<f64>,
    /// Moderators only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_kudos: Option<MonthlyKudos>,
    /// Suspicion counted against the user's workers; moderators only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspicious: Option<u32>,
    /// Moderators only; none is kept here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_comment: Option<Option<String>>,
    /// The user's quota tier, today's use of it and its limits (the user themself and
    /// moderators; our extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_quota: Option<DailyQuota>,
}

/// A user's daily quota (`[quotas]`): their tier, its limits (0: none), what they requested
/// this UTC day, and when the count starts again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DailyQuota {
    /// `anonymous`, `registered`, `trusted` or an operator tier.
    pub tier: String,
    pub images_per_day: u64,
    pub megapixelsteps_per_day: f64,
    pub texts_per_day: u64,
    pub tokens_per_day: f64,
    pub images_used: u64,
    pub megapixelsteps_used: f64,
    pub texts_used: u64,
    pub tokens_used: f64,
    /// Seconds until the count starts again (00:00 UTC).
    pub resets_in: u64,
    /// When it does (RFC 3339, UTC).
    pub resets_at: String,
    /// The tiers a moderator may move the user into (moderators only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<String>>,
}

/// Kudos granted every month; this horde grants none, so the amount is 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MonthlyKudos {
    pub amount: i64,
    /// ISO 8601 (horde-sdk cannot parse the public horde's RFC 822 dates); null if never.
    pub last_received: Option<String>,
}

/// The ids of a user's unfinished requests by kind, under the public horde's names; a kind
/// without any is left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActiveGenerations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alchemy: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}
fn default_test_kudos() -> f64 {
    10_000.0
}

/// Body of the test-only `POST /api/v2/dev/test-user`, with the public server's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TestUserRequest {
    pub username: String,
    #[serde(default)]
    pub oauth_id: Option<String>,
    #[serde(default = "yes")]
    pub moderator: bool,
    #[serde(default = "yes")]
    pub trusted: bool,
    #[serde(default = "default_test_kudos")]
    pub kudos: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TestUserResponse {
    pub api_key: String,
    pub user_id: i64,
    pub username: String,
    pub alias: String,
    pub kudos: f64,
    pub trusted: bool,
    pub moderator: bool,
    /// True when the user was created by this call, false when it existed and its key was rotated.
    pub created: bool,
}

fn default_transfer_amount() -> f64 {
    100.0
}

/// The body of `POST /kudos/transfer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KudosTransferRequest {
    /// The receiver as `alias#id`.
    #[schema(max_length = 255)]
    pub username: String,
    /// More than 0 (`NegativeKudosTransfer`, `InvalidKudosTransferAmount`) and at most what the
    /// sender has.
    #[serde(default = "default_transfer_amount")]
    #[schema(exclusive_minimum = 0)]
    pub amount: f64,
}

impl KudosTransferRequest {
    pub fn validate(&self) -> Result<(), crate::ErrorBody> {
        let mut errors = crate::error::FieldErrors::default();
        errors.max_chars("username", &self.username, 255);
        errors.into_result()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KudosTransferred {
    pub transferred: f64,
}

/// The body of `PUT /users/{id}`: every field optional, at least one required. `kudos` and
/// `moderator` need an administrator; roles and limits a moderator; `username` and
/// `public_workers` the user themself or a moderator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModifyUser {
    /// Kudos to add (negative to remove); administrators only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kudos: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderator: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 500)]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_invited: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flagged: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customizer: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpn: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub education: Option<bool>,
    /// Clears the suspicion of all the user's workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_suspicion: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_workers: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 3, max_length = 30)]
    pub username: Option<String>,
    /// Moves the user into a quota tier (moderators; our extension): `registered`, `trusted`
    /// or one of the operator's `[quotas.tiers]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 32)]
    pub tier: Option<String>,
}

impl ModifyUser {
    pub fn validate(&self) -> Result<(), crate::ErrorBody> {
        let mut errors = crate::error::FieldErrors::default();
        if let Some(tier) = &self.tier {
            errors.range("tier", tier.chars().count(), 1, 32);
        }
        if let Some(c) = self.concurrency {
            errors.range("concurrency", c, 0, 500);
        }
        if let Some(name) = &self.username {
            errors.range("username", name.chars().count(), 3, 30);
        }
        errors.into_result()
    }
    pub fn is_empty(&self) -> bool {
        self == &ModifyUser::default()
    }
}

/// The answer of `PUT /users/{id}`: the fields that were set, and the new balance after a
/// change of kudos.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModifyUserResponse {
    #[serde(flatten)]
    pub changed: ModifyUser,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_kudos: Option<f64>,
}

/// A new API key, shown once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewApiKey {
    pub api_key: String,
}

/// The query of `GET /users/{id}/ledger`: a page of rows, newest first.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LedgerQuery {
    /// Only rows with a smaller id (the next page back).
    pub before: Option<i64>,
    /// How many rows: 1 to 500, 50 when absent.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// The largest ledger page.
pub const MAX_LEDGER_PAGE: u32 = 500;

impl LedgerQuery {
    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(50)
    }

    pub fn validate(&self) -> Result<(), crate::ErrorBody> {
        let mut errors = crate::error::FieldErrors::default();
        errors.range("limit", self.limit(), 1, MAX_LEDGER_PAGE);
        errors.into_result()
    }
}

/// One row of a user's kudos ledger (`GET /users/{id}/ledger`; not in the public horde, whose
/// balances have no ledger).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntry {
    /// Increasing with time: ask for older rows with `?before=` the last id seen.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// Kudos in (positive) or out (negative).
    pub amount: f64,
    /// `grant`, `spend`, `earn`, `refund`, `transfer`, `floor`, `uptime` or `release`.
    pub kind: String,
    /// The other user of a transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterparty: Option<i64>,
    /// The request paid for or refunded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Held in escrow (`evaluating_kudos`) until the owner is trusted, not in the balance.
    pub escrow: bool,
}
