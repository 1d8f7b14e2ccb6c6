//! Upscalers: a checkpoint's network recognised from its tensors (never from its file name),
//! run on an image in tiles.
//!
//! The horde's names map to two architectures: the ESRGAN family (`RealESRGAN_x4plus`,
//! `RealESRGAN_x2plus`, `RealESRGAN_x4plus_anime_6B`, `NMKD_Siax`, `4x_AnimeSharp`) is
//! [`esrgan`]'s RRDBNet, and the compact SRVGG network of `realesr-general-x4v3` is
//! [`compact`]'s; a worker owner may point any name at any checkpoint of either.

pub mod compact;
pub mod esrgan;

use crate::tensors::read_checkpoint;
use crate::tiles::{run_tiled, Tiling};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;
use std::path::Path;

/// The network inside an upscaler checkpoint.
pub enum Network {
    Esrgan(Box<esrgan::Rrdbnet>),
    Compact(compact::Compact),
}

/// An upscaler, loaded.
pub struct Upscaler {
    pub network: Network,
    pub tiling: Tiling,
    device: Device,
}

impl Upscaler {
    /// Loads an upscaler checkpoint (`.safetensors` or `.pth`), recognising its architecture and
    /// scale from its tensors.
    pub fn load(path: &Path, device: &Device) -> Result<Upscaler> {
        let unsupported = |reason: String| Error::Unsupported {
            path: path.display().to_string(),
            reason,
        };
        let tensors = read_checkpoint(path, device)?;
        let network = if esrgan::recognises(&tensors) {
            let tensors = esrgan::to_new_layout(tensors);
            let shape = esrgan::shape_of(&tensors).map_err(unsupported)?;
            let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
            let net = esrgan::Rrdbnet::new(shape, vb).map_err(|e| unsupported(e.to_string()))?;
            Network::Esrgan(Box::new(net))
        } else if compact::recognises(&tensors) {
            let shape = compact::shape_of(&tensors).map_err(unsupported)?;
            let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
            Network::Compact(
                compact::Compact::new(shape, vb).map_err(|e| unsupported(e.to_string()))?,
            )
        } else {
            return Err(unsupported(
                "neither an ESRGAN (RRDBNet) nor an SRVGG compact upscaler: no `conv_first`, \
                 `model.0` or `body.0` tensors"
                    .into(),
            ));
        };
        let multiple = match &network {
            Network::Esrgan(net) => net.shape.unshuffle,
            Network::Compact(_) => 1,
        };
        Ok(Upscaler {
            network,
            tiling: Tiling {
                multiple,
                ..Tiling::default()
            },
            device: device.clone(),
        })
    }

    /// Output pixels per input pixel, per side.
    pub fn scale(&self) -> usize {
        match &self.network {
            Network::Esrgan(net) => net.shape.scale(),
            Network::Compact(net) => net.shape.scale,
        }
    }

    /// The network on one batch (`[B, C, H, W]`, values in `[0, 1]`), unclamped, untiled. Its
    /// large convolutions run by Winograd's F(4×4, 3×3): an upscaler's 8-bit output cannot see
    /// the rounding (about 1e-6 of a value), and it saves a third of the time.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        horde_diffusion::nn::with_post_processing_kernels(|| match &self.network {
            Network::Esrgan(net) => net.forward(x),
            Network::Compact(net) => net.forward(x),
        })
    }

    /// `image` upscaled, in tiles ([`Upscaler::tiling`]). A side that is not a multiple of the
    /// network's pixel-unshuffle is padded by repeating the edge and cropped back after.
    pub fn upscale(&self, image: &RgbImage) -> Result<RgbImage> {
        let (width, height) = (image.width() as usize, image.height() as usize);
        let multiple = self.tiling.multiple;
        let x = image_to_tensor(image, &self.device)?;
        let (pad_h, pad_w) = (
            (multiple - height % multiple) % multiple,
            (multiple - width % multiple) % multiple,
        );
        let x = x.pad_with_same(2, 0, pad_h)?.pad_with_same(3, 0, pad_w)?;
        let scale = self.scale();
        let out = run_tiled(&x, scale, self.tiling, |tile| self.forward(tile))?;
        let out = out
            .narrow(2, 0, height * scale)?
            .narrow(3, 0, width * scale)?;
        Ok(tensor_to_image(&out)?)
    }
}

/// An RGB image as a `[1, 3, H, W]` tensor of values in `[0, 1]`.
pub fn image_to_tensor(image: &RgbImage, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let data: Vec<f32> = image
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    Tensor::from_vec(data, (h, w, 3), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)
}

/// A `[1, 3, H, W]` tensor back to an RGB image, clamped to `[0, 1]` and rounded.
pub fn tensor_to_image(x: &Tensor) -> candle_core::Result<RgbImage> {
    let (_, _, h, w) = x.dims4()?;
    let data: Vec<u8> = (x.squeeze(0)?.permute((1, 2, 0))?.clamp(0f32, 1f32)? * 255.0)?
        .round()?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| v as u8)
        .collect();
    Ok(RgbImage::from_raw(w as u32, h as u32, data).expect("h × w × 3 values"))
}
