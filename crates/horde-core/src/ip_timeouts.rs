//! IP timeouts: which addresses a moderator (or a blocked prompt) has shut out, and for how long.
//!
//! The public horde keys a timeout by an address *subject*: an IPv4 address is its own subject,
//! an IPv4-mapped IPv6 address is its IPv4 address, and an IPv6 address is its /64 (clients get
//! a /64 and rotate addresses within it, so a single IPv6 address would not hold anyone). A
//! moderator may also time out a CIDR block. Both are a [`Network`] here, so one rule decides
//! whether an address is timed out: any stored network that contains it and has not expired.
//!
//! A blocked prompt raises its sender's suspicion (remembered a day) and times the subject out
//! for `(2s + 1) × 3` minutes, `s` the suspicion before it: 3, 9, 15… minutes, as the public
//! horde's `CounterMeasures.report_suspicion` does.
//!
//! Pure: time comes in as `now_ms`, nothing is read or stored here.

use horde_api::Rc;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

static NETWORK_PATTERN: OnceLock<regex::Regex> = OnceLock::new();
static ADDRESS_PATTERN: OnceLock<regex::Regex> = OnceLock::new();

fn spec_pattern(cell: &'static OnceLock<regex::Regex>, pattern: &str) -> &'static regex::Regex {
    cell.get_or_init(|| regex::Regex::new(pattern).expect("the spec's pattern compiles"))
}

/// The IPv6 prefix an address is judged and timed out by (the public horde's
/// `IPV6_SUBJECT_PREFIX_LENGTH`).
pub const IPV6_SUBJECT_PREFIX: u8 = 64;
/// The widest IPv4 block a moderator may time out: a wider one would shut out a good part of
/// the internet by one typing mistake.
pub const MIN_IPV4_PREFIX: u8 = 8;
/// The widest IPv6 block a moderator may time out (an ISP's allocation).
pub const MIN_IPV6_PREFIX: u8 = 32;
/// `POST /operations/ipaddr`'s `hours` (the public horde's bounds).
pub const MIN_HOURS: u32 = 1;
pub const MAX_HOURS: u32 = 720;
/// `PUT /operations/block_worker_ipaddr/{id}`'s `days` (the public horde's bounds).
pub const MIN_DAYS: u32 = 1;
pub const MAX_DAYS: u32 = 30;
/// How long an address's prompt suspicion is remembered (the public horde's 24 hours).
pub const SUSPICION_MEMORY_MS: i64 = 24 * 3_600_000;
/// Above this many seconds left, the refusal does not say how long (the public horde's 4 days).
const SAY_SECONDS_UP_TO: u64 = 4 * 24 * 3600;

/// An address block: a base address with its host bits cleared, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network {
    base: IpAddr,
    prefix: u8,
}

/// Why a text is not an address or block a timeout may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkRefusal {
    /// Not an IPv4 or IPv6 address, with or without a `/prefix`.
    NotAnAddress(String),
    /// A block wider than [`MIN_IPV4_PREFIX`] or [`MIN_IPV6_PREFIX`].
    TooWide(String),
}

