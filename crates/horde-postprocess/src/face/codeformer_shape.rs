//! CodeFormer's structure as its tensors show it: the kinds of the VQGAN's blocks
//! (`encoder.blocks.N`, `generator.blocks.N`), the codebook, transformer and fuse sizes, and
//! where the encoder is tapped and the generator fused, by the rule that reproduces the published
//! network's hard-coded tables. Also the published VQGAN's layout built from its sizes, for the
//! tiny checkpoint and for checking that rule.

use super::vqgan::{count_indexed, dim, dims};
use candle_core::Tensor;
use std::collections::HashMap;

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
                let conv1 = format!("{p}.conv1.weight");
                Block::Res {
                    in_c: dim(tensors, &conv1, 1)?,
                    out_c: dim(tensors, &conv1, 0)?,
                }
            } else if has(&format!("{p}.q.weight")) {
                Block::Attention(dim(tensors, &format!("{p}.q.weight"), 0)?)
            } else if has(&format!("{p}.conv.weight")) {
                resampling(dim(tensors, &format!("{p}.conv.weight"), 0)?)
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
        fused.push((size, dim(tensors, key, 0)?));
    }
    fused.sort_unstable();
    let shape = Shape {
        encoder,
        generator,
        codebook_size,
        codebook_width,
        latent_side,
        width,
        mlp_width: dim(tensors, "ft_layers.0.linear1.weight", 0)?,
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
