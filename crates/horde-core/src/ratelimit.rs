//! Rate limits: fixed windows per key, as the public horde's Flask-Limiter counts them.
//!
//! The policy (which endpoint gets which limit, keyed by what) is data in [`Limit`]; the counter
//! is [`FixedWindows`], which takes `now` in milliseconds so tests control time.
//!
//! Counters are keyed by route, never by the literal path: [`route_key`] puts the normalised
//! value of each path parameter into the route's template, so an id spelled with
//! percent-encoding counts against the same limit and no path, however long or new, adds more
//! than one short key. [`FixedWindows`] holds at most its capacity of keys.

use std::collections::HashMap;

/// `count` requests per `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: u32,
    pub window_ms: u64,
}

impl Limit {
    pub const fn per_second(count: u32) -> Limit {
        Limit {
            count,
            window_ms: 1000,
        }
    }
    pub const fn per_minute(count: u32) -> Limit {
        Limit {
            count,
            window_ms: 60_000,
        }
    }
    pub const fn per_hour(count: u32) -> Limit {
        Limit {
            count,
            window_ms: 3_600_000,
        }
    }

    /// The limit as Flask-Limiter words it in its 429 message, e.g. "2 per 1 second".
    pub fn describe(&self) -> String {
        let (amount, unit) = match self.window_ms {
            1000 => (1, "second"),
            60_000 => (1, "minute"),
            3_600_000 => (1, "hour"),
            ms => (ms / 1000, "second"),
        };
        format!("{} per {} {}", self.count, amount, unit)
    }
}

impl std::str::FromStr for Limit {
    type Err = String;

    /// Reads `"90/minute"`, `"2/second"`, `"90/hour"` (or Flask-Limiter's `"90 per 1 minute"`).
    fn from_str(text: &str) -> Result<Limit, String> {
        let normal = text.replace(" per 1 ", "/").replace(" per ", "/");
        let (count, unit) = normal
            .split_once('/')
            .ok_or_else(|| format!("'{text}' is not a limit like \"90/minute\""))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("'{text}': the count is not a whole number"))?;
        match unit.trim().trim_end_matches('s') {
            "second" => Ok(Limit::per_second(count)),
            "minute" => Ok(Limit::per_minute(count)),
            "hour" => Ok(Limit::per_hour(count)),
            "day" => Ok(Limit {
                count,
                window_ms: 86_400_000,
            }),
            other => Err(format!(
                "'{text}': unknown unit '{other}' (second, minute, hour, day)"
            )),
        }
    }
}

impl serde::Serialize for Limit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let unit = match self.window_ms {
            1000 => "second".to_string(),
            60_000 => "minute".to_string(),
            3_600_000 => "hour".to_string(),
            86_400_000 => "day".to_string(),
            ms => format!("{} seconds", ms / 1000),
        };
        s.serialize_str(&format!("{}/{unit}", self.count))
    }
}

impl<'de> serde::Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Limit, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The answer of a check: allowed (with what is left), or refused until the window ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Milliseconds until the window resets.
    pub reset_in_ms: u64,
}

/// Where the window of `limit` that holds `now_ms` starts (windows are aligned on multiples of
/// their length, so every coordinator counting the same key agrees on them).
pub fn window_start(limit: Limit, now_ms: u64) -> u64 {
    now_ms / limit.window_ms * limit.window_ms
}

/// The verdict on a hit that made `hits` in its window (counted elsewhere: in a database
/// shared by several coordinators). Hits past the limit are refused.
pub fn verdict_after(limit: Limit, hits: u64, now_ms: u64) -> Verdict {
    let reset_in_ms = window_start(limit, now_ms) + limit.window_ms - now_ms;
    let allowed = hits <= u64::from(limit.count);
    Verdict {
        allowed,
        limit: limit.count,
        remaining: if allowed {
            limit.count - hits as u32
        } else {
            0
        },
        reset_in_ms,
    }
}

/// The longest path parameter kept as it is in a key; longer (or odd) values share one key.
const MAX_KEPT_PARAMETER: usize = 64;

