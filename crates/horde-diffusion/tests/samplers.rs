//! Every sampler against its reference implementation, step by step, in f64: trajectories that
//! k-diffusion 0.1.1.post1 and diffusers 0.42.1 computed on the exact denoiser of Gaussian data
//! with fixed inputs and noise (`tests/fixtures/samplers/`, from `tools/sampler-fixtures/`).

mod common;

use candle_core::{DType, Device, Tensor};
use common::Fixtures;
use horde_diffusion::parts::samplers::{self, AdaptiveOptions};
use horde_diffusion::parts::{DiscreteSchedule, Noise};
use horde_diffusion::SamplerKind;
use serde_json::Value;

const FIXTURES: Fixtures = Fixtures {
    folder: "samplers",
    tool: "tools/sampler-fixtures",
};
const TOLERANCE: f64 = 1e-9;

fn fixture(name: &str) -> Value {
    let path = FIXTURES.dir().join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn latent(v: &Value) -> Tensor {
    Tensor::from_vec(floats(v), (1, 4, 2, 2), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &[f64]) -> f64 {
    a.flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The exact denoiser of N(μ, s²) data.
fn gaussian_denoiser(f: &Value) -> impl FnMut(&Tensor, f64) -> candle_core::Result<Tensor> {
    let mu = latent(&f["denoiser"]["mu"]);
    let s = f["denoiser"]["s"].as_f64().unwrap();
    move |x: &Tensor, sigma: f64| {
        let k = s * s / (s * s + sigma * sigma);
        (x - &mu)? * k + &mu
    }
}

/// The fixture's noise, handed out in order.
struct FixedNoise {
    draws: Vec<Vec<f64>>,
    next: usize,
}

impl Noise for FixedNoise {
    fn like(&mut self, _: &Tensor) -> candle_core::Result<Tensor> {
        let draw = &self.draws[self.next];
        self.next += 1;
        Tensor::from_vec(draw.clone(), (1, 4, 2, 2), &Device::Cpu)
    }
}

fn noise_of(f: &Value) -> FixedNoise {
    let draws = f
        .get("noise")
        .and_then(|n| n.as_array())
        .map(|a| a.iter().map(floats).collect())
        .unwrap_or_default();
    FixedNoise { draws, next: 0 }
}

#[test]
fn k_diffusion_samplers_match_step_by_step() {
    let schedule = DiscreteSchedule::default();
    for name in [
        "k_euler",
        "k_euler_a",
        "k_heun",
        "k_dpm_2",
        "k_dpm_2_a",
        "k_lms",
        "k_dpmpp_2s_a",
        "k_dpmpp_2m",
        "k_dpmpp_sde",
    ] {
        let f = fixture(name);
        let kind = SamplerKind::from_horde_name(name).unwrap();
        for (schedule_name, run) in f["schedules"].as_object().unwrap() {
            let sigmas = floats(&run["sigmas"]);
            let ours = if schedule_name == "karras" {
                schedule.karras_sigmas(10)
            } else {
                schedule.sigmas(10)
            };
            let schedule_error = ours
                .iter()
                .zip(&sigmas)
                .map(|(a, b)| (a - b).abs() / b.max(1e-12))
                .fold(0.0, f64::max);
            assert!(
                schedule_error < 1e-9,
                "{name}/{schedule_name}: our sigmas differ by {schedule_error}"
            );
            let mut states = Vec::new();
            let mut noise = noise_of(&f);
            let mut calls = 0;
            let mut denoise_inner = gaussian_denoiser(&f);
            let mut denoise = |x: &Tensor, s: f64| {
                calls += 1;
                denoise_inner(x, s)
            };
            let out = samplers::run(
                kind,
                &mut denoise,
                latent(&run["x_start"]),
                &sigmas,
                &mut noise,
                &mut |_, _, x| states.push(x.clone()),
            )
            .unwrap();
            let steps = run["steps"].as_array().unwrap();
            for (i, state) in states.iter().enumerate().take(steps.len() - 1) {
                let diff = max_diff(state, &floats(&steps[i + 1]["x"]));
                assert!(
                    diff < TOLERANCE,
                    "{name}/{schedule_name} step {i}: off by {diff}"
                );
            }
            let diff = max_diff(&out, &floats(&run["final"]));
            assert!(
                diff < TOLERANCE,
                "{name}/{schedule_name} final: off by {diff}"
            );
            assert_eq!(
                calls,
                run["model_calls"].as_u64().unwrap() as usize,
                "{name}/{schedule_name}: model evaluations"
            );
            assert_eq!(
                noise.next,
                run["noise_calls"].as_u64().unwrap_or(0) as usize,
                "{name}/{schedule_name}: noise draws"
            );
        }
    }
}

#[test]
fn dpm_fast_and_adaptive_match() {
    let f = fixture("k_dpm_fast");
    let run = &f["schedules"]["native"];
    let (min, max) = (
        run["sigma_min"].as_f64().unwrap(),
        run["sigma_max"].as_f64().unwrap(),
    );
    let mut states = Vec::new();
    let out = samplers::dpm_fast(
        &mut gaussian_denoiser(&f),
        latent(&run["x_start"]),
        min,
        max,
        10,
        &mut |_, _, x| states.push(x.clone()),
    )
    .unwrap();
    let steps = run["steps"].as_array().unwrap();
    for (i, state) in states.iter().enumerate().take(steps.len() - 1) {
        assert!(
            max_diff(state, &floats(&steps[i + 1]["x"])) < TOLERANCE,
            "dpm_fast step {i}"
        );
    }
    assert!(max_diff(&out, &floats(&run["final"])) < TOLERANCE);

    let f = fixture("k_dpm_adaptive");
    let run = &f["schedules"]["native"];
    let (min, max) = (
        run["sigma_min"].as_f64().unwrap(),
        run["sigma_max"].as_f64().unwrap(),
    );
    let (out, info) = samplers::dpm_adaptive(
        &mut gaussian_denoiser(&f),
        latent(&run["x_start"]),
        min,
        max,
        &AdaptiveOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    let expected = &run["info"];
    assert_eq!(
        info.accepted,
        expected["n_accept"].as_u64().unwrap() as usize
    );
    assert_eq!(
        info.rejected,
        expected["n_reject"].as_u64().unwrap() as usize
    );
    assert_eq!(
        info.evaluations,
        run["model_calls"].as_u64().unwrap() as usize,
        "reports its model evaluations"
    );
    let diff = max_diff(&out, &floats(&run["final"]));
    assert!(diff < TOLERANCE, "dpm_adaptive final off by {diff}");
    // The worker's step budget caps the evaluations.
    let capped = AdaptiveOptions {
        max_evaluations: Some(12),
        ..Default::default()
    };
    let (_, info) = samplers::dpm_adaptive(
        &mut gaussian_denoiser(&f),
        latent(&run["x_start"]),
        min,
        max,
        &capped,
        &mut |_, _, _| {},
    )
    .unwrap();
    assert!(info.evaluations <= 12, "{info:?}");
}

/// diffusers works on scaled samples `x_t = x / sqrt(1 + σ²)`.
fn unscale(sample: &[f64], sigma: f64) -> Vec<f64> {
    sample
        .iter()
        .map(|v| v * (1.0 + sigma * sigma).sqrt())
        .collect()
}

#[test]
fn diffusers_schedulers_match() {
    let schedule = DiscreteSchedule::default();
    for (name, kind) in [
        ("ddim", SamplerKind::Ddim),
        ("lcm", SamplerKind::Lcm),
        ("dpmsolver", SamplerKind::DpmSolver),
    ] {
        let f = fixture(name);
        let run = &f["schedules"]["default"];
        let steps = run["steps"].as_array().unwrap();
        let sigmas = schedule.sigmas_for(kind, 10, false);
        for (i, step) in steps.iter().enumerate() {
            let t = step["timestep"].as_u64().unwrap() as usize;
            assert!(
                (sigmas[i] - schedule.sigmas[t]).abs() < 1e-12,
                "{name}: step {i} is at timestep {t}"
            );
        }
        let x_start = unscale(&floats(&run["sample_start"]), sigmas[0]);
        let mut states = Vec::new();
        let mut noise = noise_of(&f);
        let x = Tensor::from_vec(x_start, (1, 4, 2, 2), &Device::Cpu).unwrap();
        let mut out = samplers::run(
            kind,
            &mut gaussian_denoiser(&f),
            x,
            &sigmas,
            &mut noise,
            &mut |_, _, x| states.push(x.clone()),
        )
        .unwrap();
        for (i, state) in states.iter().enumerate().take(steps.len() - 1) {
            let expected = unscale(&floats(&steps[i]["prev_sample"]), sigmas[i + 1]);
            let diff = max_diff(state, &expected);
            assert!(diff < TOLERANCE, "{name} step {i}: off by {diff}");
        }
        if kind == SamplerKind::Ddim {
            let last = sigmas[sigmas.len() - 1];
            out = (out / (1.0 + last * last).sqrt()).unwrap();
        }
        let diff = max_diff(&out, &floats(&run["final"]));
        assert!(diff < TOLERANCE, "{name} final: off by {diff}");
    }
}

#[test]
fn deterministic_samplers_converge_to_the_closed_form() {
    let f = fixture("k_euler");
    let closed = floats(&f["closed_form_final"]);
    let schedule = DiscreteSchedule::default();
    for kind in [
        SamplerKind::Euler,
        SamplerKind::Heun,
        SamplerKind::Lms,
        SamplerKind::Dpm2,
        SamplerKind::Dpmpp2m,
    ] {
        let errors: Vec<f64> = [10, 40, 160]
            .iter()
            .map(|&n| {
                let sigmas = schedule.karras_sigmas(n);
                let x = (latent(&f["initial"]) * sigmas[0]).unwrap();
                let mut noise = noise_of(&f);
                let out = samplers::run(
                    kind,
                    &mut gaussian_denoiser(&f),
                    x,
                    &sigmas,
                    &mut noise,
                    &mut |_, _, _| {},
                )
                .unwrap();
                max_diff(&out, &closed)
            })
            .collect();
        assert!(
            errors[2] < errors[0] && errors[2] < 0.03,
            "{kind:?}: {errors:?}"
        );
    }
}

#[test]
fn every_sampler_is_sane_at_the_edges() {
    let f = fixture("k_euler");
    let schedule = DiscreteSchedule::default();
    for kind in SamplerKind::ALL {
        for steps in [1, 2, 30] {
            for karras in [false, true] {
                let sigmas = schedule.sigmas_for(kind, steps, karras);
                assert!(
                    sigmas.windows(2).all(|w| w[0] > w[1]),
                    "{kind:?} {steps} {karras}: sigmas decrease: {sigmas:?}"
                );
                let x = (latent(&f["initial"]) * sigmas[0]).unwrap();
                let mut noise = FixedNoise {
                    draws: vec![vec![0.1; 16]; 200],
                    next: 0,
                };
                // An extreme guidance-like denoiser: wildly off estimates must not make NaNs.
                let mut wild = |x: &Tensor, s: f64| (x * (1.0 / (1.0 + s * s)))? * 1e3;
                let out = samplers::run(kind, &mut wild, x, &sigmas, &mut noise, &mut |_, _, _| {})
                    .unwrap();
                let values = out
                    .flatten_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap();
                assert!(
                    values.iter().all(|v| v.is_finite()),
                    "{kind:?} steps {steps} karras {karras}: {values:?}"
                );
            }
        }
    }
}

#[test]
fn every_horde_name_is_a_sampler() {
    for name in [
        "k_lms",
        "k_heun",
        "k_euler",
        "k_euler_a",
        "k_dpm_2",
        "k_dpm_2_a",
        "k_dpm_fast",
        "k_dpm_adaptive",
        "k_dpmpp_2s_a",
        "k_dpmpp_2m",
        "dpmsolver",
        "k_dpmpp_sde",
        "lcm",
        "DDIM",
    ] {
        assert_eq!(
            SamplerKind::from_horde_name(name).map(|k| k.horde_name()),
            Some(name)
        );
    }
    assert_eq!(SamplerKind::from_horde_name("k_nonsense"), None);
}

#[test]
fn f32_runs_stay_within_a_thousandth_of_the_reference() {
    let schedule = DiscreteSchedule::default();
    for kind in SamplerKind::ALL {
        let name = kind.horde_name().to_lowercase();
        let f = fixture(if name == "k_dpm_fast" || name == "k_dpm_adaptive" {
            "k_euler"
        } else {
            &name
        });
        let (sigmas, x_start, reference) = match kind {
            SamplerKind::DpmFast | SamplerKind::DpmAdaptive => continue,
            SamplerKind::Ddim | SamplerKind::Lcm | SamplerKind::DpmSolver => {
                let run = &f["schedules"]["default"];
                let sigmas = schedule.sigmas_for(kind, 10, false);
                (
                    sigmas.clone(),
                    unscale(&floats(&run["sample_start"]), sigmas[0]),
                    floats(&run["final"]),
                )
            }
            _ => {
                let run = &f["schedules"]["karras"];
                (
                    floats(&run["sigmas"]),
                    floats(&run["x_start"]),
                    floats(&run["final"]),
                )
            }
        };
        let x = Tensor::from_vec(x_start, (1, 4, 2, 2), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let mu = latent(&f["denoiser"]["mu"]).to_dtype(DType::F32).unwrap();
        let s = f["denoiser"]["s"].as_f64().unwrap();
        let mut denoise = |x: &Tensor, sigma: f64| {
            let k = s * s / (s * s + sigma * sigma);
            (x - &mu)? * k + &mu
        };
        let mut noise = noise_of(&f);
        let mut f32_noise = F32Noise(&mut noise);
        let mut out = samplers::run(
            kind,
            &mut denoise,
            x,
            &sigmas,
            &mut f32_noise,
            &mut |_, _, _| {},
        )
        .unwrap();
        if kind == SamplerKind::Ddim {
            let last = sigmas[sigmas.len() - 1];
            out = (out / (1.0 + last * last).sqrt()).unwrap();
        }
        let out = out
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let scale = reference.iter().map(|v| v.abs()).fold(0.0, f64::max);
        let error = out
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
            / scale;
        assert!(error < 1e-3, "{name} in f32: relative error {error}");
    }
}

struct F32Noise<'a>(&'a mut FixedNoise);

impl Noise for F32Noise<'_> {
    fn like(&mut self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.like(x)?.to_dtype(DType::F32)
    }
}

#[test]
fn samplers_stay_finite_from_the_smallest_to_the_largest_image() {
    let schedule = DiscreteSchedule::default();
    // 64×64 and 3072×3072 images: latents of 8×8 and 384×384.
    for side in [8usize, 384] {
        let x = horde_diffusion::parts::SeededNoise::new(&[1])
            .sample(&[4, side, side], &Device::Cpu)
            .unwrap();
        for kind in SamplerKind::ALL {
            let sigmas = schedule.sigmas_for(kind, 3, true);
            // Guidance at cfg 100 overshoots wildly: the estimate is far outside the data.
            let mut denoise = |x: &Tensor, s: f64| (x * (-100.0 / (1.0 + s)))?.clamp(-1e4, 1e4);
            let mut noise = horde_diffusion::parts::SeededNoise::new(&[2]);
            let out = samplers::run(
                kind,
                &mut denoise,
                (&x * sigmas[0]).unwrap(),
                &sigmas,
                &mut noise,
                &mut |_, _, _| {},
            )
            .unwrap();
            let finite = out
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|v| v.is_finite());
            assert!(finite, "{kind:?} at {side}×{side} latents");
        }
    }
}
