//! Which tensor of the model each LoRA module modifies. The model's networks are written with
//! the LDM names; LoRA files name modules the diffusers way (kohya for SD 1.x/2.x, PEFT), the
//! LDM way (kohya for SDXL) or the Hugging Face CLIP way (every text encoder). The table lists
//! every module of this model under each spelling (`_` for `.`, as `lora::parse` reduces keys):
//!
//! * UNet: the LDM module path and the diffusers one (the inverse of `diffusers::UNetRenamer`).
//! * Text encoders: CLIP's `text_model.encoder.layers.N.…` (with and without `text_model.`, as
//!   transformers 5 saves the plain text model). OpenCLIP encoders (SD 2.x, SDXL's second) store
//!   q, k and v fused in `attn.in_proj_weight`: a LoRA on `q_proj` modifies its first third,
//!   `k_proj` the second, `v_proj` the last.

use super::Network;
use crate::config::{ClipConfig, ClipLayout, Family, ModelConfig, UNetConfig};
use crate::config::{
    SD1_CLIP_PREFIX, SD2_CLIP_PREFIX, SDXL_CLIP_G_PREFIX, SDXL_CLIP_L_PREFIX, UNET_PREFIX,
};
use std::collections::HashMap;

/// The tensor a module's LoRA adds to: its full name, and for a slice of a fused tensor the
/// rows `(start, count)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub tensor: String,
    pub rows: Option<(usize, usize)>,
}

/// Every module of a model under every spelling a LoRA file may use.
#[derive(Debug, Default)]
pub(super) struct Targets {
    by_module: HashMap<(Network, String), Target>,
}

impl Targets {
    /// `unet_weights`: the model's UNet tensor names (with the `model.diffusion_model.` prefix).
    pub(super) fn new<'a>(
        config: &ModelConfig,
        unet_weights: impl Iterator<Item = &'a str>,
    ) -> Targets {
        let mut targets = Targets::default();
        for name in unet_weights {
            let Some(module) = name
                .strip_prefix(UNET_PREFIX)
                .and_then(|n| n.strip_suffix(".weight"))
            else {
                continue;
            };
            let target = Target {
                tensor: name.to_string(),
                rows: None,
            };
            if let Some(diffusers) = diffusers_unet_module(module, &config.unet) {
                targets.add(Network::UNet, &diffusers, target.clone());
            }
            targets.add(Network::UNet, module, target);
        }
        let prefixes: &[&str] = match config.family {
            Family::Sd1 => &[SD1_CLIP_PREFIX],
            Family::Sd2 => &[SD2_CLIP_PREFIX],
            Family::Sdxl => &[SDXL_CLIP_L_PREFIX, SDXL_CLIP_G_PREFIX],
        };
        for (i, (clip, prefix)) in config.text_encoders.iter().zip(prefixes).enumerate() {
            targets.add_text_encoder(i, clip, prefix);
        }
        targets
    }

    fn add(&mut self, network: Network, dotted: &str, target: Target) {
        self.by_module
            .insert((network, dotted.replace('.', "_")), target);
    }

    fn add_text_encoder(&mut self, index: usize, clip: &ClipConfig, prefix: &str) {
        let w = clip.width;
        for layer in 0..clip.layers {
            for module in [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.out_proj",
                "mlp.fc1",
                "mlp.fc2",
            ] {
                let target = match clip.layout {
                    ClipLayout::HuggingFace => Target {
                        tensor: format!(
                            "{prefix}text_model.encoder.layers.{layer}.{module}.weight"
                        ),
                        rows: None,
                    },
                    ClipLayout::OpenClip => open_clip_target(prefix, layer, module, w),
                };
                let hf = format!("encoder.layers.{layer}.{module}");
                self.add(
                    Network::Text(index),
                    &format!("text_model.{hf}"),
                    target.clone(),
                );
                self.add(Network::Text(index), &hf, target);
            }
        }
    }

    pub(super) fn get(&self, network: Network, module: &str) -> Option<&Target> {
        self.by_module.get(&(network, module.to_string()))
    }
}

/// The OpenCLIP tensor of a Hugging Face CLIP module.
fn open_clip_target(prefix: &str, layer: usize, module: &str, width: usize) -> Target {
    let base = format!("{prefix}transformer.resblocks.{layer}.");
    let fused = |i: usize| Target {
        tensor: format!("{base}attn.in_proj_weight"),
        rows: Some((i * width, width)),
    };
    let plain = |name: &str| Target {
        tensor: format!("{base}{name}.weight"),
        rows: None,
    };
    match module {
        "self_attn.q_proj" => fused(0),
        "self_attn.k_proj" => fused(1),
        "self_attn.v_proj" => fused(2),
        "self_attn.out_proj" => plain("attn.out_proj"),
        "mlp.fc1" => plain("mlp.c_fc"),
        _ => plain("mlp.c_proj"),
    }
}

