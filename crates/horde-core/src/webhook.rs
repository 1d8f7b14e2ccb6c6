//! The pure rules of webhook delivery: which URLs a request may name, which addresses the horde
//! may call, how a call is signed, when a failed call is tried again, and which answers end it.
//!
//! The public horde POSTs a request's webhook once per finished generation, unsigned, three
//! tries without backoff, to any `https://` URL. Ours adds a signature (HMAC-SHA256 of the body
//! with the user's webhook secret, in [`SIGNATURE_HEADER`]), an idempotency id repeated on every
//! try of one delivery ([`DELIVERY_ID_HEADER`] and [`IDEMPOTENCY_KEY_HEADER`]), retries with
//! exponential backoff and jitter for a configurable time ([`Backoff`]), and a guard against
//! server-side request forgery: a webhook URL may not point into the operator's own network
//! (loopback, private, link-local and the other non-global ranges of [`is_internal_address`])
//! unless the operator allows it ([`WebhookPolicy`]).
//!
//! Two checks guard the address, because a URL's host name can resolve to anything and resolve
//! differently later (DNS rebinding):
//! * [`check_url`], at acceptance and before each delivery: the URL's syntax, its scheme, and
//!   its host when the host is a literal IP address (or a `localhost` name);
//! * [`check_resolved`], with the addresses the caller's resolver gave for the host, at
//!   acceptance and again before *each* delivery. The sender must then connect only to the
//!   addresses it checked (pin them in the HTTP client, e.g. reqwest's `resolve_to_addrs`, rather
//!   than letting the client resolve again) and must not follow redirects, or the check is moot.
//!
//! Architecture invariant: like the rest of horde-core this knows nothing of HTTP clients, DNS,
//! SQL or clocks; `now` and the random source are passed in.

use crate::Refusal;
use hmac::{Hmac, Mac};
use horde_api::Rc;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use url::{Host, Url};

/// The signature of a delivery: `sha256=<lowercase hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Horde-Signature";
/// The delivery's idempotency id: the same on every try of one delivery, different between
/// deliveries, so a receiver drops repeats.
pub const DELIVERY_ID_HEADER: &str = "X-Horde-Delivery";
/// The same id under the name of the IETF draft "The Idempotency-Key HTTP Header Field" (and
/// Stripe's API), which generic receivers and proxies already deduplicate on; sent beside
/// [`DELIVERY_ID_HEADER`] with the same value.
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";
/// What the body is: the body's own `event` field, repeated so a receiver can route a delivery
/// before parsing it.
pub const EVENT_HEADER: &str = "X-Horde-Event";
/// The prefix of a webhook secret, so a leaked one is recognisable (and greppable).
pub const SECRET_PREFIX: &str = "whsec_";
/// Webhook URLs are 10..=1024 characters long, as on the public horde.
pub const MIN_URL_CHARS: usize = 10;
pub const MAX_URL_CHARS: usize = 1024;

/// The operator's settings for webhook targets. Both default to off: only `https://` URLs of
/// public addresses are called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookPolicy {
    /// Accept `http://` URLs too (for loopback tests; never on a public horde).
    pub allow_http: bool,
    /// Accept hosts that are or resolve to internal addresses ([`is_internal_address`]).
    pub allow_private_addresses: bool,
}

/// A webhook URL that passed [`check_url`]: what the sender resolves and calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// The URL as parsed and normalised (what to POST to, so that the URL checked is the URL
    /// called).
    pub url: String,
    /// The host name to resolve, or the literal address's text (IPv6 without brackets).
    pub host: String,
    /// The URL's port, or its scheme's default (443, or 80 for `http`).
    pub port: u16,
    /// The host's address when the URL names one literally: nothing to resolve.
    pub literal_ip: Option<IpAddr>,
}

/// Why a webhook URL is refused: 400 `InvalidWebhook`, at acceptance; the same reasons end a
/// delivery that is re-checked before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookRefusal {
    /// Not parseable as an absolute URL.
    NotAUrl {
        reason: String,
    },
    /// Outside [`MIN_URL_CHARS`]..=[`MAX_URL_CHARS`] characters.
    Length {
        chars: usize,
    },
    /// `http://` while the operator allows only `https://`.
    InsecureScheme,
    /// Neither `https://` nor `http://`.
    UnsupportedScheme {
        scheme: String,
    },
    NoHost,
    /// A `user:password@` part.
    Credentials,
    /// A `#fragment` (never sent over HTTP, so it is a mistake).
    Fragment,
    /// A host that is or resolves to an internal address.
    InternalAddress {
        address: IpAddr,
    },
    /// `localhost` or a name under it (RFC 6761: always loopback, whatever DNS says).
    InternalHost {
        host: String,
    },
    /// The host resolved to no address.
    Unresolvable {
        host: String,
    },
}

