//! Users and workers as the horde knows them.

use crate::reputation::Reputation;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Id of the built-in anonymous user (API key `0000000000`).
pub const ANONYMOUS_USER_ID: i64 = 0;

/// Queue priority of anonymous requests: below every registered user's.
pub const ANONYMOUS_PRIORITY: i64 = -1_000_000_000;

/// The public horde's online window: a worker is online while it popped in the last 5 minutes.
pub const ONLINE_WINDOW_SECS: i64 = 300;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub kudos: f64,
    pub moderator: bool,
    pub trusted: bool,
    pub flagged: bool,
    /// May serve models outside the model reference.
    pub customizer: bool,
    /// Workers allowed from VPN addresses.
    pub vpn: bool,
    /// A service account (may proxy other users).
    pub service: bool,
    /// An education account: more concurrency, cannot send kudos.
    pub education: bool,
    /// The user's workers are listed on their public profile.
    pub public_workers: bool,
    /// True for accounts made without an OAuth identity (all accounts made by `horde user`).
    pub pseudonymous: bool,
    pub concurrency: u32,
    pub worker_invited: u32,
    pub usage_megapixelsteps: f64,
    pub usage_requests: u64,
    pub contributed_megapixelsteps: f64,
    pub fulfilments: u64,
    /// Tokens of text requested (delivered to this user's text requests).
    pub usage_tokens: f64,
    /// Text requests delivered to this user.
    pub text_requests: u64,
    /// Tokens of text this user's workers delivered.
    pub contributed_tokens: f64,
    /// Texts this user's workers delivered.
    pub text_fulfilments: u64,
    /// Interrogation forms delivered to this user.
    pub interrogation_requests: u64,
    /// Interrogation forms this user's alchemists delivered.
    pub interrogation_fulfilments: u64,
    pub kudos_accumulated: f64,
    /// Kudos held in escrow: half of what an untrusted owner's workers earn.
    pub evaluating_kudos: f64,
    pub created: i64,
    /// When the account was deleted (`DELETE /users/{id}`): a deleted account is refused
    /// everywhere with 403 `DeletedUser` (`horde_core::modes::check_deletion`).
    pub deleted_at: Option<i64>,
    /// The operator's quota tier a moderator moved this user into (`[quotas.tiers]`), if any:
    /// `horde_core::quota::Quotas::tier_of`.
    pub tier: Option<String>,
}

/// How much of a user's details a viewer sees, as on the public horde: anyone the public
/// fields; the user themself (privilege 1) also their active requests, keys and contact; a
/// moderator (privilege 2) also escrow, monthly kudos, suspicion and the admin comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Privilege {
    Public,
    Own,
    Moderator,
}

impl Privilege {
    /// What `viewer` (none for a caller without a known key) may see of the user `subject_id`.
    pub fn of(viewer: Option<&User>, subject_id: i64) -> Privilege {
        match viewer {
            Some(v) if v.moderator => Privilege::Moderator,
            Some(v) if v.id == subject_id && !v.is_anonymous() => Privilege::Own,
            _ => Privilege::Public,
        }
    }
}

impl User {
    pub fn is_anonymous(&self) -> bool {
        self.id == ANONYMOUS_USER_ID
    }
    /// The public alias `name#id`.
    pub fn alias(&self) -> String {
        format!("{}#{}", self.username, self.id)
    }
    /// The balance below which this user's kudos are not spendable on transfers (the public
    /// horde's `get_min_kudos`): anonymous −50, accounts without OAuth 14, others 25.
    pub fn min_kudos(&self) -> f64 {
        kudos_floor(self.id, self.pseudonymous)
    }

    /// Kudos this user may transfer.
    pub fn transferable_kudos(&self) -> f64 {
        (self.kudos - self.min_kudos()).max(0.0)
    }

    /// Queue priority of this user's new requests: their kudos, anonymous last.
    pub fn queue_priority(&self) -> i64 {
        if self.is_anonymous() {
            ANONYMOUS_PRIORITY
        } else {
            self.kudos.floor() as i64
        }
    }
}

