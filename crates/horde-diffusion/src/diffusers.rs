//! Diffusers folders (`model_index.json`, `unet/`, `vae/`, `text_encoder/`): their tensors are
//! renamed to the single-file (LDM) layout, the inverse of diffusers' `convert_from_ckpt`, so one
//! set of networks serves both formats. Everything is inferred from the tensor names; the JSON
//! configs are not needed.
//!
//! SD 2.x and SDXL folders store their OpenCLIP encoders in Hugging Face form (fused attention
//! split, last layer removed); those are refused with a clear error for now.

use crate::checkpoint::{map_file, TensorIndex};
use crate::config::{SD1_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX};
use crate::Error;
use std::collections::BTreeSet;
use std::path::Path;

const UNET: usize = 0;
const VAE: usize = 1;
const TEXT: usize = 2;

/// Opens a diffusers folder as an LDM-named tensor index.
pub fn open_folder(path: &Path) -> Result<TensorIndex, Error> {
    if !path.join("model_index.json").exists() {
        return Err(Error::Layout {
            path: path.into(),
            reason: "a folder but not a diffusers model (no model_index.json); expected a .safetensors file or a diffusers folder".into(),
        });
    }
    if path.join("text_encoder_2").exists() {
        return Err(Error::Unsupported {
            path: path.into(),
            reason: "SDXL diffusers folders are not supported yet; use the single-file checkpoint"
                .into(),
        });
    }
    let mut files = Vec::new();
    for (part, name) in [
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ] {
        let file = path.join(part).join(name);
        if !file.exists() {
            return Err(Error::Layout {
                path: path.into(),
                reason: format!("missing {part}/{name} (only .safetensors weights are read)"),
            });
        }
        files.push((file.clone(), map_file(&file)?));
    }
    let text_names: BTreeSet<String> = files[TEXT]
        .1
        .tensors()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if text_names.iter().any(|n| n.contains("text_projection"))
        || hidden_act_is_gelu(&path.join("text_encoder/config.json"))
    {
        return Err(Error::Unsupported {
            path: path.into(),
            reason:
                "SD 2.x diffusers folders are not supported yet; use the single-file checkpoint"
                    .into(),
        });
    }
    let unet_names: BTreeSet<String> = files[UNET]
        .1
        .tensors()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let vae_names: BTreeSet<String> = files[VAE].1.tensors().into_iter().map(|(n, _)| n).collect();
    let unet = UNetRenamer::new(&unet_names);
    let vae_levels = count(&vae_names, "encoder.down_blocks.");
    Ok(TensorIndex::open_renamed(path, files, |file, name| {
        let renamed = match file {
            UNET => unet.rename(name).map(|n| format!("{UNET_PREFIX}{n}")),
            VAE => rename_vae(name, vae_levels).map(|n| format!("{VAE_PREFIX}{n}")),
            _ => Some(format!("{SD1_CLIP_PREFIX}{name}")),
        };
        renamed.map(|n| vec![n])
    }))
}

fn hidden_act_is_gelu(config: &Path) -> bool {
    std::fs::read_to_string(config).is_ok_and(|text| text.contains("\"hidden_act\": \"gelu\""))
}

/// How many consecutive indices `prefix0.`, `prefix1.`, … occur among `names`.
fn count(names: &BTreeSet<String>, prefix: &str) -> usize {
    (0..)
        .take_while(|i| {
            names
                .iter()
                .any(|n| n.starts_with(&format!("{prefix}{i}.")))
        })
        .count()
}

/// Splits `name` after `prefix` into the index that follows and the rest.
fn index_after<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?;
    let (index, rest) = rest.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

fn resnet(rest: &str) -> String {
    let map = [
        ("norm1", "in_layers.0"),
        ("conv1", "in_layers.2"),
        ("time_emb_proj", "emb_layers.1"),
        ("norm2", "out_layers.0"),
        ("conv2", "out_layers.3"),
        ("conv_shortcut", "skip_connection"),
    ];
    for (from, to) in map {
        if let Some(tail) = rest.strip_prefix(from) {
            return format!("{to}{tail}");
        }
    }
    rest.to_string()
}

struct UNetRenamer {
    per_level: usize,
    up_with_attention: BTreeSet<usize>,
}

impl UNetRenamer {
    fn new(names: &BTreeSet<String>) -> Self {
        let per_level = count(names, "down_blocks.0.resnets.") + 1;
        let up_with_attention = names
            .iter()
            .filter_map(|n| index_after(n, "up_blocks."))
            .filter(|(_, rest)| rest.starts_with("attentions."))
            .map(|(u, _)| u)
            .collect();
        UNetRenamer {
            per_level,
            up_with_attention,
        }
    }

