//! Building blocks shared by the networks: normalisation, convolutions, attention.
//!
//! Thin wrappers over candle-nn that keep the LDM tensor names at the call site and do the
//! reshapes the Stable Diffusion networks need, on our CPU kernels where they are faster.
//! Public because they are the layers other networks of the product build on: the
//! post-processors of `horde-postprocess` are made of them; what only the engine uses (the
//! tiling switch, the UNet's embeddings) stays inside the crate.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Conv2dConfig, VarBuilder};
use std::cell::Cell;

use crate::kernels::activation::{activate, Activation};
use crate::kernels::conv::RearrangedWeights;
use crate::kernels::group_norm::group_statistics;
pub(crate) use crate::kernels::group_norm::GroupStatistics;
use crate::kernels::linear::{geglu_keeping, linear_keeping, PackedWeights};
use crate::kernels::winograd::Padding;

/// Whether our CPU kernels take `t`: on the CPU, in f32, or in f16/bf16, which they compute in
/// f32 (candle's CPU ops have no half-precision convolution, and widening once per op costs
/// less than candle's own ops would; the weights stay in the checkpoint's dtype).
fn for_our_kernels(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16)
}

/// Whether our CPU kernels that work in `t`'s own dtype take it: f32 or bf16 on the CPU (the
/// layer norm and the activations; f16 goes to candle's ops).
fn for_our_kernels_in_its_dtype(t: &Tensor) -> bool {
    for_our_kernels(t) && t.dtype() != DType::F16
}

/// `t` in f32 (a cheap clone when it already is; `kernels::convert` for bf16 on the CPU).
fn f32(t: &Tensor) -> Result<Tensor> {
    crate::kernels::convert::widen(t)
}

/// `a + b`, `b` of `a`'s shape or `[batch, channels]` added at every position of `a`
/// (`[batch, channels, …]`): in bf16 on the CPU in one pass of our own
/// (`kernels::convert::add`), candle's add otherwise.
pub(crate) fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    crate::kernels::convert::add(a, b)
}

/// `t` (f32, a kernel's result) back in `dtype`, the dtype of the kernel's input.
fn back_to(t: &Tensor, dtype: DType) -> Result<Tensor> {
    crate::kernels::convert::narrow(t, dtype)
}

/// With candle-nn's initialisation hints (ones and zeros) for the tiny random checkpoints.
pub fn group_norm(channels: usize, eps: f64, vb: VarBuilder<'_>) -> Result<GroupNorm> {
    let groups = 32.min(channels);
    let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
    let reference = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
    Ok(GroupNorm {
        weight,
        bias,
        groups,
        eps,
        reference,
    })
}

/// Group normalisation (32 groups, or one per channel below 32 channels); our kernel on the
/// CPU, in f32 (`kernels::group_norm`), candle's elsewhere.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
    reference: candle_nn::GroupNorm,
}

impl GroupNorm {
    /// Our kernel, computing in f32 (a bf16 map read and written in bf16), the result in
    /// `xs`'s dtype.
    fn ours(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        let (w, b) = (f32(&self.weight)?, f32(&self.bias)?);
        let x = self.our_dtype(xs)?;
        let ys = crate::kernels::group_norm::group_norm(&x, &w, &b, self.groups, self.eps, silu)?;
        back_to(&ys, xs.dtype())
    }

    /// `xs` as our kernel reads it: bf16 as it is (widened a block at a time inside), other
    /// dtypes in f32.
    fn our_dtype(&self, xs: &Tensor) -> Result<Tensor> {
        match xs.dtype() {
            DType::BF16 => Ok(xs.clone()),
            _ => f32(xs),
        }
    }

    /// `silu(norm(xs))`, in one pass on the CPU (the networks' residual blocks).
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        if for_our_kernels(xs) {
            return self.ours(xs, true);
        }
        silu(&self.reference.forward(xs)?)
    }

    /// The mean and variance of each (image, group) of `xs`, as `forward` measures them.
    pub fn statistics(&self, xs: &Tensor) -> Result<GroupStatistics> {
        if for_our_kernels(xs) {
            return group_statistics(&self.our_dtype(xs)?, self.groups, self.eps);
        }
        self.statistics_by_candle_ops(xs)
    }

    /// [`GroupNorm::statistics`] with candle's ops, on any device.
    fn statistics_by_candle_ops(&self, xs: &Tensor) -> Result<GroupStatistics> {
        let (batch, channels) = (xs.dim(0)?, xs.dim(1)?);
        let grouped = f32(xs)?.reshape((batch, self.groups, ()))?;
        let mean = grouped.mean_keepdim(2)?;
        let variance = grouped.broadcast_sub(&mean)?.sqr()?.mean(2)?;
        debug_assert!(channels.is_multiple_of(self.groups));
        Ok(GroupStatistics {
            groups: self.groups,
            eps: self.eps as f32,
            mean: mean.flatten_all()?.to_vec1()?,
            variance: variance.flatten_all()?.to_vec1()?,
        })
    }

    /// `norm(xs)` (then SiLU when `silu`) with given statistics: `xs` is a band of rows of the
    /// map they were measured on (`vae::banded`).
    pub fn forward_with(
        &self,
        xs: &Tensor,
        statistics: &GroupStatistics,
        silu_after: bool,
    ) -> Result<Tensor> {
        if for_our_kernels(xs) {
            let (w, b) = (f32(&self.weight)?, f32(&self.bias)?);
            let ys = crate::kernels::group_norm::group_norm_with(
                &self.our_dtype(xs)?,
                &w,
                &b,
                statistics,
                silu_after,
            )?;
            return back_to(&ys, xs.dtype());
        }
        self.forward_with_candle_ops(xs, statistics, silu_after)
    }

    /// [`GroupNorm::forward_with`] with candle's ops, on any device: one scale and shift per
    /// (image, channel).
    fn forward_with_candle_ops(
        &self,
        xs: &Tensor,
        statistics: &GroupStatistics,
        silu_after: bool,
    ) -> Result<Tensor> {
        let (batch, channels) = (xs.dim(0)?, xs.dim(1)?);
        let (weight, bias) = (
            f32(&self.weight)?.to_vec1::<f32>()?,
            f32(&self.bias)?.to_vec1::<f32>()?,
        );
        let per_group = channels / self.groups;
        let (mut scale, mut shift) = (Vec::new(), Vec::new());
        for image in 0..batch {
            for c in 0..channels {
                let g = image * self.groups + c / per_group;
                let s = weight[c] / (statistics.variance[g] + statistics.eps).sqrt();
                scale.push(s);
                shift.push(bias[c] - statistics.mean[g] * s);
            }
        }
        let per_channel = |v: Vec<f32>| Tensor::from_vec(v, (batch, channels, 1, 1), xs.device());
        let ys = f32(xs)?
            .broadcast_mul(&per_channel(scale)?)?
            .broadcast_add(&per_channel(shift)?)?;
        let ys = if silu_after { silu(&ys)? } else { ys };
        ys.to_dtype(xs.dtype())
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if for_our_kernels(xs) {
            return self.ours(xs, false);
        }
        self.reference.forward(xs)
    }
}

/// The networks' layer norms' ε.
const LAYER_NORM_EPS: f64 = 1e-5;

