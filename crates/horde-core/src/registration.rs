//! Self-service registration at `/register`: who may register, what a name must be, the form's
//! anti-forgery token and the optional proof of work. Pure: the server passes the clock, the
//! secret and the random parts in, so every refusal is tested here.
//!
//! The page is reachable by anyone on the internet, so each defence is cheap to check and
//! refuses before anything is stored:
//! * the operator's [`RegistrationMode`] (`off` refuses every attempt; `invite` asks for a
//!   moderator's code: `crate::invites`);
//! * a double-submit token ([`sign_token`], [`check_token`]): an HMAC over the form's cookie,
//!   a random nonce and an expiry, so a page on another site can neither read nor forge it; the
//!   server remembers a used token until it expires (single use);
//! * names ([`check_name`]) under the API's username bound (`PUT /users/{id}`: 3 to 30
//!   characters) and the profanity check of every public text;
//! * an optional proof of work ([`proof_is_valid`]) over the form's token, so a script pays in
//!   hashes for each account while a browser pays well under a second;
//! * and, in the server, a per-address limit counted by [`limit_key`] (an IPv6 client by its
//!   /64, which one subscriber usually holds whole).

use crate::profanity::is_profane;
use crate::Refusal;
use hmac::{Hmac, Mac};
use horde_api::Rc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// Who may register through `/register`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Anyone (as on the public horde), under the address limit and the optional proof of work.
    #[default]
    Open,
    /// Nobody: the page says registration is closed.
    Off,
    /// Only with an invite code a moderator created (`horde_core::invites`).
    Invite,
}

/// The shortest name, as `PUT /users/{id}` accepts a new username.
pub const MIN_NAME_CHARS: usize = 3;
/// The longest name, as `PUT /users/{id}` accepts a new username.
pub const MAX_NAME_CHARS: usize = 30;
/// How long a form's token may be submitted after the page was served.
pub const TOKEN_TTL_MS: u64 = 3_600_000;
/// The most leading zero bits an operator may ask for (about 16 million hashes: far past what
/// a browser does in a few seconds, so a configuration beyond it is a mistake).
pub const MAX_PROOF_BITS: u32 = 24;

/// Why an attempt to register was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationRefusal {
    /// The operator turned registration off.
    Closed,
    /// No name, or only spaces.
    EmptyName,
    NameTooShort,
    NameTooLong,
    ProfaneName,
    /// The form came without its token (or without the cookie it is bound to).
    MissingToken,
    /// The token is not one this horde made for this browser's cookie.
    BadToken,
    ExpiredToken,
    /// The token was submitted before.
    ReusedToken,
    /// `Origin` or `Referer` names another site.
    CrossSite,
    /// Proof of work is required and none came.
    MissingProof,
    /// The nonce does not give the required leading zero bits.
    WrongProof {
        bits: u32,
    },
    /// Registration is invite-only and no code came.
    MissingInvite,
    /// No invite has this code (or it was deleted).
    WrongInvite,
    /// The invite created all the accounts it may.
    UsedInvite,
    ExpiredInvite,
}

impl Refusal for RegistrationRefusal {
    fn rc(&self) -> Rc {
        use RegistrationRefusal::*;
        match self {
            EmptyName | NameTooShort | NameTooLong | ProfaneName => Rc::BadRequest,
            Closed
            | MissingToken
            | BadToken
            | ExpiredToken
            | ReusedToken
            | CrossSite
            | MissingProof
            | WrongProof { .. }
            | MissingInvite
            | WrongInvite
            | UsedInvite
            | ExpiredInvite => Rc::Forbidden,
        }
    }

    fn message(&self) -> String {
        use RegistrationRefusal::*;
        match self {
            Closed => "Registration is turned off on this horde.".into(),
            EmptyName => "Please choose a username.".into(),
            NameTooShort => format!("The username must be at least {MIN_NAME_CHARS} characters."),
            NameTooLong => format!("The username must be at most {MAX_NAME_CHARS} characters."),
            ProfaneName => "This username is not allowed: please choose another.".into(),
            MissingToken => {
                "The form's security token is missing: reload the page and submit it again.".into()
            }
            BadToken => {
                "The form's security token is not valid for this browser: reload the page.".into()
            }
            ExpiredToken => "The form has expired: reload the page and submit it again.".into(),
            ReusedToken => {
                "This form was already submitted: reload the page to register again.".into()
            }
            CrossSite => "The form was submitted from another site.".into(),
            MissingProof => "This horde requires a proof of work (pow_nonce): see the page.".into(),
            WrongProof { bits } => format!(
                "The proof of work is wrong: sha256(challenge \":\" pow_nonce) must start with \
                 {bits} zero bits."
            ),
            MissingInvite => {
                "Registration on this horde is by invitation: enter the invite code a moderator \
                 gave you."
                    .into()
            }
            WrongInvite => "This invite code is not valid: check it, or ask a moderator.".into(),
            UsedInvite => "This invite code was already used: ask a moderator for another.".into(),
            ExpiredInvite => "This invite code has expired: ask a moderator for another.".into(),
        }
    }
}