    fn rename(&self, name: &str) -> Option<String> {
        let simple = [
            ("conv_in.", "input_blocks.0.0."),
            ("time_embedding.linear_1.", "time_embed.0."),
            ("time_embedding.linear_2.", "time_embed.2."),
            ("add_embedding.linear_1.", "label_emb.0.0."),
            ("add_embedding.linear_2.", "label_emb.0.2."),
            ("conv_norm_out.", "out.0."),
            ("conv_out.", "out.2."),
        ];
        for (from, to) in simple {
            if let Some(tail) = name.strip_prefix(from) {
                return Some(format!("{to}{tail}"));
            }
        }
        let r = self.per_level;
        if let Some((level, rest)) = index_after(name, "down_blocks.") {
            if let Some((j, rest)) = index_after(rest, "resnets.") {
                return Some(format!(
                    "input_blocks.{}.0.{}",
                    1 + level * r + j,
                    resnet(rest)
                ));
            }
            if let Some((j, rest)) = index_after(rest, "attentions.") {
                return Some(format!("input_blocks.{}.1.{rest}", 1 + level * r + j));
            }
            if let Some(tail) = rest.strip_prefix("downsamplers.0.conv.") {
                return Some(format!("input_blocks.{}.0.op.{tail}", (level + 1) * r));
            }
        }
        if let Some(rest) = name.strip_prefix("mid_block.") {
            if let Some((j, rest)) = index_after(rest, "resnets.") {
                return Some(format!("middle_block.{}.{}", j * 2, resnet(rest)));
            }
            if let Some(rest) = rest.strip_prefix("attentions.0.") {
                return Some(format!("middle_block.1.{rest}"));
            }
        }
        if let Some((u, rest)) = index_after(name, "up_blocks.") {
            if let Some((j, rest)) = index_after(rest, "resnets.") {
                return Some(format!("output_blocks.{}.0.{}", u * r + j, resnet(rest)));
            }
            if let Some((j, rest)) = index_after(rest, "attentions.") {
                return Some(format!("output_blocks.{}.1.{rest}", u * r + j));
            }
            if let Some(tail) = rest.strip_prefix("upsamplers.0.conv.") {
                let slot = if self.up_with_attention.contains(&u) {
                    2
                } else {
                    1
                };
                return Some(format!(
                    "output_blocks.{}.{slot}.conv.{tail}",
                    u * r + r - 1
                ));
            }
        }
        None
    }
}

fn vae_resnet(rest: &str) -> String {
    rest.replacen("conv_shortcut", "nin_shortcut", 1)
}

fn vae_attention(rest: &str) -> String {
    let map = [
        ("group_norm", "norm"),
        ("to_q", "q"),
        ("query", "q"),
        ("to_k", "k"),
        ("key", "k"),
        ("to_v", "v"),
        ("value", "v"),
        ("to_out.0", "proj_out"),
        ("proj_attn", "proj_out"),
    ];
    for (from, to) in map {
        if let Some(tail) = rest.strip_prefix(from) {
            return format!("{to}{tail}");
        }
    }
    rest.to_string()
}

fn rename_vae(name: &str, levels: usize) -> Option<String> {
    for side in ["encoder.", "decoder."] {
        let Some(rest) = name.strip_prefix(side) else {
            continue;
        };
        let renamed = if let Some(tail) = rest.strip_prefix("conv_norm_out.") {
            format!("norm_out.{tail}")
        } else if let Some(mid) = rest.strip_prefix("mid_block.") {
            if let Some((j, tail)) = index_after(mid, "resnets.") {
                format!("mid.block_{}.{}", j + 1, vae_resnet(tail))
            } else {
                format!(
                    "mid.attn_1.{}",
                    vae_attention(mid.strip_prefix("attentions.0.")?)
                )
            }
        } else if let Some((i, tail)) = index_after(rest, "down_blocks.") {
            match index_after(tail, "resnets.") {
                Some((j, t)) => format!("down.{i}.block.{j}.{}", vae_resnet(t)),
                None => format!(
                    "down.{i}.downsample.conv.{}",
                    tail.strip_prefix("downsamplers.0.conv.")?
                ),
            }
        } else if let Some((u, tail)) = index_after(rest, "up_blocks.") {
            let level = levels.checked_sub(1 + u)?;
            match index_after(tail, "resnets.") {
                Some((j, t)) => format!("up.{level}.block.{j}.{}", vae_resnet(t)),
                None => format!(
                    "up.{level}.upsample.conv.{}",
                    tail.strip_prefix("upsamplers.0.conv.")?
                ),
            }
        } else {
            rest.to_string()
        };
        return Some(format!("{side}{renamed}"));
    }
    Some(name.to_string())
}