/// Layer normalisation over the last dimension: our kernel on the CPU in f32 and bf16
/// (`kernels::layer_norm`: candle's sums each row a scalar at a time), candle's otherwise.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    reference: candle_nn::LayerNorm,
    /// The weights and biases in f32, for our kernel.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if for_our_kernels_in_its_dtype(xs) {
            let eps = LAYER_NORM_EPS as f32;
            return crate::kernels::layer_norm::layer_norm(xs, &self.weight, &self.bias, eps);
        }
        self.reference.forward(xs)
    }
}

pub fn layer_norm(width: usize, vb: VarBuilder<'_>) -> Result<LayerNorm> {
    let reference = candle_nn::layer_norm(width, LAYER_NORM_EPS, vb)?;
    let bias = match reference.bias() {
        Some(bias) => f32(bias)?.to_vec1::<f32>()?,
        None => vec![0.0; width],
    };
    Ok(LayerNorm {
        weight: f32(reference.weight())?.to_vec1::<f32>()?,
        bias,
        reference,
    })
}

pub fn conv(
    in_c: usize,
    out_c: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder<'_>,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    let normal = candle_nn::conv2d(in_c, out_c, kernel, cfg, vb)?;
    // The same weights without padding, for seamless (circular) padding when tiling.
    let unpadded = (padding > 0).then(|| {
        let cfg = Conv2dConfig { padding: 0, ..cfg };
        candle_nn::Conv2d::new(normal.weight().clone(), normal.bias().cloned(), cfg)
    });
    let kept = RearrangedWeights::of(normal.weight());
    Ok(Conv2d {
        normal,
        unpadded,
        padding,
        kept,
    })
}

/// A convolution with stride 1 whose taps are `dilation` apart, padded by `padding` zeros
/// (U²-Net's `REBNCONV`). It runs on `kernels::im2col` on the CPU; seamless tiling does not
/// apply to it.
pub fn conv_dilated(
    in_c: usize,
    out_c: usize,
    kernel: usize,
    padding: usize,
    dilation: usize,
    vb: VarBuilder<'_>,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        dilation,
        ..Default::default()
    };
    let normal = candle_nn::conv2d(in_c, out_c, kernel, cfg, vb)?;
    let kept = RearrangedWeights::of(normal.weight());
    Ok(Conv2d {
        normal,
        unpadded: None,
        padding,
        kept,
    })
}

thread_local! {
    static TILING: Cell<bool> = const { Cell::new(false) };
    static POST_PROCESSING_KERNELS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the 3×3 convolutions on this thread on the kernels made for the
/// post-processors' networks: every map under [`WINOGRAD_MIN_PIXELS`] on `kernels::im2col`
/// (one product split over every thread, where the banded kernel gives a 20×20 map of one image
/// to one or two threads), and convolutions to fewer than [`FEW_CHANNELS`] direct. The
/// diffusion engine's maps of 16×16 to 32×32 run by Winograd's F(2×2, 3×3) instead.
pub fn with_post_processing_kernels<T>(f: impl FnOnce() -> T) -> T {
    crate::kernels::with_flag(&POST_PROCESSING_KERNELS, true, f)
}

/// Runs `f` with every padded convolution on this thread padding circularly, so the output
/// tiles seamlessly (the `tiling` option; A1111 sets `padding_mode="circular"` the same way).
pub(crate) fn with_tiling<T>(tiling: bool, f: impl FnOnce() -> T) -> T {
    crate::kernels::with_flag(&TILING, tiling, f)
}

/// A 2-D convolution that pads with zeros, or circularly inside [`with_tiling`].
#[derive(Debug, Clone)]
pub struct Conv2d {
    normal: candle_nn::Conv2d,
    unpadded: Option<candle_nn::Conv2d>,
    padding: usize,
    /// The weights rearranged for the bf16 kernel, made at its first call (both paddings
    /// share the weights, so they share this).
    kept: RearrangedWeights,
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_then(xs, false)
    }
}

impl Conv2d {
    /// `relu(self.forward(xs))`, the ReLU applied as the outputs are written where the kernel
    /// can (one pass over the output fewer).
    pub fn forward_then_relu(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_then(xs, true)
    }

    /// Whether this convolution keeps its weights rearranged for the bf16 kernel.
    #[cfg(test)]
    pub(crate) fn keeps_weights(&self) -> bool {
        self.kept.is_made()
    }

    fn forward_then(&self, xs: &Tensor, relu: bool) -> Result<Tensor> {
        let kept = Some(&self.kept);
        match &self.unpadded {
            Some(unpadded) if TILING.with(Cell::get) => {
                convolve_then(unpadded, &circular_pad(xs, self.padding)?, relu, kept)
            }
            _ => convolve_then(&self.normal, xs, relu, kept),
        }
    }
}

/// From this many pixels a 3×3 convolution runs by Winograd's F(4×4, 3×3)
/// (`kernels::winograd4`: 4 × fewer multiply-adds than the direct sum, 1.78 × fewer than
/// F(2×2, 3×3), at the price of rounding a few 1e-6 of the output's magnitude, against a few
/// ulp; the engine's tests against diffusers hold with it). Below, its filter transform
/// (`c_out × c_in × 36` values per call) costs more than it saves on few tiles: 1 280 channels
/// at 16×16 took 205 ms by F(4×4) against 89 by F(2×2) (one thread of an AMD EPYC Zen 4,
/// `engine --part conv`; BENCHMARKS.md).
const WINOGRAD_MIN_PIXELS: usize = 32 * 32;

/// From this many pixels to [`WINOGRAD_MIN_PIXELS`], the diffusion engine's 3×3 convolutions run
/// by Winograd's F(2×2, 3×3) (`kernels::winograd`, its filters transformed at each call) where
/// [`f2_beats_im2col`]; below (and there otherwise), on `kernels::im2col`, but where
/// [`FUSED_F4_MIN_PIXELS`] applies.
const WINOGRAD_F2_MIN_PIXELS: usize = 16 * 16;

/// From this many pixels to [`WINOGRAD_MIN_PIXELS`], the diffusion engine's 3×3 convolutions run
/// by F(4×4) with its filter transform fused into the products where [`fused_f4_beats_im2col`]
/// and the kernel takes the map (`winograd4::fuses_filters`): the UNet's 1 280 channels at 8×8
/// took 18.0–18.9 ms that way against im2col's 21.6–22.1 (one thread of a Xeon with AMX, batch
/// 2).
const FUSED_F4_MIN_PIXELS: usize = 8 * 8;

/// Whether F(2×2) beats im2col on the maps from [`WINOGRAD_F2_MIN_PIXELS`] to
/// [`WINOGRAD_MIN_PIXELS`]: the UNet's 16×16 level at 512² (1 280 channels, batch 2,
/// `engine --part conv`, one thread). On an AMD EPYC Zen 4, F(2×2)'s 2.25 × fewer multiply-adds
/// won: im2col 139 ms, F(2×2) 89. On a Xeon with AMX, im2col won: 89 ms (170 GFLOP/s) against
/// F(2×2)'s 200–247, more than half of it writing the 105 MB of transformed filters; its f32
/// UNet step went from 12.3 to 9.9 s (BENCHMARKS.md, round sixteen). Only those two CPUs were
/// measured; having AMX tiles is the test that tells them apart, not a cause.
fn f2_beats_im2col() -> bool {
    !crate::kernels::bf16_gemm::amx::supported()
}