impl Refusal for WebhookRefusal {
    fn rc(&self) -> Rc {
        Rc::InvalidWebhook
    }

    fn message(&self) -> String {
        match self {
            WebhookRefusal::NotAUrl { reason } => {
                format!("webhook is not a URL ({reason}); send an absolute https:// URL.")
            }
            WebhookRefusal::Length { chars } => format!(
                "webhook is {chars} characters long; it must be {MIN_URL_CHARS} to {MAX_URL_CHARS}."
            ),
            WebhookRefusal::InsecureScheme => {
                "webhook must be an https:// URL; this horde does not call http:// ones.".into()
            }
            WebhookRefusal::UnsupportedScheme { scheme } => {
                format!("webhook must be an https:// URL, not {scheme}:.")
            }
            WebhookRefusal::NoHost => "webhook names no host; send an https:// URL.".into(),
            WebhookRefusal::Credentials => {
                "webhook must not carry a user name or password; requests are signed with your \
                 webhook secret instead."
                    .into()
            }
            WebhookRefusal::Fragment => "webhook must not have a #fragment; remove it.".into(),
            WebhookRefusal::InternalAddress { address } => format!(
                "webhook points at {address}, a loopback, private or otherwise internal \
                 address; this horde only calls public ones, so use a publicly reachable URL."
            ),
            WebhookRefusal::InternalHost { host } => {
                format!("webhook host {host} is a loopback name; use a publicly reachable URL.")
            }
            WebhookRefusal::Unresolvable { host } => {
                format!("webhook host {host} does not resolve to any address; check the host name.")
            }
        }
    }
}

/// A request's webhook URL, checked without any lookup: its length, syntax and scheme, no
/// credentials or fragment, and a literal IP host (or `localhost`) against the address rule.
/// A host name still has to pass [`check_resolved`] once resolved.
pub fn check_url(text: &str, policy: &WebhookPolicy) -> Result<WebhookTarget, WebhookRefusal> {
    let chars = text.chars().count();
    if !(MIN_URL_CHARS..=MAX_URL_CHARS).contains(&chars) {
        return Err(WebhookRefusal::Length { chars });
    }
    let url = Url::parse(text).map_err(|e| match e {
        url::ParseError::EmptyHost => WebhookRefusal::NoHost,
        other => WebhookRefusal::NotAUrl {
            reason: other.to_string(),
        },
    })?;
    check_scheme(url.scheme(), policy)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(WebhookRefusal::Credentials);
    }
    if url.fragment().is_some() {
        return Err(WebhookRefusal::Fragment);
    }
    let target = target_of(&url)?;
    if !policy.allow_private_addresses {
        check_host_literally(&target)?;
    }
    Ok(target)
}

fn check_scheme(scheme: &str, policy: &WebhookPolicy) -> Result<(), WebhookRefusal> {
    match scheme {
        "https" => Ok(()),
        "http" if policy.allow_http => Ok(()),
        "http" => Err(WebhookRefusal::InsecureScheme),
        other => Err(WebhookRefusal::UnsupportedScheme {
            scheme: other.to_string(),
        }),
    }
}

fn target_of(url: &Url) -> Result<WebhookTarget, WebhookRefusal> {
    let (host, literal_ip) = match url.host() {
        None | Some(Host::Domain("")) => return Err(WebhookRefusal::NoHost),
        Some(Host::Domain(name)) => (name.to_string(), None),
        Some(Host::Ipv4(ip)) => (ip.to_string(), Some(IpAddr::V4(ip))),
        Some(Host::Ipv6(ip)) => (ip.to_string(), Some(IpAddr::V6(ip))),
    };
    Ok(WebhookTarget {
        url: url.as_str().to_string(),
        host,
        port: url.port_or_known_default().ok_or(WebhookRefusal::NoHost)?,
        literal_ip,
    })
}

