//! `strip_background`: a salient-object network of the U²-Net family (the layouts `rembg`
//! uses: u2net, u2netp, isnet-general-use) whose mask becomes the image's alpha channel.
//!
//! [`BackgroundRemover::remove`] is rembg's `remove(image, session)` with the default naive
//! cutout, for one image: the worker encodes the result as a WebP with transparency, alchemy
//! calls the same entry point. The network ([`network`], built from [`rsu`]'s blocks) is
//! recognised from the checkpoint's tensors, never its file name; the pre- and
//! post-processing ([`pipeline`]) are rembg's sessions'.
//!
//! Numbers are pinned to the PyTorch reference (backgroundremover's `u2net.py`, dis-inference's
//! `isnet.py`) and to rembg's pipeline by `tools/postprocess-fixtures/background.py`: see
//! `tests/background.rs` and `tools/postprocess-fixtures/README-background.md`.

mod maps;
pub mod network;
pub mod pipeline;
pub mod resample;
pub mod rsu;
pub mod tiny;

pub use tiny::write_tiny_checkpoint;

use crate::tensors::read_checkpoint;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use image::{GrayImage, RgbImage, RgbaImage};
use std::collections::HashMap;
use std::path::Path;

/// Which network a checkpoint holds; it decides rembg's session settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// U²-Net (`u2net.pth`): widths grow with depth (64 → 512).
    U2Net,
    /// U²-NetP (`u2netp.pth`): one width throughout (64).
    U2NetP,
    /// DIS's ISNet (`isnet-general-use.pth`): a stride-2 `conv_in`, no fused output.
    IsNet,
}

impl Kind {
    /// rembg's session name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::U2Net => "u2net",
            Kind::U2NetP => "u2netp",
            Kind::IsNet => "isnet-general-use",
        }
    }
}

/// A checkpoint's tensors by name, with lookups that say which tensor is missing.
pub struct Tensors(HashMap<String, Tensor>);

impl Tensors {
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        Tensors(tensors)
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn get(&self, name: &str) -> std::result::Result<Tensor, String> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no tensor `{name}`"))
    }

    /// Output channels of a convolution's weight.
    fn width(&self, name: &str) -> std::result::Result<usize, String> {
        Ok(self.get(name)?.dims().first().copied().unwrap_or(0))
    }
}

/// Which network the tensors hold, or why none of the family.
pub fn recognise(tensors: &Tensors) -> std::result::Result<Kind, String> {
    if !tensors.has("stage1.rebnconvin.conv_s1.weight") || !tensors.has("side1.weight") {
        return Err(
            "not a U²-Net-family background remover (u2net, u2netp or isnet-general-use): \
             no `stage1.rebnconvin.conv_s1.weight` and `side1.weight` tensors"
                .into(),
        );
    }
    match (tensors.has("conv_in.weight"), tensors.has("outconv.weight")) {
        (true, false) => Ok(Kind::IsNet),
        (false, true) => {
            let first = tensors.width("stage1.rebnconvin.conv_s1.weight")?;
            let second = tensors.width("stage2.rebnconvin.conv_s1.weight")?;
            Ok(if second > first {
                Kind::U2Net
            } else {
                Kind::U2NetP
            })
        }
        (stem, fuse) => Err(format!(
            "a U²-Net-family network with{} `conv_in` and with{} `outconv`: neither U²-Net \
             (outconv only) nor ISNet (conv_in only)",
            if stem { "" } else { "out" },
            if fuse { "" } else { "out" },
        )),
    }
}

/// A background remover, loaded.
pub struct BackgroundRemover {
    kind: Kind,
    pub network: network::SalientNet,
    device: Device,
}

impl BackgroundRemover {
    /// Loads a checkpoint (`.safetensors` or `.pth`) of u2net, u2netp or isnet-general-use,
    /// recognising which from its tensors.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let unsupported = |reason: String| Error::Unsupported {
            path: path.display().to_string(),
            reason,
        };
        let tensors = Tensors::new(strip_module_prefix(read_checkpoint(path, device)?));
        let kind = recognise(&tensors).map_err(unsupported)?;
        let network = network::SalientNet::load(&tensors)
            .map_err(|e| unsupported(format!("a {} checkpoint, but {e}", kind.name())))?;
        Ok(BackgroundRemover {
            kind,
            network,
            device: device.clone(),
        })
    }

    /// Which network the checkpoint holds.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The network on a normalised `[1, 3, H, W]` batch: all its outputs, the mask first. Its
    /// large convolutions run by Winograd's F(4×4, 3×3), whose rounding (a few 1e-6 of a
    /// value) an 8-bit mask cannot show, and the small ones on one product over every thread
    /// (`nn::with_post_processing_kernels`).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        horde_diffusion::nn::with_post_processing_kernels(|| self.network.forward(x))
    }

    /// The 8-bit mask of `image` (255 = foreground), at the image's size, as rembg's session
    /// `predict` makes it.
    pub fn mask(&self, image: &RgbImage) -> Result<GrayImage> {
        let session = pipeline::Session::of(self.kind);
        let x = pipeline::network_input(image, &session, &self.device)?;
        let outputs = self.forward(&x)?;
        let small = pipeline::to_mask(&outputs[0], &session)?;
        Ok(pipeline::resize_mask(&small, image.width(), image.height()))
    }

    /// `image` with its background made transparent: rembg's naive cutout (the colour scaled
    /// by the mask, the mask as alpha).
    pub fn remove(&self, image: &RgbImage) -> Result<RgbaImage> {
        let mask = self.mask(image)?;
        Ok(pipeline::naive_cutout(image, &mask))
    }
}

/// A state dict saved from `nn.DataParallel` has every key under `module.`.
fn strip_module_prefix(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    if !tensors.keys().all(|k| k.starts_with("module.")) {
        return tensors;
    }
    tensors
        .into_iter()
        .map(|(k, v)| (k["module.".len()..].to_string(), v))
        .collect()
}
