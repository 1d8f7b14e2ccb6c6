//! GFPGAN v1.3 and v1.4 (`GFPGANv1Clean`, the "clean" architecture of the gfpgan package,
//! which spandrel copies): restores one aligned face crop.
//!
//! A U-Net encodes the degraded face (`unet.rs`); its bottom gives one StyleGAN2 latent per
//! decoder layer and its upward path gives, per resolution, a scale and a shift (SFT) applied
//! to half of the decoder's features; the decoder is StyleGAN2's generator with modulated
//! convolutions, noise injection and toRGB skips (`stylegan.rs`). Output size, style width,
//! channels per resolution (hence the channel multiplier and `narrow`), whether SFT takes half
//! or all of the channels and whether each layer has its own latent are all read from the
//! tensors ([`shape_of`]), so the published 512² checkpoints and the tiny test ones load
//! through the same code.
//!
//! **Noise.** Each StyleConv adds a noise map times a learned strength. GFPGANer calls the
//! network with `randomize_noise=True`, which draws fresh N(0, 1) maps on every call, so the
//! Python tool never gives the same face twice. The checkpoints store one such draw
//! (`stylegan_decoder.noises.noise*`, registered with `torch.randn` and saved with the
//! weights). [`Noise::Stored`], the default, uses it: the output is one sample of exactly the
//! distribution GFPGANer samples from, and a job gives the same face on every run and every
//! worker. [`Noise::Fresh`] draws new maps as GFPGANer does. The two differ as much as two
//! GFPGANer runs differ from each other, which depends on the learned strengths: not measured
//! on the published checkpoints (they cannot be downloaded here); on the random test network,
//! whose strengths are drawn N(0, 0.3), fresh noise moves the output by up to 2.4 (the
//! fixtures' manifest).

mod in_place;
mod resample;
mod stylegan;
mod tiny;
mod unet;

pub use stylegan::Condition;
pub use tiny::{key_layout, tiny_shape, tiny_tensors, write_tiny_checkpoint};

use crate::tensors::read_checkpoint;
use crate::upscale::{image_to_tensor, tensor_to_image};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use horde_diffusion::nn::{conv, Conv2d};
use image::RgbImage;
use std::collections::HashMap;
use std::path::Path;

/// Which noise maps the decoder's StyleConvs add (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Noise {
    /// The checkpoint's `noises.noise*` buffers: deterministic (`randomize_noise=False`).
    #[default]
    Stored,
    /// Fresh N(0, 1) maps on every call, as GFPGANer (`randomize_noise=True`).
    Fresh,
}

/// What the tensors say about the network. Channel lists are indexed by level: level `l` is
/// the resolution `4·2^l`, up to the output size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub out_size: usize,
    /// The width of a latent (`num_style_feat`, 512 in the published checkpoints).
    pub num_style_feat: usize,
    pub unet_channels: Vec<usize>,
    pub decoder_channels: Vec<usize>,
    /// The channels of each SFT scale and shift, per level above 4² (`condition_channels[l]`
    /// is level `l + 1`'s).
    pub condition_channels: Vec<usize>,
    /// A latent per decoder layer (`different_w`, as published) rather than one for all.
    pub different_w: bool,
    /// SFT on the second half of the decoder's channels (`sft_half`, as published).
    pub sft_half: bool,
    /// Layers of the style MLP in the checkpoint (8 published). Never run: the encoder gives
    /// latents directly (`input_is_latent=True`).
    pub num_mlp: usize,
}

impl Shape {
    /// `log₂(out_size)`.
    pub fn log_size(&self) -> usize {
        self.decoder_channels.len() + 1
    }

    /// Latents the decoder takes: two per level above 4² plus two at 4².
    pub fn num_latent(&self) -> usize {
        2 * self.log_size() - 2
    }

    /// Outputs of `final_linear`.
    pub fn final_linear_width(&self) -> usize {
        if self.different_w {
            self.num_latent() * self.num_style_feat
        } else {
            self.num_style_feat
        }
    }

    /// gfpgan's `narrow`: the decoder's channels at 4² over 512.
    pub fn narrow(&self) -> f64 {
        self.decoder_channels[0] as f64 / 512.0
    }

