//! Moderators' operations (`/operations/ipaddr…`, `/operations/block_worker_ipaddr/{id}`) and
//! image ratings (`POST /generate/rate/{id}`): bodies, answers and their public bounds.
//!
//! An `ipaddr` is 7..40 characters, as on the public horde; the spec's `pattern` also says which
//! texts are addresses, so a generated client never sends one the server must refuse. The
//! server reads the address itself (horde-core's `ip_timeouts::Network::parse`).

use crate::error::{ErrorBody, FieldErrors};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An IPv4 address (`a.b.c.d`, each 0..255).
macro_rules! ipv4 {
    () => {
        r"((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    };
}
/// An IPv6 address in any of its compressed forms (no embedded IPv4).
macro_rules! ipv6 {
    () => {
        r"(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|:((:[0-9a-fA-F]{1,4}){1,7}|:))"
    };
}

/// An address or a block a timeout may name: IPv4 with an optional /8../32, IPv6 with an
/// optional /32../128 (wider blocks are refused: `ip_timeouts::MIN_IPV4_PREFIX`).
pub const NETWORK_PATTERN: &str = concat!(
    "^(",
    ipv4!(),
    "(/([89]|[12][0-9]|3[0-2]))?|",
    ipv6!(),
    "(/(3[2-9]|[4-9][0-9]|1[01][0-9]|12[0-8]))?)$"
);
/// A single address (`GET /operations/ipaddr/{ipaddr}`).
pub const ADDRESS_PATTERN: &str = concat!("^(", ipv4!(), "|", ipv6!(), ")$");

/// The public bounds of an `ipaddr`.
pub const MIN_IPADDR_CHARS: usize = 7;
pub const MAX_IPADDR_CHARS: usize = 40;

/// One timeout (`GET /operations/ipaddr`): the address or block and the seconds left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IpTimeout {
    pub ipaddr: String,
    pub seconds: u64,
}

/// The body of `POST /operations/ipaddr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AddTimeoutIp {
    /// An IP address or a CIDR block; an IPv6 address is timed out as its /64.
    #[schema(
        min_length = 7,
        max_length = 40,
        pattern = "^(((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(/([89]|[12][0-9]|3[0-2]))?|(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|:((:[0-9a-fA-F]{1,4}){1,7}|:))(/(3[2-9]|[4-9][0-9]|1[01][0-9]|12[0-8]))?)$"
    )]
    pub ipaddr: String,
    /// How long, in hours.
    #[schema(minimum = 1, maximum = 720)]
    pub hours: u32,
}

/// The body of `DELETE /operations/ipaddr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeleteTimeoutIp {
    #[schema(
        min_length = 7,
        max_length = 40,
        pattern = "^(((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(/([89]|[12][0-9]|3[0-2]))?|(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|:((:[0-9a-fA-F]{1,4}){1,7}|:))(/(3[2-9]|[4-9][0-9]|1[01][0-9]|12[0-8]))?)$"
    )]
    pub ipaddr: String,
}

/// The body of `PUT /operations/block_worker_ipaddr/{worker_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BlockWorkerIp {
    /// How long, in days.
    #[schema(minimum = 1, maximum = 30)]
    pub days: u32,
}

/// `{"message": "OK"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SimpleMessage {
    pub message: String,
}

impl SimpleMessage {
    pub fn ok() -> SimpleMessage {
        SimpleMessage {
            message: "OK".into(),
        }
    }
}

fn ipaddr_chars(errors: &mut FieldErrors, ipaddr: &str) {
    errors.range(
        "ipaddr",
        ipaddr.chars().count(),
        MIN_IPADDR_CHARS,
        MAX_IPADDR_CHARS,
    );
}

impl AddTimeoutIp {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        ipaddr_chars(&mut errors, &self.ipaddr);
        errors.range("hours", self.hours, 1, 720);
        errors.into_result()
    }
}

impl DeleteTimeoutIp {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        ipaddr_chars(&mut errors, &self.ipaddr);
        errors.into_result()
    }
}

impl BlockWorkerIp {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        errors.range("days", self.days, 1, 30);
        errors.into_result()
    }
}

/// The most images one rating names (a request has at most 20).
pub const MAX_RATED_IMAGES: usize = 20;

/// One image's rating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AestheticRating {
    /// The image's id (as `generations[].id` shows it).
    #[schema(min_length = 36, max_length = 36)]
    pub id: String,
    #[schema(minimum = 1, maximum = 10)]
    pub rating: u8,
    /// How many artifacts: 0 none .. 5 ruined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 5)]
    pub artifacts: Option<u8>,
}

/// The body of `POST /generate/rate/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AestheticsPayload {
    /// The best image of the set (its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 36, max_length = 36)]
    pub best: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 20)]
    pub ratings: Option<Vec<AestheticRating>>,
}

impl AestheticsPayload {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        if let Some(best) = &self.best {
            errors.range("best", best.chars().count(), 36, 36);
        }
        for (i, r) in self.ratings.iter().flatten().enumerate() {
            errors.range(&format!("ratings.{i}.id"), r.id.chars().count(), 36, 36);
            errors.range(&format!("ratings.{i}.rating"), r.rating, 1, 10);
            if let Some(artifacts) = r.artifacts {
                errors.range(&format!("ratings.{i}.artifacts"), artifacts, 0, 5);
            }
        }
        errors.max_len(
            "ratings",
            self.ratings.as_deref().unwrap_or_default(),
            MAX_RATED_IMAGES,
        );
        errors.into_result()
    }
}

/// The answer of `POST /generate/rate/{id}`: kudos awarded (none here: see docs/rules.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RateResponse {
    pub reward: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_states_the_same_pattern() {
        let schema =
            serde_json::to_value(<AddTimeoutIp as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(schema["properties"]["ipaddr"]["pattern"], NETWORK_PATTERN);
        let schema =
            serde_json::to_value(<DeleteTimeoutIp as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(schema["properties"]["ipaddr"]["pattern"], NETWORK_PATTERN);
    }

    #[test]
    fn bounds_are_the_public_ones() {
        let add = |ipaddr: &str, hours| {
            AddTimeoutIp {
                ipaddr: ipaddr.into(),
                hours,
            }
            .validate()
        };
        assert!(add("203.0.113.7", 1).is_ok());
        assert!(add("203.0.113.7", 720).is_ok());
        assert!(add("203.0.113.7", 0).is_err());
        assert!(add("203.0.113.7", 721).is_err());
        assert!(add("1.2.3", 5).is_err());
        assert!(BlockWorkerIp { days: 31 }.validate().is_err());
        assert!(BlockWorkerIp { days: 0 }.validate().is_err());
        assert!(BlockWorkerIp { days: 30 }.validate().is_ok());
        let id = "6038971e-f0b0-4fdd-a3bb-148f561f815e".to_string();
        let rating = |rating, artifacts| AestheticsPayload {
            best: None,
            ratings: Some(vec![AestheticRating {
                id: id.clone(),
                rating,
                artifacts,
            }]),
        };
        assert!(rating(1, Some(0)).validate().is_ok());
        assert!(rating(10, Some(5)).validate().is_ok());
        assert!(rating(0, None).validate().is_err());
        assert!(rating(11, None).validate().is_err());
        assert!(rating(5, Some(6)).validate().is_err());
        let short_best = AestheticsPayload {
            best: Some("abc".into()),
            ratings: None,
        };
        assert!(short_best.validate().is_err());
    }
}