impl crate::Refusal for NetworkRefusal {
    fn rc(&self) -> Rc {
        Rc::BadRequest
    }
    fn message(&self) -> String {
        match self {
            NetworkRefusal::NotAnAddress(text) => {
                format!("'{text}' is not an IP address or a CIDR block.")
            }
            NetworkRefusal::TooWide(text) => format!(
                "'{text}' is wider than a /{MIN_IPV4_PREFIX} (IPv4) or a /{MIN_IPV6_PREFIX} (IPv6)."
            ),
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as dual-stack sockets report IPv4 clients)
/// as its IPv4 address; any other address unchanged.
pub fn unmapped(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn masked(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

fn max_prefix(address: IpAddr) -> u8 {
    if address.is_ipv4() {
        32
    } else {
        128
    }
}

impl Network {
    /// The subject an address is judged as: an IPv4 address itself, an IPv6 address's /64.
    pub fn subject_of(address: IpAddr) -> Network {
        let address = unmapped(address);
        let prefix = if address.is_ipv4() {
            32
        } else {
            IPV6_SUBJECT_PREFIX
        };
        Network {
            base: masked(address, prefix),
            prefix,
        }
    }

    /// Reads what a moderator names: an address (timed out as its subject) or a CIDR block
    /// (host bits dropped, as `10.0.0.7/24` names `10.0.0.0/24`). An IPv6 block narrower than a
    /// /64 is its /64: a timeout never holds less than one subject. Exactly the texts the
    /// spec's pattern admits are read (`horde_api::operations::NETWORK_PATTERN`: no spaces,
    /// no `/08`, no embedded IPv4 in IPv6), so the spec says which bodies are accepted.
    pub fn parse(text: &str) -> Result<Network, NetworkRefusal> {
        let network = Network::read(text)?;
        if !spec_pattern(&NETWORK_PATTERN, horde_api::operations::NETWORK_PATTERN).is_match(text) {
            return Err(NetworkRefusal::NotAnAddress(text.to_string()));
        }
        Ok(network)
    }

    /// A single address as the spec's pattern admits it (`GET /operations/ipaddr/{ipaddr}`).
    pub fn parse_address(text: &str) -> Result<IpAddr, NetworkRefusal> {
        let pattern = spec_pattern(&ADDRESS_PATTERN, horde_api::operations::ADDRESS_PATTERN);
        text.parse()
            .ok()
            .filter(|_| pattern.is_match(text))
            .ok_or_else(|| NetworkRefusal::NotAnAddress(text.to_string()))
    }

    fn read(text: &str) -> Result<Network, NetworkRefusal> {
        let not_one = || NetworkRefusal::NotAnAddress(text.to_string());
        let Some((address, prefix)) = text.split_once('/') else {
            let address: IpAddr = text.parse().map_err(|_| not_one())?;
            return Ok(Network::subject_of(address));
        };
        let address: IpAddr = address.parse().map_err(|_| not_one())?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max_prefix(address))
            .ok_or_else(not_one)?;
        let (address, prefix) = match (address, unmapped(address)) {
            (IpAddr::V6(_), IpAddr::V4(v4)) if prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
            _ => (address, prefix),
        };
        let widest = if address.is_ipv4() {
            MIN_IPV4_PREFIX
        } else {
            MIN_IPV6_PREFIX
        };
        if prefix < widest {
            return Err(NetworkRefusal::TooWide(text.to_string()));
        }
        if address.is_ipv6() && prefix > IPV6_SUBJECT_PREFIX {
            return Ok(Network::subject_of(address));
        }
        Ok(Network {
            base: masked(address, prefix),
            prefix,
        })
    }

    /// Whether `address` is in this block.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = unmapped(address);
        address.is_ipv4() == self.base.is_ipv4() && masked(address, self.prefix) == self.base
    }
}

impl fmt::Display for Network {
    /// A single IPv4 address as itself (`203.0.113.7`), any block as `base/prefix`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == max_prefix(self.base) {
            write!(f, "{}", self.base)
        } else {
            write!(f, "{}/{}", self.base, self.prefix)
        }
    }
}

/// One stored timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    pub network: Network,
    /// Unix milliseconds at which it ends.
    pub expires_ms: i64,
}

impl Timeout {
    /// Whole seconds left at `now_ms` (0 once it has ended), rounded up so a live timeout
    /// never shows 0.
    pub fn seconds_left(&self, now_ms: i64) -> u64 {
        let left = self.expires_ms.saturating_sub(now_ms).max(0) as u64;
        left.div_ceil(1000)
    }
}

/// The longest timeout holding `address` at `now_ms`, in seconds left; `None` when it is free.
pub fn seconds_left_for(timeouts: &[Timeout], address: IpAddr, now_ms: i64) -> Option<u64> {
    timeouts
        .iter()
        .filter(|t| t.network.contains(address))
        .map(|t| t.seconds_left(now_ms))
        .filter(|secs| *secs > 0)
        .max()
}