/// The address rule for what is known without DNS: a literal address, or a `localhost` name.
fn check_host_literally(target: &WebhookTarget) -> Result<(), WebhookRefusal> {
    if let Some(address) = target.literal_ip {
        return check_address(address);
    }
    let name = target.host.trim_end_matches('.');
    if name == "localhost" || name.ends_with(".localhost") {
        return Err(WebhookRefusal::InternalHost {
            host: target.host.clone(),
        });
    }
    Ok(())
}

fn check_address(address: IpAddr) -> Result<(), WebhookRefusal> {
    if is_internal_address(address) {
        Err(WebhookRefusal::InternalAddress { address })
    } else {
        Ok(())
    }
}

/// The addresses `target`'s host resolved to, checked: at least one, and (unless the operator
/// allows private addresses) none internal; one internal address among public ones refuses the
/// whole host, since the client may connect to any of them.
///
/// Call it after resolving at acceptance, and again after resolving before *each* delivery: a
/// name that resolved to a public address when the request came can resolve to `127.0.0.1` an
/// hour later (DNS rebinding). Then connect only to `addrs`.
pub fn check_resolved(
    target: &WebhookTarget,
    addrs: &[IpAddr],
    policy: &WebhookPolicy,
) -> Result<(), WebhookRefusal> {
    if addrs.is_empty() {
        return Err(WebhookRefusal::Unresolvable {
            host: target.host.clone(),
        });
    }
    if policy.allow_private_addresses {
        return Ok(());
    }
    addrs.iter().try_for_each(|&address| check_address(address))
}

/// Whether the horde must not call `ip` on a user's behalf: anything that is not a public
/// unicast address (the IANA special-purpose registries), and the IPv6 forms that carry an
/// internal IPv4 address (mapped, compatible, NAT64, 6to4).
pub fn is_internal_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

/// IPv4 blocks that are not public unicast: (first address, prefix length).
const INTERNAL_V4: [([u8; 4], u32); 16] = [
    ([0, 0, 0, 0], 8),       // "this network", 0.0.0.0 included
    ([10, 0, 0, 0], 8),      // private (RFC 1918)
    ([100, 64, 0, 0], 10),   // carrier-grade NAT (RFC 6598)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local, cloud metadata services among them
    ([172, 16, 0, 0], 12),   // private (RFC 1918)
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
    ([192, 88, 99, 0], 24),  // deprecated 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private (RFC 1918)
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
    ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, 255.255.255.255 broadcast included
    ([255, 255, 255, 255], 32),
];

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    INTERNAL_V4.iter().any(|&(first, len)| {
        let mask = u32::MAX << (32 - len);
        bits & mask == u32::from(Ipv4Addr::from(first))
    })
}

/// IPv6 blocks that are not public unicast: (first address, prefix length).
const INTERNAL_V6: [(u128, u32); 9] = [
    (0x0100_0000_0000_0000 << 64, 64), // discard-only (RFC 6666)
    (0x0064_ff9b_0001 << 80, 48),      // local-use NAT64 (RFC 8215)
    (0x2001 << 112, 23),               // IETF protocol assignments, Teredo
    (0x2001_0db8 << 96, 32),           // documentation
    (0x3fff << 112, 20),               // documentation (RFC 9637)
    (0xfc00 << 112, 7),                // unique local
    (0xfe80 << 112, 10),               // link-local
    (0xfec0 << 112, 10),               // site-local (deprecated)
    (0xff00 << 112, 8),                // multicast
];

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_internal_v4(v4);
    }
    let bits = u128::from(ip);
    if bits >> 32 == 0 {
        // ::/96 other than its IPv4-compatible forms: ::, ::1.
        return true;
    }
    INTERNAL_V6.iter().any(|&(first, len)| {
        let mask = u128::MAX << (128 - len);
        bits & mask == first
    })
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped `::ffff:a.b.c.d`, IPv4-translated
/// `::ffff:0:a.b.c.d`, IPv4-compatible `::a.b.c.d` (deprecated; `::` and `::1` excepted),
/// NAT64 `64:ff9b::a.b.c.d`, and 6to4 `2002:aabb:ccdd::/48`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low = Ipv4Addr::from(bits as u32);
    let high96 = bits >> 32;
    match high96 {
        0xffff | 0xffff_0000 => Some(low),
        0 if bits > 1 => Some(low),
        0x0064_ff9b_0000_0000_0000_0000 => Some(low),
        _ if bits >> 112 == 0x2002 => Some(Ipv4Addr::from((bits >> 80) as u32)),
        _ => None,
    }
}