/// The pattern a user's `alias#id` ends with: `#`, then the id in 1 to 18 digits (an `i64`).
pub const ALIAS_ID_PATTERN: &str = "#[0-9]{1,18}$";

/// The user id of an `alias#id` (transfers, priority usernames): the digits after the last `#`,
/// nothing else (no sign, no spaces).
pub fn user_id_of_alias(alias: &str) -> Option<i64> {
    let (_, id) = alias.rsplit_once('#')?;
    if id.is_empty() || id.len() > 18 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// The balance floor of a user (the public horde's `get_min_kudos`): anonymous −50, accounts
/// without OAuth 14, others 25.
pub fn kudos_floor(user_id: i64, pseudonymous: bool) -> f64 {
    if user_id == ANONYMOUS_USER_ID {
        -50.0
    } else if pseudonymous {
        14.0
    } else {
        25.0
    }
}

/// How much of a `charge` is forgiven so that it does not take `balance` below `floor` (or
/// below where the balance already was, if that is lower): the public horde never blocks a
/// generation for lack of kudos, it writes the debit off.
pub fn forgiven_debit(balance: f64, charge: f64, floor: f64) -> f64 {
    let lowest = balance.min(floor);
    (lowest - (balance - charge)).clamp(0.0, charge.max(0.0))
}

/// Seconds of uptime paid for by one uptime reward.
pub const UPTIME_REWARD_INTERVAL_SECS: u64 = 600;

/// Kudos of one uptime reward for a text worker (the public horde's base worker's).
pub const TEXT_UPTIME_REWARD: f64 = 100.0;

/// Kudos of one uptime reward: for an image worker 50, 2 per model served, 30 more with LoRAs;
/// for a text worker or an alchemist [`TEXT_UPTIME_REWARD`] (the public base worker's).
pub fn uptime_reward(flags: &WorkerFlags) -> f64 {
    if flags.text.is_some() || flags.alchemy.is_some() {
        return TEXT_UPTIME_REWARD;
    }
    let mut kudos = 50.0 + 2.0 * flags.models.len() as f64;
    if flags.allow_lora {
        kudos += 30.0;
    }
    kudos
}

/// What a text worker declares beyond any worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TextWorkerFlags {
    /// The most tokens it generates for one job.
    pub max_length: u32,
    /// The most tokens of context it takes.
    pub max_context_length: u32,
    /// The softprompts it can load.
    pub softprompts: Vec<String>,
}

/// What an alchemist declares beyond any worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlchemistFlags {
    /// The most 512×512 tiles of a source image it takes.
    pub max_tiles: u32,
}

/// What a worker of another kind than images declares beyond an image pop's fields (none:
/// an image worker).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindFlags {
    pub text: Option<TextWorkerFlags>,
    pub alchemy: Option<AlchemistFlags>,
}

/// What a worker said it can do, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerFlags {
    pub models: Vec<String>,
    pub blacklist: Vec<String>,
    pub allow_img2img: bool,
    pub allow_painting: bool,
    pub allow_post_processing: bool,
    /// The post-processors it declared it runs; `None`: those its bridge grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_processors: Option<Vec<String>>,
    pub allow_lora: bool,
    pub allow_controlnet: bool,
    /// The control types it draws maps for; `None`: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_types: Option<Vec<String>>,
    /// The control types it runs from a given map; `None`: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_map_types: Option<Vec<String>>,
    pub allow_sdxl_controlnet: bool,
    /// It said it does not run the NSFW censor (`nsfw_censor: false`): SFW requests asking for
    /// the censor skip it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_nsfw_censor: bool,
    /// What a text worker declared (`/generate/text/pop`); `None`: an image worker. A worker is
    /// of one kind for its whole life: its name cannot pop the other kind's jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextWorkerFlags>,
    /// What an alchemist declared (`/interrogate/pop`); its forms are `models`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alchemy: Option<AlchemistFlags>,
    pub require_upfront_kudos: bool,
    pub extra_slow_worker: bool,
    pub limit_max_steps: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub id: Uuid,
    pub user_id: i64,
    pub name: String,
    pub info: Option<String>,
    pub created: i64,
    pub last_check_in: i64,
    pub bridge_agent: String,
    pub threads: u32,
    pub max_pixels: u64,
    pub nsfw: bool,
    pub flags: WorkerFlags,
    pub maintenance: bool,
    pub maintenance_msg: Option<String>,
    pub paused: bool,
    pub kudos_generated: f64,
    pub kudos_uptime: f64,
    pub uptime: u64,
    /// Seconds of uptime already paid for with uptime kudos.
    pub uptime_rewarded: u64,
    /// Jobs completed, faulted, timed out and cancelled, speed and suspicion.
    pub reputation: Reputation,
}

