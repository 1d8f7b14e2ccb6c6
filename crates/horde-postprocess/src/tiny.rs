//! Tiny random checkpoints of the post-processors, in the key layouts of the published ones,
//! for tests and first runs: `horde model tiny --arch realesrgan_x2plus --out FILE`.
//!
//! Every tensor is random, norms and slopes included (around their usual values, never exactly
//! 0 or 1), so a test on such a checkpoint can see a wiring error. The checkpoints load through
//! the same loaders as the real ones. Their output is noise.

use crate::upscale::{compact, esrgan};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::Path;

/// The post-processor architectures `horde model tiny` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TinyPostProcessor {
    /// RRDBNet ×4 (`RealESRGAN_x4plus`, `NMKD_Siax`, `4x_AnimeSharp`…), new key layout.
    EsrganX4,
    /// RRDBNet ×2 with pixel-unshuffle (`RealESRGAN_x2plus`).
    EsrganX2,
    /// The compact SRVGG network ×4 (`realesr-general-x4v3`).
    CompactX4,
    /// facexlib's RetinaFace (ResNet-50 layout): the face fixers' `face_detector`.
    RetinaFace,
    /// GFPGANv1Clean (`GFPGAN`, `GFPGANv1.3`).
    Gfpgan,
    /// `CodeFormers`.
    CodeFormer,
    /// `RestoreFormer`.
    RestoreFormer,
    /// U²-NetP (`strip_background`).
    U2netp,
}

impl TinyPostProcessor {
    pub const NAMES: &'static [&'static str] = &[
        "esrgan_x4",
        "esrgan_x2",
        "compact_x4",
        "retinaface",
        "gfpgan",
        "codeformer",
        "restoreformer",
        "u2netp",
    ];
}

impl std::str::FromStr for TinyPostProcessor {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "esrgan_x4" | "realesrgan_x4plus" => Ok(TinyPostProcessor::EsrganX4),
            "esrgan_x2" | "realesrgan_x2plus" => Ok(TinyPostProcessor::EsrganX2),
            "compact_x4" | "realesr_general_x4v3" => Ok(TinyPostProcessor::CompactX4),
            "retinaface" => Ok(TinyPostProcessor::RetinaFace),
            "gfpgan" => Ok(TinyPostProcessor::Gfpgan),
            "codeformer" | "codeformers" => Ok(TinyPostProcessor::CodeFormer),
            "restoreformer" => Ok(TinyPostProcessor::RestoreFormer),
            "u2netp" | "strip_background" => Ok(TinyPostProcessor::U2netp),
            other => Err(format!(
                "unknown post-processor architecture '{other}': expected one of {}",
                TinyPostProcessor::NAMES.join(", ")
            )),
        }
    }
}

/// Writes a tiny random checkpoint of `arch` to `path` (`.safetensors`); returns how many
/// tensors it holds.
pub fn write_tiny_checkpoint(arch: TinyPostProcessor, path: &Path, seed: u64) -> Result<usize> {
    use crate::{background, face};
    match arch {
        TinyPostProcessor::EsrganX4 | TinyPostProcessor::EsrganX2 => {
            let unshuffle = if arch == TinyPostProcessor::EsrganX2 {
                2
            } else {
                1
            };
            let shape = esrgan::Shape {
                features: 8,
                growth: 4,
                blocks: 1,
                upsamplings: 2,
                unshuffle,
                in_channels: 3,
                out_channels: 3,
            };
            save_all(
                &record_random(seed, |vb| esrgan::Rrdbnet::new(shape, vb))?,
                path,
            )
        }
        TinyPostProcessor::CompactX4 => {
            let shape = compact::Shape {
                features: 8,
                convs: 2,
                in_channels: 3,
                out_channels: 3,
                scale: 4,
            };
            save_all(
                &record_random(seed, |vb| compact::Compact::new(shape, vb))?,
                path,
            )
        }
        TinyPostProcessor::RetinaFace => {
            face::detect::write_tiny_checkpoint(path, seed)?;
            count_tensors(path)
        }
        TinyPostProcessor::Gfpgan => {
            face::gfpgan::write_tiny_checkpoint(path, seed)?;
            count_tensors(path)
        }
        TinyPostProcessor::CodeFormer => {
            face::codeformer::write_tiny_checkpoint(path, seed)?;
            count_tensors(path)
        }
        TinyPostProcessor::RestoreFormer => {
            face::restoreformer::write_tiny_checkpoint(path, seed)?;
            count_tensors(path)
        }
        TinyPostProcessor::U2netp => {
            background::write_tiny_checkpoint(path, seed)?;
            count_tensors(path)
        }
    }
}

