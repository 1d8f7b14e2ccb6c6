//! Kudos prices of image jobs.
//!
//! As on the public horde, an image's price comes from its kudos model (`kudos_model`, the same
//! weights), or from the closed formula when the model cannot encode the job (horde-api.md
//! §5.1); then come the LoRA/TI surcharges, the requester's "burn" and the worker's bridge
//! multiplier.

use crate::kudos_model::KudosModel;
use horde_api::image::{ImageParams, ImageRequest, UPSCALERS};

/// The price of one image before surcharges: the kudos model's, or the closed formula's for a
/// job the model cannot encode.
pub fn base_job_kudos(request: &ImageRequest) -> f64 {
    KudosModel::embedded()
        .base_kudos(request)
        .unwrap_or_else(|| formula_job_kudos(&request.params))
}

/// The public horde's closed-form price of one image (its fallback when the network fails).
pub fn formula_job_kudos(params: &ImageParams) -> f64 {
    let pixels = f64::from(params.width) * f64::from(params.height);
    let steps = f64::from(params.effective_steps());
    let smallest = 64.0_f64 * 64.0;
    let largest = 1024.0_f64 * 1024.0;
    let relative = ((pixels - smallest).max(0.0)).powf(1.75) / (largest - smallest).powf(1.75);
    let mut cost = 0.1232 * steps + relative * 0.1232 * steps * 8.75;
    for _ in &params.post_processing {
        cost *= 1.2;
    }
    if params.control_type.is_some() && !params.return_control_map {
        cost *= 3.0;
    }
    round2(cost)
}

/// `wp.kudos` of the public horde: the per-image basis of both charge and reward.
pub fn job_kudos(request: &ImageRequest) -> f64 {
    let params = &request.params;
    let mut kudos = base_job_kudos(request) + 3.0 * params.loras.len() as f64;
    if !params.tis.is_empty() {
        kudos += 1.0;
    }
    round2(kudos)
}

/// What the requester pays for one delivered image (`burn`): source image ×1.3, upscalers ×1.05,
/// +1 horde tax, ×1.2 when `slow_workers` is off, ×1.1 with a worker blacklist.
pub fn requester_charge(request: &ImageRequest, job_kudos: f64) -> f64 {
    let mut kudos = job_kudos;
    if request.source_image.is_some() {
        kudos *= 1.3;
    }
    for pp in &request.params.post_processing {
        if UPSCALERS.contains(&pp.as_str()) {
            kudos *= 1.05;
        }
    }
    kudos += 1.0;
    if !request.slow_workers {
        kudos *= 1.2;
    }
    if request.worker_blacklist {
        kudos *= 1.1;
    }
    round2(kudos)
}

/// The flat fee a requester pays when a request is accepted (the public horde's 1, plus 5 per
/// extra source image and 2 for a foreign style, neither of which this server takes yet).
pub const ACTIVATION_FEE: f64 = 1.0;

/// The projected total of a request (the dry-run answer): every image's charge at the
/// `family` multiplier of its model's baseline, plus the activation fee.
pub fn projected_cost(request: &ImageRequest, family: f64) -> f64 {
    let per_image = requester_charge(request, job_kudos(request) * family);
    round2(per_image * f64::from(request.params.n) + ACTIVATION_FEE)
}

/// Reward multiplier by bridge: the reference worker earns in full, unknown bridges 0.75.
pub fn bridge_multiplier(bridge_agent: &str) -> f64 {
    let name = bridge_agent.split(':').next().unwrap_or_default();
    match name {
        "AI Horde Worker reGen" | "horde-worker" => 1.0,
        "AI Horde Worker" => 0.9,
        _ => 0.75,
    }
}

/// A request's `consumed_kudos` after one more `charge`, kept as the public horde keeps it:
/// the sum rounded to cents as Python's `round(x, 2)` rounds (the exact binary value, ties to
/// even).
pub fn consumed_after(consumed: f64, charge: f64) -> f64 {
    python_round2(consumed + charge)
}