/// Whether F(4×4) with its filter transform fused into the products (`winograd4::fused`)
/// beats im2col on the maps from [`FUSED_F4_MIN_PIXELS`] to [`WINOGRAD_MIN_PIXELS`] where it
/// takes them (`winograd4::fuses_filters`). On a Xeon with AMX, the UNet's 16×16 level at 512²
/// (1 280 channels, batch 2, one thread, `engine --part conv`) took 43–47 ms fused against
/// im2col's 79–95 (BENCHMARKS.md, round nineteen). The AMD EPYC, where F(2×2) beat
/// im2col, was not measured fused, so it keeps F(2×2); as for [`f2_beats_im2col`], having AMX
/// tiles is the test that tells the two apart, not a cause.
fn fused_f4_beats_im2col() -> bool {
    crate::kernels::bf16_gemm::amx::supported()
}

/// The fewest input channels of a bf16 convolution that [`winograd_beats_bf16`] widens to f32.
const WINOGRAD_BF16_MIN_CHANNELS: usize = 256;

/// Under the post-processing kernels, a 3×3 convolution from (or to) fewer channels than this
/// skips Winograd: its transforms cost more than its few products (U²-Net's 3 → 64 and
/// 64 → 1 at 320²: 16 ms each by F(4×4), 6 by im2col and 5 by the banded kernel).
const FEW_CHANNELS: usize = 8;

/// `conv.forward(xs)`: on the CPU in f32 through our kernels for stride-1 convolutions
/// (3×3: `kernels::winograd4` on images of [`WINOGRAD_MIN_PIXELS`] or more, and of
/// [`FUSED_F4_MIN_PIXELS`] or more where [`fused_f4_beats_im2col`] and its fused products
/// take the map; `kernels::winograd` on those of [`WINOGRAD_F2_MIN_PIXELS`] or more where
/// [`f2_beats_im2col`]; `kernels::im2col` on smaller ones; dilated ones on `kernels::im2col`,
/// the rest on `kernels::conv`) and for
/// stride-2 ones with outputs of as many pixels (`kernels::conv::conv2d_stride2`: its weights
/// are rearranged at every call, which costs more than it saves on small maps: 95 ms against
/// candle's 36 for `[2, 1280, 16, 16]`, 29 against 46 for `[2, 320, 64, 64]`), through
/// candle's otherwise.
/// Under [`with_post_processing_kernels`], every 3×3 one on a map under
/// [`WINOGRAD_MIN_PIXELS`] runs on `kernels::im2col`.
fn convolve(conv: &candle_nn::Conv2d, xs: &Tensor) -> Result<Tensor> {
    convolve_then(conv, xs, false, None)
}

/// [`convolve`], then ReLU when `relu`: applied as the outputs are written where the kernel
/// can (Winograd F(4×4), im2col), after it otherwise. `kept` (the convolution's own) keeps
/// the bf16 kernel's rearranged weights between calls.
fn convolve_then(
    conv: &candle_nn::Conv2d,
    xs: &Tensor,
    relu: bool,
    kept: Option<&RearrangedWeights>,
) -> Result<Tensor> {
    if !for_our_kernels(xs) {
        let out = conv.forward(xs)?;
        return if relu { out.relu() } else { Ok(out) };
    }
    let cfg = conv.config();
    // In bf16 on a CPU with AVX512-BF16, the plain and stride-2 convolutions of the networks
    // multiply in bf16 (`kernels::conv::conv2d_bf16`) instead of widening to f32, but for the
    // large 3×3 maps where F(4×4) in f32 is faster (`winograd_beats_bf16`).
    if matches!(cfg.stride, 1 | 2)
        && (cfg.dilation, cfg.groups) == (1, 1)
        && !POST_PROCESSING_KERNELS.with(Cell::get)
        && bf16_kernel_takes(conv, xs)?
    {
        let padding = Padding::uniform(cfg.padding);
        let (weight, bias, shape) = (conv.weight(), conv.bias(), (padding, cfg.stride));
        let out = crate::kernels::conv::conv2d_bf16_keeping(xs, weight, bias, shape, kept)?;
        return if relu { out.relu() } else { Ok(out) };
    }
    if xs.dtype() != DType::F32 && by_widened_bands(conv, xs)? {
        let out = winograd_in_widened_bands(conv, xs)?;
        return if relu { out.relu() } else { Ok(out) };
    }
    let (_, _, h, w) = xs.dims4()?;
    let (c_out, c_in, k_h, k_w) = conv.weight().dims4()?;
    let (x, weight) = (f32(xs)?, f32(conv.weight())?);
    let bias = conv.bias().map(f32).transpose()?;
    let bias = bias.as_ref();
    let p = cfg.padding;
    let post_processing = POST_PROCESSING_KERNELS.with(Cell::get);
    let stride_1 = (cfg.stride, cfg.groups) == (1, 1);
    let plain = stride_1 && cfg.dilation == 1;
    let is_3x3 = (k_h, k_w) == (3, 3);
    // Under the post-processing kernels: the work of a convolution to a few channels (a side
    // output to one) is small, and Winograd's transforms of every input channel would dwarf
    // it; the columns of a small map, or of few input channels (an RGB input), are small.
    let few_out = post_processing && plain && is_3x3 && c_out < FEW_CHANNELS;
    let small_3x3 = is_3x3
        && (h * w < WINOGRAD_MIN_PIXELS
            || c_in < FEW_CHANNELS && c_in * 9 * h * w <= crate::kernels::im2col::MAX_COLUMNS);
    let im2col_below = if f2_beats_im2col() {
        WINOGRAD_F2_MIN_PIXELS
    } else {
        WINOGRAD_MIN_PIXELS
    };
    let fused_f4 = plain
        && is_3x3
        && !post_processing
        && (FUSED_F4_MIN_PIXELS..WINOGRAD_MIN_PIXELS).contains(&(h * w))
        && fused_f4_beats_im2col()
        && (h + 2 * p)
            .checked_sub(2)
            .zip((w + 2 * p).checked_sub(2))
            .is_some_and(crate::kernels::winograd4::fuses_filters);
    let smallest_3x3 = is_3x3 && h * w < im2col_below && !fused_f4;
    // The output, and whether the kernel already applied the ReLU.
    let (out, relu_applied) = if few_out {
        (
            crate::kernels::conv::conv2d_stride1(&x, &weight, bias, p)?,
            false,
        )
    } else if (cfg.stride, cfg.dilation, cfg.groups) == (2, 1, 1)
        && h * w >= 4 * WINOGRAD_MIN_PIXELS
    {
        (
            crate::kernels::conv::conv2d_stride2(&x, &weight, bias, p)?,
            false,
        )
    } else if stride_1 && (cfg.dilation > 1 || smallest_3x3 || post_processing && small_3x3) {
        let out = crate::kernels::im2col::conv2d(&x, &weight, bias, p, cfg.dilation, relu)?;
        (out, relu)
    } else if !plain {
        let out = x.conv2d(&weight, p, cfg.stride, cfg.dilation, cfg.groups)?;
        let out = match bias {
            Some(bias) => out.broadcast_add(&bias.reshape((1, (), 1, 1))?)?,
            None => out,
        };
        (out, false)
    } else if (k_h, k_w, p) == (1, 1, 0) {
        (crate::kernels::conv::conv2d_1x1(&x, &weight, bias)?, false)
    } else if is_3x3 && (h * w >= WINOGRAD_MIN_PIXELS || fused_f4) {
        let out = crate::kernels::winograd4::conv2d_3x3(&x, &weight, bias, p, relu)?;
        (out, relu)
    } else if is_3x3 && h * w >= WINOGRAD_F2_MIN_PIXELS {
        (
            crate::kernels::winograd::conv2d_3x3(&x, &weight, bias, p)?,
            false,
        )
    } else {
        (
            crate::kernels::conv::conv2d_stride1(&x, &weight, bias, p)?,
            false,
        )
    };
    let out = if relu && !relu_applied {
        out.relu()?
    } else {
        out
    };
    back_to(&out, xs.dtype())
}

