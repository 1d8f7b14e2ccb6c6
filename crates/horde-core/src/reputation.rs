//! A worker's reputation: what it finished, what it dropped, how fast it was, and how much the
//! coordinator suspects it.
//!
//! Two separate judgements come out of the ledger. *Reliability* (a smoothed share of jobs
//! finished) steers routing: when several waiting workers could take a request, the most reliable
//! gets the highest-priority one (see [`crate::routing`]). *Suspicion* counts evidence of bad
//! faith or broken hardware (impossible speeds, wrong or undecodable images, long runs of faults);
//! at the configured threshold the worker gets no jobs until a moderator clears it. Cancelled jobs
//! are counted but judge nothing: the requester, not the worker, stopped them.

use serde::{Deserialize, Serialize};

/// Reliability of a worker with no history: the prior is four successes and one failure, so a
/// new worker starts at 0.8 and a few results move it quickly.
const PRIOR_SUCCESSES: f64 = 4.0;
const PRIOR_FAILURES: f64 = 1.0;

/// Weight of the newest job in the recent speed (an exponential moving average).
const RECENT_SPEED_WEIGHT: f64 = 0.3;

/// Suspicion entries remembered with their reasons; the score keeps counting past this.
const REMEMBERED_SUSPICIONS: usize = 20;

/// Why a worker is suspected. Each event adds one to its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuspicionReason {
    /// Finished a job faster than any real hardware could (the public horde's UNREASONABLY_FAST).
    UnreasonablyFast,
    /// Sent an image whose size is not the one the job asked for.
    WrongImageSize,
    /// Sent bytes that do not decode as an image.
    UndecodableImage,
    /// Reported this many jobs faulted in a row without finishing one.
    RepeatedFaults,
}

/// One suspicion event, kept for moderators and the worker's owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suspicion {
    pub reason: SuspicionReason,
    /// Unix seconds.
    pub at: i64,
}

/// The thresholds that turn a ledger into judgements (from the coordinator's config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReputationRules {
    /// Megapixelsteps per second above which a job's speed counts as impossible.
    pub max_plausible_mps: f64,
    /// Jobs reported faulted in a row that add one suspicion.
    pub fault_streak_limit: u32,
    /// Suspicion at which a worker stops getting jobs.
    pub suspicion_threshold: u32,
}

/// Tokens a second above which a text job's speed counts as impossible (the public horde's).
pub const MAX_PLAUSIBLE_TOKENS_PER_SEC: f64 = 150.0;

impl ReputationRules {
    /// These rules for a text worker, whose speed is in tokens a second.
    pub fn for_text(self) -> ReputationRules {
        ReputationRules {
            max_plausible_mps: MAX_PLAUSIBLE_TOKENS_PER_SEC,
            ..self
        }
    }
}

impl Default for ReputationRules {
    /// The public horde's numbers: 20 MPS/s is unreasonably fast, 5 suspicions pause a worker.
    fn default() -> Self {
        ReputationRules {
            max_plausible_mps: 20.0,
            fault_streak_limit: 5,
            suspicion_threshold: 5,
        }
    }
}

/// A worker's persisted record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reputation {
    pub completed: u64,
    pub faulted: u64,
    pub timed_out: u64,
    pub cancelled: u64,
    /// Megapixelsteps of the completed jobs.
    pub megapixelsteps: f64,
    /// Seconds between pop and submit, summed over the completed jobs.
    pub busy_secs: f64,
    /// Speed of the last few jobs (megapixelsteps per second), for deadlines.
    pub recent_speed_mps: Option<f64>,
    /// Jobs reported faulted since the last completed job.
    pub fault_streak: u32,
    pub suspicion: u32,
    /// The latest suspicion events, newest last.
    pub suspicions: Vec<Suspicion>,
    /// The stored version this copy was read at or last written as: a write is made only over
    /// that version, so coordinators sharing a database never overwrite each other's counts.
    pub version: u64,
    /// Requesters' ratings of its images, one voice per requester (`crate::ratings`).
    pub rating: crate::ratings::RatingSummary,
}

impl Reputation {
    /// Smoothed share of judged jobs (completed, faulted, timed out) that were completed, in
    /// (0, 1), moved by the requesters' ratings (`crate::ratings::rated_reliability`).
    pub fn reliability(&self) -> f64 {
        crate::ratings::rated_reliability(self.completion(), &self.rating)
    }

    /// Smoothed share of judged jobs that were completed, before ratings.
    pub fn completion(&self) -> f64 {
        let successes = self.completed as f64 + PRIOR_SUCCESSES;
        let failures = (self.faulted + self.timed_out) as f64 + PRIOR_FAILURES;
        successes / (successes + failures)
    }

    /// Average speed over all completed jobs, in megapixelsteps per second.
    pub fn average_speed_mps(&self) -> f64 {
        if self.busy_secs > 0.0 {
            self.megapixelsteps / self.busy_secs
        } else {
            0.0
        }
    }

    /// Whether the worker is suspended: it gets no jobs until a moderator clears it.
    pub fn is_suspended(&self, rules: &ReputationRules) -> bool {
        rules.suspicion_threshold > 0 && self.suspicion >= rules.suspicion_threshold
    }

