//! The encoder of image-to-image: pixels in [-1, 1] to the latent distribution (LDM `Encoder`
//! then `quant_conv`), and from it the latents the UNet works on — the distribution's mean, or
//! a seeded sample `mean + std·noise` — scaled by the family's factor, the inverse of what
//! `pipeline` does before decoding.
//!
//! Written from the LDM sources with their tensor names (`first_stage_model.encoder.*`,
//! `first_stage_model.quant_conv`), as the decoder is; `tests/diffusers_numbers.rs` pins the
//! mean, a sample with recorded noise and the scaled latents to diffusers' `AutoencoderKL`.
//!
//! Large images encode in bands of rows, to the same numbers with less memory, as the decoder
//! decodes: the memory peaks at full resolution (`[1, 128, 1024, 1024]` is 512 MiB in f32),
//! where every map is computed a band at a time with the whole map's group-norm statistics
//! and the rows each convolution reaches from its neighbours (`super::banded`). The stride-2
//! downsampling reads rows `2r .. 2r + 3` of its input for output row `r`, with LDM's one row
//! and column of zeros after the last; a band reads exactly those. The mid block (attention
//! over every position) runs whole, at an eighth of the resolution, where it is small. Nothing
//! is approximated: a banded encode equals the whole one to f32 rounding.

use super::banded::{band_rows, bands, convolve_in_bands, BAND_PIXELS};
use super::{Level, MidBlock, ResnetBlock, BANDED_MIN_PIXELS};
use crate::config::{Family, VaeConfig};
use crate::nn;
use crate::nn::{Conv2d, GroupNorm};
use crate::sampling::{Noise, SeededNoise};
use crate::Error;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;

/// The bounds LDM's `DiagonalGaussianDistribution` (and diffusers') clamps the log-variance to.
const LOGVAR_MIN: f32 = -30.0;
const LOGVAR_MAX: f32 = 20.0;

/// Which latents an image encodes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LatentDraw {
    /// The distribution's mean: the same latents every time.
    Mean,
    /// A sample `mean + std·noise` (diffusers' image-to-image default), the noise from the
    /// engine's seeded noise (`SeededNoise`), one fresh stream per image's seed. A pipeline
    /// that also draws its initial noise from those seeds should instead sample with
    /// [`LatentDistribution::sample`] on the stream it draws from, so the two noises differ.
    Sample { seeds: Vec<u64> },
}

/// LDM's `DiagonalGaussianDistribution` over the unscaled latents, in f32.
#[derive(Debug, Clone)]
pub struct LatentDistribution {
    pub mean: Tensor,
    /// The log-variance, clamped to [-30, 20].
    pub logvar: Tensor,
}

impl LatentDistribution {
    /// The distribution of `quant_conv`'s output: the first half of its channels is the mean,
    /// the second the log-variance.
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let moments = moments.to_dtype(DType::F32)?;
        let z = moments.dim(1)? / 2;
        Ok(LatentDistribution {
            mean: moments.narrow(1, 0, z)?.contiguous()?,
            logvar: moments.narrow(1, z, z)?.clamp(LOGVAR_MIN, LOGVAR_MAX)?,
        })
    }

    /// `exp(logvar / 2)`.
    pub fn std(&self) -> Result<Tensor> {
        (&self.logvar * 0.5)?.exp()
    }

    /// `mean + std·noise`, `noise` shaped as the mean.
    pub fn sample_with(&self, noise: &Tensor) -> Result<Tensor> {
        &self.mean + (self.std()? * noise.to_dtype(DType::F32)?)?
    }

    /// A sample with noise drawn from `noise`: image-to-image draws it from the stream its
    /// initial noise comes from afterwards, as diffusers draws both from one generator.
    pub fn sample(&self, noise: &mut dyn Noise) -> Result<Tensor> {
        self.sample_with(&noise.like(&self.mean)?)
    }
}

#[derive(Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    down: Vec<Level>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    quant_conv: Conv2d,
}

/// LDM's padding before a stride-2 downsampling: one row and one column of zeros after the
/// last (bottom and right), none before.
fn ldm_pad(xs: &Tensor) -> Result<Tensor> {
    xs.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)
}

