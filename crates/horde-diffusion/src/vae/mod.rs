//! The autoencoder (LDM `AutoencoderKL`) with its original tensor names: the decoder turns
//! latents into pixels; the encoder (`encoder`, for image-to-image) turns pixels into latents.
//! Large images decode and encode in bands of rows (`banded`), to the same result with less
//! memory. Both run once per job, so their layers keep no weights rearranged for the bf16
//! kernels (`kernels::kept`): a decode of SD 1.5's VAE would keep ~100 MB more at the job's
//! peak, to save rearranging 49 M weights (a few tens of ms) per job.

mod banded;
mod encoder;

pub use banded::BAND_PIXELS;
pub use encoder::{encode_images, pixels_of, Encoder, LatentDistribution, LatentDraw};

use crate::config::VaeConfig;
use crate::nn;
use crate::nn::Conv2d;
use crate::nn::GroupNorm;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug)]
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(in_c: usize, out_c: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(ResnetBlock {
            norm1: nn::group_norm(in_c, 1e-6, vb.pp("norm1"))?,
            conv1: nn::conv(in_c, out_c, 3, 1, 1, vb.pp("conv1"))?,
            norm2: nn::group_norm(out_c, 1e-6, vb.pp("norm2"))?,
            conv2: nn::conv(out_c, out_c, 3, 1, 1, vb.pp("conv2"))?,
            shortcut: if in_c != out_c {
                Some(nn::conv1x1(in_c, out_c, vb.pp("nin_shortcut"))?)
            } else {
                None
            },
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(xs)?)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.shortcut {
            Some(s) => nn::add(&s.forward(xs)?, &h),
            None => nn::add(xs, &h),
        }
    }
}

/// Single-head self-attention over all pixels, with 1×1 convolutions as projections.
#[derive(Debug)]
struct AttnBlock {
    norm: GroupNorm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
}

impl AttnBlock {
    fn new(c: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(AttnBlock {
            norm: nn::group_norm(c, 1e-6, vb.pp("norm"))?,
            q: nn::conv1x1(c, c, vb.pp("q"))?,
            k: nn::conv1x1(c, c, vb.pp("k"))?,
            v: nn::conv1x1(c, c, vb.pp("v"))?,
            proj_out: nn::conv1x1(c, c, vb.pp("proj_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let normed = self.norm.forward(xs)?;
        let tokens = |conv: &Conv2d| nn::to_tokens(&conv.forward(&normed)?);
        let out = nn::attention(
            &tokens(&self.q)?,
            &tokens(&self.k)?,
            &tokens(&self.v)?,
            1,
            None,
        )?;
        self.proj_out.forward(&nn::from_tokens(&out, h, w)?)? + xs
    }
}

#[derive(Debug)]
struct MidBlock {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl MidBlock {
    fn new(c: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(MidBlock {
            block_1: ResnetBlock::new(c, c, vb.pp("block_1"))?,
            attn_1: AttnBlock::new(c, vb.pp("attn_1"))?,
            block_2: ResnetBlock::new(c, c, vb.pp("block_2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.block_2
            .forward(&self.attn_1.forward(&self.block_1.forward(xs)?)?)
    }
}

#[derive(Debug)]
struct Level {
    blocks: Vec<ResnetBlock>,
    resample: Option<Conv2d>,
}

/// Output pixels per image from which [`Decoder::decode`] works in bands (and input pixels
/// from which [`Encoder::distribution`] does): twice 512×512 (768×768 and 512×1024 are in
/// bands). At 512×512 the whole decode takes 7.2 s at 1 535 MB and the banded one 8.3 s at
/// 1 257 MB here, the whole encode 4.1 s at 1 342 MB and the banded one 4.3 s at 1 076 MB
/// (BENCHMARKS.md); the saving grows with the image, the cost (a band's copies and zeroing)
/// does not.
pub(crate) const BANDED_MIN_PIXELS: usize = 2 * 512 * 512;

#[derive(Debug)]
pub struct Decoder {
    post_quant_conv: Conv2d,
    conv_in: Conv2d,
    mid: MidBlock,
    /// Levels from the deepest (run first) to level 0.
    up: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(config: &VaeConfig, vb: VarBuilder<'_>, post_quant_vb: VarBuilder<'_>) -> Result<Self> {
        let base = config.base_channels;
        let z = config.latent_channels;
        let levels = config.channel_mult.len();
        let mut ch = base * config.channel_mult[levels - 1];
        let conv_in = nn::conv(z, ch, 3, 1, 1, vb.pp("conv_in"))?;
        let mid = MidBlock::new(ch, vb.pp("mid"))?;
        let mut up = Vec::new();
        for i in (0..levels).rev() {
            let vb_l = vb.pp(format!("up.{i}"));
            let out = base * config.channel_mult[i];
            let mut blocks = Vec::new();
            for j in 0..=config.num_res_blocks {
                blocks.push(ResnetBlock::new(ch, out, vb_l.pp(format!("block.{j}")))?);
                ch = out;
            }
            let resample = if i > 0 {
                Some(nn::conv(ch, ch, 3, 1, 1, vb_l.pp("upsample.conv"))?)
            } else {
                None
            };
            up.push(Level { blocks, resample });
        }
        Ok(Decoder {
            post_quant_conv: nn::conv1x1(z, z, post_quant_vb)?,
            conv_in,
            mid,
            up,
            norm_out: nn::group_norm(ch, 1e-6, vb.pp("norm_out"))?,
            conv_out: nn::conv(ch, 3, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    /// Unscaled latents to pixels in [-1, 1] (not clamped): images of [`BANDED_MIN_PIXELS`]
    /// or more in bands (`Decoder::decode_in_bands`), smaller ones whole.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = latents.dims4()?;
        let scale = 1 << (self.up.len() - 1);
        if h * w * scale * scale >= BANDED_MIN_PIXELS && !nn::tiling() {
            self.decode_in_bands(latents, BAND_PIXELS)
        } else {
            self.decode_whole(latents)
        }
    }

    /// The last layer, the convolution to the pixels' channels.
    #[cfg(test)]
    pub(crate) fn conv_out(&self) -> &Conv2d {
        &self.conv_out
    }

    /// [`Decoder::decode`] of the whole batch at once, each map whole.
    pub fn decode_whole(&self, latents: &Tensor) -> Result<Tensor> {
        crate::kernels::kept::without_keeping(|| {
            let mut h = self
                .conv_in
                .forward(&self.post_quant_conv.forward(latents)?)?;
            h = self.mid.forward(&h)?;
            for level in &self.up {
                for block in &level.blocks {
                    h = block.forward(&h)?;
                }
                if let Some(conv) = &level.resample {
                    let (_, _, hh, ww) = h.dims4()?;
                    h = conv.forward(&h.upsample_nearest2d(hh * 2, ww * 2)?)?;
                }
            }
            self.conv_out.forward(&self.norm_out.forward_silu(&h)?)
        })
    }
}

/// Encoder and decoder of one checkpoint.
#[derive(Debug)]
pub struct Vae {
    pub encoder: Encoder,
    pub decoder: Decoder,
}

impl Vae {
    /// `vb` points at the VAE root (`first_stage_model.` in a single-file checkpoint).
    pub fn new(config: &VaeConfig, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Vae {
            encoder: Encoder::new(config, vb.pp("encoder"), vb.pp("quant_conv"))?,
            decoder: Decoder::new(config, vb.pp("decoder"), vb.pp("post_quant_conv"))?,
        })
    }
}
