//! A text job's sampler settings, completed and translated for whichever backend runs it.
//!
//! Why KoboldCpp's defaults: the horde passes `params` to the worker as the client sent them
//! (`horde_api::text::TextParams`), so a sampler the client left out is decided by the worker.
//! Horde text clients (KoboldAI Lite, SillyTavern's Horde mode) are tuned against KoboldCpp, the
//! most common horde text worker, so a field left out means here what it means there: the
//! default of `genparams.get(name, default)` in `generate()` of LostRuins/koboldcpp's
//! `koboldcpp.py` (v1.102). Every backend — the built-in engine and both bridge flavours — gets
//! these completed values, so one job asks the same of each.

use horde_api::text::TextParams;
use horde_text::sampling::{RepetitionPenalty, UnknownSampler};
use horde_text::{SamplerKind, SamplerParams};

/// KoboldCpp's defaults (`koboldcpp.py`, `generate()`), for each sampler field a request may
/// leave out.
pub mod kobold_defaults {
    /// `genparams.get('temperature', 0.75)`.
    pub const TEMPERATURE: f64 = 0.75;
    /// `genparams.get('top_k', 100)`.
    pub const TOP_K: u32 = 100;
    /// `genparams.get('top_a', 0.0)`: off.
    pub const TOP_A: f64 = 0.0;
    /// `genparams.get('top_p', 0.92)`.
    pub const TOP_P: f64 = 0.92;
    /// `genparams.get('min_p', 0.0)`: off.
    pub const MIN_P: f64 = 0.0;
    /// `genparams.get('typical', 1.0)`: off.
    pub const TYPICAL: f64 = 1.0;
    /// `genparams.get('tfs', 1.0)`: off.
    pub const TFS: f64 = 1.0;
    /// `genparams.get('rep_pen', 1.0)`: off.
    pub const REP_PEN: f64 = 1.0;
    /// `genparams.get('rep_pen_range', 320)`.
    pub const REP_PEN_RANGE: u32 = 320;
    /// `genparams.get('rep_pen_slope', 1.0)`: the whole window gets the full penalty.
    pub const REP_PEN_SLOPE: f64 = 1.0;
    /// `genparams.get('sampler_order', [6, 0, 1, 3, 4, 2, 5])`.
    pub const SAMPLER_ORDER: [u32; 7] = [6, 0, 1, 3, 4, 2, 5];
    /// `genparams.get('dynatemp_range', 0.0)`: off.
    pub const DYNATEMP_RANGE: f64 = 0.0;
    /// `genparams.get('dynatemp_exponent', 1.0)`.
    pub const DYNATEMP_EXPONENT: f64 = 1.0;
    /// `genparams.get('smoothing_factor', 0.0)`: off.
    pub const SMOOTHING_FACTOR: f64 = 0.0;
}

/// A job's settings with every sampler filled in (the request's value, else KoboldCpp's).
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub max_length: u32,
    pub max_context_length: u32,
    pub temperature: f64,
    pub dynatemp_range: f64,
    pub dynatemp_exponent: f64,
    pub top_k: u32,
    pub top_a: f64,
    pub top_p: f64,
    pub min_p: f64,
    pub typical: f64,
    pub tfs: f64,
    pub rep_pen: f64,
    pub rep_pen_range: u32,
    pub rep_pen_slope: f64,
    pub sampler_order: Vec<u32>,
    pub smoothing_factor: f64,
    pub stop_sequence: Vec<String>,
    /// `use_default_badwordsids`: KoboldCpp bans the end-of-sequence token with it
    /// (`ban_eos_token`).
    pub ban_eos: bool,
    /// The seed this worker drew for the job (the horde sends none) and reports on submit.
    pub seed: u64,
}

/// Completes `params` with KoboldCpp's defaults; `seed` is the worker's draw.
pub fn resolve(params: &TextParams, seed: u64) -> Resolved {
    use kobold_defaults as d;
    Resolved {
        max_length: params.max_length,
        max_context_length: params.max_context_length,
        temperature: params.temperature.unwrap_or(d::TEMPERATURE),
        dynatemp_range: params.dynatemp_range.unwrap_or(d::DYNATEMP_RANGE),
        dynatemp_exponent: params.dynatemp_exponent.unwrap_or(d::DYNATEMP_EXPONENT),
        top_k: params.top_k.unwrap_or(d::TOP_K),
        top_a: params.top_a.unwrap_or(d::TOP_A),
        top_p: params.top_p.unwrap_or(d::TOP_P),
        min_p: params.min_p.unwrap_or(d::MIN_P),
        typical: params.typical.unwrap_or(d::TYPICAL),
        tfs: params.tfs.unwrap_or(d::TFS),
        rep_pen: params.rep_pen.unwrap_or(d::REP_PEN),
        rep_pen_range: params.rep_pen_range.unwrap_or(d::REP_PEN_RANGE),
        rep_pen_slope: params.rep_pen_slope.unwrap_or(d::REP_PEN_SLOPE),
        sampler_order: params
            .sampler_order
            .clone()
            .filter(|order| !order.is_empty())
            .unwrap_or_else(|| d::SAMPLER_ORDER.to_vec()),
        smoothing_factor: params.smoothing_factor.unwrap_or(d::SMOOTHING_FACTOR),
        stop_sequence: params
            .stop_sequence
            .iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
        ban_eos: params.use_default_badwordsids.unwrap_or(false),
        seed,
    }
}

