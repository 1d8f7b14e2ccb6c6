//! The `ttl` a pop tells a worker: the seconds the public horde gives it for a job
//! (`ImageProcessingGeneration.set_job_ttl`). Workers such as horde-worker-reGen plan by it.
//!
//! It is not when this coordinator takes a job back: that is the job's deadline, from the
//! worker's measured speed (`jobs.deadline_*`), which for a fast worker may come earlier.

use horde_api::image::ImageParams;

/// The public horde's allowance for downloading one LoRA: 400 MB at 30 Mbit/s.
pub const LORA_DOWNLOAD_SECS: f64 = 400.0 * 8.0 / 30.0;

/// The shortest ttl a job gets.
pub const MIN_TTL_SECS: f64 = 150.0;

/// Baselines whose jobs get three times as long.
const SLOW_BASELINES: &[&str] = &["flux_1", "qwen_image", "z_image_turbo"];

/// `30 + accurate steps × 2 × (pixels ÷ 512²)`, doubled with a control type, tripled for the
/// slow baselines, at least 150 s, plus each LoRA's download, tripled for an extra-slow worker.
pub fn job_ttl_secs(params: &ImageParams, baseline: &str, extra_slow_worker: bool) -> u64 {
    let size = f64::from(params.width) * f64::from(params.height) / (512.0 * 512.0);
    let mut ttl = 30.0 + f64::from(params.accurate_steps()) * 2.0 * size;
    if params.control_type.is_some() {
        ttl *= 2.0;
    }
    if SLOW_BASELINES.contains(&baseline) {
        ttl *= 3.0;
    }
    ttl = ttl.max(MIN_TTL_SECS);
    ttl += params.loras.len() as f64 * LORA_DOWNLOAD_SECS;
    if extra_slow_worker {
        ttl *= 3.0;
    }
    ttl.ceil() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: serde_json::Value) -> ImageParams {
        serde_json::from_value(json).unwrap()
    }

    fn check(json: serde_json::Value, baseline: &str, extra_slow: bool, expected: u64) {
        assert_eq!(
            job_ttl_secs(&params(json.clone()), baseline, extra_slow),
            expected,
            "{json} on {baseline}"
        );
    }

    #[test]
    fn small_jobs_get_the_minimum_and_large_ones_their_steps_times_size() {
        check(
            serde_json::json!({"steps": 30}),
            "stable_diffusion_1",
            false,
            150,
        );
        check(
            serde_json::json!({"steps": 50, "width": 1024, "height": 1024}),
            "stable_diffusion_xl",
            false,
            30 + 50 * 2 * 4,
        );
        // Second-order samplers count each step twice.
        check(
            serde_json::json!({"steps": 50, "width": 1024, "height": 1024, "sampler_name": "k_heun"}),
            "stable_diffusion_1",
            false,
            30 + 100 * 2 * 4,
        );
    }

    #[test]
    fn control_slow_baselines_loras_and_extra_slow_workers_lengthen_it() {
        let big = serde_json::json!({"steps": 40, "width": 1024, "height": 1024, "control_type": "canny"});
        check(
            big.clone(),
            "stable_diffusion_1",
            false,
            (30 + 40 * 2 * 4) * 2,
        );
        check(big.clone(), "flux_1", true, (30 + 40 * 2 * 4) * 2 * 3 * 3);
        let with_lora = serde_json::json!({"steps": 10, "loras": [{"name": "x"}]});
        check(
            with_lora,
            "stable_diffusion_1",
            false,
            (150.0 + LORA_DOWNLOAD_SECS).ceil() as u64,
        );
    }
}