impl Worker {
    /// The kind of work it does, as the API names it (`JobKind::NAME`): `image` or `text`.
    pub fn kind(&self) -> &'static str {
        if self.flags.text.is_some() {
            "text"
        } else if self.flags.alchemy.is_some() {
            "interrogation"
        } else {
            "image"
        }
    }

    /// Online while it has checked in within `window` seconds.
    pub fn is_online(&self, now: i64, window: i64) -> bool {
        now - self.last_check_in <= window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_names_its_user_by_the_digits_after_its_last_hash() {
        assert_eq!(user_id_of_alias("alice#12"), Some(12));
        assert_eq!(user_id_of_alias("a#b#0"), Some(0));
        assert_eq!(user_id_of_alias("#7"), Some(7));
        for refused in [
            "alice",
            "alice#",
            "alice#+5",
            "alice#-5",
            "alice# 5",
            "a#1234567890123456789",
        ] {
            assert_eq!(user_id_of_alias(refused), None, "{refused}");
        }
        let pattern = regex::Regex::new(ALIAS_ID_PATTERN).unwrap();
        for alias in [
            "alice#12",
            "a#b#0",
            "alice#+5",
            "alice#",
            "x#1234567890123456789",
        ] {
            assert_eq!(
                pattern.is_match(alias),
                user_id_of_alias(alias).is_some(),
                "{alias}"
            );
        }
    }

    #[test]
    fn moderators_see_most_the_user_themself_more_than_anyone() {
        let user = |id: i64, moderator: bool| User {
            id,
            moderator,
            ..User::default()
        };
        assert_eq!(Privilege::of(None, 7), Privilege::Public);
        assert_eq!(Privilege::of(Some(&user(3, false)), 7), Privilege::Public);
        assert_eq!(Privilege::of(Some(&user(7, false)), 7), Privilege::Own);
        assert_eq!(Privilege::of(Some(&user(3, true)), 7), Privilege::Moderator);
        let anonymous = user(ANONYMOUS_USER_ID, false);
        assert_eq!(
            Privilege::of(Some(&anonymous), ANONYMOUS_USER_ID),
            Privilege::Public
        );
    }

    #[test]
    fn debits_below_the_floor_are_forgiven_but_never_more_than_the_charge() {
        assert_eq!(forgiven_debit(100.0, 10.0, 25.0), 0.0);
        assert_eq!(forgiven_debit(30.0, 10.0, 25.0), 5.0, "stops at the floor");
        assert_eq!(
            forgiven_debit(0.0, 10.0, 25.0),
            10.0,
            "already below: nothing is taken"
        );
        assert_eq!(forgiven_debit(-60.0, 5.0, -50.0), 5.0);
        assert_eq!(forgiven_debit(-40.0, 5.0, -50.0), 0.0);
    }

    #[test]
    fn uptime_rewards_grow_with_models_and_loras() {
        let mut flags = WorkerFlags {
            models: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        assert_eq!(uptime_reward(&flags), 54.0);
        flags.allow_lora = true;
        assert_eq!(uptime_reward(&flags), 84.0);
        flags.text = Some(TextWorkerFlags::default());
        assert_eq!(uptime_reward(&flags), TEXT_UPTIME_REWARD);
    }
}