impl Encoder {
    pub(super) fn new(
        config: &VaeConfig,
        vb: VarBuilder<'_>,
        quant_vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let base = config.base_channels;
        let conv_in = nn::conv(3, base, 3, 1, 1, vb.pp("conv_in"))?;
        let mut ch = base;
        let mut down = Vec::new();
        for (i, mult) in config.channel_mult.iter().enumerate() {
            let vb_l = vb.pp(format!("down.{i}"));
            let mut blocks = Vec::new();
            for j in 0..config.num_res_blocks {
                blocks.push(ResnetBlock::new(
                    ch,
                    base * mult,
                    vb_l.pp(format!("block.{j}")),
                )?);
                ch = base * mult;
            }
            let resample = if i + 1 < config.channel_mult.len() {
                Some(nn::conv(ch, ch, 3, 2, 0, vb_l.pp("downsample.conv"))?)
            } else {
                None
            };
            down.push(Level { blocks, resample });
        }
        let z2 = 2 * config.latent_channels;
        Ok(Encoder {
            conv_in,
            down,
            mid: MidBlock::new(ch, vb.pp("mid"))?,
            norm_out: nn::group_norm(ch, 1e-6, vb.pp("norm_out"))?,
            conv_out: nn::conv(ch, z2, 3, 1, 1, vb.pp("conv_out"))?,
            quant_conv: nn::conv1x1(z2, z2, quant_vb)?,
        })
    }

    /// Pixels in [-1, 1] (`[batch, 3, H, W]`) to the latent distribution (unscaled): images of
    /// the decoder's [`BANDED_MIN_PIXELS`] or more (twice 512×512) in bands, smaller ones
    /// whole (BENCHMARKS.md, "VAE encode", has both at 512²).
    pub fn distribution(&self, pixels: &Tensor) -> Result<LatentDistribution> {
        let (_, _, h, w) = pixels.dims4()?;
        let moments = if encodes_in_bands(h, w) {
            self.moments_in_bands(pixels, BAND_PIXELS)?
        } else {
            self.moments_whole(pixels)?
        };
        LatentDistribution::from_moments(&moments)
    }

    /// `quant_conv`'s output (mean and log-variance, unclamped), the whole batch at once.
    pub fn moments_whole(&self, pixels: &Tensor) -> Result<Tensor> {
        // Run once per job: the layers keep no rearranged weights (`kernels::kept`).
        crate::kernels::kept::without_keeping(|| {
            self.quant_conv
                .forward(&self.features_whole(pixels, ldm_pad)?)
        })
    }

    /// The encoder's output before `quant_conv`, each map whole, each downsampling padded by
    /// `pad` (LDM's [`ldm_pad`]; the tests try another).
    fn features_whole(
        &self,
        pixels: &Tensor,
        pad: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut h = self.conv_in.forward(pixels)?;
        for level in &self.down {
            for block in &level.blocks {
                h = block.forward(&h)?;
            }
            if let Some(conv) = &level.resample {
                h = conv.forward(&pad(&h)?)?;
            }
        }
        self.tail(&self.mid.forward(&h)?)
    }

    /// `norm_out`, SiLU and `conv_out`, at the latents' size.
    fn tail(&self, h: &Tensor) -> Result<Tensor> {
        self.conv_out.forward(&self.norm_out.forward_silu(h)?)
    }

    /// [`Encoder::moments_whole`] in bands of about `band_pixels` output pixels per
    /// convolution, one image at a time. Zero padding only (not inside `nn::with_tiling`).
    pub fn moments_in_bands(&self, pixels: &Tensor, band_pixels: usize) -> Result<Tensor> {
        crate::kernels::kept::without_keeping(|| {
            let images = (0..pixels.dim(0)?)
                .map(|i| self.image_moments_in_bands(&pixels.narrow(0, i, 1)?, band_pixels))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&images, 0)
        })
    }

    fn image_moments_in_bands(&self, pixels: &Tensor, band_pixels: usize) -> Result<Tensor> {
        let (_, _, height, width) = pixels.dims4()?;
        let mut h = convolve_in_bands(
            &self.conv_in,
            height,
            band_rows(width, band_pixels),
            |reach| pixels.narrow(2, reach.start, reach.len()),
        )?;
        for level in &self.down {
            for block in &level.blocks {
                h = block.forward_in_bands(&h, band_pixels)?;
            }
            if let Some(conv) = &level.resample {
                h = downsample_in_bands(conv, &h, band_pixels)?;
            }
        }
        self.quant_conv.forward(&self.tail(&self.mid.forward(&h)?)?)
    }
}