    /// gfpgan's `channel_multiplier`, which first shows at 64² (`256 · cm · narrow` channels);
    /// `None` for outputs below 64².
    pub fn channel_multiplier(&self) -> Option<f64> {
        let at_64 = *self.decoder_channels.get(4)?;
        Some(at_64 as f64 / (256.0 * self.narrow()))
    }
}

/// Whether the tensors are a GFPGANv1Clean's (spandrel's detection keys, plus the clean
/// architecture's plain `conv_body_first` convolution).
pub fn recognises(tensors: &HashMap<String, Tensor>) -> bool {
    [
        "toRGB.0.weight",
        "conv_body_first.weight",
        "final_linear.weight",
        "stylegan_decoder.style_conv1.modulated_conv.weight",
    ]
    .iter()
    .all(|k| tensors.contains_key(*k))
}

/// Why tensors that [`recognises`] refuses are not GFPGAN v1.3/v1.4.
fn not_clean_gfpgan(tensors: &HashMap<String, Tensor>) -> String {
    if tensors.contains_key("conv_body_first.0.weight") {
        "a GFPGAN of the original (v1) or bilinear architecture, whose convolutions are \
         `ConvLayer` sequences (`conv_body_first.0.weight`); expected GFPGANv1Clean \
         (GFPGAN v1.3/v1.4), whose `conv_body_first.weight` is a plain convolution"
            .into()
    } else {
        "not a GFPGANv1Clean (GFPGAN v1.3/v1.4) checkpoint: no `conv_body_first.weight`, \
         `toRGB.0.weight`, `final_linear.weight` and `stylegan_decoder.style_conv1` tensors"
            .into()
    }
}

/// Reads the [`Shape`] from the tensors' shapes and names.
pub fn shape_of(tensors: &HashMap<String, Tensor>) -> std::result::Result<Shape, String> {
    let dim = |name: &str, i: usize| -> std::result::Result<usize, String> {
        let t = tensors
            .get(name)
            .ok_or_else(|| format!("no tensor `{name}`"))?;
        t.dims()
            .get(i)
            .copied()
            .ok_or_else(|| format!("`{name}` has shape {:?}", t.dims()))
    };
    let count = |key: &dyn Fn(usize) -> String| {
        (0..).take_while(|k| tensors.contains_key(&key(*k))).count()
    };
    let levels = count(&|k| format!("conv_body_down.{k}.conv1.weight"));
    if levels == 0 {
        return Err("no `conv_body_down.0` block: no U-Net".into());
    }
    let mut unet_channels = vec![dim("conv_body_first.weight", 0)?; levels + 1];
    for k in 0..levels {
        unet_channels[levels - k - 1] = dim(&format!("conv_body_down.{k}.conv2.weight"), 0)?;
    }
    let mut decoder_channels = vec![dim("stylegan_decoder.constant_input.weight", 1)?];
    for l in 0..levels {
        decoder_channels.push(dim(
            &format!(
                "stylegan_decoder.style_convs.{}.modulated_conv.weight",
                2 * l
            ),
            1,
        )?);
    }
    let condition_channels = (0..levels)
        .map(|k| dim(&format!("condition_scale.{k}.2.weight"), 0))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let halves = condition_channels.iter().zip(&decoder_channels[1..]);
    let sft_half = if halves.clone().all(|(c, d)| 2 * c == *d) {
        true
    } else if halves.clone().all(|(c, d)| c == d) {
        false
    } else {
        return Err(format!(
            "SFT conditions of {condition_channels:?} channels fit neither half nor all of the \
             decoder's {:?}",
            &decoder_channels[1..]
        ));
    };
    let mut shape = Shape {
        out_size: 4 << levels,
        num_style_feat: dim(
            "stylegan_decoder.style_conv1.modulated_conv.modulation.weight",
            1,
        )?,
        unet_channels,
        decoder_channels,
        condition_channels,
        different_w: true,
        sft_half,
        num_mlp: count(&|m| format!("stylegan_decoder.style_mlp.{}.weight", 2 * m + 1)),
    };
    let linear_out = dim("final_linear.weight", 0)?;
    if linear_out == shape.num_style_feat {
        shape.different_w = false;
    } else if linear_out != shape.final_linear_width() {
        return Err(format!(
            "`final_linear` gives {linear_out} values: neither {} latents of {} nor one",
            shape.num_latent(),
            shape.num_style_feat
        ));
    }
    Ok(shape)
}

