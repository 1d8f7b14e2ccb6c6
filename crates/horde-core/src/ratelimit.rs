//! Rate limits: fixed windows per key, as the public horde's Flask-Limiter counts them.
//!
//! The policy (which endpoint gets which limit, keyed by what) is data in [`Limit`]; the counter
//! is [`FixedWindows`], which takes `now` in milliseconds so tests control time.

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

/// The answer of a check: allowed (with what is left), or refused until the window ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Milliseconds until the window resets.
    pub reset_in_ms: u64,
}

/// Counters of fixed windows, by key.
#[derive(Debug, Default)]
pub struct FixedWindows {
    /// key → (end of its current window in ms, hits in it)
    counters: HashMap<String, (u64, u32)>,
    last_prune_ms: u64,
}

impl FixedWindows {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one hit on `key` and says whether it is within `limit`.
    pub fn hit(&mut self, key: &str, limit: Limit, now_ms: u64) -> Verdict {
        self.prune(now_ms);
        let window_end = (now_ms / limit.window_ms + 1) * limit.window_ms;
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn keys_are_counted_apart() {
        let mut windows = FixedWindows::new();
        let limit = Limit::per_minute(1);
        assert!(windows.hit("a", limit, 0).allowed);
        assert!(windows.hit("b", limit, 0).allowed);
        assert!(!windows.hit("a", limit, 1).allowed);
    }

    #[test]
    fn describes_limits_as_flask_limiter_does() {
        assert_eq!(Limit::per_second(2).describe(), "2 per 1 second");
        assert_eq!(Limit::per_minute(10).describe(), "10 per 1 minute");
    }
}
