//! RestoreFormer (Wang et al. 2022, GFPGAN's `RestoreFormer.pth`): a VQGAN whose decoder
//! attends across to the degraded face. The encoder reads the face and keeps its middle
//! features; its output is snapped to the nearest entries of a codebook of high-quality face
//! parts; the decoder paints those, its attention blocks taking their queries from the kept
//! encoder features (multi-head cross-attention) so that the identity survives.
//!
//! Sizes are read from the tensors as spandrel reads them (widths, levels, residual blocks,
//! codebook) and the attention's place from which blocks have attention tensors; the 8 heads do
//! not show in the tensors and are assumed, as spandrel does. spandrel has no RestoreFormer++,
//! so neither has this module.
//!
//! Numbers are pinned to spandrel's RestoreFormer by `tests/restoreformer.rs`.

use super::codeformer::vqgan::{
    self, count_indexed, dim, dims, Attention, Downsample, ResBlock, Upsample,
};
use crate::tensors::read_checkpoint;
use crate::{Error, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use horde_diffusion::nn::{conv, from_tokens, to_tokens, Conv2d, GroupNorm};
use image::RgbImage;
use std::collections::HashMap;
use std::path::Path;

/// What the tensors say about the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub in_channels: usize,
    pub out_channels: usize,
    /// The width of each level, from the full-size one down (`ch · ch_mult`).
    pub level_widths: Vec<usize>,
    /// Residual blocks a level in the encoder (the decoder has one more).
    pub res_blocks: usize,
    /// Whether each level has attention after its residual blocks, in the encoder and the
    /// decoder (published: only the 16² level).
    pub encoder_attention: Vec<bool>,
    pub decoder_attention: Vec<bool>,
    pub z_channels: usize,
    pub codebook_size: usize,
    pub codebook_width: usize,
    pub heads: usize,
}

impl Shape {
    /// A face's sides must be multiples of this (one halving a level but the last).
    pub fn side_multiple(&self) -> usize {
        1 << (self.level_widths.len() - 1)
    }
}

/// Whether the tensors are a RestoreFormer's (spandrel's test).
pub fn recognises(tensors: &HashMap<String, Tensor>) -> bool {
    [
        "quantize.embedding.weight",
        "encoder.conv_in.weight",
        "quant_conv.weight",
        "encoder.down.0.block.0.norm1.weight",
        "encoder.conv_out.weight",
        "decoder.conv_out.weight",
    ]
    .iter()
    .all(|k| tensors.contains_key(*k))
}