/// Whether this bf16 convolution runs faster widened to f32 by F(4×4, 3×3) than on the bf16
/// kernel: a 3×3 one with stride 1 on a map of [`WINOGRAD_MIN_PIXELS`] or more, where the bf16
/// products run on vector registers (`vdpbf16ps`) rather than AMX tiles. F(4×4)'s 4 × fewer
/// multiply-adds at f32's rate beat the direct sum at bf16's twice as fast rate (one thread of
/// an AMD EPYC Zen 4, batch 2, `engine --part conv`: 320 channels at 64×64 78 ms in bf16
/// against 60 by F(4×4) in f32, 640 at 32×32 76 against 65; the VAE's 256 at 256×256 404
/// against 318; BENCHMARKS.md), and it rounds only once, to bf16 at the end. From fewer than
/// [`WINOGRAD_BF16_MIN_CHANNELS`] input channels the transforms weigh more (the VAE's 128 at
/// 512×512: 415 in bf16, 457 by F(4×4)). On AMX tiles the bf16 products are several times
/// faster again.
///
/// A convolution whose transformed filters would take more than 64 MiB at once stays on the
/// bf16 kernel (`winograd4::filters_fit_whole`): made whole at each call, the UNet's 1 280 →
/// 1 280 ones took 236 MB and raised SD 1.5's bf16 step's peak RSS from 3 702 to 4 170 MB.
/// Those of a batch convolved whole at once (`winograd4::takes_batch_at_once`: the UNet's
/// 32×32 maps, SDXL's 1 280 channels) are made a group of positions at a time, and take F(4×4).
fn winograd_beats_bf16(conv: &candle_nn::Conv2d, xs: &Tensor) -> Result<bool> {
    let (c_out, c_in, _, _) = conv.weight().dims4()?;
    let (batch, _, h, w) = xs.dims4()?;
    let p = conv.config().padding;
    let outputs = ((h + 2 * p).saturating_sub(2), (w + 2 * p).saturating_sub(2));
    use crate::kernels::winograd4::{filters_fit_whole, takes_batch_at_once};
    let bounded_filters = filters_fit_whole(c_in, c_out)
        || widened_whole(conv, xs)? && takes_batch_at_once(batch, (c_in, c_out), outputs);
    Ok(by_widened_bands(conv, xs)?
        && c_in >= WINOGRAD_BF16_MIN_CHANNELS
        && bounded_filters
        && !crate::kernels::bf16_gemm::tiles_available())
}

/// Whether [`winograd_in_widened_bands`] widens the whole batch of `xs` at once rather than
/// image by image in bands.
fn widened_whole(conv: &candle_nn::Conv2d, xs: &Tensor) -> Result<bool> {
    Ok(widened_values(conv, xs)? <= WIDENED_WHOLE_VALUES)
}

/// Values of the larger f32 copy (input padded, or output) of the whole batch of `xs`, as
/// [`in_widened_bands_of`] would widen it at once.
fn widened_values(conv: &candle_nn::Conv2d, xs: &Tensor) -> Result<usize> {
    let (batch, _, h, _) = xs.dims4()?;
    Ok(batch * widened_row_values(conv, xs)? * (h + 2 * conv.config().padding))
}

/// Values of one row of the larger f32 copy of `xs`, input (padded) or output.
fn widened_row_values(conv: &candle_nn::Conv2d, xs: &Tensor) -> Result<usize> {
    let (_, c_in, _, w) = xs.dims4()?;
    let (c_out, p) = (conv.weight().dim(0)?, conv.config().padding);
    Ok((c_in * (w + 2 * p)).max(c_out * (w + 2 * p).saturating_sub(2)))
}

/// The most values of one f32 copy (input or output) that [`winograd_in_widened_bands`] makes
/// of a half-precision map at once: a larger map goes in bands of rows of
/// [`WIDENED_BAND_VALUES`]. The UNet's maps at 512² (at most 2 × 960 × 66 × 66 values) go
/// whole; the VAE decoder's at 256² and 512² go in bands (whole, 256 channels at 512² took
/// 268 MB widened and 268 MB of f32 output: the decode's peak RSS rose from 909 to 1 409 MB).
const WIDENED_WHOLE_VALUES: usize = 16 << 20;

/// Values of one f32 copy of a band of rows in [`winograd_in_widened_bands`] (16 MiB).
const WIDENED_BAND_VALUES: usize = 4 << 20;

/// Whether `conv` on `xs` (not f32) runs by F(4×4, 3×3) widened to f32: a 3×3 convolution with
/// stride 1, one group, on a map of [`WINOGRAD_MIN_PIXELS`] or more, off the post-processing
/// kernels.
fn by_widened_bands(conv: &candle_nn::Conv2d, xs: &Tensor) -> Result<bool> {
    let cfg = conv.config();
    let (_, _, h, w) = xs.dims4()?;
    let (_, _, k_h, k_w) = conv.weight().dims4()?;
    Ok(
        (cfg.stride, cfg.dilation, cfg.groups, k_h, k_w) == (1, 1, 1, 3, 3)
            && h * w >= WINOGRAD_MIN_PIXELS
            && !POST_PROCESSING_KERNELS.with(Cell::get),
    )
}

/// `conv.forward(xs)` for a half-precision `xs` by F(4×4, 3×3) in f32: the whole batch at once
/// where its f32 copies hold [`WIDENED_WHOLE_VALUES`] or fewer, otherwise each image in bands
/// of output rows (each band reads the rows around it, and pads only at the map's edges), so
/// that the f32 copies of a large map never exist whole. The result in `xs`'s dtype.
fn winograd_in_widened_bands(conv: &candle_nn::Conv2d, xs: &Tensor) -> Result<Tensor> {
    in_widened_bands_of(conv, xs, (WIDENED_WHOLE_VALUES, WIDENED_BAND_VALUES))
}

