//! When this coordinator takes a job back: the job's deadline, from the worker's measured
//! speed, so a fast worker that stalls frees its job sooner than the public horde's `ttl`
//! (`ttl.rs`, what a pop tells the worker) would. A job whose model the worker must load first
//! gets the load's time on top ([`load_allowance_secs`]), so a load never eats the generation's.

use crate::matching::holds_model;
use crate::work;
use horde_api::image::ImageParams;

/// Assumed speed of a worker that has not finished a job yet, in megapixelsteps per second
/// (a slow CPU worker; a fast GPU does 1 or more).
pub const UNMEASURED_SPEED_MPS: f64 = 0.05;

/// The operator's bounds on a deadline (`[jobs]` `deadline_floor_secs`, `deadline_ceiling_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineBounds {
    pub floor_secs: i64,
    pub ceiling_secs: i64,
}

/// Seconds a worker gets for a batch of `batch` images of `params`: three times what its
/// measured speed needs for the batch's megapixelsteps (more for post-processing and
/// control, and twice for hires fix, whose first pass is at most the final size and whose
/// second at most all the steps), plus 30 s of slack, kept between the bounds.
pub fn job_deadline_secs(
    params: &ImageParams,
    batch: u32,
    speed_mps: Option<f64>,
    bounds: DeadlineBounds,
) -> i64 {
    let mut megapixelsteps = work::megapixelsteps(params, batch);
    megapixelsteps *= 1.0 + 0.4 * params.post_processing.len() as f64;
    if params.control_type.is_some() {
        megapixelsteps *= 2.0;
    }
    if params.hires_fix {
        megapixelsteps *= 2.0;
    }
    let speed = speed_mps
        .filter(|s| *s > 0.0)
        .unwrap_or(UNMEASURED_SPEED_MPS);
    let secs = 30.0 + 3.0 * megapixelsteps / speed;
    (secs as i64).clamp(
        bounds.floor_secs,
        bounds.ceiling_secs.max(bounds.floor_secs),
    )
}

/// The time allowed for loading a model when the worker has not reported how long its loads
/// take (`hardware.load_secs` absent or 0), in seconds: a large checkpoint read from disk and
/// moved to the GPU, or converted on a CPU.
pub const DEFAULT_LOAD_SECS: i64 = 120;

/// Seconds added to the deadline of a job run with `model` by a worker that declared `loaded`
/// (its pop's `loaded_models`) and reported loads taking `load_secs` (`hardware.load_secs`):
/// nothing when it holds the model (or declared nothing, as public-horde workers), else its
/// reported load time, or [`DEFAULT_LOAD_SECS`] when it reported none. The allowance is added
/// after the operator's ceiling is applied, so the ceiling is raised by the same amount.
pub fn load_allowance_secs(model: &str, loaded: Option<&[String]>, load_secs: Option<u32>) -> i64 {
    if holds_model(loaded, model) {
        return 0;
    }
    match load_secs {
        Some(secs) if secs > 0 => i64::from(secs),
        _ => DEFAULT_LOAD_SECS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(width: u32, steps: u32) -> ImageParams {
        serde_json::from_value(serde_json::json!({"width": width, "height": width, "steps": steps}))
            .unwrap()
    }

    #[test]
    fn deadlines_grow_with_size_and_shrink_with_speed_within_bounds() {
        let bounds = DeadlineBounds {
            floor_secs: 60,
            ceiling_secs: 3600,
        };
        let small = job_deadline_secs(&params(512, 30), 1, Some(0.1), bounds);
        let big = job_deadline_secs(&params(1024, 30), 1, Some(0.1), bounds);
        let batch = job_deadline_secs(&params(512, 30), 4, Some(0.1), bounds);
        let fast = job_deadline_secs(&params(512, 30), 1, Some(10.0), bounds);
        assert!(big > small && batch > small, "{small} {big} {batch}");
        // 512² × 30 steps = 7.86 megapixelsteps: 30 + 3 × 7.86 / 0.1 = 265 s.
        assert_eq!(small, 265);
        assert_eq!(fast, 60, "a fast worker gets the floor");
        assert_eq!(
            job_deadline_secs(&params(3072, 500), 20, Some(0.01), bounds),
            3600,
            "and a huge job the ceiling"
        );
        assert!(
            job_deadline_secs(&params(512, 30), 1, None, bounds) > small,
            "unmeasured workers are assumed slow"
        );
        // Hires fix: its two passes, 30 + 3 × 2 × 7.86 / 0.1 = 501 s.
        let mut hires = params(512, 30);
        hires.hires_fix = true;
        assert_eq!(job_deadline_secs(&hires, 1, Some(0.1), bounds), 501);
    }

    #[test]
    fn a_model_to_load_adds_the_reported_load_time_or_the_default() {
        let loaded = vec!["held".to_string()];
        let held = Some(loaded.as_slice());
        assert_eq!(load_allowance_secs("held", held, Some(300)), 0);
        assert_eq!(load_allowance_secs("other", held, Some(300)), 300);
        assert_eq!(
            load_allowance_secs("other", held, Some(0)),
            DEFAULT_LOAD_SECS
        );
        assert_eq!(load_allowance_secs("other", held, None), DEFAULT_LOAD_SECS);
        assert_eq!(
            load_allowance_secs("other", None, Some(300)),
            0,
            "a worker that declares nothing is treated as holding its models"
        );
    }
}
