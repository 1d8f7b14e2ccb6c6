//! Daily quotas: how many images and megapixelsteps, and how many texts and tokens, each tier of
//! user may request per UTC day.
//!
//! The public horde has none (kudos and concurrency are its only brakes); an operator of a
//! private horde may want them, per tier: anonymous, registered, trusted. A limit of 0 is no
//! limit. Usage is counted where requests are stored, so several coordinators on one database
//! share it.

use crate::accounts::User;
use serde::{Deserialize, Serialize};

const DAY_SECS: i64 = 86_400;

/// Limits of one tier; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    pub images_per_day: u64,
    pub megapixelsteps_per_day: f64,
    /// Text requests' jobs (one text each).
    pub texts_per_day: u64,
    /// Tokens asked for (`max_length` × texts).
    pub tokens_per_day: f64,
}

/// What a user requested on one day.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub images: u64,
    pub megapixelsteps: f64,
    pub texts: u64,
    pub tokens: f64,
}

/// The quota of each tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    pub anonymous: Quota,
    pub registered: Quota,
    pub trusted: Quota,
}

impl Quotas {
    /// The quota that applies to `user` (moderators count as trusted).
    pub fn for_user(&self, user: &User) -> Quota {
        if user.is_anonymous() {
            self.anonymous
        } else if user.trusted || user.moderator {
            self.trusted
        } else {
            self.registered
        }
    }
}

impl Quota {
    /// Whether a request of `images` and `megapixelsteps` fits in what is left after `used`.
    pub fn allows(&self, used: &Usage, images: u64, megapixelsteps: f64) -> bool {
        let images_ok = self.images_per_day == 0 || used.images + images <= self.images_per_day;
        let mps_ok = self.megapixelsteps_per_day <= 0.0
            || used.megapixelsteps + megapixelsteps <= self.megapixelsteps_per_day;
        images_ok && mps_ok
    }

    /// Whether a text request of `texts` jobs and `tokens` fits in what is left after `used`.
    pub fn allows_text(&self, used: &Usage, texts: u64, tokens: f64) -> bool {
        let texts_ok = self.texts_per_day == 0 || used.texts + texts <= self.texts_per_day;
        let tokens_ok = self.tokens_per_day <= 0.0 || used.tokens + tokens <= self.tokens_per_day;
        texts_ok && tokens_ok
    }
}

/// The UTC day of a unix time (days since 1970-01-01).
pub fn day_of(now: i64) -> i64 {
    now.div_euclid(DAY_SECS)
}

/// Seconds until the next UTC day begins.
pub fn secs_to_next_day(now: i64) -> i64 {
    DAY_SECS - now.rem_euclid(DAY_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_of_zero_is_no_limit_and_others_count_both_measures() {
        let none = Quota::default();
        assert!(none.allows(
            &Usage {
                images: 1_000_000,
                megapixelsteps: 1e9,
                ..Usage::default()
            },
            10,
            10.0
        ));
        let q = Quota {
            images_per_day: 10,
            megapixelsteps_per_day: 100.0,
            ..Quota::default()
        };
        let used = Usage {
            images: 8,
            megapixelsteps: 50.0,
            ..Usage::default()
        };
        assert!(q.allows(&used, 2, 50.0));
        assert!(!q.allows(&used, 3, 1.0), "images over");
        assert!(!q.allows(&used, 1, 60.0), "megapixelsteps over");
        assert!(q.allows_text(&used, 1_000, 1e9), "no text limits set");
    }

    #[test]
    fn text_quotas_count_texts_and_tokens() {
        let q = Quota {
            texts_per_day: 5,
            tokens_per_day: 1_000.0,
            ..Quota::default()
        };
        let used = Usage {
            texts: 4,
            tokens: 800.0,
            images: 1_000,
            ..Usage::default()
        };
        assert!(q.allows_text(&used, 1, 200.0));
        assert!(!q.allows_text(&used, 2, 10.0), "texts over");
        assert!(!q.allows_text(&used, 1, 201.0), "tokens over");
        assert!(q.allows(&used, 1_000, 1e9), "no image limits set");
    }

    #[test]
    fn days_are_utc_days() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_SECS - 1), 0);
        assert_eq!(day_of(DAY_SECS), 1);
        assert_eq!(secs_to_next_day(DAY_SECS - 10), 10);
        assert_eq!(secs_to_next_day(DAY_SECS), DAY_SECS);
    }
}