fn save_all(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<usize> {
    save(tensors, path)?;
    Ok(tensors.len())
}

/// The tensors in a checkpoint a family's writer wrote.
fn count_tensors(path: &Path) -> Result<usize> {
    Ok(crate::tensors::read_checkpoint(path, &Device::Cpu)?.len())
}

/// Saves `tensors` as a `.safetensors` file.
pub fn save(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    candle_core::safetensors::save(tensors, path).map_err(|e| Error::Unreadable {
        path: path.display().to_string(),
        reason: format!("cannot write: {e}"),
    })
}

/// Every tensor `build` asks its `VarBuilder` for, random and seeded by `seed` and the
/// tensor's name (the engine's tiny writer: around each layer's usual value, never constant).
pub fn record_random<T>(
    seed: u64,
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<HashMap<String, Tensor>> {
    Ok(horde_diffusion::tiny::record_random(seed, build)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upscale::Upscaler;

    #[test]
    fn each_tiny_upscaler_loads_with_its_scale_and_no_constant_tensor() {
        let dir = std::env::temp_dir().join(format!("horde-tiny-pp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, scale) in [("esrgan_x4", 4), ("esrgan_x2", 2), ("compact_x4", 4)] {
            let path = dir.join(format!("{name}.safetensors"));
            let arch: TinyPostProcessor = name.parse().unwrap();
            let count = write_tiny_checkpoint(arch, &path, 7).unwrap();
            assert!(count > 5, "{name}: {count} tensors");
            let upscaler = Upscaler::load(&path, &Device::Cpu).unwrap();
            assert_eq!(upscaler.scale(), scale, "{name}");
            for (key, tensor) in candle_core::safetensors::load(&path, &Device::Cpu).unwrap() {
                let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let first = values[0];
                assert!(
                    values.len() == 1 || values.iter().any(|v| *v != first),
                    "{name}: {key} is constant"
                );
                assert!(
                    values.iter().all(|v| *v != 0.0 && *v != 1.0),
                    "{name}: {key}"
                );
            }
            let image = image::RgbImage::from_fn(12, 8, |x, y| {
                image::Rgb([x as u8 * 20, y as u8 * 30, 99])
            });
            let out = upscaler.upscale(&image).unwrap();
            assert_eq!(out.dimensions(), (12 * scale as u32, 8 * scale as u32));
        }
        // The other families' writers, reached by name, load through their own loaders (their
        // tests check the networks).
        let loads = [
            ("retinaface", "RetinaFace"),
            ("gfpgan", "GFPGAN"),
            ("codeformer", "CodeFormers"),
            ("restoreformer", "RestoreFormer"),
            ("u2netp", "u2netp"),
        ];
        for (name, family) in loads {
            let path = dir.join(format!("{name}.safetensors"));
            let count = write_tiny_checkpoint(name.parse().unwrap(), &path, 3).unwrap();
            assert!(count > 10, "{name}: {count} tensors");
            let loaded = match name {
                "retinaface" => crate::face::detect::RetinaFace::load(&path, &Device::Cpu)
                    .map(|_| "RetinaFace".to_string()),
                "u2netp" => crate::background::BackgroundRemover::load(&path, &Device::Cpu)
                    .map(|b| b.kind().name().to_string()),
                _ => {
                    crate::face::Restorer::load(&path, &Device::Cpu).map(|r| r.family().to_string())
                }
            };
            assert_eq!(loaded.unwrap(), family, "{name}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert!("u2net"
            .parse::<TinyPostProcessor>()
            .unwrap_err()
            .contains("esrgan_x4"));
    }
}
