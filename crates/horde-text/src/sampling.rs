//! The horde's text samplers: KoboldAI's (as KoboldCpp implements them, `gpttype_adapter.cpp`)
//! as pure functions over a list of candidates, applied in the request's `sampler_order`.
//!
//! Why KoboldCpp's definitions and not another library's: horde text requests come from Kobold
//! clients (KoboldAI Lite, SillyTavern's Horde mode) whose users tune these numbers against
//! KoboldCpp, the most common horde text worker. So each function follows its KoboldCpp
//! namesake, including the corners: top-p keeps the token that reaches `p`, tail-free cuts at
//! the first second-derivative mass *above* `z`, the repetition penalty divides positive and
//! multiplies non-positive logits and gives the older half of its window the reduced penalty
//! `1 + (rep_pen − 1) · rep_pen_slope`, min-p runs right after top-p, temperature 0 is greedy,
//! and a `dynatemp_range` replaces the temperature by the entropy-driven one. (KoboldCpp's other
//! samplers — mirostat, DRY, XTC, smoothing — are not horde parameters and are left out.) The
//! draw itself uses a seeded ChaCha generator (not KoboldCpp's `mt19937`), so a seed reproduces a
//! generation here, not KoboldCpp's.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One token still in the running: its id, its (possibly modified) logit and, after a
/// [`Candidates::softmax`], its probability among the candidates left.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub logit: f32,
    pub p: f32,
}

/// The candidates of one step; samplers remove tokens or change logits.
#[derive(Clone, Debug)]
pub struct Candidates {
    items: Vec<Candidate>,
    sorted: bool,
}

impl Candidates {
    /// Every token of the vocabulary, token `i` with `logits[i]`.
    pub fn from_logits(logits: &[f32]) -> Self {
        let items = logits
            .iter()
            .enumerate()
            .map(|(id, &logit)| Candidate {
                id: id as u32,
                logit,
                p: 0.0,
            })
            .collect();
        Self {
            items,
            sorted: false,
        }
    }

    pub fn items(&self) -> &[Candidate] {
        &self.items
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The ids left, in the current order.
    pub fn ids(&self) -> Vec<u32> {
        self.items.iter().map(|c| c.id).collect()
    }

    /// Sorts by logit, highest first, and sets each probability (KoboldCpp's `sample_softmax`).
    pub fn softmax(&mut self) {
        if !self.sorted {
            self.items.sort_by(|a, b| b.logit.total_cmp(&a.logit));
            self.sorted = true;
        }
        let Some(max) = self.items.first().map(|c| c.logit) else {
            return;
        };
        let mut sum = 0.0f32;
        for c in &mut self.items {
            c.p = (c.logit - max).exp();
            sum += c.p;
        }
        for c in &mut self.items {
            c.p /= sum;
        }
    }

    fn truncate(&mut self, len: usize) {
        self.items.truncate(len.max(1));
    }
}

/// Kobold's sampler numbering, as in `sampler_order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    TopK = 0,
    TopA = 1,
    TopP = 2,
    TailFree = 3,
    Typical = 4,
    Temperature = 5,
    RepetitionPenalty = 6,
}

/// KoboldAI's default order, `[6, 0, 1, 3, 4, 2, 5]`.
pub const DEFAULT_ORDER: [SamplerKind; 7] = [
    SamplerKind::RepetitionPenalty,
    SamplerKind::TopK,
    SamplerKind::TopA,
    SamplerKind::TailFree,
    SamplerKind::Typical,
    SamplerKind::TopP,
    SamplerKind::Temperature,
];

/// KoboldCpp keeps only the 3000 most likely tokens before the chain, for speed; so do we.
pub const PREFILTER_TOP_K: usize = 3000;

/// A sampler number outside 0..=6.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("sampler_order: {0} is not a sampler (0 top-k, 1 top-a, 2 top-p, 3 tfs, 4 typical, 5 temperature, 6 repetition penalty)")]
pub struct UnknownSampler(pub i64);

impl TryFrom<i64> for SamplerKind {
    type Error = UnknownSampler;

    fn try_from(n: i64) -> Result<Self, UnknownSampler> {
        Ok(match n {
            0 => Self::TopK,
            1 => Self::TopA,
            2 => Self::TopP,
            3 => Self::TailFree,
            4 => Self::Typical,
            5 => Self::Temperature,
            6 => Self::RepetitionPenalty,
            _ => return Err(UnknownSampler(n)),
        })
    }
}

/// Keeps the `k` most likely tokens; `k = 0` keeps all.
pub fn top_k(c: &mut Candidates, k: usize) {
    if k == 0 || k >= c.len() {
        return;
    }
    c.softmax();
    c.truncate(k);
}