    /// Records a completed job of `megapixelsteps` that took `secs` from pop to submit.
    /// Returns the suspicion it raised, if any.
    pub fn record_completed(
        &mut self,
        megapixelsteps: f64,
        secs: f64,
        now: i64,
        rules: &ReputationRules,
    ) -> Option<SuspicionReason> {
        // Submissions are timed in whole seconds, as the public horde times them.
        let secs = secs.max(1.0);
        let speed = megapixelsteps / secs;
        self.completed += 1;
        self.megapixelsteps += megapixelsteps;
        self.busy_secs += secs;
        self.fault_streak = 0;
        self.recent_speed_mps = Some(match self.recent_speed_mps {
            Some(recent) => (1.0 - RECENT_SPEED_WEIGHT) * recent + RECENT_SPEED_WEIGHT * speed,
            None => speed,
        });
        (speed > rules.max_plausible_mps).then(|| {
            self.suspect(SuspicionReason::UnreasonablyFast, now);
            SuspicionReason::UnreasonablyFast
        })
    }

    /// Records a job the worker itself reported faulted. A run of them raises suspicion.
    pub fn record_faulted(&mut self, now: i64, rules: &ReputationRules) -> Option<SuspicionReason> {
        self.faulted += 1;
        self.count_failure(now, rules)
    }

    /// Records a job taken back because its deadline passed. It lowers reliability but raises
    /// no suspicion: a slow or overloaded machine, or a network fault, is not bad faith.
    pub fn record_timed_out(&mut self) {
        self.timed_out += 1;
    }

    /// Records a job in flight whose request the requester cancelled.
    pub fn record_cancelled(&mut self) {
        self.cancelled += 1;
    }

    fn count_failure(&mut self, now: i64, rules: &ReputationRules) -> Option<SuspicionReason> {
        self.fault_streak += 1;
        if rules.fault_streak_limit > 0 && self.fault_streak >= rules.fault_streak_limit {
            self.fault_streak = 0;
            self.suspect(SuspicionReason::RepeatedFaults, now);
            return Some(SuspicionReason::RepeatedFaults);
        }
        None
    }

    /// Adds one suspicion.
    pub fn suspect(&mut self, reason: SuspicionReason, now: i64) {
        self.suspicion += 1;
        self.suspicions.push(Suspicion { reason, at: now });
        if self.suspicions.len() > REMEMBERED_SUSPICIONS {
            self.suspicions.remove(0);
        }
    }

    /// A moderator's clearance: suspicion back to zero, the record of jobs kept.
    pub fn clear_suspicion(&mut self) {
        self.suspicion = 0;
        self.suspicions.clear();
        self.fault_streak = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: ReputationRules = ReputationRules {
        max_plausible_mps: 20.0,
        fault_streak_limit: 3,
        suspicion_threshold: 2,
    };

    #[test]
    fn reliability_starts_at_the_prior_and_follows_the_record() {
        let mut r = Reputation::default();
        assert!((r.reliability() - 0.8).abs() < 1e-12);
        for _ in 0..10 {
            r.record_completed(1.0, 10.0, 0, &RULES);
        }
        let good = r.reliability();
        assert!(good > 0.9, "{good}");
        r.record_faulted(0, &RULES);
        r.record_timed_out();
        assert!(r.reliability() < good);
        let before = r.reliability();
        r.record_cancelled();
        assert_eq!(r.reliability(), before, "cancels judge nothing");
        assert_eq!(
            (r.completed, r.faulted, r.timed_out, r.cancelled),
            (10, 1, 1, 1)
        );
    }

    #[test]
    fn speeds_average_over_busy_time_and_impossible_ones_are_suspected() {
        let mut r = Reputation::default();
        assert_eq!(r.record_completed(4.0, 2.0, 0, &RULES), None);
        assert_eq!(r.record_completed(2.0, 2.0, 0, &RULES), None);
        assert!((r.average_speed_mps() - 1.5).abs() < 1e-12);
        let recent = r.recent_speed_mps.unwrap();
        assert!((recent - (0.7 * 2.0 + 0.3 * 1.0)).abs() < 1e-12, "{recent}");
        // 50 megapixelsteps "in" 0.1 s is timed as one second: still 50 MPS/s.
        assert_eq!(
            r.record_completed(50.0, 0.1, 7, &RULES),
            Some(SuspicionReason::UnreasonablyFast)
        );
        assert_eq!(r.suspicion, 1);
        assert_eq!(r.suspicions[0].at, 7);
    }

    #[test]
    fn a_run_of_faults_raises_suspicion_and_suspends_at_the_threshold() {
        let mut r = Reputation::default();
        assert_eq!(r.record_faulted(0, &RULES), None);
        r.record_completed(1.0, 10.0, 0, &RULES);
        assert_eq!(r.fault_streak, 0, "a finished job breaks the run");
        let mut raised = vec![];
        for _ in 0..6 {
            raised.extend(r.record_faulted(0, &RULES));
            r.record_timed_out(); // timeouts neither add to the run nor break it
        }
        assert_eq!(raised, vec![SuspicionReason::RepeatedFaults; 2]);
        assert!(r.is_suspended(&RULES));
        r.clear_suspicion();
        assert!(!r.is_suspended(&RULES));
        assert_eq!(
            (r.faulted, r.timed_out),
            (7, 6),
            "clearing keeps the record"
        );
    }

    #[test]
    fn only_the_latest_suspicions_are_remembered_but_all_count() {
        let mut r = Reputation::default();
        for at in 0..30 {
            r.suspect(SuspicionReason::WrongImageSize, at);
        }
        assert_eq!(r.suspicion, 30);
        assert_eq!(r.suspicions.len(), REMEMBERED_SUSPICIONS);
        assert_eq!(r.suspicions.last().unwrap().at, 29);
        let never = ReputationRules {
            suspicion_threshold: 0,
            ..RULES
        };
        assert!(!r.is_suspended(&never), "threshold 0 turns suspension off");
    }
}
