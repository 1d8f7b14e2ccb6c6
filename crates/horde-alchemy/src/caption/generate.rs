//! The decoding loop of the `caption` form, as the horde's BLIP runs transformers' `generate`.
//!
//! The horde's worker calls BLIP's `generate(image, sample=True, num_beams=7, min_length=…,
//! max_length=…, top_p=…, repetition_penalty=…)`; BLIP's code then samples with
//! `repetition_penalty=1.1` whatever the payload says (the payload's penalty only reaches its
//! beam search) and transformers adds its default `top_k=50`. Each step here applies
//! transformers' logits processors in transformers' order: `RepetitionPenaltyLogitsProcessor`
//! (every id so far, the prompt's included), `MinLengthLogitsProcessor` (no `[SEP]` before
//! `min_length` ids), then for sampling `TopKLogitsWarper` and `TopPLogitsWarper`; the next id is
//! the arg-max, or drawn from the softmax by the inverse of its CDF at a uniform draw (the
//! distribution `torch.multinomial` draws from). Lengths count the prompt's ids, as
//! `max_length` and `min_length` do in transformers. Beam search (`sample: false` with beams)
//! is not implemented: without sampling the loop is greedy.

use super::CaptionError;

/// The settings of one caption.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionSettings {
    /// The decoder's prompt, cut from the decoded text afterwards.
    pub prompt: String,
    /// No `[SEP]` before this many ids (the prompt's included).
    pub min_length: usize,
    /// At most this many ids (the prompt's included).
    pub max_length: usize,
    /// Nucleus sampling (the horde's way); greedy decoding when false.
    pub sample: bool,
    pub top_k: usize,
    pub top_p: f64,
    pub repetition_penalty: f64,
    /// Seeds the sampler's uniform draws.
    pub seed: u64,
}

impl Default for CaptionSettings {
    /// The horde's defaults for a form without a payload.
    fn default() -> Self {
        Self {
            prompt: "a picture of ".into(),
            min_length: 20,
            max_length: 50,
            sample: true,
            top_k: 50,
            top_p: 0.9,
            repetition_penalty: 1.1,
            seed: 0,
        }
    }
}

/// Reads an optional unsigned integer field of the payload.
fn payload_usize(
    payload: &serde_json::Value,
    field: &'static str,
) -> Result<Option<usize>, CaptionError> {
    match payload.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(|v| Some(v as usize))
            .ok_or(CaptionError::Setting {
                field,
                message: format!("{value} is not a non-negative integer"),
            }),
    }
}

impl CaptionSettings {
    /// The horde worker's reading of a `caption` form's payload: `min_length` (default 20),
    /// `max_length` (default `min_length + 30`), `top_p` (default 0.9); `num_beams` and
    /// `repetition_penalty` are read by the horde but unused when sampling, so ignored here.
    pub fn horde(payload: &serde_json::Value, seed: u64) -> Result<Self, CaptionError> {
        let min_length = payload_usize(payload, "min_length")?.unwrap_or(20);
        let max_length = payload_usize(payload, "max_length")?.unwrap_or(min_length + 30);
        let top_p = match payload.get("top_p") {
            None | Some(serde_json::Value::Null) => 0.9,
            Some(v) => v.as_f64().ok_or(CaptionError::Setting {
                field: "top_p",
                message: format!("{v} is not a number"),
            })?,
        };
        Ok(Self {
            min_length,
            max_length,
            top_p,
            seed,
            ..Self::default()
        })
    }

    /// Refuses settings the model cannot run.
    pub fn check(&self, max_positions: usize) -> Result<(), CaptionError> {
        let fail = |field, message: String| Err(CaptionError::Setting { field, message });
        if self.max_length > max_positions {
            return fail(
                "max_length",
                format!(
                    "{} exceeds the model's {max_positions} positions",
                    self.max_length
                ),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return fail("top_p", format!("{} is not in (0, 1]", self.top_p));
        }
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return fail(
                "repetition_penalty",
                format!("{} is not positive", self.repetition_penalty),
            );
        }
        Ok(())
    }
}

/// A source of uniform draws in [0, 1) for the sampler.
pub trait Draws {
    fn next_uniform(&mut self) -> f64;
}

/// Uniform draws from a seed (SplitMix64, 53-bit mantissas).
#[derive(Debug, Clone)]
pub struct SeededDraws(u64);