/// The key of a request to `path`, matched by the route `template` (e.g.
/// `/api/v2/generate/status/{id}`): the template with each `{parameter}` replaced by the
/// normalised value at its place in `path`. Values are percent-decoded; a UUID is written in its
/// canonical lower-case form; a value of up to 64 letters, digits, `-`, `_`, `.` or `#` is kept
/// (lower-cased); anything else becomes `~`, so that all odd values of one route share one
/// counter. A path that does not fit the template gives the template alone.
pub fn route_key(template: &str, path: &str) -> String {
    let wanted: Vec<&str> = template.split('/').collect();
    let given: Vec<&str> = path.split('/').collect();
    if wanted.len() != given.len() {
        return template.to_string();
    }
    wanted
        .iter()
        .zip(&given)
        .map(|(want, got)| {
            if want.starts_with('{') && want.ends_with('}') {
                normalised_parameter(got)
            } else {
                (*want).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn normalised_parameter(raw: &str) -> String {
    let Some(decoded) = percent_decoded(raw) else {
        return "~".into();
    };
    if let Ok(id) = uuid::Uuid::parse_str(&decoded) {
        return id.hyphenated().to_string();
    }
    let plain = decoded.len() <= MAX_KEPT_PARAMETER
        && decoded
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '#'));
    if plain && !decoded.is_empty() {
        decoded.to_ascii_lowercase()
    } else {
        "~".into()
    }
}

/// `%XX` sequences decoded; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decoded(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Counters of fixed windows, by key, at most `capacity` of them.
#[derive(Debug)]
pub struct FixedWindows {
    /// key → (end of its current window in ms, hits in it)
    counters: HashMap<String, (u64, u32)>,
    last_prune_ms: u64,
    capacity: usize,
}

impl Default for FixedWindows {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

/// Keys held by default: about 20 MB of counters.
pub const DEFAULT_CAPACITY: usize = 100_000;

impl FixedWindows {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters holding at most `capacity` keys (at least 16). When a new key finds them full,
    /// the ended windows are dropped, then, if that was not enough, the eighth of the keys
    /// whose windows end soonest: the counters closest to starting over anyway.
    pub fn with_capacity(capacity: usize) -> Self {
        FixedWindows {
            counters: HashMap::new(),
            last_prune_ms: 0,
            capacity: capacity.max(16),
        }
    }

    /// Counts one hit on `key` and says whether it is within `limit`.
    pub fn hit(&mut self, key: &str, limit: Limit, now_ms: u64) -> Verdict {
        self.prune(now_ms);
        if !self.counters.contains_key(key) && self.counters.len() >= self.capacity {
            self.make_room(now_ms);
        }
        let window_end = window_start(limit, now_ms) + limit.window_ms;
        let reset_in_ms = window_end - now_ms;
        let entry = self
            .counters
            .entry(key.to_string())
            .or_insert((window_end, 0));
        if entry.0 != window_end {
            *entry = (window_end, 0);
        }
        if entry.1 >= limit.count {
            return Verdict {
                allowed: false,
                limit: limit.count,
                remaining: 0,
                reset_in_ms,
            };
        }
        entry.1 += 1;
        Verdict {
            allowed: true,
            limit: limit.count,
            remaining: limit.count - entry.1,
            reset_in_ms,
        }
    }

    pub fn len(&self) -> usize {
        self.counters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// Forgets counters whose window has ended, at most once a minute.
    fn prune(&mut self, now_ms: u64) {
        if now_ms < self.last_prune_ms + 60_000 {
            return;
        }
        self.last_prune_ms = now_ms;
        self.counters
            .retain(|_, (window_end, _)| *window_end > now_ms);
    }

    /// Frees at least one place: ended windows first, then the keys whose windows end soonest.
    fn make_room(&mut self, now_ms: u64) {
        self.counters
            .retain(|_, (window_end, _)| *window_end > now_ms);
        if self.counters.len() < self.capacity {
            return;
        }
        let mut ends: Vec<u64> = self.counters.values().map(|(end, _)| *end).collect();
        let cut = (self.capacity / 8).max(1);
        let (_, threshold, _) = ends.select_nth_unstable(cut - 1);
        let threshold = *threshold;
        let mut evicted = 0;
        self.counters.retain(|_, (end, _)| {
            let keep = *end > threshold || evicted >= cut;
            if !keep {
                evicted += 1;
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_elsewhere_gives_the_same_verdicts_as_counting_here() {
        let limit: Limit = "3/second".parse().unwrap();
        let mut windows = FixedWindows::new();
        for (hits, now) in [(1, 1_000), (2, 1_200), (3, 1_999), (4, 1_999)] {
            assert_eq!(
                windows.hit("k", limit, now),
                verdict_after(limit, hits, now)
            );
        }
        assert_eq!(window_start(limit, 1_999), 1_000);
        assert_eq!(
            windows.hit("k", limit, 2_000),
            verdict_after(limit, 1, 2_000)
        );
    }

    #[test]
    fn allows_up_to_the_limit_within_a_window_then_resets() {
        let mut windows = FixedWindows::new();
        let limit = Limit::per_second(2);
        assert!(windows.hit("k", limit, 10_000).allowed);
        let second = windows.hit("k", limit, 10_500);
        assert!(second.allowed);
        assert_eq!(second.remaining, 0);
        let third = windows.hit("k", limit, 10_900);
        assert!(!third.allowed);
        assert_eq!(third.reset_in_ms, 100);
        assert!(windows.hit("k", limit, 11_000).allowed);
    }

    #[test]
    fn an_id_counts_against_one_key_however_it_is_spelled() {
        let template = "/api/v2/generate/status/{id}";
        let id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let plain = route_key(template, &format!("/api/v2/generate/status/{id}"));
        assert_eq!(plain, format!("/api/v2/generate/status/{id}"));
        for spelled in [
            "%30190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B",
            "0190a1b2c3d47e5f8a9b0c1d2e3f4a5b",
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5%62",
        ] {
            assert_eq!(
                route_key(template, &format!("/api/v2/generate/status/{spelled}")),
                plain,
                "{spelled}"
            );
        }
    }

    #[test]
    fn long_or_odd_parameters_share_one_short_key() {
        let template = "/api/v2/users/{id}";
        assert_eq!(route_key(template, "/api/v2/users/42"), "/api/v2/users/42");
        let long = "x".repeat(5000);
        for odd in [long.as_str(), "%zz", "a%2Fb", "%ff%fe", ""] {
            assert_eq!(
                route_key(template, &format!("/api/v2/users/{odd}")),
                "/api/v2/users/~",
                "{odd:?}"
            );
        }
        assert_eq!(route_key(template, "/api/v2/users/1/2"), template);
    }

    #[test]
    fn the_counters_never_hold_more_than_their_capacity_and_keep_the_newest_windows() {
        let mut windows = FixedWindows::with_capacity(1000);
        let minute = Limit::per_minute(1);
        assert!(windows.hit("long-lived", Limit::per_hour(1), 0).allowed);
        for i in 0..100_000u64 {
            windows.hit(&format!("k{i}"), minute, 1000 + i / 100);
            assert!(windows.len() <= 1000);
        }
        assert!(
            !windows.hit("long-lived", Limit::per_hour(1), 2000).allowed,
            "the hour-long window outlived the flood of minute-long ones"
        );
    }

    #[test]
    fn keys_are_counted_apart() {
        let mut windows = FixedWindows::new();
        let limit = Limit::per_minute(1);
        assert!(windows.hit("a", limit, 0).allowed);
        assert!(windows.hit("b", limit, 0).allowed);
        assert!(!windows.hit("a", limit, 1).allowed);
    }

    #[test]
    fn limits_read_and_write_as_operators_write_them() {
        assert_eq!("90/minute".parse::<Limit>(), Ok(Limit::per_minute(90)));
        assert_eq!("2 per 1 second".parse::<Limit>(), Ok(Limit::per_second(2)));
        assert_eq!("90/hours".parse::<Limit>(), Ok(Limit::per_hour(90)));
        assert!("lots/minute".parse::<Limit>().is_err());
        assert!("5/fortnight"
            .parse::<Limit>()
            .unwrap_err()
            .contains("fortnight"));
        let json = serde_json::to_string(&Limit::per_minute(30)).unwrap();
        assert_eq!(json, "\"30/minute\"");
        assert_eq!(
            serde_json::from_str::<Limit>(&json).unwrap(),
            Limit::per_minute(30)
        );
    }

    #[test]
    fn describes_limits_as_flask_limiter_does() {
        assert_eq!(Limit::per_second(2).describe(), "2 per 1 second");
        assert_eq!(Limit::per_minute(10).describe(), "10 per 1 minute");
    }
}