/// The name to store: `raw` trimmed, with control characters dropped, checked for length and
/// profanity. Names need not be unique (users are `name#id`).
pub fn check_name(raw: &str) -> Result<String, RegistrationRefusal> {
    let kept: String = raw.chars().filter(|c| !c.is_control()).collect();
    let name = kept.trim().to_string();
    let count = name.chars().count();
    if count == 0 {
        return Err(RegistrationRefusal::EmptyName);
    }
    if count < MIN_NAME_CHARS {
        return Err(RegistrationRefusal::NameTooShort);
    }
    if count > MAX_NAME_CHARS {
        return Err(RegistrationRefusal::NameTooLong);
    }
    if is_profane(&name) {
        return Err(RegistrationRefusal::ProfaneName);
    }
    Ok(name)
}

/// The parts of a valid token: its nonce and its expiry (unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormToken {
    pub nonce: String,
    pub expires_ms: u64,
}

fn token_mac(secret: &[u8], cookie: &str, nonce: &str, expires_ms: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length works");
    for part in [
        b"register-form".as_slice(),
        cookie.as_bytes(),
        nonce.as_bytes(),
    ] {
        mac.update(part);
        mac.update(b"|");
    }
    mac.update(expires_ms.to_string().as_bytes());
    mac
}

/// The form's token for the browser holding `cookie`: `nonce.expires.mac` (URL-safe), valid
/// until `expires_ms`.
pub fn sign_token(secret: &[u8], cookie: &str, nonce: &str, expires_ms: u64) -> String {
    let mac = token_mac(secret, cookie, nonce, expires_ms).finalize();
    format!("{nonce}.{expires_ms}.{}", hex::encode(mac.into_bytes()))
}

/// The token's parts when it is one [`sign_token`] made for `cookie` and has not expired at
/// `now_ms` (the MAC compared in constant time). Whether it was used before is the server's
/// to remember.
pub fn check_token(
    secret: &[u8],
    cookie: Option<&str>,
    token: Option<&str>,
    now_ms: u64,
) -> Result<FormToken, RegistrationRefusal> {
    let (Some(cookie), Some(token)) = (cookie, token.filter(|t| !t.is_empty())) else {
        return Err(RegistrationRefusal::MissingToken);
    };
    let mut parts = token.splitn(3, '.');
    let (Some(nonce), Some(expires), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(RegistrationRefusal::BadToken);
    };
    let expires_ms: u64 = expires.parse().map_err(|_| RegistrationRefusal::BadToken)?;
    let raw = hex::decode(mac).map_err(|_| RegistrationRefusal::BadToken)?;
    token_mac(secret, cookie, nonce, expires_ms)
        .verify_slice(&raw)
        .map_err(|_| RegistrationRefusal::BadToken)?;
    if now_ms >= expires_ms {
        return Err(RegistrationRefusal::ExpiredToken);
    }
    Ok(FormToken {
        nonce: nonce.to_string(),
        expires_ms,
    })
}

/// The host (and port) of an `Origin` or `Referer` value: what is between the scheme and the
/// path.
fn authority(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|a| !a.is_empty())
}

/// Whether the form came from one of `hosts` (this horde's `Host` and public URL): `Origin`
/// when the browser sent it, else `Referer` when sent; neither (a script, a privacy setting)
/// passes, the token still being needed.
pub fn check_same_site(
    origin: Option<&str>,
    referer: Option<&str>,
    hosts: &[&str],
) -> Result<(), RegistrationRefusal> {
    let Some(sent) = origin.or(referer) else {
        return Ok(());
    };
    match authority(sent) {
        Some(a) if hosts.iter().any(|h| h.eq_ignore_ascii_case(a)) => Ok(()),
        _ => Err(RegistrationRefusal::CrossSite),
    }
}

/// How many leading zero bits `digest` has.
fn leading_zero_bits(digest: &[u8]) -> u32 {
    let mut bits = 0;
    for byte in digest {
        if *byte == 0 {
            bits += 8;
        } else {
            return bits + byte.leading_zeros();
        }
    }
    bits
}

/// Whether `sha256(challenge ":" nonce)` starts with at least `bits` zero bits (0: no proof
/// asked, always true).
pub fn proof_is_valid(challenge: &str, nonce: &str, bits: u32) -> bool {
    if bits == 0 {
        return true;
    }
    let digest = Sha256::new()
        .chain_update(challenge.as_bytes())
        .chain_update(b":")
        .chain_update(nonce.as_bytes())
        .finalize();
    leading_zero_bits(&digest) >= bits
}

/// The proof of work an attempt must carry, checked against the form's token (the challenge).
pub fn check_proof(
    challenge: &str,
    nonce: Option<&str>,
    bits: u32,
) -> Result<(), RegistrationRefusal> {
    if bits == 0 {
        return Ok(());
    }
    let nonce = nonce
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or(RegistrationRefusal::MissingProof)?;
    if nonce.len() > 64 || !proof_is_valid(challenge, nonce, bits) {
        return Err(RegistrationRefusal::WrongProof { bits });
    }
    Ok(())
}

