//! Tiny, randomly initialised checkpoints of the real architectures, in the real single-file
//! (LDM) key layout, for tests and first runs: `horde model tiny --arch sd15 --out FILE`.
//!
//! The tensors are whatever the networks of this crate ask for when they are built (a recording
//! `VarBuilder` backend hands out seeded random values and remembers them), so the file has
//! exactly the layout the loader reads — and that layout is the LDM one, because the networks
//! are written with LDM names.
//!
//! Every tensor is random, deterministic from the seed (and the tensor's name): also those the
//! networks ask for with a constant init (norm weights and biases) or none (OpenCLIP's
//! `in_proj_weight`/`in_proj_bias` and `text_projection`, position embeddings). Constants would
//! hide wiring errors from every test on these checkpoints: a swapped q/k/v block of zeros, a
//! transposed zero matrix or shifted zero embeddings change nothing. `tests/diffusers_numbers.rs`
//! pins the three networks of each family to diffusers' outputs on these checkpoints
//! (`tools/sd-fixtures`).

use crate::clip::TextTransformer;
use crate::config::*;
use crate::unet::UNet;
use crate::vae::Vae;
use crate::Error;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The architectures `horde model tiny` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyArch {
    Sd15,
    Sd2,
    Sdxl,
}

impl std::str::FromStr for TinyArch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sd15" | "sd1" => Ok(TinyArch::Sd15),
            "sd2" | "sd21" => Ok(TinyArch::Sd2),
            "sdxl" => Ok(TinyArch::Sdxl),
            other => Err(format!(
                "unknown architecture '{other}': expected sd15, sd2 or sdxl"
            )),
        }
    }
}

fn clip(layout: ClipLayout, layers: usize, projection: bool) -> ClipConfig {
    ClipConfig {
        layout,
        vocab_size: 49408,
        width: 32,
        layers,
        intermediate: 64,
        max_positions: 77,
        projection_dim: projection.then_some(32),
        layers_removed: 0,
    }
}

/// The scaled-down configuration of each architecture: the real structure (levels, attention
/// placement, projections, text encoders) with few channels and layers.
pub fn tiny_config(arch: TinyArch) -> ModelConfig {
    let vae = VaeConfig {
        base_channels: 32,
        channel_mult: vec![1, 1, 1, 1],
        num_res_blocks: 1,
        latent_channels: 4,
    };
    let unet = |linear: bool, depth: Vec<usize>, mid: usize, context: usize, adm: Option<usize>| {
        UNetConfig {
            in_channels: 4,
            out_channels: 4,
            model_channels: 32,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            transformer_depth: depth,
            mid_transformer_depth: mid,
            context_dim: context,
            use_linear_projection: linear,
            adm_in_channels: adm,
        }
    };
    match arch {
        TinyArch::Sd15 => ModelConfig {
            family: Family::Sd1,
            prediction: Prediction::Epsilon,
            unet: unet(false, vec![1, 1], 1, 32, None),
            vae,
            text_encoders: vec![clip(ClipLayout::HuggingFace, 2, false)],
        },
        TinyArch::Sd2 => ModelConfig {
            family: Family::Sd2,
            prediction: Prediction::V,
            unet: unet(true, vec![1, 1], 1, 32, None),
            vae,
            text_encoders: vec![clip(ClipLayout::OpenClip, 3, true)],
        },
        TinyArch::Sdxl => ModelConfig {
            family: Family::Sdxl,
            prediction: Prediction::Epsilon,
            // Pooled text (32) + six size values of 8 channels each.
            unet: unet(true, vec![0, 2], 2, 64, Some(32 + 6 * 8)),
            vae,
            text_encoders: vec![
                clip(ClipLayout::HuggingFace, 2, false),
                clip(ClipLayout::OpenClip, 3, true),
            ],
        },
    }
}

/// The inpainting variant of `arch`'s configuration (SD 1.5 and SDXL inpainting checkpoints):
/// `conv_in` takes the latents, the mask and the masked image's latents (9 channels).
pub fn tiny_inpainting_config(arch: TinyArch) -> ModelConfig {
    let mut config = tiny_config(arch);
    config.unet.in_channels = 2 * config.vae.latent_channels + 1;
    config
}

/// A `VarBuilder` backend that invents seeded random tensors and keeps them.
struct Recorder {
    seed: u64,
    tensors: Arc<Mutex<HashMap<String, Tensor>>>,
}

