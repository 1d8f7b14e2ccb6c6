//! The denoising UNet, in the original (LDM `openaimodel.py`) structure and tensor names, so
//! single-file checkpoints load without renaming. One implementation serves SD 1.x, SD 2.x and
//! SDXL (whose extra `label_emb` input carries the pooled text and size conditioning).

use crate::config::{Family, UNetConfig};
use crate::nn::Conv2d;
use crate::nn::GroupNorm;
use crate::nn::LayerNorm;
use crate::nn::Linear;
use crate::nn::{self, Projection};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `ResBlock`: two 3×3 convolutions with the timestep embedding added between them.
#[derive(Debug)]
struct ResBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    emb: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    skip: Option<Conv2d>,
}

impl ResBlock {
    fn new(in_c: usize, out_c: usize, emb_dim: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(ResBlock {
            norm1: nn::group_norm(in_c, 1e-5, vb.pp("in_layers.0"))?,
            conv1: nn::conv(in_c, out_c, 3, 1, 1, vb.pp("in_layers.2"))?,
            emb: nn::linear(emb_dim, out_c, vb.pp("emb_layers.1"))?,
            norm2: nn::group_norm(out_c, 1e-5, vb.pp("out_layers.0"))?,
            conv2: nn::conv(out_c, out_c, 3, 1, 1, vb.pp("out_layers.3"))?,
            skip: if in_c != out_c {
                Some(nn::conv1x1(in_c, out_c, vb.pp("skip_connection"))?)
            } else {
                None
            },
        })
    }

    fn forward(&self, xs: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(xs)?)?;
        let e = self.emb.forward(&nn::silu(emb)?)?;
        let h = nn::add(&h, &e)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        match &self.skip {
            Some(skip) => nn::add(&skip.forward(xs)?, &h),
            None => nn::add(xs, &h),
        }
    }
}

/// Multi-head attention with the LDM names (`to_q`, `to_k`, `to_v`, `to_out.0`).
#[derive(Debug)]
struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl CrossAttention {
    fn new(dim: usize, context_dim: usize, heads: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(CrossAttention {
            to_q: nn::linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: nn::linear_no_bias(context_dim, dim, vb.pp("to_k"))?,
            to_v: nn::linear_no_bias(context_dim, dim, vb.pp("to_v"))?,
            to_out: nn::linear(dim, dim, vb.pp("to_out.0"))?,
            heads,
        })
    }

    /// The attention of `xs` over `context`, plus `residual`.
    fn forward_plus(&self, xs: &Tensor, context: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let q = self.to_q.forward(xs)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        self.to_out
            .forward_plus(&nn::attention(&q, &k, &v, self.heads, None)?, residual)
    }
}

