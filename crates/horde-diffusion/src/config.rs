//! The shapes of the three networks of a Stable Diffusion model, as read off a checkpoint.
//!
//! Nothing here is hard-coded per model size: the numbers of channels, levels, residual blocks and
//! transformer layers are inferred from tensor shapes, so the same code loads the real SD 1.5, SD 2
//! and SDXL checkpoints and the tiny random ones the tests write (`crate::tiny`). What shapes cannot
//! tell (the number of attention heads, the prediction type) follows from the architecture family.

use crate::checkpoint::TensorIndex;
use crate::Error;
use serde::{Deserialize, Serialize};

/// The model family, detected from the checkpoint's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Stable Diffusion 1.x: CLIP ViT-L text encoder, 8 attention heads, epsilon prediction.
    Sd1,
    /// Stable Diffusion 2.x: OpenCLIP ViT-H text encoder (penultimate layer), 64-channel heads.
    Sd2,
    /// SDXL: CLIP ViT-L + OpenCLIP ViT-bigG, size and crop conditioning.
    Sdxl,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
            Family::Sdxl => "SDXL",
        }
    }

    /// Attention heads for a transformer of `channels` width.
    pub fn heads(self, channels: usize) -> usize {
        match self {
            Family::Sd1 => 8.min(channels).max(1),
            Family::Sd2 | Family::Sdxl => (channels / 64).max(1),
        }
    }

    /// The VAE latent scaling factor.
    pub fn latent_scale(self) -> f64 {
        match self {
            Family::Sdxl => 0.13025,
            Family::Sd1 | Family::Sd2 => 0.18215,
        }
    }
}

/// What the UNet was trained to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    Epsilon,
    /// v-prediction (SD 2.x 768).
    V,
}

/// The UNet in the original (LDM) layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub model_channels: usize,
    /// Channel multiplier of each level.
    pub channel_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Transformer layers per attention block of each level; 0 means no attention at that level.
    pub transformer_depth: Vec<usize>,
    pub mid_transformer_depth: usize,
    pub context_dim: usize,
    /// SD 2 and SDXL project in and out of the transformer with linear layers, SD 1 with 1×1 convs.
    pub use_linear_projection: bool,
    /// SDXL's extra conditioning input (pooled text + size embeddings); `None` for SD 1/2.
    pub adm_in_channels: Option<usize>,
}

/// The autoencoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    pub base_channels: usize,
    pub channel_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub latent_channels: usize,
}

impl VaeConfig {
    /// How many pixels one latent cell covers along each side.
    pub fn downscale(&self) -> usize {
        1 << (self.channel_mult.len() - 1)
    }
}

/// Key layout of a CLIP text transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClipLayout {
    /// Hugging Face `CLIPTextModel` names (`text_model.encoder.layers.N…`), quick-GELU.
    HuggingFace,
    /// OpenCLIP names (`transformer.resblocks.N…`, fused `in_proj`), exact GELU.
    OpenClip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub layout: ClipLayout,
    pub vocab_size: usize,
    pub width: usize,
    pub layers: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    /// The projection of the pooled output (OpenCLIP `text_projection`), when present.
    pub projection_dim: Option<usize>,
    /// Final layers missing from the file: diffusers' SD 2.x text encoder drops the last of
    /// OpenCLIP's, since SD 2.x conditions on the penultimate layer anyway.
    #[serde(default)]
    pub layers_removed: usize,
}

impl ClipConfig {
    pub fn heads(&self) -> usize {
        (self.width / 64).max(1)
    }
}

/// Everything needed to build the model of one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub family: Family,
    pub prediction: Prediction,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    /// One text encoder for SD 1/2; two for SDXL (CLIP-L, then OpenCLIP-bigG).
    pub text_encoders: Vec<ClipConfig>,
}

/// Key prefixes of the single-file (LDM) layout.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const SD1_CLIP_PREFIX: &str = "cond_stage_model.transformer.";
pub const SD2_CLIP_PREFIX: &str = "cond_stage_model.model.";
pub const SDXL_CLIP_L_PREFIX: &str = "conditioner.embedders.0.transformer.";
pub const SDXL_CLIP_G_PREFIX: &str = "conditioner.embedders.1.model.";

impl ModelConfig {
    /// The real Stable Diffusion 1.5 (as its single-file checkpoint reads).
    pub fn sd15() -> ModelConfig {
        ModelConfig {
            family: Family::Sd1,
            prediction: Prediction::Epsilon,
            unet: UNetConfig {
                in_channels: 4,
                out_channels: 4,
                model_channels: 320,
                channel_mult: vec![1, 2, 4, 4],
                num_res_blocks: 2,
                transformer_depth: vec![1, 1, 1, 0],
                mid_transformer_depth: 1,
                context_dim: 768,
                use_linear_projection: false,
                adm_in_channels: None,
            },
            vae: VaeConfig {
                base_channels: 128,
                channel_mult: vec![1, 2, 4, 4],
                num_res_blocks: 2,
                latent_channels: 4,
            },
            text_encoders: vec![ClipConfig {
                layout: ClipLayout::HuggingFace,
                vocab_size: 49408,
                width: 768,
                layers: 12,
                intermediate: 3072,
                max_positions: 77,
                projection_dim: None,
                layers_removed: 0,
            }],
        }
    }

