//! The accounts component: the salt API keys are hashed with, and the users recently read by
//! key hash. Every worker pops every second or two and clients submit often, while roles rarely
//! change, so a pop or a submit reads its user from here; the cache is cleared whenever a
//! user's roles, key or kudos change through the API. The only code that locks the user cache.

use horde_api::ANONYMOUS_API_KEY;
use horde_core::accounts::User;
use horde_core::keys::hash_api_key;
use std::collections::HashMap;
use std::sync::Mutex;

/// Users kept at most; the cache starts over beyond.
const MAX_CACHED_USERS: usize = 100_000;

/// Key hashing and the user cache (see the module documentation).
pub struct Accounts {
    /// Salt of API-key hashes (persisted in the database).
    key_salt: String,
    /// Users by API-key hash, with when they were read (unix ms).
    user_cache: Mutex<HashMap<String, (User, u64)>>,
}

impl Accounts {
    pub fn new(key_salt: String) -> Self {
        Accounts {
            key_salt,
            user_cache: Mutex::new(HashMap::new()),
        }
    }

    /// The stored hash of API key `key` under this horde's salt.
    pub fn hash_key(&self, key: &str) -> String {
        hash_api_key(&self.key_salt, key)
    }

    /// The hash of the anonymous key under this horde's salt.
    pub fn anonymous_key_hash(&self) -> String {
        self.hash_key(ANONYMOUS_API_KEY)
    }

    /// The user of key hash `hash` if read less than `max_age_ms` before `now_ms`.
    pub fn cached(&self, hash: &str, now_ms: u64, max_age_ms: u64) -> Option<User> {
        let cache = self.user_cache.lock().expect("user cache lock");
        let (user, at) = cache.get(hash)?;
        (now_ms.saturating_sub(*at) < max_age_ms).then(|| user.clone())
    }

    /// Remembers `user`, read by key hash `hash` at `now_ms`.
    pub fn remember(&self, hash: String, user: User, now_ms: u64) {
        let mut cache = self.user_cache.lock().expect("user cache lock");
        if cache.len() >= MAX_CACHED_USERS {
            cache.clear();
        }
        cache.insert(hash, (user, now_ms));
    }

    /// Drops every cached user (after a change of roles, keys or kudos by hand).
    pub fn forget_all(&self) {
        self.user_cache.lock().expect("user cache lock").clear();
    }
}
