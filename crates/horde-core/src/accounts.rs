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

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub kudos: f64,
    pub moderator: bool,
    pub trusted: bool,
    pub flagged: bool,
    /// True for accounts made without an OAuth identity (all accounts made by `horde user`).
    pub pseudonymous: bool,
    pub concurrency: u32,
    pub worker_invited: u32,
    pub usage_megapixelsteps: f64,
    pub usage_requests: u64,
    pub contributed_megapixelsteps: f64,
    pub fulfilments: u64,
    pub kudos_accumulated: f64,
    pub created: i64,
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
        if self.is_anonymous() {
            -50.0
        } else if self.pseudonymous {
            14.0
        } else {
            25.0
        }
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

/// What a worker said it can do, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerFlags {
    pub models: Vec<String>,
    pub blacklist: Vec<String>,
    pub allow_img2img: bool,
    pub allow_painting: bool,
    pub allow_post_processing: bool,
    pub allow_lora: bool,
    pub allow_controlnet: bool,
    pub allow_sdxl_controlnet: bool,
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
    /// Jobs completed, faulted, timed out and cancelled, speed and suspicion.
    pub reputation: Reputation,
}

impl Worker {
    /// Online while it has checked in within `window` seconds.
    pub fn is_online(&self, now: i64, window: i64) -> bool {
        now - self.last_check_in <= window
    }
}
