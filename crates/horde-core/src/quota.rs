//! Daily quotas: how many images and megapixelsteps, and how many texts and tokens, each tier of
//! user may request per UTC day.
//!
//! The public horde has none (kudos and concurrency are its only brakes); an operator of a
//! private horde may want them, per tier: anonymous, registered, trusted, and tiers of its own
//! (`[quotas.tiers.<name>]`, e.g. a paid plan) that a moderator moves users into ([`Tier`]). A
//! limit of 0 is no limit. Usage is counted where requests are stored, so several coordinators
//! on one database share it.

use crate::accounts::User;
use crate::Refusal;
use horde_api::Rc;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    pub anonymous: Quota,
    pub registered: Quota,
    pub trusted: Quota,
    /// The operator's own tiers by name (`[quotas.tiers.gold]`): a user a moderator moved into
    /// one has its quota, whatever their roles.
    pub tiers: BTreeMap<String, Quota>,
}

/// The built-in tiers' names.
pub const ANONYMOUS: &str = "anonymous";
pub const REGISTERED: &str = "registered";
pub const TRUSTED: &str = "trusted";
/// The most tiers an operator may define, and the longest name one may have.
pub const MAX_TIERS: usize = 32;
pub const MAX_TIER_CHARS: usize = 32;

/// Where a moderator moves a user ([`Quotas::tier_change`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tier {
    /// Not trusted, in no operator tier.
    Registered,
    /// Trusted (with all trust brings: more workers and shared keys, no escrow), in no
    /// operator tier.
    Trusted,
    /// An operator tier: its quota applies; the user's trust is left as it is.
    Operator(String),
}

/// Why a tier cannot be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierRefusal {
    /// Not a tier of this horde (the names it has are listed).
    Unknown { name: String, known: Vec<String> },
    /// The anonymous user's tier is its own; no one is moved into or out of it.
    Anonymous,
}

impl Refusal for TierRefusal {
    /// An unknown name is bad input (400; the served spec lists the names, so a client reading
    /// it never sends one); moving the anonymous user is a valid request refused (403).
    fn rc(&self) -> Rc {
        match self {
            TierRefusal::Unknown { .. } => Rc::BadRequest,
            TierRefusal::Anonymous => Rc::Forbidden,
        }
    }

    fn message(&self) -> String {
        match self {
            TierRefusal::Unknown { name, known } => format!(
                "'{name}' is not a tier of this horde: choose one of {}.",
                known.join(", ")
            ),
            TierRefusal::Anonymous => "The anonymous user's tier cannot change.".into(),
        }
    }
}

impl Quotas {
    /// The quota that applies to `user` (moderators count as trusted).
    pub fn for_user(&self, user: &User) -> Quota {
        let tier = self.tier_of(user);
        match tier.as_str() {
            ANONYMOUS => self.anonymous,
            TRUSTED => self.trusted,
            REGISTERED => self.registered,
            name => self.tiers.get(name).copied().unwrap_or(self.registered),
        }
    }

    /// The name of `user`'s tier: `anonymous`; the operator tier a moderator moved them into
    /// while this horde still defines it; else `trusted` (moderators too) or `registered`.
    pub fn tier_of(&self, user: &User) -> String {
        if user.is_anonymous() {
            return ANONYMOUS.into();
        }
        if let Some(tier) = user.tier.as_ref().filter(|t| self.tiers.contains_key(*t)) {
            return tier.clone();
        }
        if user.trusted || user.moderator {
            TRUSTED.into()
        } else {
            REGISTERED.into()
        }
    }

    /// The tiers a moderator may move a user into: `registered`, `trusted`, then the
    /// operator's.
    pub fn tier_names(&self) -> Vec<String> {
        [REGISTERED, TRUSTED]
            .into_iter()
            .map(String::from)
            .chain(self.tiers.keys().cloned())
            .collect()
    }