/// [`winograd_in_widened_bands`] with its two bounds given (the tests' are small).
fn in_widened_bands_of(
    conv: &candle_nn::Conv2d,
    xs: &Tensor,
    (whole_values, band_values): (usize, usize),
) -> Result<Tensor> {
    let (batch, _, h, _) = xs.dims4()?;
    let p = conv.config().padding;
    let out_h = (h + 2 * p).saturating_sub(2);
    let convolve = |rows: &Tensor, padding: Padding| winograd4_widened(conv, rows, padding);
    if widened_values(conv, xs)? <= whole_values {
        return convolve(xs, Padding::uniform(p));
    }
    // Whole rows of 4×4 tiles per band.
    let band_rows = (band_values / widened_row_values(conv, xs)?).max(4) / 4 * 4;
    let mut images = Vec::with_capacity(batch);
    for item in 0..batch {
        let image = xs.narrow(0, item, 1)?;
        let mut bands = Vec::with_capacity(out_h.div_ceil(band_rows));
        for first in (0..out_h).step_by(band_rows) {
            let end = (first + band_rows).min(out_h);
            // Output row `o` reads input rows `o - p ..= o - p + 2`, zeros outside the map.
            let (reads_from, reads_to) =
                (first as isize - p as isize, (end + 2) as isize - p as isize);
            let padding = Padding {
                top: (-reads_from).max(0) as usize,
                bottom: (reads_to - h as isize).max(0) as usize,
                sides: p,
            };
            let (from, to) = (
                reads_from.max(0) as usize,
                (reads_to.max(0) as usize).min(h),
            );
            bands.push(convolve(&image.narrow(2, from, to - from)?, padding)?);
        }
        images.push(Tensor::cat(&bands, 2)?);
    }
    Tensor::cat(&images, 0)
}

/// `rows` convolved by `conv`'s 3×3 weights by F(4×4, 3×3) in f32 with `padding` (its own
/// above and below), the result in `rows`' dtype. bf16 weights are widened as their filters are
/// transformed, other half-precision ones here.
fn winograd4_widened(conv: &candle_nn::Conv2d, rows: &Tensor, padding: Padding) -> Result<Tensor> {
    let weight = match conv.weight().dtype() {
        DType::BF16 | DType::F32 => conv.weight().clone(),
        _ => f32(conv.weight())?,
    };
    let bias = conv.bias().map(f32).transpose()?;
    let out =
        crate::kernels::winograd4::conv2d_3x3_padded(&f32(rows)?, &weight, bias.as_ref(), padding)?;
    back_to(&out, rows.dtype())
}

/// Whether a bf16 map, whole ([`convolve_then`]) or a band of its rows
/// ([`Conv2d::forward_band`], where the kernel pads the band as it pairs its channels), goes
/// through the bf16 kernel rather than F(4×4) widened ([`winograd_beats_bf16`]). For bands on
/// CPUs whose bf16 products run on vector registers that is the VAE's 128-channel convolutions
/// at full resolution (SDXL's 1 024² decode, two threads of an AMD EPYC Zen 4: 27.90 → 27.06 s;
/// BENCHMARKS.md, "round thirteen"); on AMX tiles, every band (the same decode on a Xeon with
/// AMX, two threads: 21.7 s by F(4×4), 11.9 on the tiles; "round seventeen").
fn bf16_kernel_takes(conv: &candle_nn::Conv2d, xs: &Tensor) -> Result<bool> {
    Ok(crate::kernels::conv::takes_bf16(xs, conv.weight()) && !winograd_beats_bf16(conv, xs)?)
}

impl Conv2d {
    /// The convolution of a band of rows of a larger map: `rows` holds the band and the rows
    /// around it that the kernel reaches; zeros are added on the sides, and above or below only
    /// where the band touches the map's edge (`top`, `bottom`). Zero padding only.
    pub fn forward_band(&self, rows: &Tensor, top: bool, bottom: bool) -> Result<Tensor> {
        let Some(unpadded) = &self.unpadded else {
            return self.forward(rows);
        };
        let p = self.padding;
        let padding = Padding {
            top: if top { p } else { 0 },
            bottom: if bottom { p } else { 0 },
            sides: p,
        };
        let cfg = unpadded.config();
        let (_, _, h, w) = rows.dims4()?;
        let (_, _, k_h, k_w) = unpadded.weight().dims4()?;
        let ours = for_our_kernels(rows) && (cfg.stride, cfg.dilation, cfg.groups) == (1, 1, 1);
        let out = if ours
            && !POST_PROCESSING_KERNELS.with(Cell::get)
            && bf16_kernel_takes(unpadded, rows)?
        {
            // Padded by the kernel as it pairs the channels: no padded copy of the band, and
            // the weights rearranged once for every band.
            let (weight, bias) = (unpadded.weight(), unpadded.bias());
            let kept = Some(&self.kept);
            crate::kernels::conv::conv2d_bf16_keeping(rows, weight, bias, (padding, 1), kept)?
        } else if ours && (k_h, k_w) == (3, 3) && h * w >= WINOGRAD_MIN_PIXELS {
            winograd4_widened(unpadded, rows, padding)?
        } else {
            let padded = rows
                .pad_with_zeros(2, padding.top, padding.bottom)?
                .pad_with_zeros(3, p, p)?;
            convolve(unpadded, &padded)?
        };
        Ok(out)
    }
}

/// Whether [`with_tiling`] is on for this thread.
pub(crate) fn tiling() -> bool {
    TILING.with(Cell::get)
}

/// Pads the last two dimensions by wrapping around.
pub fn circular_pad(xs: &Tensor, p: usize) -> Result<Tensor> {
    let mut xs = xs.clone();
    for dim in [2, 3] {
        let n = xs.dim(dim)?;
        let (head, tail) = (xs.narrow(dim, 0, p)?, xs.narrow(dim, n - p, p)?);
        xs = Tensor::cat(&[&tail, &xs, &head], dim)?;
    }
    Ok(xs)
}

/// Loaded through candle-nn's constructors, so the tiny random checkpoints get the same
/// initialisation hints as before.
pub fn linear(in_d: usize, out_d: usize, vb: VarBuilder<'_>) -> Result<Linear> {
    Ok(Linear::from(candle_nn::linear(in_d, out_d, vb)?))
}

pub fn linear_no_bias(in_d: usize, out_d: usize, vb: VarBuilder<'_>) -> Result<Linear> {
    Ok(Linear::from(candle_nn::linear_no_bias(in_d, out_d, vb)?))
}

/// `x · Wᵀ + b` over the last dimension, all leading dimensions multiplied as one matrix.
/// candle's `Linear` broadcasts the weight over the batch and runs a batched product instead:
/// 84 ms against 60 ms for `[2, 4096, 320] · [320, 2560]` on 2 cores. On the CPU in f32 (or
/// bf16, multiplied in bf16 where the CPU has AVX512-BF16) it is `kernels::linear`, which also
/// folds in a residual ([`Linear::forward_plus`]); the feed-forward hands its bias to the GEGLU
/// ([`Linear::forward_geglu`]).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// The weight packed for the bf16 product, made at its first bf16 call.
    kept: PackedWeights,
}

impl From<candle_nn::Linear> for Linear {
    fn from(linear: candle_nn::Linear) -> Linear {
        Linear::new(linear.weight().clone(), linear.bias().cloned())
    }
}

