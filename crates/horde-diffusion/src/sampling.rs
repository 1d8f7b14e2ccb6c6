//! Noise schedules and samplers, k-diffusion style: a sampler is a plain function of a denoiser
//! `D(x, σ) → x̂₀`, a list of sigmas and a noise source, so it is tested without any network and
//! its randomness comes only from our seeded generator (candle's CPU RNG cannot be seeded).

use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Betas of the Stable Diffusion training schedule ("scaled linear", 1000 steps).
pub(crate) fn training_alphas_cumprod() -> Vec<f64> {
    let (start, end, n) = (0.00085f64.sqrt(), 0.012f64.sqrt(), 1000);
    let mut product = 1.0;
    (0..n)
        .map(|i| {
            let beta = (start + (end - start) * i as f64 / (n - 1) as f64).powi(2);
            product *= 1.0 - beta;
            product
        })
        .collect()
}

/// The model's 1000 discrete noise levels, and conversions between σ and (fractional) timestep.
#[derive(Debug, Clone)]
pub struct DiscreteSchedule {
    pub sigmas: Vec<f64>,
    log_sigmas: Vec<f64>,
}

impl Default for DiscreteSchedule {
    fn default() -> Self {
        Self::new(&training_alphas_cumprod())
    }
}

impl DiscreteSchedule {
    pub fn new(alphas_cumprod: &[f64]) -> Self {
        let sigmas: Vec<f64> = alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect();
        let log_sigmas = sigmas.iter().map(|s| s.ln()).collect();
        DiscreteSchedule { sigmas, log_sigmas }
    }

    pub fn sigma_min(&self) -> f64 {
        self.sigmas[0]
    }

    pub fn sigma_max(&self) -> f64 {
        *self.sigmas.last().expect("non-empty schedule")
    }