/// Top-a: removes tokens whose probability is below `a · p_max²`; `a ≤ 0` is off.
pub fn top_a(c: &mut Candidates, a: f32) {
    if a <= 0.0 || c.len() <= 1 {
        return;
    }
    c.softmax();
    let max = c.items[0].p;
    let threshold = a * max * max;
    let keep = c
        .items
        .iter()
        .position(|t| t.p < threshold)
        .unwrap_or(c.len());
    c.truncate(keep);
}

/// Top-p (nucleus): keeps the smallest most-likely set whose probability mass reaches `p`;
/// `p ≥ 1` is off.
pub fn top_p(c: &mut Candidates, p: f32) {
    if p >= 1.0 {
        return;
    }
    c.softmax();
    let mut sum = 0.0f32;
    let mut keep = c.len();
    for (i, t) in c.items.iter().enumerate() {
        sum += t.p;
        if sum >= p {
            keep = i + 1;
            break;
        }
    }
    c.truncate(keep);
}

/// Min-p: keeps the tokens at least `p` times as likely as the most likely one (compared in
/// logits, `logit ≥ max + ln p`, as KoboldCpp does); `p ≤ 0` is off.
pub fn min_p(c: &mut Candidates, p: f32) {
    if p <= 0.0 || c.is_empty() {
        return;
    }
    let max = c
        .items
        .iter()
        .map(|t| t.logit)
        .fold(f32::NEG_INFINITY, f32::max);
    let min_logit = max + p.ln();
    c.items.retain(|t| t.logit >= min_logit);
}

/// Tail-free sampling: cuts where the normalised absolute second derivative of the sorted
/// probabilities has accumulated more than `z`; `z ≥ 1` is off.
pub fn tail_free(c: &mut Candidates, z: f32) {
    if z >= 1.0 || c.len() <= 2 {
        return;
    }
    c.softmax();
    let first: Vec<f32> = c.items.windows(2).map(|w| w[0].p - w[1].p).collect();
    let mut second: Vec<f32> = first.windows(2).map(|w| (w[0] - w[1]).abs()).collect();
    let sum: f32 = second.iter().sum();
    let n = second.len() as f32;
    for v in &mut second {
        *v = if sum > 1e-6 { *v / sum } else { 1.0 / n };
    }
    let mut acc = 0.0f32;
    let mut keep = c.len();
    for (i, v) in second.iter().enumerate() {
        acc += v;
        if acc > z && i >= 1 {
            keep = i;
            break;
        }
    }
    c.truncate(keep);
}

/// Locally typical sampling: orders tokens by how far their surprise `−ln p` is from the
/// entropy and keeps the closest until their mass exceeds `p`; `p ≥ 1` is off.
pub fn typical(c: &mut Candidates, p: f32) {
    if p >= 1.0 {
        return;
    }
    c.softmax();
    let entropy: f32 = c
        .items
        .iter()
        .filter(|t| t.p > 0.0)
        .map(|t| -t.p * t.p.ln())
        .sum();
    let mut scored: Vec<(f32, Candidate)> = c
        .items
        .iter()
        .map(|t| ((-t.p.ln() - entropy).abs(), *t))
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut sum = 0.0f32;
    let mut keep = scored.len();
    for (i, (_, t)) in scored.iter().enumerate() {
        sum += t.p;
        if sum > p {
            keep = i + 1;
            break;
        }
    }
    c.items = scored.into_iter().take(keep).map(|(_, t)| t).collect();
    c.sorted = false;
}

/// Divides the logits by `temp`; `temp ≤ 0` is greedy (only the most likely token stays).
pub fn temperature(c: &mut Candidates, temp: f32) {
    let greedy = temp <= 0.0;
    // KoboldCpp divides by 1/256 before keeping the top token; the ranking is the same.
    let temp = if greedy { 1.0 / 256.0 } else { temp };
    for t in &mut c.items {
        t.logit /= temp;
    }
    if greedy {
        c.softmax();
        c.truncate(1);
    }
}

/// Dynamic temperature (KoboldCpp's `sample_entropy`, used in place of the temperature when
/// `dynatemp_range > 0`): the temperature runs from `min` to `max` with the candidates'
/// normalised entropy `H / ln n` raised to `exponent`, so a confident distribution is sampled
/// cold and a flat one hot. A temperature of 0 comes out greedy (KoboldCpp would divide by 0).
pub fn dynamic_temperature(c: &mut Candidates, min: f32, max: f32, exponent: f32) {
    if c.len() <= 1 {
        return;
    }
    let max_entropy = (c.len() as f32).ln();
    c.softmax();
    let entropy: f32 = c
        .items
        .iter()
        .filter(|t| t.p > 0.0)
        .map(|t| -t.p * t.p.ln())
        .sum();
    let temp = min + (max - min) * (entropy / max_entropy).powf(exponent);
    temperature(c, temp);
}