/// The job's settings in the built-in engine's terms. A `sampler_order` naming a sampler outside
/// 0..=6 is an error (the job is faulted with it).
pub fn sampler_params(params: &TextParams, seed: u64) -> Result<SamplerParams, UnknownSampler> {
    resolve(params, seed).sampler_params()
}

impl Resolved {
    /// These settings as the built-in engine's [`SamplerParams`].
    pub fn sampler_params(&self) -> Result<SamplerParams, UnknownSampler> {
        let sampler_order = self
            .sampler_order
            .iter()
            .map(|&n| SamplerKind::try_from(i64::from(n)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SamplerParams {
            temperature: self.temperature as f32,
            dynatemp_range: self.dynatemp_range as f32,
            dynatemp_exponent: self.dynatemp_exponent as f32,
            top_k: self.top_k as usize,
            top_a: self.top_a as f32,
            top_p: self.top_p as f32,
            min_p: self.min_p as f32,
            typical: self.typical as f32,
            tfs: self.tfs as f32,
            rep_pen: RepetitionPenalty {
                penalty: self.rep_pen as f32,
                range: self.rep_pen_range as usize,
                slope: self.rep_pen_slope as f32,
            },
            sampler_order,
            seed: self.seed,
        })
    }

    /// The horde parameters whose value here changes the generation (those left at a value that
    /// turns them off are not listed): a backend that cannot take one of these gives another
    /// text than KoboldCpp would, so the worker says so in its log.
    pub fn in_effect(&self, params: &TextParams) -> Vec<&'static str> {
        let penalised = self.rep_pen != 1.0 && self.rep_pen_range > 0;
        let flag = |f: Option<bool>| f.unwrap_or(false);
        [
            ("top_k", self.top_k > 0),
            ("top_a", self.top_a > 0.0),
            ("top_p", self.top_p < 1.0),
            ("min_p", self.min_p > 0.0),
            ("typical", self.typical < 1.0),
            ("tfs", self.tfs < 1.0),
            ("rep_pen", penalised),
            ("rep_pen_range", penalised),
            ("rep_pen_slope", penalised && self.rep_pen_slope != 1.0),
            (
                "sampler_order",
                self.sampler_order != kobold_defaults::SAMPLER_ORDER,
            ),
            ("dynatemp_range", self.dynatemp_range > 0.0),
            ("smoothing_factor", self.smoothing_factor > 0.0),
            ("stop_sequence", !self.stop_sequence.is_empty()),
            ("use_default_badwordsids", self.ban_eos),
            ("singleline", flag(params.singleline)),
            ("frmtadsnsp", flag(params.frmtadsnsp)),
            ("frmtrmblln", flag(params.frmtrmblln)),
            ("frmtrmspch", flag(params.frmtrmspch)),
            ("frmttriminc", flag(params.frmttriminc)),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| name)
        .collect()
    }
}