impl candle_nn::var_builder::SimpleBackend for Recorder {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let values = random_values(&shape, init, self.seed ^ fnv1a(name));
        let tensor = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
        self.tensors
            .lock()
            .expect("recorder lock")
            .insert(name.to_string(), tensor.clone());
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!(
            "tiny checkpoint: `{name}` requested without a shape"
        )))
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// Spread of norm weights around their usual 1 (uniform, this standard deviation).
const NORM_WEIGHT_SPREAD: f64 = 0.1;
/// Spread of norm biases and other zero-initialised vectors around 0.
const BIAS_SPREAD: f64 = 0.05;
/// Spread of vectors the networks ask for with a random init (linear and conv biases).
const VECTOR_SPREAD: f64 = 0.02;

/// Seeded values for one tensor: every tensor is random, none left at the constant its init
/// names, so a test on a tiny checkpoint sees wiring errors that constants would hide (a swapped
/// q/k/v block of OpenCLIP's `in_proj`, a transposed `text_projection`, shifted position
/// embeddings, norm weights and biases mixed up). The spreads keep the networks in their usual
/// regime: norm weights around 1, biases around 0, matrices (the zero-initialised ones too:
/// `in_proj_weight`, `text_projection`, position embeddings) at 1/√fan-in.
fn random_values(shape: &Shape, init: Init, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dims = shape.dims();
    let (centre, std) = match (init, dims.len()) {
        (Init::Const(v), 1) if v != 0.0 => (v, NORM_WEIGHT_SPREAD * v.abs()),
        (Init::Const(v), 1) => (v, BIAS_SPREAD),
        (_, 0 | 1) => (0.0, VECTOR_SPREAD),
        _ => {
            let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
            (0.0, 1.0 / (fan_in as f64).sqrt())
        }
    };
    // Uniform with standard deviation `std`.
    let half_width = std * 3f64.sqrt();
    (0..shape.elem_count())
        .map(|_| (centre + (rng.random::<f64>() * 2.0 - 1.0) * half_width) as f32)
        .collect()
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Every tensor `build` asks its `VarBuilder` for, random as a tiny checkpoint's are (seeded by
/// `seed` and the tensor's name): how any network written against a `VarBuilder` gets a tiny
/// random checkpoint in its own key layout (the post-processors' `horde model tiny` too).
pub fn record_random<T>(
    seed: u64,
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let tensors = Arc::new(Mutex::new(HashMap::new()));
    let recorder = Recorder {
        seed,
        tensors: tensors.clone(),
    };
    build(VarBuilder::from_backend(
        Box::new(recorder),
        DType::F32,
        Device::Cpu,
    ))?;
    let recorded = std::mem::take(&mut *tensors.lock().expect("recorder lock"));
    Ok(recorded)
}

/// A `VarBuilder` that hands out seeded random weights of whatever shape is asked (for
/// benchmarks of the real architectures, whose weights cannot be downloaded here).
pub fn random_var_builder(seed: u64) -> VarBuilder<'static> {
    let recorder = Recorder {
        seed,
        tensors: Arc::new(Mutex::new(HashMap::new())),
    };
    VarBuilder::from_backend(Box::new(recorder), DType::F32, Device::Cpu)
}

/// Every tensor of a random checkpoint of `config`, by its single-file name.
pub fn random_tensors(config: &ModelConfig, seed: u64) -> Result<HashMap<String, Tensor>, Error> {
    let tensors = Arc::new(Mutex::new(HashMap::new()));
    let vb = VarBuilder::from_backend(
        Box::new(Recorder {
            seed,
            tensors: tensors.clone(),
        }),
        DType::F32,
        Device::Cpu,
    );
    UNet::new(
        &config.unet,
        config.family,
        vb.pp(UNET_PREFIX.trim_end_matches('.')),
    )?;
    Vae::new(&config.vae, vb.pp(VAE_PREFIX.trim_end_matches('.')))?;
    let prefixes: &[&str] = match config.family {
        Family::Sd1 => &[SD1_CLIP_PREFIX],
        Family::Sd2 => &[SD2_CLIP_PREFIX],
        Family::Sdxl => &[SDXL_CLIP_L_PREFIX, SDXL_CLIP_G_PREFIX],
    };
    for (encoder, prefix) in config.text_encoders.iter().zip(prefixes) {
        TextTransformer::new(encoder, vb.pp(prefix.trim_end_matches('.')))?;
    }
    let map = std::mem::take(&mut *tensors.lock().expect("recorder lock"));
    Ok(map)
}