    /// σ at fractional timestep `t`, interpolated in log σ.
    pub fn t_to_sigma(&self, t: f64) -> f64 {
        let low = t.floor().clamp(0.0, (self.sigmas.len() - 1) as f64) as usize;
        let high = (low + 1).min(self.sigmas.len() - 1);
        let w = t - low as f64;
        ((1.0 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()
    }

    /// The fractional timestep of σ (inverse of `t_to_sigma`), as k-diffusion's `sigma_to_t`.
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let log_sigma = sigma.ln();
        let n = self.log_sigmas.len();
        let low = self
            .log_sigmas
            .iter()
            .rposition(|&l| l <= log_sigma)
            .unwrap_or(0)
            .min(n - 2);
        let high = low + 1;
        let (l, h) = (self.log_sigmas[low], self.log_sigmas[high]);
        let w = ((l - log_sigma) / (l - h)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * high as f64
    }

    /// `n` sigmas evenly spaced in timestep from the highest to the lowest, then 0.
    pub fn sigmas(&self, n: usize) -> Vec<f64> {
        let top = (self.sigmas.len() - 1) as f64;
        let mut out: Vec<f64> = (0..n)
            .map(|i| {
                if n == 1 {
                    top
                } else {
                    top * (1.0 - i as f64 / (n - 1) as f64)
                }
            })
            .map(|t| self.t_to_sigma(t))
            .collect();
        out.push(0.0);
        out
    }

    /// The schedule each sampler runs on: DDIM, LCM and `dpmsolver` have diffusers' own
    /// timesteps; the k-diffusion samplers the model's (or, with `karras`, Karras') sigmas.
    pub fn sigmas_for(
        &self,
        kind: crate::samplers::SamplerKind,
        steps: usize,
        karras: bool,
    ) -> Vec<f64> {
        use crate::samplers::SamplerKind;
        match (kind, karras) {
            (SamplerKind::Ddim, _) => self.ddim_sigmas(steps),
            (SamplerKind::Lcm, _) => self.lcm_sigmas(steps),
            (SamplerKind::DpmSolver, false) => self.dpmsolver_sigmas(steps),
            (_, true) => self.karras_sigmas(steps),
            (_, false) => self.sigmas(steps),
        }
    }

    /// diffusers' LCM timesteps (50 original steps, evenly skipped) as sigmas, then 0.
    pub fn lcm_sigmas(&self, n: usize) -> Vec<f64> {
        let origin: Vec<usize> = (1..=50).map(|i| i * 20 - 1).rev().collect();
        let mut out: Vec<f64> = (0..n.clamp(1, 50))
            .map(|i| self.sigmas[origin[i * 50 / n.clamp(1, 50)]])
            .collect();
        out.push(0.0);
        out
    }

    /// diffusers' DPMSolverMultistep timesteps ("linspace", rounded) as sigmas, then 0.
    pub fn dpmsolver_sigmas(&self, n: usize) -> Vec<f64> {
        let top = (self.sigmas.len() - 1) as f64;
        let mut out: Vec<f64> = (0..n)
            .map(|i| round_half_even(top * (n - i) as f64 / n as f64) as usize)
            .map(|t| self.sigmas[t])
            .collect();
        out.push(0.0);
        out
    }

    /// The Karras et al. (2022) schedule between this model's extreme sigmas, then 0.
    pub fn karras_sigmas(&self, n: usize) -> Vec<f64> {
        karras_sigmas(n, self.sigma_min(), self.sigma_max(), 7.0)
    }

    /// The timesteps of diffusers' DDIM ("leading" spacing, offset 1) as sigmas, ending at the
    /// lowest training σ.
    pub fn ddim_sigmas(&self, n: usize) -> Vec<f64> {
        let ratio = self.sigmas.len() / n.max(1);
        let mut out: Vec<f64> = (0..n)
            .rev()
            .map(|i| self.sigmas[(i * ratio + 1).min(self.sigmas.len() - 1)])
            .collect();
        out.push(self.sigma_min());
        out
    }
}

/// numpy's `round`: halves go to the even neighbour.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

pub(crate) fn karras_sigmas(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    let mut out: Vec<f64> = (0..n)
        .map(|i| {
            if n == 1 {
                0.0
            } else {
                i as f64 / (n - 1) as f64
            }
        })
        .map(|ramp| (max_inv + ramp * (min_inv - max_inv)).powf(rho))
        .collect();
    out.push(0.0);
    out
}

/// Standard normal noise from seeded generators, one stream per image, so an image's noise does
/// not depend on which batch it was generated in.
pub struct SeededNoise {
    streams: Vec<ChaCha8Rng>,
}

impl SeededNoise {
    pub fn new(seeds: &[u64]) -> Self {
        SeededNoise {
            streams: seeds
                .iter()
                .map(|&s| ChaCha8Rng::seed_from_u64(s))
                .collect(),
        }
    }

    /// A `[batch, rest…]` tensor of noise; row `i` comes from stream `i`.
    pub fn sample(&mut self, per_item: &[usize], device: &candle_core::Device) -> Result<Tensor> {
        let count: usize = per_item.iter().product();
        let mut values = Vec::with_capacity(count * self.streams.len());
        for rng in &mut self.streams {
            values.extend((0..count).map(|_| standard_normal(rng) as f32));
        }
        let mut shape = vec![self.streams.len()];
        shape.extend_from_slice(per_item);
        Tensor::from_vec(values, shape, device)
    }
}

/// Box–Muller transform of two uniform draws.
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A source of fresh noise shaped like the latents.
pub trait Noise {
    fn like(&mut self, x: &Tensor) -> Result<Tensor>;
}

impl Noise for SeededNoise {
    fn like(&mut self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        self.sample(&dims[1..], x.device())?.to_dtype(x.dtype())
    }
}

/// σ_down and σ_up of an ancestral step with η = 1.
pub(crate) fn ancestral_step(sigma_from: f64, sigma_to: f64) -> (f64, f64) {
    if sigma_to == 0.0 {
        return (0.0, 0.0);
    }
    let up = (sigma_to.powi(2) * (sigma_from.powi(2) - sigma_to.powi(2)) / sigma_from.powi(2))
        .sqrt()
        .min(sigma_to);
    let down = (sigma_to.powi(2) - up.powi(2)).sqrt();
    (down, up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_matches_stable_diffusion() {
        let s = DiscreteSchedule::default();
        assert!((s.sigma_min() - 0.029168).abs() < 1e-5, "{}", s.sigma_min());
        assert!(
            (s.sigma_max() - 14.614642).abs() < 1e-4,
            "{}",
            s.sigma_max()
        );
        for t in [0.0, 10.5, 500.25, 999.0] {
            assert!((s.sigma_to_t(s.t_to_sigma(t)) - t).abs() < 1e-6, "{t}");
        }
        let sigmas = s.sigmas(10);
        assert_eq!(sigmas.len(), 11);
        assert!(
            sigmas.windows(2).all(|w| w[0] > w[1]),
            "decreasing: {sigmas:?}"
        );
        let karras = s.karras_sigmas(10);
        assert!(
            (karras[0] - s.sigma_max()).abs() < 1e-9 && (karras[9] - s.sigma_min()).abs() < 1e-9
        );
        let ddim = s.ddim_sigmas(10);
        assert_eq!(ddim.len(), 11);
        assert!(
            (ddim[0] - s.sigmas[901]).abs() < 1e-12 && (ddim[10] - s.sigma_min()).abs() < 1e-12
        );
    }

    /// The exact denoiser of N(μ, s²) data: Euler converges to the closed-form ODE solution.
    #[test]
    fn euler_converges_on_gaussian_data() {
        let (mu, s) = (0.3f64, 0.5f64);
        let sigma_max = 10.0;
        let x0 = 2.0f64;
        let exact =
            mu + (x0 * sigma_max - mu) * (s * s).sqrt() / (s * s + sigma_max * sigma_max).sqrt();
        let mut errors = Vec::new();
        for steps in [10, 40, 160] {
            let mut denoise = |x: &Tensor, sigma: f64| -> Result<Tensor> {
                let k = s * s / (s * s + sigma * sigma);
                x.affine(k, mu * (1.0 - k))
            };
            let sigmas = karras_sigmas(steps, 0.002, sigma_max, 7.0);
            let x = Tensor::new(&[x0 * sigma_max], &Device::Cpu).unwrap();
            let out = crate::samplers::euler(&mut denoise, x, &sigmas, &mut |_, _, _| {})
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()[0];
            errors.push((out - exact).abs());
        }
        // First order: four times the steps, about a quarter of the error.
        assert!(
            errors[0] > 3.0 * errors[1] && errors[1] > 3.0 * errors[2] && errors[2] < 0.02,
            "{errors:?}"
        );
    }

    #[test]
    fn seeded_noise_is_per_image_and_standard() {
        let a = SeededNoise::new(&[7, 8])
            .sample(&[4, 8, 8], &Device::Cpu)
            .unwrap();
        let b = SeededNoise::new(&[8])
            .sample(&[4, 8, 8], &Device::Cpu)
            .unwrap();
        let a1 = a
            .get(1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(
            a1,
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "image noise is independent of batch"
        );
        let big = SeededNoise::new(&[1])
            .sample(&[100_000], &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .remove(0);
        let mean = big.iter().map(|&v| v as f64).sum::<f64>() / big.len() as f64;
        let var = big.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / big.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "mean {mean} var {var}"
        );
    }
}
