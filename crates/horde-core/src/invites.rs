//! Invite codes for `[registration] mode = "invite"`: a moderator creates a code, good for a
//! number of accounts until it expires; `/register` asks for it. Pure: the server passes the
//! clock in and stores the code only as its salted hash (like an API key), so a code is shown
//! once, when it is created.
//!
//! Every field is bounded ([`MAX_INVITE_USES`], [`MAX_INVITE_HOURS`], [`MAX_NOTE_CHARS`]), and
//! so is the number of invites a horde keeps ([`MAX_INVITES`]): a moderator's key that leaks
//! cannot fill the database.

use crate::registration::RegistrationRefusal;
pub use horde_api::invite::{
    DEFAULT_INVITE_HOURS, MAX_INVITE_HOURS, MAX_INVITE_USES, MAX_NOTE_CHARS,
};
/// Invites kept at once, used-up and expired ones included (a moderator deletes those no
/// longer wanted; an invite is removed by itself [`EXPIRED_KEPT_MS`] after it expires).
pub const MAX_INVITES: usize = 1000;
/// How long an expired invite is kept, so that its code is refused as expired rather than
/// unknown: a week.
pub const EXPIRED_KEPT_MS: i64 = 7 * 86_400_000;
/// The longest text the form's invite field may hold (a code is 22 characters).
pub const MAX_CODE_CHARS: usize = 64;

/// One invite, as stored: the code itself is not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// Its public handle (a UUID), to list and delete it; not the code.
    pub id: String,
    /// The salted hash of the code.
    pub code_hash: String,
    /// The moderator who created it.
    pub created_by: i64,
    pub note: String,
    /// How many accounts it may create.
    pub max_uses: u32,
    /// How many it created.
    pub uses: u32,
    pub created_ms: i64,
    pub expires_ms: i64,
}

impl Invite {
    /// Whether the invite may create one more account at `now_ms`.
    pub fn check(&self, now_ms: i64) -> Result<(), RegistrationRefusal> {
        if now_ms >= self.expires_ms {
            return Err(RegistrationRefusal::ExpiredInvite);
        }
        if self.uses >= self.max_uses {
            return Err(RegistrationRefusal::UsedInvite);
        }
        Ok(())
    }

    /// Whether the invite is kept no longer at `now_ms` ([`EXPIRED_KEPT_MS`] after it expired).
    pub fn is_stale(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_ms + EXPIRED_KEPT_MS
    }
}

/// The code a form carries, trimmed: none (or only spaces) is [`MissingInvite`], one longer
/// than any code [`WrongInvite`] (it is not looked up).
///
/// [`MissingInvite`]: RegistrationRefusal::MissingInvite
/// [`WrongInvite`]: RegistrationRefusal::WrongInvite
pub fn check_code(raw: Option<&str>) -> Result<&str, RegistrationRefusal> {
    let code = raw
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or(RegistrationRefusal::MissingInvite)?;
    if code.chars().count() > MAX_CODE_CHARS {
        return Err(RegistrationRefusal::WrongInvite);
    }
    Ok(code)
}

/// When an invite made at `now_ms` for `hours` expires.
pub fn expiry_of(now_ms: i64, hours: u32) -> i64 {
    now_ms + i64::from(hours) * 3_600_000
}

/// The text hashed to store a code: set apart from API keys, so a code's hash is never a key's.
pub fn hashed_text(code: &str) -> String {
    format!("invite|{code}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(max_uses: u32, uses: u32, expires_ms: i64) -> Invite {
        Invite {
            id: "id".into(),
            code_hash: "hash".into(),
            created_by: 1,
            note: String::new(),
            max_uses,
            uses,
            created_ms: 0,
            expires_ms,
        }
    }

    #[test]
    fn an_invite_works_until_used_up_or_expired() {
        assert_eq!(invite(1, 0, 1_000).check(999), Ok(()));
        assert_eq!(
            invite(1, 0, 1_000).check(1_000),
            Err(RegistrationRefusal::ExpiredInvite)
        );
        assert_eq!(
            invite(1, 1, 1_000).check(0),
            Err(RegistrationRefusal::UsedInvite)
        );
        assert_eq!(invite(3, 2, 1_000).check(0), Ok(()));
        assert!(!invite(3, 3, 1_000).is_stale(1_000));
        assert!(invite(3, 0, 1_000).is_stale(1_000 + EXPIRED_KEPT_MS));
    }

    #[test]
    fn codes_are_trimmed_and_bounded() {
        assert_eq!(check_code(Some("  abc ")), Ok("abc"));
        assert_eq!(check_code(None), Err(RegistrationRefusal::MissingInvite));
        assert_eq!(
            check_code(Some("   ")),
            Err(RegistrationRefusal::MissingInvite)
        );
        let long = "a".repeat(MAX_CODE_CHARS + 1);
        assert_eq!(
            check_code(Some(&long)),
            Err(RegistrationRefusal::WrongInvite)
        );
        assert_ne!(hashed_text("k"), "k");
        assert_eq!(expiry_of(5, 2), 5 + 7_200_000);
    }
}