/// The repetition penalty's settings (Kobold's `rep_pen`, `rep_pen_range`, `rep_pen_slope`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RepetitionPenalty {
    pub penalty: f32,
    /// How many of the latest tokens count; 0 turns the penalty off.
    pub range: usize,
    /// The older half of the window gets `1 + (penalty − 1) · slope`.
    pub slope: f32,
}

/// Penalises every token seen in the last `range` tokens of `history`: its logit is divided by
/// the penalty when positive, multiplied when not. Tokens only in the older half of the window
/// get the reduced penalty `1 + (penalty − 1) · slope`.
pub fn repetition_penalty(c: &mut Candidates, history: &[u32], rp: RepetitionPenalty) {
    let n = history.len().min(rp.range);
    if n == 0 || rp.penalty == 1.0 {
        return;
    }
    let window = &history[history.len() - n..];
    // KoboldCpp's current `sample_rep_pen` splits at ⌊n/2⌋: the older ⌊n/2⌋ tokens are "far",
    // the latest ⌈n/2⌉ "near".
    let (far, near) = window.split_at(n / 2);
    let reduced = if rp.penalty > 1.0 {
        1.0 + (rp.penalty - 1.0) * rp.slope
    } else {
        rp.penalty
    };
    for t in &mut c.items {
        let penalty = if near.contains(&t.id) {
            rp.penalty
        } else if far.contains(&t.id) {
            reduced
        } else {
            continue;
        };
        if t.logit <= 0.0 {
            t.logit *= penalty;
        } else {
            t.logit /= penalty;
        }
    }
    c.sorted = false;
}

/// A request's sampler settings. [`Default`] turns every sampler off (temperature 1); the
/// coordinator's request carries the horde's own defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    pub temperature: f32,
    /// Dynamic temperature: `temperature ± dynatemp_range` (0 is off), by entropy.
    pub dynatemp_range: f32,
    pub dynatemp_exponent: f32,
    pub top_k: usize,
    pub top_a: f32,
    pub top_p: f32,
    pub min_p: f32,
    pub typical: f32,
    pub tfs: f32,
    pub rep_pen: RepetitionPenalty,
    pub sampler_order: Vec<SamplerKind>,
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            dynatemp_range: 0.0,
            dynatemp_exponent: 1.0,
            top_k: 0,
            top_a: 0.0,
            top_p: 1.0,
            min_p: 0.0,
            typical: 1.0,
            tfs: 1.0,
            rep_pen: RepetitionPenalty {
                penalty: 1.0,
                range: 0,
                slope: 1.0,
            },
            sampler_order: DEFAULT_ORDER.to_vec(),
            seed: 0,
        }
    }
}

/// Applies one sampler of the chain with the request's settings.
pub fn apply(c: &mut Candidates, kind: SamplerKind, params: &SamplerParams, history: &[u32]) {
    match kind {
        SamplerKind::TopK => top_k(c, params.top_k),
        SamplerKind::TopA => top_a(c, params.top_a),
        SamplerKind::TopP => {
            top_p(c, params.top_p);
            min_p(c, params.min_p);
        }
        SamplerKind::TailFree => tail_free(c, params.tfs),
        SamplerKind::Typical => typical(c, params.typical),
        SamplerKind::Temperature if params.dynatemp_range > 0.0 => dynamic_temperature(
            c,
            (params.temperature - params.dynatemp_range).max(0.0),
            (params.temperature + params.dynatemp_range).max(0.0),
            params.dynatemp_exponent.max(0.0),
        ),
        SamplerKind::Temperature => temperature(c, params.temperature),
        SamplerKind::RepetitionPenalty => repetition_penalty(c, history, params.rep_pen),
    }
}

/// The whole chain: the 3000-token prefilter, then each sampler in `sampler_order`.
pub fn apply_chain(logits: &[f32], params: &SamplerParams, history: &[u32]) -> Candidates {
    let mut c = Candidates::from_logits(logits);
    top_k(&mut c, PREFILTER_TOP_K);
    for &kind in &params.sampler_order {
        apply(&mut c, kind, params, history);
    }
    c
}

/// Draws one token from the candidates' softmax with `rng`.
pub fn draw(c: &mut Candidates, rng: &mut impl Rng) -> u32 {
    c.softmax();
    let u: f32 = rng.random();
    let mut acc = 0.0f32;
    for t in &c.items {
        acc += t.p;
        if u < acc {
            return t.id;
        }
    }
    c.items.last().map_or(0, |t| t.id)
}

/// The sampler of one generation: its settings and its seeded generator.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplerParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplerParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// The next token, given the step's logits and the tokens so far (prompt and output).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut c = apply_chain(logits, &self.params, history);
        draw(&mut c, &mut self.rng)
    }
}

#[cfg(test)]
mod tests;
