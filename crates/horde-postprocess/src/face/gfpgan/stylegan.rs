//! GFPGAN's decoder: the "clean" StyleGAN2 generator (`StyleGAN2GeneratorCSFT` of
//! `stylegan2_clean_arch.py`, no compiled CUDA ops) whose features are modulated by the
//! U-Net's SFT conditions.
//!
//! A modulated convolution scales its weight's input channels by a style (an affine map of
//! one latent), then, unless it is a toRGB, rescales each output channel to unit norm
//! (demodulation). PyTorch runs the batch as one grouped convolution; here each sample's weight
//! is built and run as an ordinary convolution, which at batch 1 (one face at a time, as
//! GFPGANer runs) is the whole cost: the weight is `c_out × c_in × 9` values, the convolution
//! `H × W` times that. The StyleConv's `√2` gain and bias are folded into that convolution.

use super::in_place::{noise_then_leaky_relu_owned, sft_owned};
use super::resample::upsample2;
use super::{convolution, Noise};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use horde_diffusion::nn::Linear;

/// `ModulatedConv2d`: a weight `[1, c_out, c_in, k, k]` without bias and the linear map
/// (`modulation`) from a latent to one scale per input channel.
struct ModulatedConv {
    weight: Tensor,
    modulation: Linear,
    demodulate: bool,
}

impl ModulatedConv {
    fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        style: usize,
        demodulate: bool,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let weight = vb.get((1, c_out, c_in, k, k), "weight")?.squeeze(0)?;
        let m = vb.pp("modulation");
        let modulation = Linear::new(m.get((c_in, style), "weight")?, Some(m.get(c_in, "bias")?));
        Ok(ModulatedConv {
            weight,
            modulation,
            demodulate,
        })
    }

    /// The weight for one sample's latent (`[style]`), times `gain`, as `[c_out, c_in, k, k]`.
    fn weight_for(&self, latent: &Tensor, gain: f64) -> Result<Tensor> {
        let scales = self.modulation.forward(&latent.unsqueeze(0)?)?;
        let weight = self.weight.broadcast_mul(&scales.reshape((1, (), 1, 1))?)?;
        if !self.demodulate {
            return if gain == 1.0 {
                Ok(weight)
            } else {
                weight * gain
            };
        }
        let norms = (weight.sqr()?.sum_keepdim((1, 2, 3))? + 1e-8)?.sqrt()?;
        let demod = (norms.recip()? * gain)?;
        weight.broadcast_mul(&demod)
    }

    /// `x` (`[B, c_in, H, W]`) convolved with each sample's weight, plus `bias` (`[c_out]`).
    fn forward(&self, x: &Tensor, latents: &Tensor, gain: f64, bias: &Tensor) -> Result<Tensor> {
        let batch = x.dim(0)?;
        let outputs = (0..batch)
            .map(|b| {
                let weight = self.weight_for(&latents.get(b)?, gain)?;
                convolution(weight, bias.clone())?.forward(&x.narrow(0, b, 1)?)
            })
            .collect::<Result<Vec<_>>>()?;
        if batch == 1 {
            return Ok(outputs.into_iter().next().expect("one sample"));
        }
        Tensor::cat(&outputs, 0)
    }
}

/// `StyleConv`: modulated 3×3 convolution (after a bilinear ×2 upsampling for the first of a
/// level), times `√2`, plus the noise map times a learned strength, plus a bias, leaky ReLU.
struct StyleConv {
    conv: ModulatedConv,
    upsample: bool,
    noise_strength: Tensor,
    bias: Tensor,
}

impl StyleConv {
    fn new(
        c_in: usize,
        c_out: usize,
        style: usize,
        upsample: bool,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        Ok(StyleConv {
            conv: ModulatedConv::new(c_in, c_out, 3, style, true, vb.pp("modulated_conv"))?,
            upsample,
            noise_strength: vb.get(1, "weight")?,
            bias: vb.get((1, c_out, 1, 1), "bias")?.flatten_all()?,
        })
    }

    fn forward(&self, x: &Tensor, latents: &Tensor, noise: &Tensor) -> Result<Tensor> {
        let x = if self.upsample {
            upsample2(x)?
        } else {
            x.clone()
        };
        let out = self
            .conv
            .forward(&x, latents, std::f64::consts::SQRT_2, &self.bias)?;
        noise_then_leaky_relu_owned(out, noise, &self.noise_strength)
    }
}

/// `ToRGB`: a modulated 1×1 convolution to three channels (not demodulated) plus a bias, added
/// to the previous level's RGB upsampled.
struct ToRgb {
    conv: ModulatedConv,
    bias: Tensor,
}

impl ToRgb {
    fn new(c_in: usize, style: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(ToRgb {
            conv: ModulatedConv::new(c_in, 3, 1, style, false, vb.pp("modulated_conv"))?,
            bias: vb.get((1, 3, 1, 1), "bias")?.flatten_all()?,
        })
    }