pub fn shape_of(tensors: &HashMap<String, Tensor>) -> std::result::Result<Shape, String> {
    let has = |name: String| tensors.contains_key(&name);
    let levels = count_indexed(tensors, "encoder.down");
    let level_widths = (0..levels)
        .map(|i| {
            dim(
                tensors,
                &format!("encoder.down.{i}.block.0.conv2.weight"),
                0,
            )
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let [codebook_size, codebook_width] = *dims(tensors, "quantize.embedding.weight")? else {
        return Err("`quantize.embedding.weight` is not a matrix".into());
    };
    let shape = Shape {
        in_channels: dim(tensors, "encoder.conv_in.weight", 1)?,
        out_channels: dim(tensors, "decoder.conv_out.weight", 0)?,
        res_blocks: count_indexed(tensors, "encoder.down.0.block"),
        encoder_attention: (0..levels)
            .map(|i| has(format!("encoder.down.{i}.attn.0.q.weight")))
            .collect(),
        decoder_attention: (0..levels)
            .map(|i| has(format!("decoder.up.{i}.attn.0.q.weight")))
            .collect(),
        level_widths,
        z_channels: dim(tensors, "quant_conv.weight", 1)?,
        codebook_size,
        codebook_width,
        heads: 8,
    };
    if levels == 0 || shape.res_blocks == 0 {
        return Err("no `encoder.down.0.block.0` residual block".into());
    }
    if !has("encoder.mid.block_1.norm1.weight".into()) {
        return Err("no middle blocks (`encoder.mid`): the decoder's attention needs them".into());
    }
    if dim(tensors, "encoder.conv_out.weight", 0)? != shape.z_channels {
        return Err("the encoder's output (double_z?) does not match `quant_conv`".into());
    }
    if shape.decoder_attention[..levels - 1].iter().any(|&a| a) {
        return Err("decoder attention above the lowest level has no encoder map to read".into());
    }
    if shape
        .level_widths
        .iter()
        .any(|w| !w.is_multiple_of(shape.heads))
    {
        return Err("a level's width does not split into 8 heads".into());
    }
    Ok(shape)
}

/// One level of the encoder or the decoder: residual blocks, each followed by attention where
/// the level has it, then the change of size.
struct Level {
    blocks: Vec<ResBlock>,
    attention: Vec<Attention>,
    resample: Option<Box<dyn Module + Send + Sync>>,
}

/// The middle: residual block, attention, residual block.
struct Middle {
    block_1: ResBlock,
    attn_1: Attention,
    block_2: ResBlock,
}

impl Middle {
    fn new(width: usize, heads: usize, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        Ok(Middle {
            block_1: ResBlock::new(width, width, "nin_shortcut", vb.pp("block_1"))?,
            attn_1: Attention::multi_head(width, heads, vb.pp("attn_1"))?,
            block_2: ResBlock::new(width, width, "nin_shortcut", vb.pp("block_2"))?,
        })
    }
}

/// The norm, SiLU and convolution that end the encoder and the decoder.
struct Out {
    norm: GroupNorm,
    conv: Conv2d,
}

impl Out {
    fn new(in_c: usize, out_c: usize, vb: &VarBuilder<'_>) -> candle_core::Result<Self> {
        Ok(Out {
            norm: vqgan::norm(in_c, vb.pp("norm_out"))?,
            conv: conv(in_c, out_c, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.conv.forward(&self.norm.forward_silu(x)?)
    }
}

/// A RestoreFormer, loaded.
pub struct RestoreFormer {
    pub shape: Shape,
    encoder_in: Conv2d,
    encoder: Vec<Level>,
    encoder_middle: Middle,
    encoder_out: Out,
    quant_conv: Conv2d,
    codebook: Tensor,
    post_quant_conv: Conv2d,
    decoder_in: Conv2d,
    decoder_middle: Middle,
    /// Lowest level first, as the decoder runs them.
    decoder: Vec<Level>,
    decoder_out: Out,
    device: Device,
}

fn level(
    shape: &Shape,
    (in_c, out_c): (usize, usize),
    blocks: usize,
    attention: bool,
    resample: Option<Box<dyn Module + Send + Sync>>,
    vb: VarBuilder<'_>,
) -> candle_core::Result<Level> {
    let blocks = (0..blocks)
        .map(|j| {
            let in_c = if j == 0 { in_c } else { out_c };
            ResBlock::new(in_c, out_c, "nin_shortcut", vb.pp(format!("block.{j}")))
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let attention = if attention {
        (0..blocks.len())
            .map(|j| Attention::multi_head(out_c, shape.heads, vb.pp(format!("attn.{j}"))))
            .collect::<candle_core::Result<_>>()?
    } else {
        Vec::new()
    };
    Ok(Level {
        blocks,
        attention,
        resample,
    })
}

impl RestoreFormer {
    /// Loads a RestoreFormer checkpoint (`.pth` as published, or `.safetensors`).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::from_tensors(read_checkpoint(path, device)?, path, device)
    }

    /// The network in `tensors`, read from the checkpoint at `path` (named in errors).
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        path: &Path,
        device: &Device,
    ) -> Result<Self> {
        let unsupported = |reason: String| Error::Unsupported {
            path: path.display().to_string(),
            reason,
        };
        if !recognises(&tensors) {
            return Err(unsupported(
                "not a RestoreFormer: no `encoder.conv_in`, `encoder.down.0.block.0`, \
                 `quant_conv`, `quantize.embedding` and `decoder.conv_out` tensors"
                    .into(),
            ));
        }
        let shape = shape_of(&tensors).map_err(unsupported)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        RestoreFormer::new(shape, vb).map_err(|e| unsupported(e.to_string()))
    }

    pub fn new(shape: Shape, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        let widths = &shape.level_widths;
        let levels = widths.len();
        let (Some(&first), Some(&last)) = (widths.first(), widths.last()) else {
            candle_core::bail!("a RestoreFormer has at least one level");
        };
        if shape.encoder_attention.len() != levels || shape.decoder_attention.len() != levels {
            candle_core::bail!("attention given for a different number of levels than widths");
        }
        let enc = vb.pp("encoder");
        let mut encoder = Vec::new();
        for (i, &width) in widths.iter().enumerate() {
            let in_c = if i == 0 { first } else { widths[i - 1] };
            let down: Option<Box<dyn Module + Send + Sync>> = if i + 1 < widths.len() {
                Some(Box::new(Downsample::new(
                    width,
                    enc.pp(format!("down.{i}.downsample")),
                )?))
            } else {
                None
            };
            let attention = shape.encoder_attention[i];
            let vb = enc.pp(format!("down.{i}"));
            encoder.push(level(
                &shape,
                (in_c, width),
                shape.res_blocks,
                attention,
                down,
                vb,
            )?);
        }
        let dec = vb.pp("decoder");
        let mut decoder = Vec::new();
        let mut in_c = last;
        for (i, &width) in widths.iter().enumerate().rev() {
            let up: Option<Box<dyn Module + Send + Sync>> = if i != 0 {
                Some(Box::new(Upsample::new(
                    width,
                    dec.pp(format!("up.{i}.upsample")),
                )?))
            } else {
                None
            };
            let attention = shape.decoder_attention[i];
            let vb = dec.pp(format!("up.{i}"));
            decoder.push(level(
                &shape,
                (in_c, width),
                shape.res_blocks + 1,
                attention,
                up,
                vb,
            )?);
            in_c = width;
        }
        let (z, e) = (shape.z_channels, shape.codebook_width);
        Ok(RestoreFormer {
            encoder_in: conv(shape.in_channels, first, 3, 1, 1, enc.pp("conv_in"))?,
            encoder,
            encoder_middle: Middle::new(last, shape.heads, enc.pp("mid"))?,
            encoder_out: Out::new(last, z, &enc)?,
            quant_conv: conv(z, e, 1, 1, 0, vb.pp("quant_conv"))?,
            codebook: vb
                .pp("quantize.embedding")
                .get((shape.codebook_size, e), "weight")?,
            post_quant_conv: conv(e, z, 1, 1, 0, vb.pp("post_quant_conv"))?,
            decoder_in: conv(z, last, 3, 1, 1, dec.pp("conv_in"))?,
            decoder_middle: Middle::new(last, shape.heads, dec.pp("mid"))?,
            decoder,
            decoder_out: Out::new(first, shape.out_channels, &dec)?,
            shape,
            device: vb.device().clone(),
        })
    }

    /// The restored face (`[B, 3, H, W]`, unclamped, about `[−1, 1]`) for faces in `[−1, 1]`
    /// whose sides are multiples of [`Shape::side_multiple`].
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.forward_with_codes(x)?.0)
    }

    /// [`RestoreFormer::forward`] and the codebook index chosen at each latent position
    /// (`[B, h·w]`, u32, row-major).
    pub fn forward_with_codes(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let m = self.shape.side_multiple();
        let (_, c, h, w) = x.dims4()?;
        if c != self.shape.in_channels
            || !h.is_multiple_of(m)
            || !w.is_multiple_of(m)
            || h == 0
            || w == 0
        {
            candle_core::bail!(
                "RestoreFormer takes [B, {}, H, W] faces with sides multiples of {m}, not {:?}",
                self.shape.in_channels,
                x.dims()
            );
        }
        let (latent, encoder_middle) = self.encode(x)?;
        let (quantized, codes) = self.quantize(&self.quant_conv.forward(&latent)?)?;
        let out = self.decode(&self.post_quant_conv.forward(&quantized)?, &encoder_middle)?;
        Ok((out, codes))
    }

    /// The encoder's output, and its middle's map after the first residual block (upstream's
    /// `hs["block_{last}_atten"]`, which the decoder's attention reads its queries from; with
    /// the published attention at the lowest level only, the middle's own attention reads the
    /// map after the second block, `hs["mid_atten"]`: both kept).
    fn encode(&self, x: &Tensor) -> candle_core::Result<(Tensor, [Tensor; 2])> {
        let mut h = self.encoder_in.forward(x)?;
        for level in &self.encoder {
            for (j, block) in level.blocks.iter().enumerate() {
                h = block.forward(&h)?;
                if let Some(attention) = level.attention.get(j) {
                    h = attention.forward(&h)?;
                }
            }
            if let Some(down) = &level.resample {
                h = down.forward(&h)?;
            }
        }
        let mid = &self.encoder_middle;
        let after_first = mid.block_1.forward(&h)?;
        let after_second = mid.block_2.forward(&mid.attn_1.forward(&after_first)?)?;
        let latent = self.encoder_out.forward(&after_second)?;
        Ok((latent, [after_first, after_second]))
    }

    /// Each latent position snapped to the nearest codebook entry (squared distance
    /// `|z|² + |e|² − 2 z·e`, as upstream computes it), and the entries' indices.
    fn quantize(&self, z: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, _, h, w) = z.dims4()?;
        let tokens = to_tokens(z)?.reshape((b * h * w, ()))?;
        let z_sq = tokens.sqr()?.sum_keepdim(1)?;
        let e_sq = self.codebook.sqr()?.sum(1)?.unsqueeze(0)?;
        let dot = tokens.matmul(&self.codebook.t()?)?;
        let distance = z_sq.broadcast_add(&e_sq)?.broadcast_sub(&(dot * 2.0)?)?;
        let codes = distance.argmin(D::Minus1)?;
        let entries = self.codebook.index_select(&codes, 0)?;
        let quantized = from_tokens(&entries.reshape((b, h * w, ()))?, h, w)?;
        Ok((quantized, codes.reshape((b, h * w))?))
    }

    /// The decoder, its attention querying the encoder's kept middle maps.
    fn decode(
        &self,
        z: &Tensor,
        [after_first, after_second]: &[Tensor; 2],
    ) -> candle_core::Result<Tensor> {
        let mid = &self.decoder_middle;
        let h = mid.block_1.forward(&self.decoder_in.forward(z)?)?;
        let mut h = mid
            .block_2
            .forward(&mid.attn_1.forward_cross(&h, after_second)?)?;
        for level in &self.decoder {
            for (j, block) in level.blocks.iter().enumerate() {
                h = block.forward(&h)?;
                if let Some(attention) = level.attention.get(j) {
                    h = attention.forward_cross(&h, after_first)?;
                }
            }
            if let Some(up) = &level.resample {
                h = up.forward(&h)?;
            }
        }
        self.decoder_out.forward(&h)
    }

    /// One aligned face crop restored as GFPGAN's inference runs RestoreFormer: scaled to
    /// `[−1, 1]` (mean and std 0.5), run, clamped to `[−1, 1]` and mapped back to `[0, 255]`.
    /// Its sides must be multiples of [`Shape::side_multiple`] (the published network is
    /// trained on 512² crops).
    pub fn restore(&self, face: &RgbImage) -> Result<RgbImage> {
        let m = self.shape.side_multiple() as u32;
        let (w, h) = face.dimensions();
        if w == 0 || h == 0 || !w.is_multiple_of(m) || !h.is_multiple_of(m) {
            return Err(Error::Run(candle_core::Error::Msg(format!(
                "RestoreFormer restores face crops with sides multiples of {m}, not {w}×{h}"
            ))));
        }
        let x = vqgan::face_to_tensor(face, &self.device)?;
        Ok(vqgan::tensor_to_face(&self.forward(&x)?)?)
    }
}

/// The shape of [`write_tiny_checkpoint`]'s network: two levels of width 32 (the lower one,
/// 16² for a 32² face, with attention in encoder and decoder as published), one residual block
/// a level, a 32-wide codebook of 64 entries, 8 heads.
pub fn tiny_shape() -> Shape {
    Shape {
        in_channels: 3,
        out_channels: 3,
        level_widths: vec![32, 32],
        res_blocks: 1,
        encoder_attention: vec![false, true],
        decoder_attention: vec![false, true],
        z_channels: 32,
        codebook_size: 64,
        codebook_width: 32,
        heads: 8,
    }
}

/// Writes a tiny random RestoreFormer ([`tiny_shape`]) in the published key layout, every
/// tensor seeded random, as a `.safetensors` file that [`RestoreFormer::load`] reads.
pub fn write_tiny_checkpoint(path: &Path, seed: u64) -> Result<()> {
    let (vb, tensors) = vqgan::RandomTensors::var_builder(seed);
    RestoreFormer::new(tiny_shape(), vb)?;
    vqgan::save_random(&tensors, path)
}
