//! Reading a LoRA file: the key grammar of the formats people share, each key reduced to the
//! network it belongs to, the module it modifies (in one spelling: the module path with `_`
//! for `.`), and the part of the adapter it holds.
//!
//! * kohya (sd-scripts, A1111, LyCORIS LoCon): `lora_unet_<module>`, `lora_te_`, `lora_te1_`,
//!   `lora_te2_`, then `.lora_down.weight`, `.lora_up.weight`, `.lora_mid.weight` (LoCon's Tucker
//!   core), `.alpha`.
//! * LyCORIS LoHa: the same names, then `.hada_w1_a`, `.hada_w1_b`, `.hada_w2_a`, `.hada_w2_b`.
//! * diffusers / PEFT: `unet.<module>`, `text_encoder.`, `text_encoder_2.`, then `.lora_A.weight`
//!   and `.lora_B.weight`; PEFT's `lora_alpha` and `r` in the file's `lora_adapter_metadata`.
//! * diffusers' older forms: `…attn1.processor.to_q_lora.down.weight` (attention processors,
//!   also without the `unet.` prefix), `…to_q.lora.down.weight`, `…lora_linear_layer.down.weight`.
//!
//! Kohya's `_` spelling is ambiguous to undo (`down_blocks_0` or `down.blocks.0`?), so nothing
//! is undone: the model's own module names are spelled the same way (`lora::targets`).

use super::{Adapter, Network, Weights};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What one stored tensor is to its module's adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Role {
    Down,
    Up,
    Mid,
    Alpha,
    HadaW1A,
    HadaW1B,
    HadaW2A,
    HadaW2B,
    /// A part of an adapter kind this engine does not apply (named for the error).
    Unsupported(&'static str),
}

/// Key endings, longest first where one ends another.
const ROLES: &[(&str, Role)] = &[
    (".lora_down.weight", Role::Down),
    (".lora_up.weight", Role::Up),
    (".lora_mid.weight", Role::Mid),
    (".lora_A.weight", Role::Down),
    (".lora_B.weight", Role::Up),
    (".lora_linear_layer.down.weight", Role::Down),
    (".lora_linear_layer.up.weight", Role::Up),
    (".lora.down.weight", Role::Down),
    (".lora.up.weight", Role::Up),
    ("_lora.down.weight", Role::Down),
    ("_lora.up.weight", Role::Up),
    (".alpha", Role::Alpha),
    (".hada_w1_a", Role::HadaW1A),
    (".hada_w1_b", Role::HadaW1B),
    (".hada_w2_a", Role::HadaW2A),
    (".hada_w2_b", Role::HadaW2B),
    (
        ".hada_t1",
        Role::Unsupported("LoHa with a Tucker core (hada_t1/hada_t2)"),
    ),
    (
        ".hada_t2",
        Role::Unsupported("LoHa with a Tucker core (hada_t1/hada_t2)"),
    ),
    (".lokr_w1", Role::Unsupported("LoKr")),
    (".lokr_w2", Role::Unsupported("LoKr")),
    (".lokr_w1_a", Role::Unsupported("LoKr")),
    (".lokr_w1_b", Role::Unsupported("LoKr")),
    (".lokr_w2_a", Role::Unsupported("LoKr")),
    (".lokr_w2_b", Role::Unsupported("LoKr")),
    (".lokr_t2", Role::Unsupported("LoKr")),
    (".dora_scale", Role::Unsupported("DoRA (dora_scale)")),
    (".diff", Role::Unsupported("full weight differences (diff)")),
    (
        ".diff_b",
        Role::Unsupported("full bias differences (diff_b)"),
    ),
    (".w_norm", Role::Unsupported("GLoRA/norm adapters")),
    (".b_norm", Role::Unsupported("GLoRA/norm adapters")),
];

/// Network prefixes: kohya's, then diffusers'.
const NETWORKS: &[(&str, Network)] = &[
    ("lora_unet_", Network::UNet),
    ("lora_te1_", Network::Text(0)),
    ("lora_te2_", Network::Text(1)),
    ("lora_te_", Network::Text(0)),
    ("unet.", Network::UNet),
    ("text_encoder_2.", Network::Text(1)),
    ("text_encoder.", Network::Text(0)),
];