/// The [`SIGNATURE_HEADER`] value of `body` under `secret`: `sha256=` and the lowercase hex
/// HMAC-SHA256 of the exact bytes sent, keyed with the secret's text as the user sees it
/// (prefix included).
pub fn signature_header(secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac_of(secret, body).finalize().into_bytes())
    )
}

/// Whether `header` is `body`'s signature under `secret`; compared in constant time, so a
/// receiver's timing tells nothing of the right signature.
pub fn verify_signature(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_digest) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(digest) = hex::decode(hex_digest) else {
        return false;
    };
    mac_of(secret, body).verify_slice(&digest).is_ok()
}

fn mac_of(secret: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    mac
}

/// A fresh webhook secret: [`SECRET_PREFIX`] and 32 random bytes in hex (70 characters).
pub fn new_webhook_secret(rng: &mut impl rand::Rng) -> String {
    let bytes: [u8; 32] = rng.random();
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

/// When a failed delivery is tried again: exponentially later each time, with jitter so that
/// the deliveries a receiver's outage failed together do not all come back at once, until
/// `give_up_after_secs` after the first try.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Backoff {
    /// The delay before the second try (the first retry), before jitter; more than 0.
    pub first_delay_secs: f64,
    /// No delay is longer than this.
    pub max_delay_secs: f64,
    /// No try is made later than this after the first.
    pub give_up_after_secs: i64,
}

impl Default for Backoff {
    /// 5 s, 10 s, 20 s … up to an hour between tries, for a day: about 40 tries.
    fn default() -> Self {
        Backoff {
            first_delay_secs: 5.0,
            max_delay_secs: 3600.0,
            give_up_after_secs: 24 * 3600,
        }
    }
}

impl Backoff {
    /// The delay after `attempts_made` tries before jitter: `first · 2^(attempts_made − 1)`,
    /// capped at `max_delay_secs`. The jittered delay lies in its upper half.
    pub fn ceiling_secs(&self, attempts_made: u32) -> f64 {
        let doublings = attempts_made.saturating_sub(1).min(1023) as i32;
        (self.first_delay_secs * 2f64.powi(doublings)).min(self.max_delay_secs)
    }

    /// When to make the next try, `attempts_made` having failed (0: none made yet, so now),
    /// the first at `first_attempt_at`; `None` once the time to give up has come. "Equal
    /// jitter": half the [`ceiling_secs`](Self::ceiling_secs) fixed, the other half random,
    /// rounded up to whole seconds, so never sooner than half the ceiling and never zero. The
    /// last try is made at the give-up time itself rather than skipped.
    pub fn next_attempt_at(
        &self,
        attempts_made: u32,
        first_attempt_at: i64,
        now: i64,
        rng: &mut impl rand::Rng,
    ) -> Option<i64> {
        let give_up_at = first_attempt_at.saturating_add(self.give_up_after_secs);
        if attempts_made == 0 {
            return Some(now);
        }
        if now >= give_up_at {
            return None;
        }
        let half = self.ceiling_secs(attempts_made) / 2.0;
        let delay = (half + half * rng.random::<f64>()).ceil().max(1.0) as i64;
        Some(now.saturating_add(delay).min(give_up_at))
    }
}