/// GFPGAN, loaded.
pub struct Gfpgan {
    pub shape: Shape,
    /// The noise maps the decoder adds; [`Noise::Stored`] unless changed.
    pub noise: Noise,
    encoder: unet::Encoder,
    decoder: stylegan::Decoder,
    device: Device,
}

impl Gfpgan {
    /// Loads a GFPGAN v1.3/v1.4 checkpoint (`.pth`, unwrapping `params_ema`, or
    /// `.safetensors`), its hyper-parameters read from its tensors.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::from_tensors(read_checkpoint(path, device)?, path, device)
    }

    /// The network in `tensors`, read from the checkpoint at `path` (named in errors).
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        path: &Path,
        device: &Device,
    ) -> Result<Self> {
        let unsupported = |reason: String| Error::Unsupported {
            path: path.display().to_string(),
            reason,
        };
        if !recognises(&tensors) {
            return Err(unsupported(not_clean_gfpgan(&tensors)));
        }
        let shape = shape_of(&tensors).map_err(unsupported)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Gfpgan::new(shape, vb)
            .map_err(|e| unsupported(format!("not the GFPGANv1Clean key layout: {e}")))
    }

    /// The network of `shape` from `vb`'s tensors (published names).
    pub fn new(shape: Shape, vb: VarBuilder<'_>) -> candle_core::Result<Self> {
        let encoder = unet::Encoder::new(&shape, vb.clone())?;
        let decoder = stylegan::Decoder::new(
            &shape.decoder_channels,
            shape.num_style_feat,
            shape.sft_half,
            vb.pp("stylegan_decoder"),
        )?;
        Ok(Gfpgan {
            shape,
            noise: Noise::default(),
            encoder,
            decoder,
            device: vb.device().clone(),
        })
    }

    /// The restored faces (`[B, 3, S, S]`, about [-1, 1], unclamped) of `x` (`[B, 3, S, S]`
    /// in [-1, 1], `S` the network's size).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (latents, conditions) = self.encode(x)?;
        Ok(self.decoder.forward(&latents, &conditions, self.noise)?)
    }

    /// The encoder's half: the latents (`[B, layers, style]`) and the SFT conditions.
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Vec<Condition>)> {
        let s = self.shape.out_size;
        match x.dims() {
            [_, 3, h, w] if *h == s && *w == s => Ok(self.encoder.forward(x)?),
            dims => Err(Error::Run(candle_core::Error::Msg(format!(
                "GFPGAN takes faces of [batch, 3, {s}, {s}], got {dims:?}"
            )))),
        }
    }

    /// GFPGANer's steps for one aligned face crop of the network's size: to [-1, 1], the
    /// network, back to [0, 255] clamped and rounded.
    pub fn restore(&self, face: &RgbImage) -> Result<RgbImage> {
        let s = self.shape.out_size as u32;
        if face.dimensions() != (s, s) {
            return Err(Error::Run(candle_core::Error::Msg(format!(
                "GFPGAN restores aligned {s}×{s} faces, got {}×{}",
                face.width(),
                face.height()
            ))));
        }
        let x = image_to_tensor(face, &self.device)?.affine(2.0, -1.0)?;
        let y = self.forward(&x)?;
        Ok(tensor_to_image(&y.affine(0.5, 0.5)?)?)
    }
}

/// A same-size convolution (`k / 2` zero padding) of a given weight and bias, through the
/// diffusion engine's convolution kernels.
fn convolution(weight: Tensor, bias: Tensor) -> candle_core::Result<Conv2d> {
    let (c_out, c_in, k, _) = weight.dims4()?;
    let (dtype, device) = (weight.dtype(), weight.device().clone());
    let tensors = HashMap::from([("weight".to_string(), weight), ("bias".to_string(), bias)]);
    conv(
        c_in,
        c_out,
        k,
        1,
        k / 2,
        VarBuilder::from_tensors(tensors, dtype, &device),
    )
}