impl SeededDraws {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl Draws for SeededDraws {
    fn next_uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Recorded draws, in order (the fixtures' reference draws).
impl Draws for std::vec::IntoIter<f64> {
    fn next_uniform(&mut self) -> f64 {
        self.next().expect("enough recorded draws")
    }
}

/// `RepetitionPenaltyLogitsProcessor`: every id seen so far made less likely.
pub fn repetition_penalty(scores: &mut [f64], ids: &[u32], penalty: f64) {
    let mut seen = ids.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for &id in &seen {
        if let Some(s) = scores.get_mut(id as usize) {
            *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
        }
    }
}

/// `TopKLogitsWarper`: scores below the k-th largest removed.
pub fn top_k(scores: &mut [f64], k: usize) {
    let k = k.clamp(1, scores.len());
    let mut sorted = scores.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let threshold = sorted[k - 1];
    scores
        .iter_mut()
        .filter(|s| **s < threshold)
        .for_each(|s| *s = f64::NEG_INFINITY);
}

/// The softmax of scores (removed ones at −∞ get 0).
pub fn softmax(scores: &[f64]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.iter().map(|e| e / total).collect()
}

/// `TopPLogitsWarper`: in ascending order, the tokens whose cumulative probability stays at or
/// below `1 − top_p` removed (the most likely one always kept).
pub fn top_p(scores: &mut [f64], p: f64) {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let sorted: Vec<f64> = order.iter().map(|&i| scores[i]).collect();
    let probs = softmax(&sorted);
    let mut cumulative = 0.0;
    let last = order.len() - 1;
    for (rank, &index) in order.iter().enumerate() {
        cumulative += probs[rank];
        if rank < last && cumulative <= 1.0 - p {
            scores[index] = f64::NEG_INFINITY;
        }
    }
}

/// The id whose CDF interval holds `u` (`searchsorted(cdf, u, right=True)`).
pub fn inverse_cdf(probs: &[f64], u: f64) -> u32 {
    let mut cumulative = 0.0;
    let mut index = 0;
    for p in probs {
        cumulative += p;
        if cumulative <= u {
            index += 1;
        }
    }
    index.min(probs.len() - 1) as u32
}

/// The next id after `ids` from the step's logits.
fn next_id(
    logits: &[f32],
    ids: &[u32],
    eos: u32,
    settings: &CaptionSettings,
    draws: &mut dyn Draws,
) -> u32 {
    let mut scores: Vec<f64> = logits.iter().map(|&l| f64::from(l)).collect();
    repetition_penalty(&mut scores, ids, settings.repetition_penalty);
    if ids.len() < settings.min_length {
        if let Some(s) = scores.get_mut(eos as usize) {
            *s = f64::NEG_INFINITY;
        }
    }
    if !settings.sample {
        let best = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)));
        return best.map_or(0, |(i, _)| i as u32);
    }
    top_k(&mut scores, settings.top_k);
    if settings.top_p < 1.0 {
        top_p(&mut scores, settings.top_p);
    }
    inverse_cdf(&softmax(&scores), draws.next_uniform())
}

/// Runs the loop from `prefix`: `step` gets the ids not yet fed to the decoder (the whole
/// prefix first, then one id at a time, the decoder keeping its cache) and returns the last
/// position's logits. Stops after `[SEP]` (`eos`) or at `max_length` ids.
pub fn run(
    prefix: Vec<u32>,
    eos: u32,
    settings: &CaptionSettings,
    mut step: impl FnMut(&[u32]) -> Result<Vec<f32>, CaptionError>,
    draws: &mut dyn Draws,
) -> Result<Vec<u32>, CaptionError> {
    let mut ids = prefix;
    let mut fed = 0;
    while ids.len() < settings.max_length {
        let logits = step(&ids[fed..])?;
        fed = ids.len();
        let id = next_id(&logits, &ids, eos, settings, draws);
        ids.push(id);
        if id == eos {
            break;
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_always_keeps_the_most_likely_token() {
        let mut scores = vec![1.0, 3.0, 2.0];
        top_p(&mut scores, 1e-9);
        assert_eq!(scores, vec![f64::NEG_INFINITY, 3.0, f64::NEG_INFINITY]);
    }

    #[test]
    fn top_k_keeps_ties_at_the_threshold() {
        let mut scores = vec![1.0, 3.0, 2.0, 2.0];
        top_k(&mut scores, 2);
        assert_eq!(scores, vec![f64::NEG_INFINITY, 3.0, 2.0, 2.0]);
    }

    #[test]
    fn the_inverse_cdf_picks_the_interval_holding_the_draw() {
        let probs = [0.25, 0.0, 0.5, 0.25];
        assert_eq!(inverse_cdf(&probs, 0.0), 0);
        assert_eq!(
            inverse_cdf(&probs, 0.25),
            2,
            "a boundary belongs to the next interval"
        );
        assert_eq!(inverse_cdf(&probs, 0.74), 2);
        assert_eq!(inverse_cdf(&probs, 0.999), 3);
    }

    #[test]
    fn the_penalty_divides_positive_and_multiplies_negative_scores_once_per_id() {
        let mut scores = vec![2.0, -2.0, 2.0];
        repetition_penalty(&mut scores, &[0, 1, 1, 0], 2.0);
        assert_eq!(scores, vec![1.0, -4.0, 2.0]);
    }

    #[test]
    fn no_end_before_the_minimum_length() {
        let settings = CaptionSettings {
            sample: false,
            min_length: 3,
            max_length: 4,
            ..CaptionSettings::default()
        };
        let mut draws = SeededDraws::new(1);
        // The end id (0) is always the most likely: it may only come once 3 ids exist.
        let ids = run(
            vec![5, 6],
            0,
            &settings,
            |_| Ok(vec![9.0, 1.0, 2.0]),
            &mut draws,
        )
        .unwrap();
        assert_eq!(ids, vec![5, 6, 2, 0]);
    }

    #[test]
    fn seeded_draws_are_uniform_in_the_unit_interval_and_repeatable() {
        let (mut a, mut b) = (SeededDraws::new(42), SeededDraws::new(42));
        let draws: Vec<f64> = (0..1000).map(|_| a.next_uniform()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let mean = draws.iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        assert_eq!(draws[0], b.next_uniform());
    }
}