/// Whether a receiver's answer delivers the call: any 2xx.
pub fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Whether a receiver's answer ends the delivery without retrying: the receiver understood and
/// refused, and the same signed body will be refused again. That is a 4xx (410 Gone among them:
/// the receiver is no more) other than 408 Request Timeout, 425 Too Early and 429 Too Many
/// Requests, which say "later"; and a permanent redirect (301, 308), since redirects are not
/// followed. 5xx, other 3xx, network errors and timeouts are retried until the [`Backoff`]
/// gives up.
pub fn is_permanent_failure(status: u16) -> bool {
    match status {
        301 | 308 => true,
        408 | 425 | 429 => false,
        400..=499 => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const STRICT: WebhookPolicy = WebhookPolicy {
        allow_http: false,
        allow_private_addresses: false,
    };
    const LAX: WebhookPolicy = WebhookPolicy {
        allow_http: true,
        allow_private_addresses: true,
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("a test address")
    }

    #[test]
    fn internal_addresses_are_recognised_in_every_form() {
        let internal = "\
            0.0.0.0 0.1.2.3 10.0.0.1 10.255.255.255 100.64.0.1 100.127.255.254 127.0.0.1
            127.255.0.9 169.254.169.254 172.16.0.1 172.31.255.255 192.0.0.8 192.0.2.10
            192.88.99.1 192.168.1.1 198.18.0.1 198.19.255.255 198.51.100.7 203.0.113.200
            224.0.0.251 239.255.255.250 240.0.0.1 255.255.255.255 :: ::1 ::ffff:127.0.0.1
            ::ffff:10.1.2.3 ::ffff:169.254.169.254 ::ffff:0:192.168.0.1 ::127.0.0.1
            ::10.0.0.1 64:ff9b::10.0.0.1 64:ff9b::127.0.0.1 64:ff9b:1::8.8.8.8
            2002:7f00:1:: 2002:c0a8:101::1 100::1 2001::1 2001:db8::1 3fff::1 fc00::1
            fd12:3456:789a::1 fe80::1 febf::ffff fec0::1 ff02::1";
        for address in internal.split_whitespace() {
            assert!(is_internal_address(ip(address)), "{address} is internal");
        }
    }

    #[test]
    fn public_addresses_are_not_internal() {
        let public = "\
            1.1.1.1 8.8.8.8 9.255.255.255 11.0.0.1 100.63.255.255 100.128.0.0
            126.255.255.255 128.0.0.1 169.253.255.255 169.255.0.1 172.15.255.255 172.32.0.1
            192.0.1.1 192.0.3.1 192.167.255.255 192.169.0.1 198.17.255.255 198.20.0.1
            203.0.114.1 223.255.255.254 ::ffff:8.8.8.8 ::8.8.8.8 64:ff9b::1.1.1.1
            2002:808:808::1 2001:4860:4860::8888 2606:4700:4700::1111 2a00:1450:4001::1
            2001:200::1 fbff::1 fe7f::1";
        for address in public.split_whitespace() {
            assert!(!is_internal_address(ip(address)), "{address} is public");
        }
    }

    fn refused(url: &str, policy: &WebhookPolicy) -> WebhookRefusal {
        check_url(url, policy).expect_err(url)
    }

    #[test]
    fn a_public_https_url_gives_its_host_and_port() {
        let target = check_url("https://Hooks.Example.com/horde?x=1", &STRICT).unwrap();
        assert_eq!(target.url, "https://hooks.example.com/horde?x=1");
        assert_eq!(target.host, "hooks.example.com");
        assert_eq!(target.port, 443);
        assert_eq!(target.literal_ip, None);
        let target = check_url("https://[2606:4700::1111]:8443/", &STRICT).unwrap();
        assert_eq!(target.host, "2606:4700::1111");
        assert_eq!(target.port, 8443);
        assert_eq!(target.literal_ip, Some(ip("2606:4700::1111")));
        let target = check_url("http://example.com/", &LAX).unwrap();
        assert_eq!(target.port, 80);
    }

    #[test]
    fn malformed_urls_are_refused_with_their_reason() {
        let long = format!("https://example.com/{}", "x".repeat(1005));
        let cases = [
            ("https://", WebhookRefusal::Length { chars: 8 }),
            (long.as_str(), WebhookRefusal::Length { chars: 1025 }),
            ("http://example.com/", WebhookRefusal::InsecureScheme),
            (
                "ftp://example.com/",
                WebhookRefusal::UnsupportedScheme {
                    scheme: "ftp".into(),
                },
            ),
            ("https://user:pw@example.com/", WebhookRefusal::Credentials),
            ("https://user@example.com/", WebhookRefusal::Credentials),
            ("https://example.com/#top", WebhookRefusal::Fragment),
            ("https://:8443/hook", WebhookRefusal::NoHost),
            ("https://?query=1", WebhookRefusal::NoHost),
            (
                "mailto:someone@example.com",
                WebhookRefusal::UnsupportedScheme {
                    scheme: "mailto".into(),
                },
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(refused(url, &STRICT), expected, "{url}");
        }
        for url in [
            "no scheme at all",
            "https://exa mple.com/",
            "https://[::1/x",
        ] {
            let refusal = refused(url, &STRICT);
            assert!(
                matches!(refusal, WebhookRefusal::NotAUrl { .. }),
                "{url}: {refusal:?}"
            );
        }
        assert!(check_url(&long[..1024], &STRICT).is_ok());
    }

    #[test]
    fn literal_internal_hosts_are_refused_unless_the_operator_allows_them() {
        let cases = [
            ("https://127.0.0.1/hook", "127.0.0.1"),
            ("https://127.1/hook", "127.0.0.1"),
            ("https://0x7f000001/hook", "127.0.0.1"),
            ("https://2130706433/hook", "127.0.0.1"),
            (
                "https://169.254.169.254/latest/meta-data",
                "169.254.169.254",
            ),
            ("https://10.0.0.5:8443/", "10.0.0.5"),
            ("https://[::1]/hook", "::1"),
            ("https://[::ffff:192.168.0.1]/", "::ffff:192.168.0.1"),
            ("https://[fd00::1]/hook", "fd00::1"),
        ];
        for (url, address) in cases {
            let expected = WebhookRefusal::InternalAddress {
                address: ip(address),
            };
            assert_eq!(refused(url, &STRICT), expected, "{url}");
            assert!(
                check_url(url, &LAX).is_ok(),
                "{url} with private addresses allowed"
            );
        }
        for url in [
            "https://localhost/hook",
            "https://api.localhost./x",
            "http://LOCALHOST:8080/",
        ] {
            let policy = WebhookPolicy {
                allow_http: true,
                ..STRICT
            };
            let refusal = refused(url, &policy);
            assert!(
                matches!(refusal, WebhookRefusal::InternalHost { .. }),
                "{url}: {refusal:?}"
            );
            assert!(check_url(url, &LAX).is_ok(), "{url}");
        }
        assert!(check_url("https://localhost.example.com/", &STRICT).is_ok());
    }

    #[test]
    fn resolved_addresses_must_all_be_public() {
        let target = check_url("https://hooks.example.com/", &STRICT).unwrap();
        let public = [ip("93.184.216.34"), ip("2606:2800:220:1::1")];
        assert_eq!(check_resolved(&target, &public, &STRICT), Ok(()));
        let rebound = [ip("93.184.216.34"), ip("127.0.0.1")];
        assert_eq!(
            check_resolved(&target, &rebound, &STRICT),
            Err(WebhookRefusal::InternalAddress {
                address: ip("127.0.0.1")
            })
        );
        assert_eq!(check_resolved(&target, &rebound, &LAX), Ok(()));
        let none = check_resolved(&target, &[], &LAX).unwrap_err();
        assert_eq!(
            none,
            WebhookRefusal::Unresolvable {
                host: "hooks.example.com".into()
            }
        );
    }

    #[test]
    fn every_refusal_is_invalid_webhook_with_its_own_message() {
        let refusals = [
            WebhookRefusal::NotAUrl {
                reason: "relative URL without a base".into(),
            },
            WebhookRefusal::Length { chars: 3 },
            WebhookRefusal::InsecureScheme,
            WebhookRefusal::UnsupportedScheme {
                scheme: "ftp".into(),
            },
            WebhookRefusal::NoHost,
            WebhookRefusal::Credentials,
            WebhookRefusal::Fragment,
            WebhookRefusal::InternalAddress {
                address: ip("10.0.0.1"),
            },
            WebhookRefusal::InternalHost {
                host: "localhost".into(),
            },
            WebhookRefusal::Unresolvable {
                host: "nowhere.invalid".into(),
            },
        ];
        let mut messages = std::collections::HashSet::new();
        for refusal in &refusals {
            assert_eq!(refusal.rc(), Rc::InvalidWebhook);
            assert_eq!(refusal.rc().status(), 400);
            assert!(messages.insert(refusal.message()), "{refusal:?}");
        }
        assert!(refusals[7].message().contains("10.0.0.1"));
    }

    #[test]
    fn signatures_are_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        let header = signature_header("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            header,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_signature(
            "Jefe",
            b"what do ya want for nothing?",
            &header
        ));
        assert!(verify_signature(
            "Jefe",
            b"what do ya want for nothing?",
            &header.to_uppercase().replace("SHA256=", "sha256=")
        ));
    }

    #[test]
    fn a_wrong_signature_secret_or_body_does_not_verify() {
        let body = br#"{"event":"generation"}"#;
        let header = signature_header("whsec_one", body);
        assert!(verify_signature("whsec_one", body, &header));
        assert!(!verify_signature("whsec_two", body, &header));
        assert!(!verify_signature(
            "whsec_one",
            br#"{"event":"other"}"#,
            &header
        ));
        assert!(!verify_signature("whsec_one", body, &header[7..]));
        assert!(!verify_signature(
            "whsec_one",
            body,
            &header[..header.len() - 2]
        ));
        assert!(!verify_signature("whsec_one", body, "sha256=not hex"));
        assert!(!verify_signature(
            "whsec_one",
            body,
            &header.replace("sha256", "sha1")
        ));
    }

    #[test]
    fn secrets_are_prefixed_hex_and_differ() {
        let mut rng = StdRng::seed_from_u64(7);
        let first = new_webhook_secret(&mut rng);
        let second = new_webhook_secret(&mut rng);
        assert_eq!(first.len(), SECRET_PREFIX.len() + 64);
        let hex_part = first.strip_prefix(SECRET_PREFIX).unwrap();
        assert!(hex_part
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(first, second);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let backoff = Backoff::default();
        let ceilings: Vec<f64> = (1..=12).map(|n| backoff.ceiling_secs(n)).collect();
        assert_eq!(&ceilings[..5], &[5.0, 10.0, 20.0, 40.0, 80.0]);
        assert!(ceilings.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(ceilings[11], 3600.0);
        assert_eq!(backoff.ceiling_secs(u32::MAX), 3600.0);
    }

    #[test]
    fn each_retry_waits_between_half_its_ceiling_and_its_ceiling() {
        let backoff = Backoff::default();
        let mut rng = StdRng::seed_from_u64(1);
        for attempts in 1..=20 {
            let ceiling = backoff.ceiling_secs(attempts);
            for _ in 0..50 {
                let at = backoff.next_attempt_at(attempts, 0, 100, &mut rng).unwrap();
                let delay = (at - 100) as f64;
                assert!(
                    delay >= ceiling / 2.0 && delay <= ceiling,
                    "{attempts}: {delay}"
                );
            }
        }
        assert_eq!(backoff.next_attempt_at(0, 100, 100, &mut rng), Some(100));
    }

    #[test]
    fn jitter_varies_the_delay() {
        let backoff = Backoff::default();
        let mut rng = StdRng::seed_from_u64(42);
        let delays: std::collections::HashSet<i64> = (0..20)
            .map(|_| backoff.next_attempt_at(8, 0, 0, &mut rng).unwrap())
            .collect();
        assert!(delays.len() > 5, "{delays:?}");
    }

    #[test]
    fn retries_stop_at_the_give_up_time() {
        let backoff = Backoff {
            first_delay_secs: 5.0,
            max_delay_secs: 3600.0,
            give_up_after_secs: 1000,
        };
        let mut rng = StdRng::seed_from_u64(3);
        let first = 50;
        assert_eq!(
            backoff.next_attempt_at(12, first, 900, &mut rng),
            Some(first + 1000)
        );
        assert_eq!(
            backoff.next_attempt_at(12, first, first + 1000, &mut rng),
            None
        );
        assert_eq!(
            backoff.next_attempt_at(1, first, first + 5000, &mut rng),
            None
        );
        let (mut now, mut attempts) = (first, 1);
        while let Some(at) = backoff.next_attempt_at(attempts, first, now, &mut rng) {
            assert!(at > now && at <= first + 1000);
            (now, attempts) = (at, attempts + 1);
        }
        assert_eq!(now, first + 1000);
    }

    #[test]
    fn only_2xx_delivers_and_only_lasting_refusals_stop_retries() {
        for status in [200, 201, 202, 204, 299] {
            assert!(
                is_success(status) && !is_permanent_failure(status),
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 410, 413, 422, 301, 308] {
            assert!(
                !is_success(status) && is_permanent_failure(status),
                "{status}"
            );
        }
        for status in [100, 302, 307, 408, 425, 429, 500, 502, 503, 504] {
            assert!(
                !is_success(status) && !is_permanent_failure(status),
                "{status}"
            );
        }
    }
}
