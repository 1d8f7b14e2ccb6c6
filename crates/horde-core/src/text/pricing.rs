//! The public horde's text kudos (horde-api.md §5.2): a job's price grows with the tokens it
//! asks for, the model's size (its parameter count, from the text model reference) and, faster
//! than linearly, the context it needs. The worker is paid for the tokens it delivered, at a
//! lower rate, and less again when its backend is not one the horde validated.

/// What a request naming no model is priced as: a 13B model.
pub const UNNAMED_MODEL_MULTIPLIER: f64 = 13.0;
/// What a trusted worker serving a model the reference does not know is paid as: 2.7B.
pub const TRUSTED_UNKNOWN_MODEL_MULTIPLIER: f64 = 2.7;
/// The share of its reward a worker on a non-validated backend gets.
pub const NON_VALIDATED_REWARD_SHARE: f64 = 0.3;
/// The horde's fee on each delivered text (the public horde's `horde_tax`).
pub const REQUEST_FEE: f64 = 1.0;
/// The fewest tokens a delivered text is paid for.
pub const MIN_REWARDED_TOKENS: f64 = 20.0;

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `clamp(1.2 + 2.2^(log2(max_context_length / 1024)), 0.1, 30)`: 2.2 at 1024 tokens of
/// context, 3.4 at 2048, 6.04 at 4096.
pub fn context_multiplier(max_context_length: u32) -> f64 {
    let doublings = (f64::from(max_context_length) / 1024.0).log2();
    (1.2 + 2.2f64.powf(doublings)).clamp(0.1, 30.0)
}

/// `(max(multiplier, 13) / 13)^0.2`: models above 13B cost a little more than their size.
pub fn parameter_bonus(model_multiplier: f64) -> f64 {
    (model_multiplier.max(13.0) / 13.0).powf(0.2)
}

/// The multiplier a request is priced with: its first model's (the public horde prices by
/// the first), [`UNNAMED_MODEL_MULTIPLIER`] when it names none. `multiplier_of` is the
/// reference's (`TextModelReference::multiplier`: 1 for an unknown model).
pub fn request_multiplier(models: &[String], multiplier_of: impl Fn(&str) -> f64) -> f64 {
    models
        .first()
        .map_or(UNNAMED_MODEL_MULTIPLIER, |model| multiplier_of(model))
}

/// The kudos basis of one job:
/// `round(max_length × parameter_bonus × multiplier × context_multiplier / 100, 2)`.
pub fn job_kudos(max_length: u32, max_context_length: u32, model_multiplier: f64) -> f64 {
    round2(
        f64::from(max_length)
            * parameter_bonus(model_multiplier)
            * model_multiplier
            * context_multiplier(max_context_length)
            / 100.0,
    )
}

/// What the requester pays for one delivered job: its basis and the horde's fee.
pub fn requester_charge(job_kudos: f64) -> f64 {
    job_kudos + REQUEST_FEE
}

/// The public horde's token estimate of a text: a quarter of its characters.
pub fn estimated_tokens(text: &str) -> f64 {
    (text.chars().count() / 4) as f64
}

/// What a worker's delivered text was made with, for its reward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardTerms {
    /// The multiplier of the model it ran, `None` when the reference does not know it.
    pub known_multiplier: Option<f64>,
    pub max_context_length: u32,
    /// The worker's owner is trusted.
    pub trusted: bool,
    /// Its bridge is one of the horde's validated backends.
    pub validated_backend: bool,
}