/// Writes a tiny random checkpoint of `arch` to `path` as a single `.safetensors` file.
pub fn write_tiny_checkpoint(arch: TinyArch, path: &Path, seed: u64) -> Result<usize, Error> {
    write_tiny_config(&tiny_config(arch), path, seed)
}

/// Writes a tiny random inpainting checkpoint of `arch` ([`tiny_inpainting_config`]).
pub fn write_tiny_inpainting_checkpoint(
    arch: TinyArch,
    path: &Path,
    seed: u64,
) -> Result<usize, Error> {
    write_tiny_config(&tiny_inpainting_config(arch), path, seed)
}

fn write_tiny_config(config: &ModelConfig, path: &Path, seed: u64) -> Result<usize, Error> {
    let tensors = random_tensors(config, seed)?;
    candle_core::safetensors::save(&tensors, path).map_err(|e| Error::Unreadable {
        path: path.into(),
        reason: format!("cannot write: {e}"),
    })?;
    Ok(tensors.len())
}

/// The tiny ControlNet of `arch`: the input and middle blocks of [`tiny_config`]'s UNet, and a
/// hint encoder of LDM's structure (eight 3×3 convolutions, three of them halving the map) with
/// fewer channels (8, 8, 16, 16, 16, 16, 32, then the UNet's width; LDM's are 16 … 256).
pub fn tiny_controlnet_config(arch: TinyArch) -> crate::ControlNetConfig {
    let model = tiny_config(arch);
    let mut unet = model.unet;
    unet.out_channels = unet.in_channels;
    crate::ControlNetConfig {
        family: model.family,
        hint_widths: vec![8, 8, 16, 16, 16, 16, 32, unet.model_channels],
        unet,
        hint_channels: 3,
    }
}

/// Writes a tiny random ControlNet for `arch`'s tiny checkpoints ([`tiny_controlnet_config`],
/// the original `control_model.` layout), every tensor random (a real ControlNet starts with
/// its zero convolutions at 0; random ones make every residual count in the tests).
pub fn write_tiny_controlnet(arch: TinyArch, path: &Path, seed: u64) -> Result<usize, Error> {
    let config = tiny_controlnet_config(arch);
    let tensors = record_random(seed, |vb| {
        crate::ControlNet::from_var_builder(config, path, vb)
    })?;
    candle_core::safetensors::save(&tensors, path).map_err(|e| Error::Unreadable {
        path: path.into(),
        reason: format!("cannot write: {e}"),
    })?;
    Ok(tensors.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No tensor is a constant (the old writer left norms at 1/0 and OpenCLIP's `in_proj`,
    /// `text_projection` and the position embeddings at 0), and the same seed gives the same
    /// tensors.
    #[test]
    fn every_tensor_is_random_and_deterministic_from_the_seed() {
        let configs = [
            tiny_config(TinyArch::Sd15),
            tiny_config(TinyArch::Sd2),
            tiny_config(TinyArch::Sdxl),
            tiny_inpainting_config(TinyArch::Sd15),
            tiny_inpainting_config(TinyArch::Sdxl),
        ];
        for config in configs {
            let arch = (config.family, config.unet.in_channels);
            let tensors = random_tensors(&config, 5).unwrap();
            let again = random_tensors(&config, 5).unwrap();
            let other_seed = random_tensors(&config, 6).unwrap();
            for (name, tensor) in &tensors {
                let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let distinct = values.iter().any(|v| *v != values[0]);
                assert!(distinct, "{arch:?} {name} is a constant");
                assert!(values.iter().all(|v| v.is_finite()), "{arch:?} {name}");
                let same = |other: &HashMap<String, Tensor>| {
                    other[name].flatten_all().unwrap().to_vec1::<f32>().unwrap() == values
                };
                assert!(same(&again), "{arch:?} {name} is deterministic");
                assert!(!same(&other_seed), "{arch:?} {name} follows the seed");
            }
            let norm = &tensors["model.diffusion_model.out.0.weight"];
            let mean = norm.mean_all().unwrap().to_scalar::<f32>().unwrap();
            assert!((mean - 1.0).abs() < 0.1, "norm weights centre on 1: {mean}");
        }
    }
}
