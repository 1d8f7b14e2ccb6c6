//! Upfront kudos: which requests the requester must be able to pay for before they are queued,
//! and how `allow_downgrade` shrinks a request that they cannot pay for (horde-api.md §5.4).
//!
//! Kudos are normally charged as images are delivered and never block a request. Large or
//! greedy requests are the exception: they need the kudos in hand. The size limit tightens as
//! the queue grows and loosens as workers come online.

use horde_api::image::{ImageRequest, Sampler};

/// Steps a model allows before a request needs upfront kudos, when its reference names none.
pub const DEFAULT_MODEL_MAX_STEPS: u32 = 40;

/// What the horde has to offer right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    /// Threads of the online image workers.
    pub active_image_threads: u64,
    /// Requests waiting in the queue.
    pub queued_requests: usize,
}

/// The largest side (of a square) a request may have without upfront kudos:
/// `1024 + 10 × threads − 0.9 × queued`, between 576 and 1024.
pub fn max_resolution(capacity: &Capacity) -> u32 {
    let raw = 1024.0 + 10.0 * capacity.active_image_threads as f64
        - (0.9 * capacity.queued_requests as f64).round();
    raw.clamp(576.0, 1024.0) as u32
}

/// Why `request` needs upfront kudos, or `None` when it does not.
pub fn upfront_reason(request: &ImageRequest, capacity: &Capacity) -> Option<String> {
    let p = &request.params;
    let steps = p.accurate_steps();
    if !request.slow_workers {
        return Some("it asks for fast workers only (slow_workers: false)".into());
    }
    if p.sampler_name == Sampler::Lcm && steps > 10 {
        return Some(format!(
            "it runs the lcm sampler for {steps} steps (over 10)"
        ));
    }
    if steps > DEFAULT_MODEL_MAX_STEPS {
        return Some(format!(
            "it takes {steps} steps (over {DEFAULT_MODEL_MAX_STEPS}; second-order samplers count double)"
        ));
    }
    let max = max_resolution(capacity);
    if u64::from(p.width) * u64::from(p.height) > u64::from(max) * u64::from(max) {
        return Some(format!(
            "it is larger than {max}x{max} pixels (the limit falls as the queue grows)"
        ));
    }
    if p.control_type.is_some() && steps > 20 {
        return Some(format!(
            "it uses a control type for {steps} steps (over 20)"
        ));
    }
    None
}

/// Shrinks `request` as `allow_downgrade` permits: the size scaled to fit the current maximum
/// (multiples of 64, at least 512×512) and the steps lowered to what needs no upfront kudos.
pub fn downgrade(request: &mut ImageRequest, capacity: &Capacity) {
    let max = u64::from(max_resolution(capacity));
    let p = &mut request.params;
    let pixels = u64::from(p.width) * u64::from(p.height);
    if pixels > max * max {
        let scale = ((max * max) as f64 / pixels as f64).sqrt();
        let fit = |side: u32| (((f64::from(side) * scale) / 64.0).floor() as u32 * 64).max(512);
        (p.width, p.height) = (fit(p.width), fit(p.height));
    }
    let limit = if p.sampler_name == Sampler::Lcm {
        10
    } else if p.control_type.is_some() {
        20
    } else {
        DEFAULT_MODEL_MAX_STEPS.min(30)
    };
    let double = p.accurate_steps() > p.effective_steps();
    let limit = if double { limit / 2 } else { limit };
    if p.accurate_steps() > limit || p.effective_steps() > limit {
        p.steps = Some(p.effective_steps().min(limit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(params: serde_json::Value) -> ImageRequest {
        serde_json::from_value(json!({"prompt": "p", "params": params})).unwrap()
    }

    const IDLE: Capacity = Capacity {
        active_image_threads: 0,
        queued_requests: 0,
    };

    #[test]
    fn the_size_limit_falls_with_the_queue_and_rises_with_workers() {
        assert_eq!(max_resolution(&IDLE), 1024);
        let busy = Capacity {
            active_image_threads: 2,
            queued_requests: 300,
        };
        assert_eq!(max_resolution(&busy), 1024 + 20 - 270);
        let swamped = Capacity {
            active_image_threads: 0,
            queued_requests: 10_000,
        };
        assert_eq!(max_resolution(&swamped), 576);
    }

    #[test]
    fn ordinary_requests_need_nothing_upfront() {
        assert_eq!(upfront_reason(&request(json!({"steps": 30})), &IDLE), None);
        assert_eq!(
            upfront_reason(&request(json!({"width": 1024, "height": 1024})), &IDLE),
            None
        );
    }

    #[test]
    fn each_public_rule_asks_for_upfront_kudos() {
        let mut fast = request(json!({}));
        fast.slow_workers = false;
        let cases = [
            fast,
            request(json!({"steps": 41})),
            request(json!({"steps": 25, "sampler_name": "k_heun"})),
            request(json!({"steps": 12, "sampler_name": "lcm"})),
            request(json!({"width": 1088, "height": 1024})),
            request(json!({"steps": 21, "control_type": "canny"})),
        ];
        for case in cases {
            assert!(upfront_reason(&case, &IDLE).is_some(), "{:?}", case.params);
        }
    }

    #[test]
    fn a_downgrade_fits_the_limit_in_multiples_of_64() {
        let busy = Capacity {
            active_image_threads: 0,
            queued_requests: 300,
        };
        let mut big = request(json!({"width": 1024, "height": 768, "steps": 50}));
        downgrade(&mut big, &busy);
        let p = &big.params;
        assert_eq!((p.width % 64, p.height % 64), (0, 0));
        assert!(
            u64::from(p.width) * u64::from(p.height) <= 754 * 754,
            "{}x{}",
            p.width,
            p.height
        );
        assert_eq!(p.steps, Some(30));
        assert_eq!(
            upfront_reason(&big, &busy),
            None,
            "nothing left to pay upfront"
        );
        let mut heun = request(json!({"steps": 40, "sampler_name": "k_heun"}));
        downgrade(&mut heun, &IDLE);
        assert_eq!(
            heun.params.steps,
            Some(15),
            "second-order steps count double"
        );
    }
}