/// The timeouts that hold `address` at `now_ms` (`GET /operations/ipaddr/{ipaddr}`).
pub fn matching(timeouts: &[Timeout], address: IpAddr, now_ms: i64) -> Vec<Timeout> {
    timeouts
        .iter()
        .filter(|t| t.network.contains(address) && t.seconds_left(now_ms) > 0)
        .copied()
        .collect()
}

/// The minutes a blocked prompt times its sender out for, `prior` the sender's suspicion
/// before it: `(2 × prior + 1) × 3` (3, 9, 15… minutes), capped at a day.
pub fn suspicion_timeout_minutes(prior: u32) -> u64 {
    ((2 * u64::from(prior) + 1) * 3).min(24 * 60)
}

/// An address in timeout: 403 `TimeoutIP`, with the public horde's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut {
    pub seconds_left: u64,
}

impl crate::Refusal for TimedOut {
    fn rc(&self) -> Rc {
        Rc::TimeoutIP
    }
    fn message(&self) -> String {
        if self.seconds_left > SAY_SECONDS_UP_TO {
            "Due to abuse prevention, your IP address has been put into timeout. Please try again later, or contact us on discord if you think this was an error.".into()
        } else {
            format!(
                "Due to abuse prevention, your IP address has been put into timeout for {} more seconds. Please try again later, or contact us on discord if you think this was an error.",
                self.seconds_left
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Refusal;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_is_its_subject_and_a_block_drops_its_host_bits() {
        assert_eq!(
            Network::parse("203.0.113.7").unwrap().to_string(),
            "203.0.113.7"
        );
        assert_eq!(
            Network::parse("10.1.2.3/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(
            Network::parse("2001:db8:1:2:3:4:5:6").unwrap().to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            Network::parse("2001:db8:1:2::7/120").unwrap().to_string(),
            "2001:db8:1:2::/64",
            "an IPv6 block never holds less than one subject"
        );
        assert_eq!(
            Network::parse("::ffff:c633:6404").unwrap().to_string(),
            "198.51.100.4"
        );
        assert_eq!(
            Network::parse("::ffff:c633:6400/120").unwrap().to_string(),
            "198.51.100.0/24"
        );
        let mapped: IpAddr = "::ffff:198.51.100.4".parse().unwrap();
        assert_eq!(Network::subject_of(mapped).to_string(), "198.51.100.4");
    }

    #[test]
    fn texts_that_are_no_address_and_blocks_too_wide_are_refused() {
        for bad in [
            "",
            "nonsense",
            "10.0.0.300",
            "10.0.0.0/33",
            "10.0.0.0/x",
            "1.2.3.4/-1",
            " 1.2.3.4",
            "10.0.0.0/08",
            "::ffff:1.2.3.4",
        ] {
            assert!(
                matches!(Network::parse(bad), Err(NetworkRefusal::NotAnAddress(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Network::parse("0.0.0.0/0"),
            Err(NetworkRefusal::TooWide(_))
        ));
        assert!(matches!(
            Network::parse("10.0.0.0/7"),
            Err(NetworkRefusal::TooWide(_))
        ));
        assert!(Network::parse("10.0.0.0/8").is_ok());
        assert!(matches!(
            Network::parse("2001:db8::/31"),
            Err(NetworkRefusal::TooWide(_))
        ));
        assert!(Network::parse("2001:db8::/32").is_ok());
    }

    #[test]
    fn a_block_contains_its_addresses_and_no_other() {
        let block = Network::parse("198.51.100.0/24").unwrap();
        assert!(block.contains(ip("198.51.100.0")));
        assert!(block.contains(ip("198.51.100.255")));
        assert!(
            block.contains(ip("::ffff:198.51.100.9")),
            "a mapped address is its IPv4 one"
        );
        assert!(!block.contains(ip("198.51.101.0")));
        assert!(!block.contains(ip("198.51.99.255")));
        assert!(!block.contains(ip("2001:db8::1")));
        let subject = Network::subject_of(ip("2001:db8:0:7::1"));
        assert!(subject.contains(ip("2001:db8:0:7:ffff::9")), "the same /64");
        assert!(!subject.contains(ip("2001:db8:0:8::1")), "the next /64");
        let single = Network::parse("203.0.113.7").unwrap();
        assert!(single.contains(ip("203.0.113.7")));
        assert!(!single.contains(ip("203.0.113.8")));
    }

    #[test]
    fn the_longest_live_timeout_decides_and_expired_ones_hold_nobody() {
        let timeouts = [
            Timeout {
                network: Network::parse("198.51.100.0/24").unwrap(),
                expires_ms: 10_000,
            },
            Timeout {
                network: Network::parse("198.51.100.7").unwrap(),
                expires_ms: 60_500,
            },
        ];
        assert_eq!(seconds_left_for(&timeouts, ip("198.51.100.7"), 0), Some(61));
        assert_eq!(seconds_left_for(&timeouts, ip("198.51.100.8"), 0), Some(10));
        assert_eq!(
            seconds_left_for(&timeouts, ip("198.51.100.8"), 9_001),
            Some(1)
        );
        assert_eq!(
            seconds_left_for(&timeouts, ip("198.51.100.8"), 10_000),
            None
        );
        assert_eq!(seconds_left_for(&timeouts, ip("192.0.2.1"), 0), None);
        assert_eq!(matching(&timeouts, ip("198.51.100.7"), 20_000).len(), 1);
        assert_eq!(matching(&timeouts, ip("198.51.100.7"), 0).len(), 2);
    }

    /// The spec's pattern (horde-api) accepts only what `Network::parse` reads, so a client
    /// generated from the spec never sends an address the server refuses.
    #[test]
    fn the_spec_pattern_admits_only_what_parse_reads() {
        use horde_api::operations::{ADDRESS_PATTERN, NETWORK_PATTERN};
        let network = regex::Regex::new(NETWORK_PATTERN).unwrap();
        let address = regex::Regex::new(ADDRESS_PATTERN).unwrap();
        let good = [
            "203.0.113.7",
            "10.0.0.0/8",
            "198.51.100.0/24",
            "2001:db8::1",
            "2001:db8::/32",
            "fe80::1:2:3:4/64",
            "::",
            "1::",
            "1:2:3:4:5:6:7:8/128",
        ];
        for text in good {
            assert!(network.is_match(text), "{text}");
            assert!(Network::parse(text).is_ok(), "{text}");
        }
        let bad = [
            "0000000",
            "10.0.0.256",
            "10.0.0.0/7",
            "10.0.0.0/33",
            "2001:db8::/31",
            "1.2.3.4 ",
            "::1::2",
            "01.2.3.4.5",
            "1:2:3:4:5:6:7:8:9",
        ];
        for text in bad {
            assert!(!network.is_match(text), "{text}");
        }
        assert!(address.is_match("2001:db8::1") && !address.is_match("10.0.0.0/8"));
        assert!(Network::parse_address("2001:db8::1").is_ok());
        assert!(Network::parse_address(" 2001:db8::1").is_err());
        assert!(Network::parse_address("10.0.0.0/8").is_err());
    }

    #[test]
    fn suspicion_times_out_for_longer_each_time() {
        let minutes: Vec<u64> = (0..4).map(suspicion_timeout_minutes).collect();
        assert_eq!(minutes, [3, 9, 15, 21]);
        assert_eq!(suspicion_timeout_minutes(10_000), 24 * 60);
    }

    #[test]
    fn the_refusal_is_the_public_one_and_hides_very_long_timeouts() {
        let short = TimedOut { seconds_left: 180 };
        assert_eq!(short.rc(), Rc::TimeoutIP);
        assert!(short.message().contains("for 180 more seconds"));
        let long = TimedOut {
            seconds_left: SAY_SECONDS_UP_TO + 1,
        };
        assert!(!long.message().contains("seconds"));
    }
}