/// Splits a stored key into its network, its module (spelled with `_`) and its role; `None`
/// for a key of no format we know.
pub(super) fn parse_key(key: &str) -> Option<(Network, String, Role)> {
    let (stem, role) = ROLES
        .iter()
        .find_map(|(ending, role)| key.strip_suffix(ending).map(|stem| (stem, *role)))?;
    let (network, module) = NETWORKS
        .iter()
        .find_map(|(prefix, network)| stem.strip_prefix(prefix).map(|m| (*network, m)))
        .or_else(|| bare_unet_module(stem).map(|m| (Network::UNet, m)))?;
    let module = module.replace(".processor.", ".").replace('.', "_");
    Some((network, old_diffusers_module(network, &module), role))
}

/// diffusers' attention-processor files name UNet modules without a prefix.
fn bare_unet_module(stem: &str) -> Option<&str> {
    ["down_blocks.", "mid_block.", "up_blocks."]
        .iter()
        .any(|p| stem.starts_with(p))
        .then_some(stem)
}

/// The attention-processor names of diffusers' old files: `to_out` is the UNet's `to_out.0`;
/// in a text encoder `to_q` … `to_out` are CLIP's `q_proj` … `out_proj`.
fn old_diffusers_module(network: Network, module: &str) -> String {
    let renames: &[(&str, &str)] = match network {
        Network::UNet => &[("_to_out", "_to_out_0")],
        Network::Text(_) => &[
            ("_to_q", "_q_proj"),
            ("_to_k", "_k_proj"),
            ("_to_v", "_v_proj"),
            ("_to_out", "_out_proj"),
        ],
    };
    for (old, new) in renames {
        if let Some(stem) = module.strip_suffix(old) {
            return format!("{stem}{new}");
        }
    }
    module.to_string()
}

/// PEFT's adapter settings of one network, from diffusers' `lora_adapter_metadata`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct PeftScale {
    pub lora_alpha: f64,
    pub rslora: bool,
}

/// Reads the JSON header of a safetensors file for diffusers' `lora_adapter_metadata`: PEFT's
/// `lora_alpha` (and `use_rslora`) per network, by the prefix diffusers packs them under.
pub(super) fn peft_metadata(path: &Path) -> Result<HashMap<Network, PeftScale>, String> {
    let Some(text) = header_metadata(path)? else {
        return Ok(HashMap::new());
    };
    let packed: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("lora_adapter_metadata is not JSON: {e}"))?;
    let mut scales = HashMap::new();
    for (prefix, network) in [
        ("unet.", Network::UNet),
        ("text_encoder.", Network::Text(0)),
        ("text_encoder_2.", Network::Text(1)),
    ] {
        let field = |name: &str| packed.get(format!("{prefix}{name}"));
        let Some(alpha) = field("lora_alpha").and_then(serde_json::Value::as_f64) else {
            continue;
        };
        for pattern in ["alpha_pattern", "rank_pattern"] {
            if field(pattern)
                .and_then(serde_json::Value::as_object)
                .is_some_and(|p| !p.is_empty())
            {
                return Err(format!(
                    "lora_adapter_metadata has a per-module {prefix}{pattern}, which is not supported"
                ));
            }
        }
        let rslora = field("use_rslora").and_then(serde_json::Value::as_bool) == Some(true);
        scales.insert(
            network,
            PeftScale {
                lora_alpha: alpha,
                rslora,
            },
        );
    }
    Ok(scales)
}

/// The `lora_adapter_metadata` string of a safetensors header, if any.
fn header_metadata(path: &Path) -> Result<Option<String>, String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length)
        .map_err(|e| format!("too short for safetensors: {e}"))?;
    let length = u64::from_le_bytes(length);
    if length > 100_000_000 {
        return Err(format!("a header of {length} bytes: not safetensors"));
    }
    let mut header = vec![0u8; length as usize];
    file.read_exact(&mut header)
        .map_err(|e| format!("truncated header: {e}"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| format!("header is not JSON: {e}"))?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.get("lora_adapter_metadata"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_string))
}

/// A module's stored tensors by role, with one of its keys for messages.
#[derive(Default)]
struct Parts {
    key: String,
    tensors: BTreeMap<Role, Tensor>,
}