impl Linear {
    /// `weight` `[out, in]`, `bias` `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Linear {
        Linear {
            kept: PackedWeights::of(&weight),
            weight,
            bias,
        }
    }

    /// `self.forward(xs) + residual`: on the CPU one product that starts from the residual
    /// plus the bias, or (in bf16) adds them to its sums as it rounds them
    /// (`kernels::linear`), instead of two more passes over the output.
    pub fn forward_plus(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if self.for_our_kernel(xs) && for_our_kernels(residual) {
            let ys = self.over_rows(xs, |matrix, out_d| {
                let residual = residual.reshape((matrix.dim(0)?, out_d))?;
                let (weight, bias) = self.weights_for_kernel()?;
                self.fused(matrix, &weight, bias.as_ref(), Some(&residual))
            })?;
            return back_to(&ys, xs.dtype());
        }
        self.forward(xs)? + residual
    }

    /// `geglu(self.forward(xs))`, with the bias added inside the GEGLU on the CPU (one pass
    /// fewer over the feed-forward's widest activations), and in bf16 the gate applied to the
    /// product's sums as they are rounded (`kernels::linear::geglu_keeping`).
    pub fn forward_geglu(&self, xs: &Tensor) -> Result<Tensor> {
        if self.for_our_kernel(xs) {
            let (weight, bias) = self.weights_for_kernel()?;
            let gated = self.over_rows(xs, |matrix, _| {
                geglu_keeping(matrix, &weight, bias.as_ref(), Some(&self.kept))
            })?;
            return back_to(&gated, xs.dtype());
        }
        geglu(&self.forward(xs)?)
    }

    /// Whether `kernels::linear` takes `xs` through this layer: on the CPU, in f32 or bf16
    /// (bf16 products where the CPU has AVX512-BF16, widened to f32 elsewhere).
    fn for_our_kernel(&self, xs: &Tensor) -> bool {
        let ours = |t: &Tensor| matches!(t.dtype(), DType::F32 | DType::BF16);
        xs.device().is_cpu()
            && ours(xs)
            && ours(&self.weight)
            && self.bias.as_ref().is_none_or(ours)
    }

    /// The weight as `kernels::linear` takes it (f32 or bf16: it multiplies a bf16 weight
    /// in bf16 where the CPU can, widening it otherwise) and the bias in f32.
    fn weights_for_kernel(&self) -> Result<(Tensor, Option<Tensor>)> {
        Ok((
            self.weight.clone(),
            self.bias.as_ref().map(f32).transpose()?,
        ))
    }

    /// `kernels::linear` of `matrix` by this layer's `weight`, its bf16 packing kept.
    fn fused(
        &self,
        matrix: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        linear_keeping(matrix, weight, bias, residual, Some(&self.kept))
    }

    /// `product(matrix, out)` for `matrix` `xs` as a `[rows, in]` matrix and `out` this layer's
    /// outputs, the result given back `xs`'s leading dimensions.
    fn over_rows(
        &self,
        xs: &Tensor,
        product: impl FnOnce(&Tensor, usize) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut dims = xs.dims().to_vec();
        let Some(in_d) = dims.pop() else {
            candle_core::bail!("a linear layer needs at least one dimension");
        };
        let rows: usize = dims.iter().product();
        let out_d = self.weight.dim(0)?;
        let ys = product(&xs.reshape((rows, in_d))?, out_d)?;
        dims.push(ys.dim(1)?);
        ys.reshape(dims)
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.for_our_kernel(xs) {
            let (weight, bias) = self.weights_for_kernel()?;
            let ys = self.over_rows(xs, |matrix, _| {
                self.fused(matrix, &weight, bias.as_ref(), None)
            })?;
            return back_to(&ys, xs.dtype());
        }
        self.over_rows(xs, |matrix, _| {
            let ys = matrix.matmul(&self.weight.t()?)?;
            match &self.bias {
                Some(bias) => ys.broadcast_add(bias),
                None => Ok(ys),
            }
        })
    }
}

/// GEGLU: `a · gelu(b)` for `[a, b]` the halves of the last dimension; our kernel on the CPU,
/// in f32 (`kernels::geglu`), candle's ops elsewhere.
pub fn geglu(xs: &Tensor) -> Result<Tensor> {
    if for_our_kernels(xs) {
        return back_to(&crate::kernels::geglu::geglu(&f32(xs)?, None)?, xs.dtype());
    }
    let halves = xs.chunk(2, D::Minus1)?;
    &halves[0] * halves[1].gelu_erf()?
}

/// A 1×1 convolution used as a linear map over channels (LDM stores some linear maps that way).
pub(crate) fn conv1x1(in_c: usize, out_c: usize, vb: VarBuilder<'_>) -> Result<Conv2d> {
    conv(in_c, out_c, 1, 1, 0, vb)
}

pub(crate) fn silu(xs: &Tensor) -> Result<Tensor> {
    candle_nn::ops::silu(xs)
}

/// Scaled dot-product attention over `[batch, tokens, heads·dim]` inputs, with an optional
/// additive mask broadcastable to `[batch, heads, q_tokens, k_tokens]`. Without a mask, on the
/// CPU, it runs the fused kernel in f32 (`kernels::attention`); otherwise candle's ops.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    if mask.is_none() && [q, k, v].iter().all(|t| for_our_kernels(t)) {
        // f32 or bf16 in (the kernel widens what it cannot multiply in bf16), f32 out.
        let out = crate::kernels::attention::fused_attention(q, k, v, heads)?;
        return back_to(&out, q.dtype());
    }
    let (batch, q_len, width) = q.dims3()?;
    let k_len = k.dim(1)?;
    let head_dim = width / heads;
    let split = |t: &Tensor, len: usize| {
        t.reshape((batch, len, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(q, q_len)?, split(k, k_len)?, split(v, k_len)?);
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut scores = (q.matmul(&k.t()?)? * scale)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    let weights = if scores.dtype() == DType::F32 {
        candle_nn::ops::softmax_last_dim(&scores)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(scores.dtype())?
    };
    weights
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((batch, q_len, width))
}

/// `x · sigmoid(1.702 x)`: the activation of OpenAI's CLIP.
pub(crate) fn quick_gelu(xs: &Tensor) -> Result<Tensor> {
    if for_our_kernels_in_its_dtype(xs) {
        return activate(xs, Activation::QuickGelu);
    }
    xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?
}

/// GELU's exact (erf) form: the activation of OpenCLIP.
pub(crate) fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    if for_our_kernels_in_its_dtype(xs) {
        return activate(xs, Activation::GeluErf);
    }
    xs.gelu_erf()
}

/// The sinusoidal timestep embedding of LDM (`cos` half first).
pub(crate) fn timestep_embedding(timesteps: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let device = timesteps.device();
    let exponent: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(exponent, (1, half), device)?;
    let args = timesteps
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)
}

/// A `[batch, channels, h, w]` map as `[batch, h·w, channels]` tokens (our tiled transpose on
/// the CPU in f32, bf16 and f16, `kernels::transpose`; candle's permuted copy elsewhere).
pub fn to_tokens(xs: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    if crate::kernels::transpose::takes(xs) {
        return crate::kernels::transpose::swap_last_two(&xs.reshape((b, c, h * w))?);
    }
    xs.permute((0, 2, 3, 1))?.reshape((b, h * w, c))
}