/// The whole kudos a status answer (and the 202) shows for `kudos`: Python's `round(x)`, which
/// rounds ties to even (2.5 → 2), where Rust's `round` would give 3.
pub fn reported_kudos(kudos: f64) -> f64 {
    kudos.round_ties_even()
}

/// Python's `round(value, 2)`: the decimal expansion of the double rounded at two places.
fn python_round2(value: f64) -> f64 {
    let rounded = format!("{value:.2}");
    rounded.parse().unwrap_or(value)
}

pub fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// How a worker's reward reaches its owner: a trusted owner gets it all in their balance; an
/// untrusted one half (rounded to the cent) in escrow (`evaluating_kudos`), released when they
/// become trusted, and the rest in their balance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardSplit {
    pub balance: f64,
    pub escrow: f64,
}

/// The split of `reward` for an owner who is `trusted` or not (see [`RewardSplit`]).
pub fn split_reward(reward: f64, owner_trusted: bool) -> RewardSplit {
    if owner_trusted {
        return RewardSplit {
            balance: reward,
            escrow: 0.0,
        };
    }
    let escrow = round2(reward / 2.0);
    RewardSplit {
        balance: reward - escrow,
        escrow,
    }
}

#[cfg(test)]
mod reward_split_tests {
    use super::*;

    #[test]
    fn untrusted_owners_get_half_of_a_reward_in_escrow() {
        assert_eq!(
            split_reward(10.0, true),
            RewardSplit {
                balance: 10.0,
                escrow: 0.0
            }
        );
        let split = split_reward(10.01, false);
        assert_eq!(split.escrow, 5.01);
        assert!((split.balance - 5.0).abs() < 1e-12);
        assert!(
            (split.balance + split.escrow - 10.01).abs() < 1e-12,
            "nothing lost"
        );
    }
}

#[cfg(test)]
mod rounding_tests {
    use super::*;