/// Cuts `text` before the first stop sequence it contains, as KoboldCpp does with `trim_stop`
/// (its default): the submitted text ends where the stop began.
pub fn trim_stop(text: &str, stops: &[String]) -> String {
    let end = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(value: serde_json::Value) -> TextParams {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn absent_samplers_get_koboldcpps_defaults() {
        let r = resolve(&params(json!({})), 7);
        assert_eq!(r.temperature, 0.75);
        assert_eq!(r.top_k, 100);
        assert_eq!(r.top_p, 0.92);
        assert_eq!((r.top_a, r.min_p, r.typical, r.tfs), (0.0, 0.0, 1.0, 1.0));
        assert_eq!(
            (r.rep_pen, r.rep_pen_range, r.rep_pen_slope),
            (1.0, 320, 1.0)
        );
        assert_eq!(r.sampler_order, [6, 0, 1, 3, 4, 2, 5]);
        assert_eq!((r.dynatemp_range, r.dynatemp_exponent), (0.0, 1.0));
        assert_eq!((r.max_length, r.max_context_length), (80, 2048));
        assert!(r.stop_sequence.is_empty() && !r.ban_eos);
        assert_eq!(r.seed, 7);
        let engine = r.sampler_params().unwrap();
        assert_eq!(engine.sampler_order, horde_text::sampling::DEFAULT_ORDER);
        assert_eq!(engine.top_k, 100);
        assert_eq!(engine.temperature, 0.75);
        assert_eq!(engine.rep_pen.range, 320);
    }

    #[test]
    fn every_sampler_the_horde_sends_reaches_the_engine() {
        let p = params(json!({
            "max_length": 120, "max_context_length": 1024, "temperature": 0.6, "top_k": 40,
            "top_a": 0.2, "top_p": 0.85, "min_p": 0.05, "typical": 0.9, "tfs": 0.95,
            "rep_pen": 1.15, "rep_pen_range": 512, "rep_pen_slope": 0.7,
            "sampler_order": [5, 6, 0, 1, 2, 3, 4], "dynatemp_range": 0.3,
            "dynatemp_exponent": 1.5, "stop_sequence": ["\nUser:", ""]
        }));
        let s = sampler_params(&p, 42).unwrap();
        assert_eq!(s.temperature, 0.6);
        assert_eq!(s.top_k, 40);
        assert_eq!(s.top_a, 0.2);
        assert_eq!(s.top_p, 0.85);
        assert_eq!(s.min_p, 0.05);
        assert_eq!(s.typical, 0.9);
        assert_eq!(s.tfs, 0.95);
        assert_eq!(
            s.rep_pen,
            RepetitionPenalty {
                penalty: 1.15,
                range: 512,
                slope: 0.7
            }
        );
        assert_eq!(s.dynatemp_range, 0.3);
        assert_eq!(s.dynatemp_exponent, 1.5);
        assert_eq!(s.seed, 42);
        let order: Vec<i64> = s.sampler_order.iter().map(|&k| k as i64).collect();
        assert_eq!(order, [5, 6, 0, 1, 2, 3, 4]);
        let r = resolve(&p, 42);
        assert_eq!(r.stop_sequence, ["\nUser:"], "an empty stop is dropped");
        assert_eq!((r.max_length, r.max_context_length), (120, 1024));
    }

    #[test]
    fn a_sampler_number_outside_kobolds_seven_is_refused() {
        let p = params(json!({"sampler_order": [6, 0, 1, 3, 4, 2, 9]}));
        assert_eq!(sampler_params(&p, 0).unwrap_err(), UnknownSampler(9));
        // An empty order is KoboldCpp's default, not a chain with no samplers.
        let p = params(json!({"sampler_order": []}));
        assert_eq!(sampler_params(&p, 0).unwrap().sampler_order.len(), 7);
    }

    #[test]
    fn only_parameters_that_change_the_text_are_in_effect() {
        let none = params(json!({}));
        assert_eq!(
            resolve(&none, 0).in_effect(&none),
            ["top_k", "top_p"],
            "KoboldCpp's defaults turn everything else off"
        );
        let p = params(json!({
            "top_k": 0, "top_p": 1, "top_a": 0.1, "rep_pen": 1.1, "rep_pen_slope": 0.5,
            "sampler_order": [6, 0, 1, 3, 4, 5, 2], "smoothing_factor": 0.2,
            "use_default_badwordsids": true, "singleline": true, "frmttriminc": false,
            "stop_sequence": ["###"]
        }));
        assert_eq!(
            resolve(&p, 0).in_effect(&p),
            [
                "top_a",
                "rep_pen",
                "rep_pen_range",
                "rep_pen_slope",
                "sampler_order",
                "smoothing_factor",
                "stop_sequence",
                "use_default_badwordsids",
                "singleline"
            ]
        );
        // A slope without a penalty changes nothing.
        let p = params(json!({"rep_pen_slope": 0.5}));
        assert!(!resolve(&p, 0).in_effect(&p).contains(&"rep_pen_slope"));
    }

    #[test]
    fn the_text_ends_where_the_first_stop_begins() {
        let stops = ["User:".to_string(), "\n".to_string()];
        assert_eq!(trim_stop("Hi there\nUser: next", &stops), "Hi there");
        assert_eq!(trim_stop("no stop here", &stops), "no stop here");
        assert_eq!(trim_stop("abcUser:", &["".into(), "User:".into()]), "abc");
        assert_eq!(trim_stop("ééUser:", &stops), "éé");
    }
}