/// `[batch, h·w, channels]` tokens back as a `[batch, channels, h, w]` map.
pub fn from_tokens(xs: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, c) = xs.dims3()?;
    if crate::kernels::transpose::takes(xs) {
        return crate::kernels::transpose::swap_last_two(xs)?.reshape((b, c, h, w));
    }
    xs.reshape((b, h, w, c))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}

/// A linear map stored either as a matrix or as a 1×1 convolution.
#[derive(Debug, Clone)]
pub(crate) enum Projection {
    Linear(Linear),
    Conv(Conv2d),
}

impl Projection {
    pub(crate) fn new(
        in_c: usize,
        out_c: usize,
        as_linear: bool,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        Ok(if as_linear {
            Projection::Linear(linear(in_c, out_c, vb)?)
        } else {
            Projection::Conv(conv1x1(in_c, out_c, vb)?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::max_difference;
    use candle_core::Device;

    /// The band-wise group norm of other devices (candle's ops) agrees with our kernel's, here
    /// on the CPU where both run.
    #[test]
    fn group_norm_with_given_statistics_agrees_across_implementations() {
        let vb = crate::tiny::random_var_builder(3);
        let norm = group_norm(64, 1e-6, vb.pp("norm")).unwrap();
        let xs = (Tensor::randn(0f32, 2.0, (2, 64, 6, 5), &Device::Cpu).unwrap() + 0.7).unwrap();
        let ours = norm.statistics(&xs).unwrap();
        let theirs = norm.statistics_by_candle_ops(&xs).unwrap();
        for (a, b) in ours.mean.iter().zip(&theirs.mean) {
            assert!((a - b).abs() < 1e-5, "mean {a} against {b}");
        }
        for (a, b) in ours.variance.iter().zip(&theirs.variance) {
            assert!(
                (a - b).abs() < 1e-4 * b.abs().max(1.0),
                "variance {a} against {b}"
            );
        }
        let band = xs.narrow(2, 2, 3).unwrap();
        for silu_after in [false, true] {
            let a = norm.forward_with(&band, &ours, silu_after).unwrap();
            let b = norm.forward_with_candle_ops(&band, &ours, silu_after);
            assert!(max_difference(&a, &b.unwrap()) < 1e-5);
        }
        // On the whole map it is the plain group norm.
        let whole = norm.forward_with_candle_ops(&xs, &ours, true).unwrap();
        let plain = norm.forward_silu(&xs).unwrap();
        assert!(max_difference(&whole, &plain) < 1e-5);
    }

    /// Random values of `shape` from `seed`, rounded to bf16.
    fn random(shape: &[usize], seed: u64) -> Tensor {
        crate::kernels::test_support::random(shape, seed, 1.0)
    }

    fn random_bf16(shape: &[usize], seed: u64) -> Tensor {
        random(shape, seed).to_dtype(DType::BF16).unwrap()
    }

    /// A 3×3 [`conv`] layer (padding 1) of these weights, in their dtype.
    fn conv_layer(weight: &Tensor, bias: &Tensor) -> Conv2d {
        let (c_out, c_in, _, _) = weight.dims4().unwrap();
        let tensors = std::collections::HashMap::from([
            ("weight".to_string(), weight.clone()),
            ("bias".to_string(), bias.clone()),
        ]);
        let vb = VarBuilder::from_tensors(tensors, weight.dtype(), &Device::Cpu);
        conv(c_in, c_out, 3, 1, 1, vb).unwrap()
    }

    /// An image's convolution does not depend on the batch it comes in, within 1e-6 (16×16:
    /// im2col, F(2×2) or F(4×4) fused as the CPU goes; 40×40: F(4×4), fused where the CPU has
    /// AVX-512F, five images then going in five groups): the kernel is picked by the map, not
    /// the batch. A kernel picked by the batch's count of tiles failed it (off by 7e-5), twice.
    #[test]
    fn an_image_gets_the_same_numbers_in_any_batch() {
        let (c_in, c_out) = (24, 32);
        let (weight, bias) = (random(&[c_out, c_in, 3, 3], 1), random(&[c_out], 2));
        let layer = conv_layer(&weight, &bias);
        for size in [16, 40] {
            let xs = random(&[5, c_in, size, size], 3);
            let batch = layer.forward(&xs).unwrap();
            for image in 0..5 {
                let alone = layer.forward(&xs.narrow(0, image, 1).unwrap()).unwrap();
                let in_batch = batch.narrow(0, image, 1).unwrap();
                let off = max_difference(&alone, &in_batch);
                assert!(off < 1e-6, "{size}×{size}, image {image}: off by {off}");
            }
        }
    }

    /// A 3×3 convolution gives candle's numbers on every map size, whichever kernel its size
    /// picks (im2col under 16×16, F(2×2) or im2col to 32×32 as the CPU goes, F(4×4) from there,
    /// the banded F(4×4) for a band of rows), with and without the ReLU.
    #[test]
    fn a_3x3_convolution_equals_candles_on_every_map_size() {
        let (c_in, c_out) = (12, 20);
        let (weight, bias) = (random(&[c_out, c_in, 3, 3], 1), random(&[c_out], 2));
        let layer = conv_layer(&weight, &bias);
        for (i, (h, w)) in [(5, 7), (8, 8), (16, 16), (17, 30), (32, 32), (45, 38)]
            .into_iter()
            .enumerate()
        {
            let xs = random(&[2, c_in, h, w], 10 + i as u64);
            let candle = xs
                .conv2d(&weight, 1, 1, 1, 1)
                .and_then(|t| t.broadcast_add(&bias.reshape((1, c_out, 1, 1))?))
                .unwrap();
            let scale = candle.abs().unwrap().max_all().unwrap();
            let scale = scale.to_scalar::<f32>().unwrap();
            let relative = |ours: &Tensor, theirs: &Tensor| {
                assert_eq!(ours.dims(), theirs.dims(), "{h}×{w}");
                max_difference(ours, theirs) / scale
            };
            let plain = relative(&layer.forward(&xs).unwrap(), &candle);
            assert!(plain < 1e-5, "{h}×{w}: off by {plain} of the largest");
            let relu = layer.forward_then_relu(&xs).unwrap();
            let relu = relative(&relu, &candle.relu().unwrap());
            assert!(relu < 1e-5, "{h}×{w} with ReLU: off by {relu}");
            // A band of the first image's rows 2..h-1 with the rows around it, not at an edge.
            if h >= 8 {
                let rows = xs.narrow(0, 0, 1).unwrap().narrow(2, 1, h - 2).unwrap();
                let band = layer.forward_band(&rows, false, false).unwrap();
                let expected = candle.narrow(0, 0, 1).unwrap().narrow(2, 2, h - 4).unwrap();
                let off = relative(&band, &expected);
                assert!(off < 1e-5, "{h}×{w} band: off by {off}");
            }
        }
    }

    /// A band of a bf16 map's rows (with the rows around it that the kernel reads) gives the
    /// whole map's rows of the convolution: at the top edge, in the middle and at the bottom
    /// edge, where its padding differs. Where the bf16 kernel runs, both go through it, the
    /// same sums in the same order: the same values.
    #[test]
    fn a_bf16_band_gives_the_whole_maps_rows() {
        let random = random_bf16;
        let (c_in, c_out, h, w) = (12, 20, 20, 18);
        let (weight, bias) = (random(&[c_out, c_in, 3, 3], 1), random(&[c_out], 2));
        let layer = conv_layer(&weight, &bias);
        let xs = random(&[1, c_in, h, w], 3);
        let whole = layer.forward(&xs).unwrap();
        let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let scale = wide(&whole).abs().unwrap().max_all().unwrap();
        let scale = scale.to_scalar::<f32>().unwrap();
        let tolerance = if crate::kernels::conv::takes_bf16(&xs, &weight) {
            0.0
        } else {
            4e-3
        };
        for band in [0..6usize, 6..14, 14..20] {
            let (from, to) = (band.start.saturating_sub(1), (band.end + 1).min(h));
            let rows = xs.narrow(2, from, to - from).unwrap();
            let ours = layer
                .forward_band(&rows, band.start == 0, band.end == h)
                .unwrap();
            assert_eq!(ours.dtype(), DType::BF16);
            let expected = whole.narrow(2, band.start, band.len()).unwrap();
            assert_eq!(ours.dims(), expected.dims(), "rows {band:?}");
            let off = max_difference(&wide(&ours), &wide(&expected)) / scale;
            assert!(off <= tolerance, "rows {band:?}: off by {off}");
        }
    }

    /// A bf16 3×3 convolution with many input channels on a large map (widened to F(4×4) in
    /// f32 where the bf16 products run on vector registers, the bf16 kernel on AMX tiles) is
    /// the f32 convolution of the same (bf16) numbers, rounded once to bf16.
    #[test]
    fn a_large_bf16_convolution_is_the_f32_one_rounded_to_bf16() {
        let random = random_bf16;
        let (c_in, c_out) = (WINOGRAD_BF16_MIN_CHANNELS, 8);
        let (weight, bias) = (random(&[c_out, c_in, 3, 3], 1), random(&[c_out], 2));
        let layer = conv_layer(&weight, &bias);
        let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let xs = random(&[2, c_in, 34, 33], 3);
        let f32_values = wide(&xs)
            .conv2d(&wide(&weight), 1, 1, 1, 1)
            .and_then(|t| t.broadcast_add(&wide(&bias).reshape((1, c_out, 1, 1))?))
            .unwrap();
        // Half a bf16 ulp of each value, and F(4×4)'s rounding (1e-5 of the largest value).
        let largest = f32_values.abs().unwrap().max_all().unwrap();
        let slack = 1e-5 * largest.to_scalar::<f32>().unwrap() as f64;
        let bound = f32_values
            .abs()
            .unwrap()
            .affine(1.0 / 256.0, slack)
            .unwrap();
        let excess = |ours: &Tensor| {
            assert_eq!(ours.dtype(), DType::BF16);
            assert_eq!(ours.dims(), f32_values.dims());
            (wide(ours) - &f32_values)
                .unwrap()
                .abs()
                .unwrap()
                .sub(&bound)
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let whole = excess(&layer.forward(&xs).unwrap());
        assert!(whole <= 0.0, "beyond the rounding by {whole}");
        // Widened in bands of 4 and 8 rows (a last band of 2), and whole.
        let row_values = c_in * (33 + 2);
        for bounds in [(0, 4 * row_values), (0, 9 * row_values), (usize::MAX, 0)] {
            let banded = in_widened_bands_of(&layer.normal, &xs, bounds).unwrap();
            let off = excess(&banded);
            assert!(
                off <= 0.0,
                "in bands {bounds:?}: beyond the rounding by {off}"
            );
        }
    }

    /// In bf16 a linear layer widens to f32 for the product and narrows the result: the f32
    /// layer's values on the same (bf16) numbers, rounded once to bf16, in all three forms.
    #[test]
    fn a_bf16_linear_layer_is_the_f32_one_rounded_to_bf16() {
        let random = random_bf16;
        let (weight, bias) = (random(&[24, 16], 1), random(&[24], 2));
        let (xs, residual) = (random(&[2, 5, 16], 3), random(&[2, 5, 24], 4));
        let half = Linear::new(weight.clone(), Some(bias.clone()));
        let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let full = Linear::new(wide(&weight), Some(wide(&bias)));
        let pairs = [
            (half.forward(&xs), full.forward(&wide(&xs))),
            (
                half.forward_plus(&xs, &residual),
                full.forward_plus(&wide(&xs), &wide(&residual)),
            ),
            (half.forward_geglu(&xs), full.forward_geglu(&wide(&xs))),
        ];
        for (form, (ours, f32_values)) in ["forward", "plus", "geglu"].iter().zip(pairs) {
            let (ours, f32_values) = (ours.unwrap(), f32_values.unwrap());
            assert_eq!(ours.dtype(), DType::BF16, "{form}");
            assert_eq!(ours.dims(), f32_values.dims(), "{form}");
            let bound = f32_values.abs().unwrap().affine(1.0 / 256.0, 1e-6).unwrap();
            let excess = (wide(&ours) - &f32_values)
                .unwrap()
                .abs()
                .unwrap()
                .gt(&bound)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(excess, 0.0, "{form}: values off by more than bf16 rounding");
        }
    }

    /// A job that panics inside `with_tiling(true, …)` (the worker catches the panic and goes
    /// on) leaves this thread untiled: the next job's convolution is the untiled one.
    #[test]
    fn a_job_that_panics_while_tiling_leaves_the_next_job_untiled() {
        let vb = crate::tiny::random_var_builder(5);
        let conv = conv(4, 4, 3, 1, 1, vb.pp("conv")).unwrap();
        let xs = crate::kernels::test_support::random(&[1, 4, 6, 6], 9, 1.0);
        let untiled = conv.forward(&xs).unwrap();
        let tiled = with_tiling(true, || conv.forward(&xs)).unwrap();
        assert!(
            max_difference(&tiled, &untiled) > 1e-3,
            "circular padding changes the edges"
        );
        let failed = std::panic::catch_unwind(|| {
            with_tiling(true, || -> Tensor { panic!("the job fails while tiling") })
        });
        assert!(failed.is_err());
        assert!(!tiling(), "tiling is off again");
        let next = conv.forward(&xs).unwrap();
        assert_eq!(
            max_difference(&next, &untiled),
            0.0,
            "the next job is untiled"
        );
        // A panic in a nested call puts back the outer call's value.
        with_tiling(true, || {
            let inner = std::panic::catch_unwind(|| with_tiling(false, || panic!("inner")));
            assert!(inner.is_err());
            assert!(tiling(), "the outer job still tiles");
        });
        assert!(!tiling());
    }

    /// The same for the post-processors' kernels: a panic inside leaves them off.
    #[test]
    fn a_job_that_panics_on_the_post_processing_kernels_leaves_them_off() {
        let on = || POST_PROCESSING_KERNELS.with(Cell::get);
        let failed = std::panic::catch_unwind(|| {
            with_post_processing_kernels(|| {
                assert!(on());
                panic!("the post-processor fails")
            })
        });
        assert!(failed.is_err());
        assert!(!on(), "the next job runs on the default kernels");
    }
}