/// Whether [`Encoder::distribution`] encodes images of `height`×`width` in bands.
fn encodes_in_bands(height: usize, width: usize) -> bool {
    height * width >= BANDED_MIN_PIXELS && !nn::tiling()
}

/// `conv(ldm_pad(xs))` (stride 2, no padding of its own) in bands of output rows: output row
/// `r` reads input rows `2r ..= 2r + 2`, the last of which is LDM's row of zeros when it is
/// the map's height (even heights only reach it).
fn downsample_in_bands(conv: &Conv2d, xs: &Tensor, band_pixels: usize) -> Result<Tensor> {
    let (batch, _, height, width) = xs.dims4()?;
    let (out_height, out_width) = (height / 2, width / 2);
    let rows = band_rows(out_width, band_pixels);
    let mut out: Option<Tensor> = None;
    for band in bands(out_height, rows) {
        let first = 2 * band.start;
        let end = (2 * band.end + 1).min(height);
        let below = usize::from(2 * band.end + 1 > height);
        let input = xs
            .narrow(2, first, end - first)?
            .pad_with_zeros(2, 0, below)?
            .pad_with_zeros(3, 0, 1)?;
        let y = conv.forward(&input)?;
        let out = match &out {
            Some(out) => out,
            None => {
                let shape = (batch, y.dim(1)?, out_height, out_width);
                out.insert(Tensor::zeros(shape, y.dtype(), y.device())?)
            }
        };
        out.slice_set(&y, 2, band.start)?;
    }
    out.ok_or_else(|| candle_core::Error::Msg("an empty map has no bands".into()))
}

/// RGB images (8 bits, all of one size) as pixels in [-1, 1], `[batch, 3, H, W]`, as
/// diffusers' image processor normalises them (`2·(v / 255) − 1`).
pub fn pixels_of(images: &[RgbImage], device: &Device) -> Result<Tensor> {
    let (w, h) = images
        .first()
        .map(|i| i.dimensions())
        .ok_or_else(|| candle_core::Error::Msg("no image to encode".into()))?;
    let mut values = Vec::with_capacity(images.len() * 3 * (w * h) as usize);
    for image in images {
        for channel in 0..3 {
            values.extend(
                image
                    .pixels()
                    .map(|p| f32::from(p.0[channel]) / 127.5 - 1.0),
            );
        }
    }
    Tensor::from_vec(values, (images.len(), 3, h as usize, w as usize), device)
}

/// Images to the latents a model of `family` samples from (image-to-image's starting point):
/// the encoder's mean or a seeded sample, times the family's latent scale, in `dtype`. The
/// images must share one size, a multiple of the VAE's downscale (8); a sample takes one
/// seed per image.
pub fn encode_images(
    encoder: &Encoder,
    family: Family,
    images: &[RgbImage],
    draw: &LatentDraw,
    device: &Device,
    dtype: DType,
) -> std::result::Result<Tensor, Error> {
    check_images(encoder, images, draw)?;
    let pixels = pixels_of(images, device)?.to_dtype(dtype)?;
    let distribution = encoder.distribution(&pixels)?;
    let latents = match draw {
        LatentDraw::Mean => distribution.mean,
        LatentDraw::Sample { seeds } => distribution.sample(&mut SeededNoise::new(seeds))?,
    };
    Ok((latents * family.latent_scale())?.to_dtype(dtype)?)
}

/// Refuses what [`encode_images`] cannot encode, naming why.
fn check_images(
    encoder: &Encoder,
    images: &[RgbImage],
    draw: &LatentDraw,
) -> std::result::Result<(), Error> {
    let invalid = |why: String| Err(Error::InvalidRequest(why));
    let Some(first) = images.first() else {
        return invalid("no image to encode".into());
    };
    let (w, h) = first.dimensions();
    let scale = 1 << encoder.down.len().saturating_sub(1);
    if w == 0 || h == 0 || !w.is_multiple_of(scale) || !h.is_multiple_of(scale) {
        return invalid(format!(
            "a {w}×{h} image to encode is not a multiple of {scale}"
        ));
    }
    if let Some(other) = images.iter().find(|i| i.dimensions() != (w, h)) {
        let (ow, oh) = other.dimensions();
        return invalid(format!(
            "images to encode in one batch must share one size: {w}×{h} and {ow}×{oh}"
        ));
    }
    if let LatentDraw::Sample { seeds } = draw {
        if seeds.len() != images.len() {
            return invalid(format!(
                "{} seeds for {} images to encode: a sample takes one per image",
                seeds.len(),
                images.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