/// A residual block's LDM layer names in diffusers'.
fn diffusers_resnet(rest: &str) -> String {
    let map = [
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
        ("skip_connection", "conv_shortcut"),
    ];
    for (from, to) in map {
        if let Some(tail) = rest.strip_prefix(from) {
            return format!("{to}{tail}");
        }
    }
    rest.to_string()
}

/// Splits `name` after `prefix` into the index that follows and the rest.
fn index_after<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?;
    let (index, rest) = rest.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

/// The diffusers name of an LDM UNet module (the inverse of `diffusers::UNetRenamer`): each
/// level has `num_res_blocks` blocks and, but for the last, a downsampler (input side) or the
/// same plus one (output side, whose last block of a level carries the upsampler).
pub(super) fn diffusers_unet_module(module: &str, config: &UNetConfig) -> Option<String> {
    let simple = [
        ("input_blocks.0.0", "conv_in"),
        ("time_embed.0", "time_embedding.linear_1"),
        ("time_embed.2", "time_embedding.linear_2"),
        ("label_emb.0.0", "add_embedding.linear_1"),
        ("label_emb.0.2", "add_embedding.linear_2"),
        ("out.0", "conv_norm_out"),
        ("out.2", "conv_out"),
    ];
    if let Some((_, to)) = simple.iter().find(|(from, _)| *from == module) {
        return Some(to.to_string());
    }
    let r = config.num_res_blocks + 1;
    if let Some((i, rest)) = index_after(module, "input_blocks.") {
        let (level, j) = ((i.checked_sub(1)?) / r, (i - 1) % r);
        let (slot, rest) = index_after(rest, "")?;
        return Some(match (slot, j == config.num_res_blocks) {
            (0, true) if rest == "op" => format!("down_blocks.{level}.downsamplers.0.conv"),
            (0, false) => format!("down_blocks.{level}.resnets.{j}.{}", diffusers_resnet(rest)),
            (1, false) => format!("down_blocks.{level}.attentions.{j}.{rest}"),
            _ => return None,
        });
    }
    if let Some((slot, rest)) = index_after(module, "middle_block.") {
        return Some(match slot {
            0 | 2 => format!("mid_block.resnets.{}.{}", slot / 2, diffusers_resnet(rest)),
            _ => format!("mid_block.attentions.0.{rest}"),
        });
    }
    let (i, rest) = index_after(module, "output_blocks.")?;
    let (u, j) = (i / r, i % r);
    let (slot, rest) = index_after(rest, "")?;
    Some(match slot {
        0 => format!("up_blocks.{u}.resnets.{j}.{}", diffusers_resnet(rest)),
        _ if rest == "conv" => format!("up_blocks.{u}.upsamplers.0.conv"),
        1 => format!("up_blocks.{u}.attentions.{j}.{rest}"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn sd15() -> ModelConfig {
        ModelConfig {
            family: Family::Sd1,
            prediction: crate::config::Prediction::Epsilon,
            unet: ModelConfig::sd15().unet,
            vae: crate::tiny::tiny_config(crate::tiny::TinyArch::Sd15).vae,
            text_encoders: crate::tiny::tiny_config(crate::tiny::TinyArch::Sd15).text_encoders,
        }
    }

    /// The inverse agrees with diffusers' own conversion table for SD 1.5 (from
    /// `convert_ldm_unet_checkpoint`), at every kind of block.
    #[test]
    fn ldm_unet_modules_have_their_diffusers_names() {
        let config = sd15().unet;
        let cases = [
            (
                "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            ),
            (
                "input_blocks.2.0.in_layers.2",
                "down_blocks.0.resnets.1.conv1",
            ),
            ("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv"),
            (
                "input_blocks.4.0.skip_connection",
                "down_blocks.1.resnets.0.conv_shortcut",
            ),
            (
                "input_blocks.11.0.emb_layers.1",
                "down_blocks.3.resnets.1.time_emb_proj",
            ),
            ("middle_block.1.proj_in", "mid_block.attentions.0.proj_in"),
            ("middle_block.2.out_layers.3", "mid_block.resnets.1.conv2"),
            ("output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv"),
            ("output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv"),
            (
                "output_blocks.5.1.transformer_blocks.0.ff.net.2",
                "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2",
            ),
            (
                "output_blocks.11.0.in_layers.2",
                "up_blocks.3.resnets.2.conv1",
            ),
            ("time_embed.2", "time_embedding.linear_2"),
        ];
        for (ldm, diffusers) in cases {
            assert_eq!(
                diffusers_unet_module(ldm, &config).as_deref(),
                Some(diffusers),
                "{ldm}"
            );
        }
    }
}
