//! Waiting for a request's end: `GET /generate/check/{id}?wait=SECONDS` and
//! `/generate/status/{id}?wait=SECONDS` answer as soon as the request is done, faulted or
//! cancelled, or when the time is up (then as it stands), instead of the client polling.
//!
//! A waiting client costs memory, not CPU: it watches its request's change signal
//! (`LiveRequests::watch`), which the live requests send on every change of that request, and
//! looks at the request only when woken. The number of waiters is bounded
//! (`api.max_waiters`); past it, and while the coordinator shuts down, the answer comes at
//! once. A wait is one call for the rate limits, counted when it arrives, as any check.

use crate::error::{ApiError, ApiResult};
use crate::live_requests::{Watcher, Woken};
use crate::state::AppState;
use horde_api::image::{RequestStatus, RequestStatusCheck};
use horde_api::ErrorBody;
use horde_core::request::LiveRequest;
use horde_core::Image;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// The longest wait, in seconds; a longer one is clamped to it and the answer says so in
/// [`CLAMPED_HEADER`].
pub const MAX_WAIT_SECS: u64 = 60;

/// The header of an answer whose `wait` was clamped: the seconds actually waited at most.
pub const CLAMPED_HEADER: &str = "x-horde-wait-clamped";

/// `?wait=` as read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wait {
    /// How long to wait at most.
    pub duration: Duration,
    /// Whether the client asked for more than [`MAX_WAIT_SECS`].
    pub clamped: bool,
}

impl Wait {
    /// No wait: the answer as it stands (no `wait`, or `wait=0`).
    pub const NONE: Wait = Wait {
        duration: Duration::ZERO,
        clamped: false,
    };

    /// Reads `wait`: seconds, a whole or decimal number (`30`, `2.5`), 0 or more; above
    /// [`MAX_WAIT_SECS`] it is clamped. Anything else is 400 with the AI Horde validation body.
    pub fn parse(raw: Option<&str>) -> ApiResult<Wait> {
        let Some(raw) = raw else {
            return Ok(Wait::NONE);
        };
        let secs: f64 = raw
            .trim()
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| invalid_wait(raw))?;
        let max = MAX_WAIT_SECS as f64;
        Ok(Wait {
            duration: Duration::from_secs_f64(secs.min(max)),
            clamped: secs > max,
        })
    }
}

fn invalid_wait(raw: &str) -> ApiError {
    let reason = format!(
        "wait must be a number of seconds from 0 to {MAX_WAIT_SECS} (larger ones are clamped); got '{}'",
        raw.chars().take(40).collect::<String>()
    );
    ApiError::validation(ErrorBody::validation(BTreeMap::from([(
        "wait".to_string(),
        reason,
    )])))
}

/// Whether nothing more will happen to `request` that a waiting client waits for.
pub(crate) fn is_over(request: &LiveRequest<Image>) -> bool {
    request.is_done() || request.faulted || request.cancelled
}

impl AppState {
    /// `GET /generate/check/{id}?wait=`: the light status once the request is over or the
    /// wait is up.
    pub async fn check_request_waiting(
        &self,
        id: &str,
        wait: Wait,
    ) -> ApiResult<RequestStatusCheck> {
        self.wait_until_over(id, wait.duration).await?;
        self.check_request(id).await
    }

    /// `GET /generate/status/{id}?wait=`: the full status once the request is over or the
    /// wait is up.
    pub async fn request_status_waiting(&self, id: &str, wait: Wait) -> ApiResult<RequestStatus> {
        self.wait_until_over(id, wait.duration).await?;
        self.request_status(id).await
    }

    /// Returns when request `id` is over (or not live: the status then says 404), when `wait`
    /// has passed, at once when too many clients wait already, and when the coordinator shuts
    /// down.
    async fn wait_until_over(&self, id: &str, wait: Duration) -> ApiResult<()> {
        let Ok(id) = Uuid::parse_str(id) else {
            return Ok(());
        };
        if wait.is_zero() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + wait;
        self.load_request::<Image>(id).await?;
        let max = self.config.api.max_waiters;
        // Watching before looking: a change after the look wakes the watch.
        let Some(mut watch) = self.live.watch(id, Watcher::Wait, max) else {
            return Ok(());
        };
        loop {
            let over = self.live.read(|queue| queue.get(id).is_none_or(is_over));
            if over || watch.next_change(deadline).await != Woken::Changed {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: Option<&str>, expected: Option<(f64, bool)>) {
        let got = Wait::parse(raw)
            .ok()
            .map(|w| (w.duration.as_secs_f64(), w.clamped));
        assert_eq!(got, expected, "wait={raw:?}");
    }

    #[test]
    fn a_wait_is_whole_or_decimal_seconds_up_to_a_minute() {
        check(None, Some((0.0, false)));
        check(Some("0"), Some((0.0, false)));
        check(Some("30"), Some((30.0, false)));
        check(Some("2.5"), Some((2.5, false)));
        check(Some("60"), Some((60.0, false)));
    }

    #[test]
    fn a_longer_wait_is_clamped_and_says_so() {
        check(Some("61"), Some((60.0, true)));
        check(Some("1e9"), Some((60.0, true)));
    }

    #[test]
    fn a_negative_or_non_numeric_wait_is_refused() {
        for raw in ["-1", "abc", "", "NaN", "inf", "10s"] {
            check(Some(raw), None);
        }
        let error = Wait::parse(Some("-1")).unwrap_err();
        assert_eq!(error.status.as_u16(), 400);
        assert!(error.body.errors.unwrap().contains_key("wait"));
    }
}
