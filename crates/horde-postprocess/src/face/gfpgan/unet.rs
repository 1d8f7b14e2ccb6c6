//! GFPGAN's encoder: a U-Net over the degraded face whose bottom (4×4) gives the per-layer
//! StyleGAN2 latents (`final_linear`) and whose upward path gives, at every resolution above
//! 4², the SFT scale and shift that modulate the decoder's features (`condition_scale`,
//! `condition_shift`). The `toRGB` convolutions of the upward path only feed training losses
//! (GFPGANer calls with `return_rgb=False`), so they are not loaded.

use super::in_place::leaky_relu_owned;
use super::resample::{downsample2, upsample2};
use super::stylegan::Condition;
use super::{convolution, Shape};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use horde_diffusion::nn::{conv, Conv2d, Linear};

/// `ResBlock`: 3×3 conv, bilinear resampling, 3×3 conv (leaky ReLU after each), plus a 1×1
/// convolution without bias of the resampled input.
struct ResBlock {
    conv1: Conv2d,
    conv2: Conv2d,
    skip: Conv2d,
    up: bool,
}

impl ResBlock {
    fn new(c_in: usize, c_out: usize, up: bool, vb: VarBuilder<'_>) -> Result<Self> {
        let skip = vb.pp("skip").get((c_out, c_in, 1, 1), "weight")?;
        let no_bias = Tensor::zeros(c_out, skip.dtype(), skip.device())?;
        Ok(ResBlock {
            conv1: conv(c_in, c_in, 3, 1, 1, vb.pp("conv1"))?,
            conv2: conv(c_in, c_out, 3, 1, 1, vb.pp("conv2"))?,
            skip: convolution(skip, no_bias)?,
            up,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let resample = |t: &Tensor| {
            if self.up {
                upsample2(t)
            } else {
                downsample2(t)
            }
        };
        let out = leaky_relu_owned(self.conv1.forward(x)?)?;
        let out = leaky_relu_owned(self.conv2.forward(&resample(&out)?)?)?;
        // A 1×1 convolution commutes with bilinear resampling (both linear, one across
        // channels, one across pixels): run it on the smaller of the two maps.
        let skip = if self.up {
            upsample2(&self.skip.forward(x)?)?
        } else {
            self.skip.forward(&downsample2(x)?)?
        };
        out + skip
    }
}

/// `Sequential(conv 3×3, LeakyReLU(0.2), conv 3×3)`: one SFT condition from the features.
struct ConditionNet {
    conv1: Conv2d,
    conv2: Conv2d,
}

impl ConditionNet {
    fn new(c: usize, c_out: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(ConditionNet {
            conv1: conv(c, c, 3, 1, 1, vb.pp("0"))?,
            conv2: conv(c, c_out, 3, 1, 1, vb.pp("2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv2
            .forward(&leaky_relu_owned(self.conv1.forward(x)?)?)
    }
}

/// The U-Net, the style code and the SFT conditions.
pub(super) struct Encoder {
    first: Conv2d,
    down: Vec<ResBlock>,
    final_conv: Conv2d,
    final_linear: Linear,
    up: Vec<ResBlock>,
    scale: Vec<ConditionNet>,
    shift: Vec<ConditionNet>,
    latents: usize,
    style: usize,
}

impl Encoder {
    pub(super) fn new(shape: &Shape, vb: VarBuilder<'_>) -> Result<Self> {
        let u = &shape.unet_channels;
        let top = u.len() - 1;
        let down = (0..top)
            .map(|k| {
                ResBlock::new(
                    u[top - k],
                    u[top - k - 1],
                    false,
                    vb.pp("conv_body_down").pp(k),
                )
            })
            .collect::<Result<_>>()?;
        let up = (0..top)
            .map(|k| ResBlock::new(u[k], u[k + 1], true, vb.pp("conv_body_up").pp(k)))
            .collect::<Result<_>>()?;
        let condition = |name: &str, k: usize| {
            ConditionNet::new(u[k + 1], shape.condition_channels[k], vb.pp(name).pp(k))
        };
        let linear_out = shape.final_linear_width();
        let fl = vb.pp("final_linear");
        Ok(Encoder {
            first: conv(3, u[top], 1, 1, 0, vb.pp("conv_body_first"))?,
            down,
            final_conv: conv(u[0], u[0], 3, 1, 1, vb.pp("final_conv"))?,
            final_linear: Linear::new(
                fl.get((linear_out, u[0] * 16), "weight")?,
                Some(fl.get(linear_out, "bias")?),
            ),
            up,
            scale: (0..top)
                .map(|k| condition("condition_scale", k))
                .collect::<Result<_>>()?,
            shift: (0..top)
                .map(|k| condition("condition_shift", k))
                .collect::<Result<_>>()?,
            latents: shape.num_latent(),
            style: shape.num_style_feat,
        })
    }

    /// The latents (`[B, layers, style]`, one per decoder layer, the same for all when the
    /// checkpoint has a single one) and the SFT conditions of `x` (`[B, 3, S, S]`).
    pub(super) fn forward(&self, x: &Tensor) -> Result<(Tensor, Vec<Condition>)> {
        let batch = x.dim(0)?;
        let mut feat = leaky_relu_owned(self.first.forward(x)?)?;
        let mut skips = Vec::with_capacity(self.down.len());
        for block in &self.down {
            feat = block.forward(&feat)?;
            skips.push(feat.clone());
        }
        feat = leaky_relu_owned(self.final_conv.forward(&feat)?)?;
        let code = self.final_linear.forward(&feat.flatten_from(1)?)?;
        let latents = code.reshape((batch, (), self.style))?;
        let latents = if latents.dim(1)? == self.latents {
            latents
        } else {
            latents
                .broadcast_as((batch, self.latents, self.style))?
                .contiguous()?
        };
        let mut conditions = Vec::with_capacity(self.up.len());
        for (k, block) in self.up.iter().enumerate() {
            feat = block.forward(&(feat + &skips[skips.len() - 1 - k])?)?;
            conditions.push(Condition {
                scale: self.scale[k].forward(&feat)?,
                shift: self.shift[k].forward(&feat)?,
            });
        }
        Ok((latents, conditions))
    }
}