/// Groups a file's tensors into one adapter per module. Keys of no known format are returned
/// apart (the caller decides whether they are few enough to ignore).
pub(super) fn adapters(
    tensors: HashMap<String, Tensor>,
    peft: &HashMap<Network, PeftScale>,
) -> Result<(Vec<Adapter>, Vec<String>), String> {
    let mut modules: BTreeMap<(Network, String), Parts> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (key, tensor) in tensors {
        let Some((network, module, role)) = parse_key(&key) else {
            unknown.push(key);
            continue;
        };
        if let Role::Unsupported(what) = role {
            return Err(format!("`{key}`: {what} is not supported"));
        }
        let parts = modules.entry((network, module)).or_default();
        // Name the module by its first weight's key (not its alpha's).
        let weight = |k: &str| !k.is_empty() && !k.ends_with(".alpha");
        if !weight(&parts.key) || weight(&key) && key < parts.key {
            parts.key.clone_from(&key);
        }
        parts.tensors.insert(role, tensor);
    }
    unknown.sort();
    let adapters = modules
        .into_iter()
        .map(|((network, module), parts)| {
            let weights = weights(&parts, peft.get(&network))?;
            Ok(Adapter {
                network,
                module,
                key: parts.key,
                weights,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok((adapters, unknown))
}

/// One module's tensors as a low-rank or a Hadamard-product adapter, with its scale.
fn weights(parts: &Parts, peft: Option<&PeftScale>) -> Result<Weights, String> {
    let t = |role: Role| parts.tensors.get(&role).cloned();
    let alpha = t(Role::Alpha).map(|a| scalar(&a, &parts.key)).transpose()?;
    if let (Some(w1a), Some(w1b), Some(w2a), Some(w2b)) = (
        t(Role::HadaW1A),
        t(Role::HadaW1B),
        t(Role::HadaW2A),
        t(Role::HadaW2B),
    ) {
        let rank = w1b.dim(0).map_err(|e| e.to_string())?;
        return Ok(Weights::Hadamard {
            w1a,
            w1b,
            w2a,
            w2b,
            scale: alpha.map_or(1.0, |a| a / rank as f64),
        });
    }
    let (Some(down), Some(up)) = (t(Role::Down), t(Role::Up)) else {
        return Err(format!(
            "`{}`: an incomplete adapter (a low-rank adapter needs both its down and up \
             matrices, LoHa all four hada_w* matrices)",
            parts.key
        ));
    };
    let rank = down.dim(0).map_err(|e| e.to_string())?;
    let scale = match (alpha, peft) {
        (Some(alpha), _) => alpha / rank as f64,
        (None, Some(p)) if p.rslora => p.lora_alpha / (rank as f64).sqrt(),
        (None, Some(p)) => p.lora_alpha / rank as f64,
        (None, None) => 1.0,
    };
    Ok(Weights::LowRank {
        down,
        up,
        mid: t(Role::Mid),
        scale,
    })
}

/// A one-value tensor (kohya's `alpha`) as a number.
fn scalar(tensor: &Tensor, key: &str) -> Result<f64, String> {
    let values = tensor
        .to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .map_err(|e| format!("`{key}`: unreadable alpha: {e}"))?;
    match values[..] {
        [alpha] if alpha.is_finite() => Ok(alpha),
        _ => Err(format!("`{key}`: alpha is not one finite number")),
    }
}

/// Loads every tensor of a safetensors file into memory, on the CPU.
pub(super) fn load(path: &Path) -> Result<HashMap<String, Tensor>, String> {
    if !path.exists() {
        return Err("no such file".into());
    }
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        format!("not a readable safetensors file ({e}); is it truncated or of another format?")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_every_format_reduce_to_one_spelling() {
        let cases = [
            (
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
                Network::UNet,
                "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                Role::Down,
            ),
            (
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight",
                Network::UNet,
                "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                Role::Up,
            ),
            (
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
                Network::UNet,
                "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0",
                Role::Up,
            ),
            (
                "text_encoder.text_model.encoder.layers.1.self_attn.to_k_lora.down.weight",
                Network::Text(0),
                "text_model_encoder_layers_1_self_attn_k_proj",
                Role::Down,
            ),
            (
                "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight",
                Network::Text(1),
                "text_model_encoder_layers_0_mlp_fc1",
                Role::Up,
            ),
            (
                "lora_te2_text_model_encoder_layers_3_self_attn_out_proj.alpha",
                Network::Text(1),
                "text_model_encoder_layers_3_self_attn_out_proj",
                Role::Alpha,
            ),
            (
                "lora_unet_input_blocks_1_0_in_layers_2.hada_w2_b",
                Network::UNet,
                "input_blocks_1_0_in_layers_2",
                Role::HadaW2B,
            ),
        ];
        for (key, network, module, role) in cases {
            assert_eq!(
                parse_key(key),
                Some((network, module.to_string(), role)),
                "{key}"
            );
        }
        assert_eq!(parse_key("model.diffusion_model.out.2.weight"), None);
        assert_eq!(
            parse_key("lora_unet_x.lokr_w1").map(|k| k.2),
            Some(Role::Unsupported("LoKr"))
        );
    }
}
