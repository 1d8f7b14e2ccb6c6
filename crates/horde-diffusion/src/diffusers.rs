//! Diffusers folders (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, and for SDXL
//! `text_encoder_2/`): their tensors are renamed to the single-file (LDM) layout, the inverse of
//! diffusers' `convert_from_ckpt`, so one set of networks serves both formats. Structure is
//! inferred from the tensor names; of the JSON configs only the text encoder's activation is
//! read, to tell SD 2.x's OpenCLIP encoder (stored in Hugging Face form: q, k, v apart, last
//! layer removed) from SD 1.x's CLIP.

use crate::checkpoint::{map_file, TensorIndex};
use crate::config::{
    SD1_CLIP_PREFIX, SD2_CLIP_PREFIX, SDXL_CLIP_G_PREFIX, SDXL_CLIP_L_PREFIX, UNET_PREFIX,
    VAE_PREFIX,
};
use crate::Error;
use std::collections::BTreeSet;
use std::path::Path;

const UNET: usize = 0;
const VAE: usize = 1;
const TEXT: usize = 2;
const TEXT_2: usize = 3;

/// Opens a diffusers folder as an LDM-named tensor index.
pub(crate) fn open_folder(path: &Path) -> Result<TensorIndex, Error> {
    if !path.join("model_index.json").exists() {
        return Err(Error::Layout {
            path: path.into(),
            reason: "a folder but not a diffusers model (no model_index.json); expected a .safetensors file or a diffusers folder".into(),
        });
    }
    let sdxl = path.join("text_encoder_2").exists();
    let mut parts = vec![
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ];
    if sdxl {
        parts.push(("text_encoder_2", "model.safetensors"));
    }
    let mut files = Vec::new();
    for (part, name) in parts {
        let file = path.join(part).join(name);
        if !file.exists() {
            return Err(Error::Layout {
                path: path.into(),
                reason: format!("missing {part}/{name} (only .safetensors weights are read)"),
            });
        }
        files.push((file.clone(), map_file(&file)?));
    }
    let names = |i: usize| -> BTreeSet<String> {
        files[i].1.tensors().into_iter().map(|(n, _)| n).collect()
    };
    let open_clip_text = !sdxl && hidden_act_is_gelu(&path.join("text_encoder/config.json"));
    let unet = UNetRenamer::new(&names(UNET));
    let vae_levels = count(&names(VAE), "encoder.down_blocks.");
    let text_prefix = match (sdxl, open_clip_text) {
        (true, _) => SDXL_CLIP_L_PREFIX,
        (false, true) => SD2_CLIP_PREFIX,
        (false, false) => SD1_CLIP_PREFIX,
    };
    let mut index = TensorIndex::open_renamed(path, files, |file, name| {
        let text_name = with_text_model_prefix(name);
        let name = if file >= TEXT {
            text_name.as_str()
        } else {
            name
        };
        let renamed = match file {
            UNET => unet.rename(name).map(|n| format!("{UNET_PREFIX}{n}")),
            VAE => rename_vae(name, vae_levels).map(|n| format!("{VAE_PREFIX}{n}")),
            TEXT if open_clip_text => open_clip_name(name).map(|n| format!("{text_prefix}{n}")),
            TEXT => Some(format!("{text_prefix}{name}")),
            TEXT_2 => open_clip_name(name).map(|n| format!("{SDXL_CLIP_G_PREFIX}{n}")),
            _ => None,
        };
        renamed.map(|n| vec![n])
    });
    if open_clip_text {
        fuse_attention(&mut index, SD2_CLIP_PREFIX);
        index.set_text_layers_removed(1);
    }
    if sdxl {
        fuse_attention(&mut index, SDXL_CLIP_G_PREFIX);
        index.transpose(&format!("{SDXL_CLIP_G_PREFIX}text_projection"));
    }
    Ok(index)
}

/// `CLIPTextModel` names as transformers 4 saved them (`text_model.…`); transformers 5 saves
/// the plain text model's without that prefix.
fn with_text_model_prefix(name: &str) -> String {
    if name.starts_with("text_model.") || name.starts_with("text_projection") {
        name.to_string()
    } else {
        format!("text_model.{name}")
    }
}

/// Hugging Face CLIP names to OpenCLIP's (q, k and v still apart, as `attn.q_part` etc.).
fn open_clip_name(name: &str) -> Option<String> {
    let simple = [
        (
            "text_model.embeddings.token_embedding.weight",
            "token_embedding.weight",
        ),
        (
            "text_model.embeddings.position_embedding.weight",
            "positional_embedding",
        ),
        ("text_model.final_layer_norm.", "ln_final."),
        ("text_projection.weight", "text_projection"),
    ];
    for (from, to) in simple {
        if let Some(tail) = name.strip_prefix(from) {
            return Some(format!("{to}{tail}"));
        }
    }
    let (layer, rest) = index_after(name, "text_model.encoder.layers.")?;
    let map = [
        ("layer_norm1.", "ln_1."),
        ("layer_norm2.", "ln_2."),
        ("self_attn.out_proj.", "attn.out_proj."),
        ("self_attn.q_proj.", "attn.q_part."),
        ("self_attn.k_proj.", "attn.k_part."),
        ("self_attn.v_proj.", "attn.v_part."),
        ("mlp.fc1.", "mlp.c_fc."),
        ("mlp.fc2.", "mlp.c_proj."),
    ];
    map.iter().find_map(|(from, to)| {
        rest.strip_prefix(from)
            .map(|tail| format!("transformer.resblocks.{layer}.{to}{tail}"))
    })
}

/// Joins each layer's q, k and v into OpenCLIP's fused `in_proj_weight` and `in_proj_bias`.
fn fuse_attention(index: &mut TensorIndex, prefix: &str) {
    for layer in 0.. {
        let base = format!("{prefix}transformer.resblocks.{layer}.attn.");
        let mut any = false;
        for kind in ["weight", "bias"] {
            let parts: Vec<String> = ["q", "k", "v"]
                .iter()
                .map(|p| format!("{base}{p}_part.{kind}"))
                .collect();
            any |= index.fuse(&format!("{base}in_proj_{kind}"), &parts);
        }
        if !any {
            break;
        }
    }
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

/// diffusers' UNet names to LDM's (also a diffusers-layout ControlNet's, `controlnet.rs`).
pub(crate) struct UNetRenamer {
    per_level: usize,
    up_with_attention: BTreeSet<usize>,
}

impl UNetRenamer {
    pub(crate) fn new(names: &BTreeSet<String>) -> Self {
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

    pub(crate) fn rename(&self, name: &str) -> Option<String> {
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