    #[test]
    fn consumed_kudos_round_to_cents_and_report_ties_to_even_as_python() {
        // Values and results from CPython 3.12: round(a + b, 2) and round(x).
        assert_eq!(
            consumed_after(1.0, 5.255),
            6.25,
            "6.255 is 6.25499… in binary"
        );
        assert_eq!(
            consumed_after(1.0, 0.125),
            1.12,
            "an exact tie goes to even"
        );
        assert_eq!(consumed_after(6.25, 5.26), 11.51);
        assert_eq!(reported_kudos(2.5), 2.0);
        assert_eq!(reported_kudos(3.5), 4.0);
        assert_eq!(reported_kudos(11.51), 12.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> ImageRequest {
        serde_json::from_value(serde_json::json!({"prompt": "p", "params": json})).unwrap()
    }

    #[test]
    fn price_grows_with_size_and_steps() {
        let small = base_job_kudos(&request(serde_json::json!({"steps": 30})));
        let big = base_job_kudos(&request(
            serde_json::json!({"steps": 30, "width": 1024, "height": 1024}),
        ));
        let long = base_job_kudos(&request(serde_json::json!({"steps": 60})));
        assert!(big > small * 2.5, "{big} vs {small}");
        assert!(long > small * 1.3, "{long} vs {small}");
    }

    #[test]
    fn the_kudos_model_prices_what_it_can_encode_and_the_formula_the_rest() {
        // 512×512, 30 steps of the default sampler (k_euler_a, karras, cfg 5): the sample table.
        assert_eq!(
            base_job_kudos(&request(serde_json::json!({"steps": 30}))),
            7.61
        );
        let unknown_upscaler = serde_json::json!({"steps": 30, "post_processing": ["4xNomos8kSC"]});
        assert_eq!(
            base_job_kudos(&request(unknown_upscaler.clone())),
            formula_job_kudos(&request(unknown_upscaler).params)
        );
    }

    #[test]
    fn closed_formula_matches_a_hand_computation() {
        // 512x512, 30 steps: r = (512²−64²)^1.75 / (1024²−64²)^1.75.
        let r = (262_144.0f64 - 4096.0).powf(1.75) / (1_048_576.0f64 - 4096.0).powf(1.75);
        let expected = round2(0.1232 * 30.0 + r * 0.1232 * 30.0 * 8.75);
        let params = request(serde_json::json!({"steps": 30})).params;
        assert_eq!(formula_job_kudos(&params), expected);
    }

    #[test]
    fn loras_and_tis_add_surcharges() {
        let plain = job_kudos(&request(serde_json::json!({})));
        let with = job_kudos(&request(serde_json::json!({
            "loras": [{"name": "a"}, {"name": "b"}], "tis": [{"name": "t"}]
        })));
        assert_eq!(round2(with - plain), 7.0);
    }

    #[test]
    fn every_lora_adds_three_and_any_number_of_tis_one() {
        let priced = |loras: usize, tis: usize| {
            let names = |prefix: &str, n: usize| {
                (0..n)
                    .map(|i| serde_json::json!({"name": format!("{prefix}{i}")}))
                    .collect::<Vec<_>>()
            };
            job_kudos(&request(serde_json::json!({
                "steps": 30, "loras": names("l", loras), "tis": names("t", tis)
            })))
        };
        let plain = priced(0, 0);
        assert_eq!(plain, 7.61, "the sample table's 512², 30 steps");
        for (loras, tis, surcharge) in [
            (1, 0, 3.0),
            (5, 0, 15.0),
            (0, 1, 1.0),
            (0, 20, 1.0),
            (5, 20, 16.0),
        ] {
            assert_eq!(
                round2(priced(loras, tis) - plain),
                surcharge,
                "{loras} LoRAs, {tis} TIs"
            );
        }
    }

    #[test]
    fn control_is_priced_by_the_kudos_network_with_its_surcharges() {
        // horde-api.md §5.1: 512², 30 steps, canny on a source image is 13.69.
        let canny = |extra: serde_json::Value| {
            let mut params = serde_json::json!({"steps": 30, "control_type": "canny"});
            for (k, v) in extra.as_object().unwrap() {
                params[k] = v.clone();
            }
            let mut r = request(params);
            r.source_image = Some("a source".into());
            r
        };
        assert_eq!(job_kudos(&canny(serde_json::json!({}))), 13.69);
        let with_networks = canny(serde_json::json!({
            "loras": [{"name": "1"}, {"name": "2"}], "tis": [{"name": "t"}]
        }));
        assert_eq!(job_kudos(&with_networks), 20.69);
        // A source image is charged ×1.3, then the horde's +1.
        assert_eq!(requester_charge(&with_networks, 20.69), 27.9);
    }

    #[test]
    fn the_closed_formula_triples_control_unless_the_map_is_returned() {
        let formula = |params: serde_json::Value| formula_job_kudos(&request(params).params);
        let plain = formula(serde_json::json!({"steps": 30}));
        let control = formula(serde_json::json!({"steps": 30, "control_type": "hed"}));
        let map_only = formula(
            serde_json::json!({"steps": 30, "control_type": "hed", "return_control_map": true}),
        );
        // round(x, 2) and round(3x, 2) of the hand computation above (x = 6.4959 at 512², 30 steps).
        assert_eq!((plain, control), (6.5, 19.49));
        assert_eq!(map_only, plain);
    }

    #[test]
    fn unknown_bridges_earn_less() {
        assert_eq!(
            bridge_multiplier("AI Horde Worker reGen:9.0.1:https://x"),
            1.0
        );
        assert_eq!(
            bridge_multiplier("horde-worker:0.1.0:https://x"),
            1.0,
            "this project's worker is an official bridge"
        );
        assert_eq!(bridge_multiplier("my-bridge:1"), 0.75);
    }
}