/// Self-attention, cross-attention to the text, and a GEGLU feed-forward, each pre-normalised.
#[derive(Debug)]
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn new(dim: usize, context_dim: usize, heads: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let inner = dim * 4;
        Ok(TransformerBlock {
            norm1: nn::layer_norm(dim, vb.pp("norm1"))?,
            attn1: CrossAttention::new(dim, dim, heads, vb.pp("attn1"))?,
            norm2: nn::layer_norm(dim, vb.pp("norm2"))?,
            attn2: CrossAttention::new(dim, context_dim, heads, vb.pp("attn2"))?,
            norm3: nn::layer_norm(dim, vb.pp("norm3"))?,
            ff_in: nn::linear(dim, inner * 2, vb.pp("ff.net.0.proj"))?,
            ff_out: nn::linear(inner, dim, vb.pp("ff.net.2"))?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let normed = self.norm1.forward(xs)?;
        let xs = self.attn1.forward_plus(&normed, &normed, xs)?;
        let xs = self
            .attn2
            .forward_plus(&self.norm2.forward(&xs)?, context, &xs)?;
        let gated = self.ff_in.forward_geglu(&self.norm3.forward(&xs)?)?;
        self.ff_out.forward_plus(&gated, &xs)
    }
}

/// `SpatialTransformer`: a stack of transformer blocks over the pixels of a feature map.
#[derive(Debug)]
struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    fn new(
        channels: usize,
        depth: usize,
        config: &UNetConfig,
        family: Family,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let heads = family.heads(channels);
        let linear = config.use_linear_projection;
        let blocks = (0..depth)
            .map(|d| {
                TransformerBlock::new(
                    channels,
                    config.context_dim,
                    heads,
                    vb.pp(format!("transformer_blocks.{d}")),
                )
            })
            .collect::<Result<_>>()?;
        Ok(SpatialTransformer {
            norm: nn::group_norm(channels, 1e-6, vb.pp("norm"))?,
            proj_in: Projection::new(channels, channels, linear, vb.pp("proj_in"))?,
            blocks,
            proj_out: Projection::new(channels, channels, linear, vb.pp("proj_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let normed = self.norm.forward(xs)?;
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => nn::to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(linear) => linear.forward(&nn::to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&nn::from_tokens(&tokens, h, w)?)?,
            Projection::Linear(linear) => nn::from_tokens(&linear.forward(&tokens)?, h, w)?,
        };
        nn::add(&out, xs)
    }
}

#[derive(Debug)]
enum Layer {
    Conv(Conv2d),
    Res(ResBlock),
    Attention(SpatialTransformer),
    Downsample(Conv2d),
    Upsample(Conv2d),
}

impl Layer {
    fn forward(&self, xs: &Tensor, emb: &Tensor, context: &Tensor) -> Result<Tensor> {
        match self {
            Layer::Conv(conv) | Layer::Downsample(conv) => conv.forward(xs),
            Layer::Res(res) => res.forward(xs, emb),
            Layer::Attention(attention) => attention.forward(xs, context),
            Layer::Upsample(conv) => {
                let (_, _, h, w) = xs.dims4()?;
                conv.forward(&xs.upsample_nearest2d(h * 2, w * 2)?)
            }
        }
    }
}

/// One `TimestepEmbedSequential` of `input_blocks`/`output_blocks` (and of a ControlNet's,
/// `controlnet.rs`, built by the same functions).
#[derive(Debug, Default)]
pub(crate) struct Block(Vec<Layer>);

impl Block {
    pub(crate) fn forward(&self, xs: &Tensor, emb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let mut xs = xs.clone();
        for layer in &self.0 {
            xs = layer.forward(&xs, emb, context)?;
        }
        Ok(xs)
    }
}

/// A residual block into `out_c` channels, then the level's transformer if it has one (the
/// first layers of every input and output block).
fn res_and_attention(
    in_c: usize,
    out_c: usize,
    level: usize,
    config: &UNetConfig,
    family: Family,
    vb: VarBuilder<'_>,
) -> Result<Vec<Layer>> {
    let emb_dim = config.model_channels * 4;
    let mut layers = vec![Layer::Res(ResBlock::new(in_c, out_c, emb_dim, vb.pp("0"))?)];
    let depth = config.transformer_depth[level];
    if depth > 0 {
        layers.push(Layer::Attention(SpatialTransformer::new(
            out_c,
            depth,
            config,
            family,
            vb.pp("1"),
        )?));
    }
    Ok(layers)
}

/// Conditioning beyond the text sequence.
pub struct Conditioning<'a> {
    /// `[batch, tokens, context_dim]` text embeddings.
    pub context: &'a Tensor,
    /// SDXL: `[batch, adm_in_channels]` pooled text + size embeddings.
    pub vector: Option<&'a Tensor>,
}

/// A ControlNet's residuals (`cldm`'s `control`, diffusers' `down_block_additional_residuals`
/// and `mid_block_additional_residual`), already scaled by the control strength: one per input
/// block, added to the skip connection the output blocks take from it, and one added to the
/// middle block's output.
#[derive(Debug, Clone)]
pub struct ControlResiduals {
    pub down: Vec<Tensor>,
    pub mid: Tensor,
}

/// The timestep embedding and SDXL's `label_emb` (pooled text and sizes), with the names the
/// UNet and a ControlNet (`controlnet.rs`) both read them under.
#[derive(Debug)]
pub(crate) struct TimeEmbedding {
    time_embed: (Linear, Linear),
    label_emb: Option<(Linear, Linear)>,
    model_channels: usize,
}

impl TimeEmbedding {
    pub(crate) fn new(config: &UNetConfig, vb: &VarBuilder<'_>) -> Result<Self> {
        let mc = config.model_channels;
        let emb_dim = mc * 4;
        let time_embed = (
            nn::linear(mc, emb_dim, vb.pp("time_embed.0"))?,
            nn::linear(emb_dim, emb_dim, vb.pp("time_embed.2"))?,
        );
        let label_emb = match config.adm_in_channels {
            Some(adm) => Some((
                nn::linear(adm, emb_dim, vb.pp("label_emb.0.0"))?,
                nn::linear(emb_dim, emb_dim, vb.pp("label_emb.0.2"))?,
            )),
            None => None,
        };
        Ok(TimeEmbedding {
            time_embed,
            label_emb,
            model_channels: mc,
        })
    }

    /// The embedding of `timesteps` (plus SDXL's `vector`), in `dtype`.
    pub(crate) fn forward(
        &self,
        timesteps: &Tensor,
        vector: Option<&Tensor>,
        dtype: candle_core::DType,
    ) -> Result<Tensor> {
        let t_emb = nn::timestep_embedding(timesteps, self.model_channels)?.to_dtype(dtype)?;
        let mut emb = self
            .time_embed
            .1
            .forward(&nn::silu(&self.time_embed.0.forward(&t_emb)?)?)?;
        if let (Some((l1, l2)), Some(vector)) = (&self.label_emb, vector) {
            emb = (emb + l2.forward(&nn::silu(&l1.forward(vector)?)?)?)?;
        }
        Ok(emb)
    }
}

/// `input_blocks` (`conv_in`, then each level's residual and attention blocks and its
/// downsample), and the channels each block outputs (the skip connections' widths).
pub(crate) fn input_blocks(
    config: &UNetConfig,
    family: Family,
    vb_in: &VarBuilder<'_>,
) -> Result<(Vec<Block>, Vec<usize>)> {
    let mc = config.model_channels;
    let levels = config.channel_mult.len();
    let mut input_blocks = vec![Block(vec![Layer::Conv(nn::conv(
        config.in_channels,
        mc,
        3,
        1,
        1,
        vb_in.pp("0.0"),
    )?)])];
    let mut skip_channels = vec![mc];
    let mut ch = mc;
    for (level, mult) in config.channel_mult.iter().enumerate() {
        for _ in 0..config.num_res_blocks {
            let vb_b = vb_in.pp(input_blocks.len());
            let layers = res_and_attention(ch, mult * mc, level, config, family, vb_b)?;
            ch = mult * mc;
            input_blocks.push(Block(layers));
            skip_channels.push(ch);
        }
        if level + 1 < levels {
            let vb_b = vb_in.pp(input_blocks.len());
            input_blocks.push(Block(vec![Layer::Downsample(nn::conv(
                ch,
                ch,
                3,
                2,
                1,
                vb_b.pp("0.op"),
            )?)]));
            skip_channels.push(ch);
        }
    }
    Ok((input_blocks, skip_channels))
}

/// `middle_block`: residual block, transformer, residual block, at `ch` channels.
pub(crate) fn middle_block(
    ch: usize,
    config: &UNetConfig,
    family: Family,
    vb_mid: &VarBuilder<'_>,
) -> Result<Block> {
    let emb_dim = config.model_channels * 4;
    Ok(Block(vec![
        Layer::Res(ResBlock::new(ch, ch, emb_dim, vb_mid.pp("0"))?),
        Layer::Attention(SpatialTransformer::new(
            ch,
            config.mid_transformer_depth.max(1),
            config,
            family,
            vb_mid.pp("1"),
        )?),
        Layer::Res(ResBlock::new(ch, ch, emb_dim, vb_mid.pp("2"))?),
    ]))
}

#[derive(Debug)]
pub struct UNet {
    time_embed: TimeEmbedding,
    input_blocks: Vec<Block>,
    middle_block: Block,
    output_blocks: Vec<Block>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
}

impl UNet {
    pub fn new(config: &UNetConfig, family: Family, vb: VarBuilder<'_>) -> Result<Self> {
        let mc = config.model_channels;
        let time_embed = TimeEmbedding::new(config, &vb)?;
        let (input_blocks, mut skip_channels) =
            input_blocks(config, family, &vb.pp("input_blocks"))?;
        let mut ch = *skip_channels.last().expect("conv_in is an input block");
        let middle_block = middle_block(ch, config, family, &vb.pp("middle_block"))?;
        let vb_out = vb.pp("output_blocks");
        let mut output_blocks = Vec::new();
        for (level, mult) in config.channel_mult.iter().enumerate().rev() {
            for i in 0..=config.num_res_blocks {
                let vb_b = vb_out.pp(output_blocks.len());
                let skip = skip_channels
                    .pop()
                    .expect("one skip connection per input block");
                let mut layers =
                    res_and_attention(ch + skip, mult * mc, level, config, family, vb_b.clone())?;
                ch = mult * mc;
                if level > 0 && i == config.num_res_blocks {
                    let index = layers.len();
                    layers.push(Layer::Upsample(nn::conv(
                        ch,
                        ch,
                        3,
                        1,
                        1,
                        vb_b.pp(format!("{index}.conv")),
                    )?));
                }
                output_blocks.push(Block(layers));
            }
        }
        Ok(UNet {
            time_embed,
            input_blocks,
            middle_block,
            output_blocks,
            out_norm: nn::group_norm(ch, 1e-5, vb.pp("out.0"))?,
            out_conv: nn::conv(ch, config.out_channels, 3, 1, 1, vb.pp("out.2"))?,
        })
    }

    /// The last layer, the convolution to the latent's channels.
    #[cfg(test)]
    pub(crate) fn out_conv(&self) -> &Conv2d {
        &self.out_conv
    }

    /// Predicts the noise (or v) of `xs` at `timesteps` (one per batch item).
    pub fn forward(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        cond: &Conditioning<'_>,
    ) -> Result<Tensor> {
        self.forward_controlled(xs, timesteps, cond, None)
    }

    /// [`UNet::forward`] with a ControlNet's residuals added as LDM's `ControlledUnetModel`
    /// adds them: the middle one to the middle block's output, each other to the skip
    /// connection of its input block as an output block takes it.
    pub fn forward_controlled(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        cond: &Conditioning<'_>,
        control: Option<&ControlResiduals>,
    ) -> Result<Tensor> {
        if let Some(control) = control {
            if control.down.len() != self.input_blocks.len() {
                candle_core::bail!(
                    "{} ControlNet residuals for a UNet of {} input blocks",
                    control.down.len(),
                    self.input_blocks.len()
                );
            }
        }
        let emb = self
            .time_embed
            .forward(timesteps, cond.vector, xs.dtype())?;
        let mut skips = Vec::with_capacity(self.input_blocks.len());
        let mut h = xs.clone();
        for block in &self.input_blocks {
            h = block.forward(&h, &emb, cond.context)?;
            skips.push(h.clone());
        }
        h = self.middle_block.forward(&h, &emb, cond.context)?;
        if let Some(control) = control {
            h = (h + &control.mid)?;
        }
        for block in &self.output_blocks {
            let mut skip = skips.pop().expect("one skip per output block");
            if let Some(control) = control {
                skip = (skip + &control.down[skips.len()])?;
            }
            h = block.forward(&Tensor::cat(&[&h, &skip], 1)?, &emb, cond.context)?;
        }
        self.out_conv.forward(&self.out_norm.forward_silu(&h)?)
    }
}