    fn forward(&self, x: &Tensor, latents: &Tensor, skip: Option<&Tensor>) -> Result<Tensor> {
        let rgb = self.conv.forward(x, latents, 1.0, &self.bias)?;
        match skip {
            Some(skip) => rgb + upsample2(skip)?,
            None => Ok(rgb),
        }
    }
}

/// One resolution of the decoder: upsampling StyleConv, SFT, StyleConv, toRGB.
struct Level {
    up: StyleConv,
    conv: StyleConv,
    to_rgb: ToRgb,
}

/// The SFT conditions of one level: `features · scale + shift` on the second half of the
/// channels (`sft_half`, as GFPGAN v1.3/v1.4) or on all of them.
pub struct Condition {
    pub scale: Tensor,
    pub shift: Tensor,
}

/// `StyleGAN2GeneratorCSFT` with `input_is_latent=True`: the style MLP of the checkpoint is
/// never run (GFPGAN's encoder gives the latents directly), so it is not loaded.
pub(super) struct Decoder {
    constant: Tensor,
    first: StyleConv,
    first_rgb: ToRgb,
    levels: Vec<Level>,
    stored_noise: Vec<Tensor>,
    sft_half: bool,
}

impl Decoder {
    /// `channels[l]`: the feature channels at resolution `4·2^l`.
    pub(super) fn new(
        channels: &[usize],
        style: usize,
        sft_half: bool,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let c4 = channels[0];
        let mut levels = Vec::with_capacity(channels.len() - 1);
        for (l, pair) in channels.windows(2).enumerate() {
            let (c_in, c_out) = (pair[0], pair[1]);
            let convs = vb.pp("style_convs");
            levels.push(Level {
                up: StyleConv::new(c_in, c_out, style, true, convs.pp(2 * l))?,
                conv: StyleConv::new(c_out, c_out, style, false, convs.pp(2 * l + 1))?,
                to_rgb: ToRgb::new(c_out, style, vb.pp("to_rgbs").pp(l))?,
            });
        }
        let stored_noise = (0..2 * levels.len() + 1)
            .map(|j| {
                let side = 1 << ((j + 5) / 2);
                vb.pp("noises")
                    .get((1, 1, side, side), &format!("noise{j}"))
            })
            .collect::<Result<_>>()?;
        Ok(Decoder {
            constant: vb.get((1, c4, 4, 4), "constant_input.weight")?,
            first: StyleConv::new(c4, c4, style, false, vb.pp("style_conv1"))?,
            first_rgb: ToRgb::new(c4, style, vb.pp("to_rgb1"))?,
            levels,
            stored_noise,
            sft_half,
        })
    }

    /// The image (`[B, 3, S, S]`) from per-layer latents (`[B, layers, style]`) and one
    /// [`Condition`] per level above 4².
    pub(super) fn forward(
        &self,
        latents: &Tensor,
        conditions: &[Condition],
        noise: Noise,
    ) -> Result<Tensor> {
        let batch = latents.dim(0)?;
        let latent = |i: usize| latents.narrow(1, i, 1)?.squeeze(1);
        let noise = |j: usize| self.noise(j, batch, noise);
        let constant = self
            .constant
            .broadcast_as((batch, self.constant.dim(1)?, 4, 4))?;
        let mut out = self.first.forward(&constant, &latent(0)?, &noise(0)?)?;
        let mut rgb = self.first_rgb.forward(&out, &latent(1)?, None)?;
        for (l, level) in self.levels.iter().enumerate() {
            let i = 2 * l + 1;
            out = level.up.forward(&out, &latent(i)?, &noise(i)?)?;
            if let Some(condition) = conditions.get(l) {
                out = self.sft(out, condition)?;
            }
            out = level.conv.forward(&out, &latent(i + 1)?, &noise(i + 1)?)?;
            rgb = level.to_rgb.forward(&out, &latent(i + 2)?, Some(&rgb))?;
        }
        Ok(rgb)
    }

    /// SFT on the second half of the channels (`sft_half`) or on all of them.
    fn sft(&self, features: Tensor, condition: &Condition) -> Result<Tensor> {
        let first = if self.sft_half {
            features.dim(1)? / 2
        } else {
            0
        };
        sft_owned(features, first, &condition.scale, &condition.shift)
    }

    /// The noise map of StyleConv `j`: the checkpoint's (`[1, 1, side, side]`, broadcast over
    /// the batch) or freshly drawn per sample.
    fn noise(&self, j: usize, batch: usize, noise: Noise) -> Result<Tensor> {
        let stored = &self.stored_noise[j];
        match noise {
            Noise::Stored => Ok(stored.clone()),
            Noise::Fresh => {
                let (_, _, h, w) = stored.dims4()?;
                Tensor::randn(0f32, 1f32, (batch, 1, h, w), stored.device())
            }
        }
    }
}