    /// The move to tier `name` for `user`.
    pub fn tier_change(&self, user: &User, name: &str) -> Result<Tier, TierRefusal> {
        if user.is_anonymous() || name == ANONYMOUS {
            return Err(TierRefusal::Anonymous);
        }
        match name {
            REGISTERED => Ok(Tier::Registered),
            TRUSTED => Ok(Tier::Trusted),
            name if self.tiers.contains_key(name) => Ok(Tier::Operator(name.into())),
            name => Err(TierRefusal::Unknown {
                name: name.chars().take(MAX_TIER_CHARS).collect(),
                known: self.tier_names(),
            }),
        }
    }

    /// What is wrong with the operator's tiers, if anything: too many, a name that is empty,
    /// too long, not `[a-z0-9_-]`, or a built-in tier's.
    pub fn check(&self) -> Result<(), String> {
        if self.tiers.len() > MAX_TIERS {
            return Err(format!("[quotas.tiers] holds more than {MAX_TIERS} tiers"));
        }
        for name in self.tiers.keys() {
            let shaped = !name.is_empty()
                && name.len() <= MAX_TIER_CHARS
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !shaped || [ANONYMOUS, REGISTERED, TRUSTED].contains(&name.as_str()) {
                return Err(format!(
                    "[quotas.tiers.{name}]: a tier's name is 1 to {MAX_TIER_CHARS} of a-z, 0-9, _ \
                     and -, and not anonymous, registered or trusted"
                ));
            }
        }
        Ok(())
    }
}

impl Tier {
    /// Applies the move to `user`'s roles.
    pub fn apply(&self, user: &mut User) {
        match self {
            Tier::Registered => {
                user.trusted = false;
                user.tier = None;
            }
            Tier::Trusted => {
                user.trusted = true;
                user.tier = None;
            }
            Tier::Operator(name) => user.tier = Some(name.clone()),
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
    fn users_are_in_the_tier_a_moderator_chose_while_it_exists() {
        let gold = Quota {
            images_per_day: 100,
            ..Quota::default()
        };
        let quotas = Quotas {
            registered: Quota {
                images_per_day: 5,
                ..Quota::default()
            },
            tiers: BTreeMap::from([("gold".to_string(), gold)]),
            ..Quotas::default()
        };
        let mut user = User {
            id: 7,
            ..User::default()
        };
        assert_eq!(quotas.tier_of(&user), REGISTERED);
        assert_eq!(quotas.for_user(&user).images_per_day, 5);
        quotas.tier_change(&user, "gold").unwrap().apply(&mut user);
        assert_eq!(quotas.tier_of(&user), "gold");
        assert_eq!(quotas.for_user(&user), gold);
        // A tier the operator removed no longer applies.
        let without = Quotas {
            tiers: BTreeMap::new(),
            ..quotas.clone()
        };
        assert_eq!(without.tier_of(&user), REGISTERED);
        quotas.tier_change(&user, TRUSTED).unwrap().apply(&mut user);
        assert_eq!(
            (quotas.tier_of(&user).as_str(), user.trusted),
            (TRUSTED, true)
        );
        assert_eq!(user.tier, None);
        quotas
            .tier_change(&user, REGISTERED)
            .unwrap()
            .apply(&mut user);
        assert_eq!(
            (quotas.tier_of(&user).as_str(), user.trusted),
            (REGISTERED, false)
        );
        assert!(matches!(
            quotas.tier_change(&user, "platinum"),
            Err(TierRefusal::Unknown { .. })
        ));
        assert_eq!(
            quotas.tier_change(&User::default(), "gold"),
            Err(TierRefusal::Anonymous)
        );
        assert_eq!(quotas.tier_names(), ["registered", "trusted", "gold"]);
    }

    #[test]
    fn operator_tiers_need_plain_new_names() {
        let with = |name: &str| Quotas {
            tiers: BTreeMap::from([(name.to_string(), Quota::default())]),
            ..Quotas::default()
        };
        assert!(with("gold-2_plus").check().is_ok());
        for bad in [
            "",
            "Gold",
            "trusted",
            "a b",
            &"a".repeat(MAX_TIER_CHARS + 1),
        ] {
            assert!(with(bad).check().is_err(), "{bad:?}");
        }
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