    /// The real SDXL 1.0 base (as its single-file checkpoint reads): the engine bench builds
    /// it with random weights.
    pub fn sdxl() -> ModelConfig {
        let sd15 = ModelConfig::sd15();
        ModelConfig {
            family: Family::Sdxl,
            prediction: Prediction::Epsilon,
            unet: UNetConfig {
                channel_mult: vec![1, 2, 4],
                transformer_depth: vec![0, 2, 10],
                mid_transformer_depth: 10,
                context_dim: 2048,
                use_linear_projection: true,
                // Pooled OpenCLIP-bigG text (1280) and six size values of 256 channels each.
                adm_in_channels: Some(1280 + 6 * 256),
                ..sd15.unet
            },
            vae: sd15.vae,
            text_encoders: vec![
                sd15.text_encoders[0].clone(),
                ClipConfig {
                    layout: ClipLayout::OpenClip,
                    vocab_size: 49408,
                    width: 1280,
                    layers: 32,
                    intermediate: 5120,
                    max_positions: 77,
                    projection_dim: Some(1280),
                    layers_removed: 0,
                },
            ],
        }
    }

    /// Reads the family and every shape off a checkpoint's tensor index.
    pub fn infer(
        index: &TensorIndex,
        prediction: Option<Prediction>,
    ) -> Result<ModelConfig, Error> {
        let family = detect_family(index)?;
        let unet = infer_unet(index)?;
        let vae = infer_vae(index)?;
        let text_encoders = match family {
            Family::Sd1 => vec![infer_clip(index, SD1_CLIP_PREFIX, ClipLayout::HuggingFace)?],
            Family::Sd2 => vec![infer_clip(index, SD2_CLIP_PREFIX, ClipLayout::OpenClip)?],
            Family::Sdxl => vec![
                infer_clip(index, SDXL_CLIP_L_PREFIX, ClipLayout::HuggingFace)?,
                infer_clip(index, SDXL_CLIP_G_PREFIX, ClipLayout::OpenClip)?,
            ],
        };
        // SD 2.x at 768 is v-prediction; the 512 base is not. Weights cannot tell the two apart,
        // so the caller says so (from the model reference or config); v is the SD 2 default.
        let latents = vae.latent_channels;
        if unet.in_channels != latents && unet.in_channels != 2 * latents + 1 {
            return Err(index.unsupported(&format!(
                "a UNet of {} input channels (expected {latents}, or {} for inpainting)",
                unet.in_channels,
                2 * latents + 1
            )));
        }
        let prediction = prediction.unwrap_or(match family {
            Family::Sd2 => Prediction::V,
            _ => Prediction::Epsilon,
        });
        Ok(ModelConfig {
            family,
            prediction,
            unet,
            vae,
            text_encoders,
        })
    }

    /// Whether the UNet is an inpainting one: its input is the latents, the mask and the masked
    /// image's latents (9 channels for 4-channel latents), read off `conv_in`'s shape.
    pub fn is_inpainting(&self) -> bool {
        self.unet.in_channels == 2 * self.vae.latent_channels + 1
    }

    /// Width of the text conditioning the UNet cross-attends to.
    pub fn context_dim(&self) -> usize {
        self.unet.context_dim
    }
}

fn detect_family(index: &TensorIndex) -> Result<Family, Error> {
    if !index.has_prefix(UNET_PREFIX) {
        return Err(index.layout_error(
            "no UNet under `model.diffusion_model.`: not a single-file Stable Diffusion checkpoint",
        ));
    }
    if index.has_prefix(SDXL_CLIP_G_PREFIX) {
        Ok(Family::Sdxl)
    } else if index.has_prefix(SD2_CLIP_PREFIX) {
        Ok(Family::Sd2)
    } else if index.has_prefix(SD1_CLIP_PREFIX) {
        Ok(Family::Sd1)
    } else if index.has_prefix("conditioner.") || index.has_prefix("cond_stage_model.") {
        Err(index.unsupported("a text encoder of an unknown kind (expected CLIP ViT-L, OpenCLIP ViT-H or SDXL's pair)"))
    } else if index.has_prefix("text_encoders.")
        || index.has_prefix("model.diffusion_model.double_blocks.")
    {
        Err(index
            .unsupported("a Flux/SD3-style transformer model; supported: SD 1.x, SD 2.x, SDXL"))
    } else {
        Err(index.layout_error("no text encoder (`cond_stage_model.` or `conditioner.`): only the UNet is in this file"))
    }
}

fn infer_unet(index: &TensorIndex) -> Result<UNetConfig, Error> {
    let mut config = infer_input_half(index, UNET_PREFIX)?;
    config.out_channels = index.shape(&format!("{UNET_PREFIX}out.2.weight"))?[0];
    Ok(config)
}