/// The smallest decimal nonce that satisfies [`proof_is_valid`] (what a script or the page's
/// helper computes; tests use it too).
pub fn solve_proof(challenge: &str, bits: u32) -> String {
    (0u64..)
        .map(|n| n.to_string())
        .find(|n| proof_is_valid(challenge, n, bits))
        .expect("some nonce works")
}

/// What the address limit counts by: an IPv4 address whole, an IPv6 address by its /64 (an
/// IPv4-mapped IPv6 address as the IPv4 one).
pub fn limit_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_bounded_and_clean() {
        assert_eq!(check_name("  alice \u{7}").unwrap(), "alice");
        assert_eq!(check_name("   "), Err(RegistrationRefusal::EmptyName));
        assert_eq!(check_name("ab"), Err(RegistrationRefusal::NameTooShort));
        assert!(check_name(&"a".repeat(MAX_NAME_CHARS)).is_ok());
        assert_eq!(
            check_name(&"a".repeat(MAX_NAME_CHARS + 1)),
            Err(RegistrationRefusal::NameTooLong)
        );
        assert_eq!(
            check_name("fucking user"),
            Err(RegistrationRefusal::ProfaneName)
        );
        assert_eq!(
            check_name("RTX in Scunthorpe").unwrap(),
            "RTX in Scunthorpe"
        );
    }

    #[test]
    fn tokens_bind_cookie_secret_and_expiry() {
        let secret = b"secret";
        let token = sign_token(secret, "cookie", "nonce", 1_000);
        let parts = check_token(secret, Some("cookie"), Some(&token), 999).unwrap();
        assert_eq!(parts.nonce, "nonce");
        assert_eq!(parts.expires_ms, 1_000);
        let err = |cookie, token: &str, now| check_token(secret, cookie, Some(token), now);
        assert_eq!(
            err(Some("other"), &token, 0),
            Err(RegistrationRefusal::BadToken)
        );
        assert_eq!(
            err(Some("cookie"), &token, 1_000),
            Err(RegistrationRefusal::ExpiredToken)
        );
        let later = token.replace(".1000.", ".2000.");
        assert_eq!(
            err(Some("cookie"), &later, 0),
            Err(RegistrationRefusal::BadToken)
        );
        assert_eq!(
            check_token(b"other", Some("cookie"), Some(&token), 0),
            Err(RegistrationRefusal::BadToken)
        );
        assert_eq!(
            check_token(secret, None, Some(&token), 0),
            Err(RegistrationRefusal::MissingToken)
        );
        assert_eq!(
            check_token(secret, Some("cookie"), Some(""), 0),
            Err(RegistrationRefusal::MissingToken)
        );
        assert_eq!(
            err(Some("cookie"), "garbage", 0),
            Err(RegistrationRefusal::BadToken)
        );
    }

    #[test]
    fn proofs_need_their_leading_zero_bits() {
        assert_eq!(leading_zero_bits(&[0, 0x0f, 0xff]), 12);
        assert_eq!(leading_zero_bits(&[0x80]), 0);
        let nonce = solve_proof("challenge", 12);
        assert!(proof_is_valid("challenge", &nonce, 12));
        assert!(!proof_is_valid("another", &nonce, 12) || solve_proof("another", 12) == nonce);
        assert_eq!(check_proof("c", None, 0), Ok(()));
        assert_eq!(
            check_proof("c", None, 8),
            Err(RegistrationRefusal::MissingProof)
        );
        // The smallest valid nonce: every smaller one is wrong.
        let nonce: u64 = solve_proof("c", 10).parse().unwrap();
        if nonce > 0 {
            assert_eq!(
                check_proof("c", Some(&(nonce - 1).to_string()), 10),
                Err(RegistrationRefusal::WrongProof { bits: 10 })
            );
        }
        assert_eq!(check_proof("c", Some(&nonce.to_string()), 10), Ok(()));
    }

    #[test]
    fn forms_from_other_sites_are_refused() {
        let hosts = ["horde.example:7001", "127.0.0.1:7001"];
        assert_eq!(check_same_site(None, None, &hosts), Ok(()));
        assert_eq!(
            check_same_site(Some("http://horde.example:7001"), None, &hosts),
            Ok(())
        );
        assert_eq!(
            check_same_site(None, Some("http://127.0.0.1:7001/register?x"), &hosts),
            Ok(())
        );
        for bad in ["https://evil.example", "null", "http://horde.example:7002"] {
            assert_eq!(
                check_same_site(Some(bad), Some("http://127.0.0.1:7001/"), &hosts),
                Err(RegistrationRefusal::CrossSite),
                "{bad}"
            );
        }
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limit_key(a), limit_key(b));
        assert_ne!(limit_key(a), limit_key(c));
        assert_eq!(
            limit_key("::ffff:198.51.100.4".parse().unwrap()),
            "198.51.100.4"
        );
        assert_ne!(
            limit_key("198.51.100.4".parse().unwrap()),
            limit_key("198.51.100.5".parse().unwrap())
        );
    }
}