/// A worker's reward for delivering `text`: the job's formula on the tokens it delivered (at
/// least [`MIN_REWARDED_TOKENS`]) over 125 instead of 100; an unknown model is paid as 1B,
/// or as 2.7B to a trusted worker; a non-validated backend gets
/// [`NON_VALIDATED_REWARD_SHARE`] of it.
pub fn worker_reward(text: &str, terms: &RewardTerms) -> f64 {
    let tokens = estimated_tokens(text).max(MIN_REWARDED_TOKENS);
    let multiplier = match (terms.known_multiplier, terms.trusted) {
        (Some(known), _) => known,
        (None, true) => TRUSTED_UNKNOWN_MODEL_MULTIPLIER,
        (None, false) => 1.0,
    };
    let reward = round2(
        tokens
            * parameter_bonus(multiplier)
            * multiplier
            * context_multiplier(terms.max_context_length)
            / 125.0,
    );
    if terms.validated_backend {
        reward
    } else {
        round2(reward * NON_VALIDATED_REWARD_SHARE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_multiplier_grows_faster_than_the_context() {
        assert!((context_multiplier(1024) - 2.2).abs() < 1e-12);
        assert!((context_multiplier(2048) - 3.4).abs() < 1e-12);
        assert!((context_multiplier(4096) - 6.04).abs() < 1e-12);
        // 80 tokens: 1.2 + 2.2^log2(80/1024) = 1.2 + 0.05502.
        assert!((context_multiplier(80) - 1.255_02).abs() < 1e-4);
        // 1.2 + 2.2^10 is far over the cap.
        assert_eq!(context_multiplier(1_048_576), 30.0);
    }

    #[test]
    fn a_job_is_priced_by_length_model_size_and_context() {
        // 13B: no bonus. 80 × 13 × 3.4 / 100.
        assert_eq!(job_kudos(80, 2048, 13.0), 35.36);
        // Below 13B there is no bonus either: 80 × 7 × 3.4 / 100.
        assert_eq!(job_kudos(80, 2048, 7.0), 19.04);
        // 70B: bonus (70/13)^0.2 = 1.40033; 80 × 1.40033 × 70 × 3.4 / 100 = 266.62.
        assert_eq!(job_kudos(80, 2048, 70.0), 266.62);
        // Twice the tokens, twice the price; twice the context, more than 1.5 times.
        assert_eq!(job_kudos(160, 2048, 7.0), 38.08);
        assert!(job_kudos(80, 4096, 7.0) > 1.5 * job_kudos(80, 2048, 7.0));
        assert_eq!(requester_charge(19.04), 20.04);
    }

    #[test]
    fn a_request_is_priced_by_its_first_model_or_as_13b() {
        let of = |m: &str| if m == "big" { 70.0 } else { 3.0 };
        assert_eq!(request_multiplier(&["small".into(), "big".into()], of), 3.0);
        assert_eq!(request_multiplier(&["big".into()], of), 70.0);
        assert_eq!(request_multiplier(&[], of), UNNAMED_MODEL_MULTIPLIER);
    }

    #[test]
    fn a_worker_is_paid_for_what_it_delivered() {
        let terms = RewardTerms {
            known_multiplier: Some(13.0),
            max_context_length: 2048,
            trusted: false,
            validated_backend: true,
        };
        // 400 characters: 100 tokens × 13 × 3.4 / 125 = 35.36.
        assert_eq!(worker_reward(&"a".repeat(400), &terms), 35.36);
        // A short text is paid as 20 tokens: 20 × 13 × 3.4 / 125 = 7.07 (7.072).
        assert_eq!(worker_reward("hi", &terms), 7.07);
        let unvalidated = RewardTerms {
            validated_backend: false,
            ..terms
        };
        assert_eq!(worker_reward(&"a".repeat(400), &unvalidated), 10.61);
        let unknown = RewardTerms {
            known_multiplier: None,
            ..terms
        };
        // 100 × 1 × 3.4 / 125 = 2.72; trusted: as 2.7B, 7.34 (7.344).
        assert_eq!(worker_reward(&"a".repeat(400), &unknown), 2.72);
        let trusted = RewardTerms {
            trusted: true,
            ..unknown
        };
        assert_eq!(worker_reward(&"a".repeat(400), &trusted), 7.34);
    }
}