/// The shapes of the input and middle blocks of a UNet under `p`: the UNet's, or a ControlNet's
/// (`controlnet.rs`), which has no output blocks (`out_channels` is left at `in_channels`).
pub(crate) fn infer_input_half(index: &TensorIndex, p: &str) -> Result<UNetConfig, Error> {
    let conv_in = index.shape(&format!("{p}input_blocks.0.0.weight"))?;
    let (model_channels, in_channels) = (conv_in[0], conv_in[1]);
    let out_channels = in_channels;
    let mut downsamples = Vec::new();
    let mut count = 0;
    while index.has_prefix(&format!("{p}input_blocks.{}.", count + 1)) {
        count += 1;
        if index.contains(&format!("{p}input_blocks.{count}.0.op.weight")) {
            downsamples.push(count);
        }
    }
    let num_res_blocks = downsamples.first().map(|d| d - 1).unwrap_or(count);
    if num_res_blocks == 0 {
        return Err(index.layout_error(
            "the UNet's input blocks have no residual block before the first downsample",
        ));
    }
    let levels = downsamples.len() + 1;
    let mut channel_mult = Vec::with_capacity(levels);
    let mut transformer_depth = Vec::with_capacity(levels);
    for level in 0..levels {
        let block = 1 + level * (num_res_blocks + 1);
        let out = index.shape(&format!("{p}input_blocks.{block}.0.out_layers.3.weight"))?[0];
        channel_mult.push(out / model_channels);
        transformer_depth
            .push(index.count_indices(&format!("{p}input_blocks.{block}.1.transformer_blocks.")));
    }
    let mid_transformer_depth =
        index.count_indices(&format!("{p}middle_block.1.transformer_blocks."));
    let context_dim = index
        .first_with_suffix(p, "attn2.to_k.weight")
        .map(|shape| shape[1])
        .ok_or_else(|| {
            index.layout_error("the UNet has no cross-attention (`attn2.to_k.weight`)")
        })?;
    let use_linear_projection = index
        .first_with_suffix(p, "proj_in.weight")
        .map(|shape| shape.len() == 2)
        .unwrap_or(false);
    let adm_in_channels = index
        .shape(&format!("{p}label_emb.0.0.weight"))
        .ok()
        .map(|s| s[1]);
    Ok(UNetConfig {
        in_channels,
        out_channels,
        model_channels,
        channel_mult,
        num_res_blocks,
        transformer_depth,
        mid_transformer_depth,
        context_dim,
        use_linear_projection,
        adm_in_channels,
    })
}

fn infer_vae(index: &TensorIndex) -> Result<VaeConfig, Error> {
    let p = VAE_PREFIX;
    if !index.has_prefix(p) {
        return Err(index.layout_error("no VAE under `first_stage_model.`"));
    }
    let base_channels = index.shape(&format!("{p}encoder.conv_in.weight"))?[0];
    let levels = index.count_indices(&format!("{p}encoder.down."));
    let num_res_blocks = index.count_indices(&format!("{p}encoder.down.0.block."));
    let mut channel_mult = Vec::with_capacity(levels);
    for level in 0..levels {
        let out = index.shape(&format!("{p}encoder.down.{level}.block.0.conv2.weight"))?[0];
        channel_mult.push(out / base_channels);
    }
    let latent_channels = index.shape(&format!("{p}post_quant_conv.weight"))?[0];
    Ok(VaeConfig {
        base_channels,
        channel_mult,
        num_res_blocks,
        latent_channels,
    })
}

fn infer_clip(index: &TensorIndex, prefix: &str, layout: ClipLayout) -> Result<ClipConfig, Error> {
    let (token, position, layers_prefix, fc1) = match layout {
        ClipLayout::HuggingFace => (
            format!("{prefix}text_model.embeddings.token_embedding.weight"),
            format!("{prefix}text_model.embeddings.position_embedding.weight"),
            format!("{prefix}text_model.encoder.layers."),
            format!("{prefix}text_model.encoder.layers.0.mlp.fc1.weight"),
        ),
        ClipLayout::OpenClip => (
            format!("{prefix}token_embedding.weight"),
            format!("{prefix}positional_embedding"),
            format!("{prefix}transformer.resblocks."),
            format!("{prefix}transformer.resblocks.0.mlp.c_fc.weight"),
        ),
    };
    let token_shape = index.shape(&token)?;
    let projection_dim = match layout {
        ClipLayout::OpenClip => index
            .shape(&format!("{prefix}text_projection"))
            .ok()
            .map(|s| s[1]),
        ClipLayout::HuggingFace => None,
    };
    Ok(ClipConfig {
        layout,
        vocab_size: token_shape[0],
        width: token_shape[1],
        layers: index.count_indices(&layers_prefix),
        intermediate: index.shape(&fc1)?[0],
        max_positions: index.shape(&position)?[0],
        projection_dim,
        layers_removed: if layout == ClipLayout::OpenClip {
            index.text_layers_removed()
        } else {
            0
        },
    })
}
