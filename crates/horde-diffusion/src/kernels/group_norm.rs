//! Group normalisation, optionally followed by SiLU, on the CPU in f32, in two passes.
//!
//! candle's `GroupNorm` is a chain of ops (mean, centring, square, mean, square root, divide,
//! scale, shift), each a full pass writing a new tensor: 13 ms for `[2, 320, 64, 64]`, under
//! 1 GB/s, and the VAE decoder normalises `[1, 128, 512, 512]` six times. In the networks it is
//! almost always followed by SiLU, another pass. Here each (image, group) is one task: a pass
//! for its mean and variance, then one pass that normalises, scales, shifts and (optionally)
//! applies SiLU into the output. A bf16 map (a network held in bf16) is read and written in
//! bf16, widened and narrowed a block at a time in L1, instead of through an f32 copy of the
//! whole map and a narrowing pass after.

use super::attention::fast_exp;
use super::convert::{narrow_slice, widen_slice};
use super::{contiguous_values, filled, unfilled};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use half::bf16;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `group_norm(x) · weight + bias` over `[batch, channels, …]` in `groups` groups, then SiLU
/// when `silu`. `weight` and `bias` are `[channels]`.
pub(crate) fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let op = GroupNorm {
        weight: weight.to_vec1::<f32>()?,
        bias: bias.to_vec1::<f32>()?,
        groups,
        eps: eps as f32,
        silu,
        statistics: None,
    };
    x.contiguous()?.apply_op1_no_bwd(&op)
}

/// [`group_norm`] with each group's mean and variance given instead of measured on `x`: `x` is
/// a band of rows of a larger map, normalised as part of the whole (`vae::banded`). `x` may be
/// a view of rows narrowed out of the map: it is read in place.
pub(crate) fn group_norm_with(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    statistics: &GroupStatistics,
    silu: bool,
) -> Result<Tensor> {
    let op = GroupNorm {
        weight: weight.to_vec1::<f32>()?,
        bias: bias.to_vec1::<f32>()?,
        groups: statistics.groups,
        eps: statistics.eps,
        silu,
        statistics: Some(statistics.clone()),
    };
    match plane_starts(x.layout(), op.name()) {
        Ok(_) => x.apply_op1_no_bwd(&op),
        Err(_) => x.contiguous()?.apply_op1_no_bwd(&op),
    }
}

/// The mean and variance of each (image, group) of a map, as [`group_norm`] measures them.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupStatistics {
    pub groups: usize,
    pub eps: f32,
    /// `[batch · groups]` each.
    pub mean: Vec<f32>,
    pub variance: Vec<f32>,
}

/// Measures `x` `[batch, channels, …]` (f32 or bf16, CPU) in `groups` groups. A bf16 map is
/// widened a block at a time in L1 (its sums are the same as its f32 copy's), so measuring a
/// decoder's full-resolution map costs no f32 copy of it: `[1, 256, 1024, 1024]` would be a
/// GiB (`vae::banded`).
pub(crate) fn group_statistics(x: &Tensor, groups: usize, eps: f64) -> Result<GroupStatistics> {
    let dims = x.dims();
    if dims.len() < 2 || groups == 0 || !dims[1].is_multiple_of(groups) {
        candle_core::bail!("group statistics: {dims:?} in {groups} groups");
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("group statistics run on the CPU");
    };
    let count = dims[0] * groups;
    let (mean, variance) = match storage {
        CpuStorage::BF16(_) => group_moments::<bf16>(storage, layout, count)?,
        _ => group_moments::<f32>(storage, layout, count)?,
    };
    Ok(GroupStatistics {
        groups,
        eps: eps as f32,
        mean,
        variance,
    })
}

/// The mean and variance of each of `count` equal groups of a contiguous map of `T`.
fn group_moments<T: Element>(
    storage: &CpuStorage,
    layout: &Layout,
    count: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let values = contiguous_values::<T>(storage, layout, "group statistics")?;
    Ok(match values.len() / count {
        0 => (vec![0.0; count], vec![0.0; count]),
        group_len => values
            .par_chunks(group_len)
            .map(T::mean_and_variance)
            .unzip(),
    })
}

struct GroupNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    groups: usize,
    eps: f32,
    silu: bool,
    /// Given statistics, or `None` to measure them on the input.
    statistics: Option<GroupStatistics>,
}

impl CustomOp1 for GroupNorm {
    fn name(&self) -> &'static str {
        "group-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        match storage {
            CpuStorage::BF16(_) => self.normalise::<bf16>(storage, layout),
            _ => self.normalise::<f32>(storage, layout),
        }
    }
}

impl GroupNorm {
    /// The op on a map of `T`, the result in `T`.
    fn normalise<T: Element>(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        if dims.len() < 2 {
            candle_core::bail!("group norm needs [batch, channels, …], not {dims:?}");
        }
        let (batch, channels) = (dims[0], dims[1]);
        if self.groups == 0
            || !channels.is_multiple_of(self.groups)
            || self.weight.len() != channels
            || self.bias.len() != channels
        {
            candle_core::bail!(
                "group norm: {channels} channels, {} groups, {} weights, {} biases",
                self.groups,
                self.weight.len(),
                self.bias.len()
            );
        }
        let spatial: usize = dims[2..].iter().product();
        let per_group = channels / self.groups;
        let (mean, variance) = match &self.statistics {
            Some(given) if given.mean.len() != batch * self.groups => {
                candle_core::bail!(
                    "group norm: statistics of {} groups for {dims:?}",
                    given.mean.len()
                );
            }
            Some(given) => (given.mean.clone(), given.variance.clone()),
            None => {
                let x = contiguous_values::<T>(storage, layout, self.name())?;
                match per_group * spatial {
                    0 => (
                        vec![0.0; batch * self.groups],
                        vec![1.0; batch * self.groups],
                    ),
                    group_len => x.par_chunks(group_len).map(T::mean_and_variance).unzip(),
                }
            }
        };
        // Each (image, channel) plane is read where it lies: a band of rows of a larger map
        // (a narrowed view) is normalised without a copy.
        let starts = plane_starts(layout, self.name())?;
        let all = storage.as_slice::<T>()?;
        // Written whole: every plane is normalised into its own chunk.
        let mut out = unfilled(batch * channels * spatial);
        if spatial > 0 {
            out.par_chunks_mut(spatial)
                .zip(starts.par_iter())
                .enumerate()
                .for_each(|(plane, (out_c, &start))| {
                    let c = plane % channels;
                    let group = (plane / channels) * self.groups + c / per_group;
                    let inverse_std = 1.0 / (variance[group] + self.eps).sqrt();
                    let scale = inverse_std * self.weight[c];
                    let shift = self.bias[c] - mean[group] * scale;
                    T::apply(&all[start..][..spatial], out_c, (scale, shift), self.silu);
                });
        }
        // SAFETY: the planes cover the output, each written whole by `apply` (none when
        // `spatial` is 0).
        #[allow(unsafe_code)]
        let out = unsafe { filled(out) };
        Ok((T::to_cpu_storage_owned(out), layout.shape().clone()))
    }
}

/// A map's element type: f32, or bf16 widened and narrowed [`BLOCK`] values at a time.
trait Element: WithDType {
    /// The mean and (biased) variance of `x`.
    fn mean_and_variance(x: &[Self]) -> (f32, f32);
    /// `out = x · scale + shift`, then SiLU when `silu`.
    fn apply(x: &[Self], out: &mut [MaybeUninit<Self>], scale_shift: (f32, f32), silu: bool);
}

/// Values widened at a time from a bf16 map: 16 KiB of f32, in L1 beside their output.
const BLOCK: usize = 4096;

impl Element for f32 {
    fn mean_and_variance(x: &[f32]) -> (f32, f32) {
        mean_and_variance(x)
    }

    fn apply(x: &[f32], out: &mut [MaybeUninit<f32>], (scale, shift): (f32, f32), silu: bool) {
        apply(x, out, scale, shift, silu)
    }
}

impl Element for bf16 {
    fn mean_and_variance(x: &[bf16]) -> (f32, f32) {
        let mut sums = [0f64; 2];
        let mut wide = [MaybeUninit::new(0f32); BLOCK];
        for block in x.chunks(BLOCK) {
            accumulate(widened(block, &mut wide), &mut sums);
        }
        moments(sums, x.len())
    }

    fn apply(x: &[bf16], out: &mut [MaybeUninit<bf16>], (scale, shift): (f32, f32), silu: bool) {
        let mut wide = [MaybeUninit::new(0f32); BLOCK];
        let mut done = [MaybeUninit::new(0f32); BLOCK];
        for (block, out) in x.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
            let n = block.len();
            apply(
                widened(block, &mut wide),
                &mut done[..n],
                scale,
                shift,
                silu,
            );
            // SAFETY: `apply` wrote the first `n`.
            #[allow(unsafe_code)]
            let done = unsafe { done[..n].assume_init_ref() };
            narrow_slice(done, out);
        }
    }
}

/// `block` widened into the start of `wide`.
fn widened<'a>(block: &[bf16], wide: &'a mut [MaybeUninit<f32>; BLOCK]) -> &'a [f32] {
    let wide = &mut wide[..block.len()];
    widen_slice(block, wide);
    // SAFETY: `widen_slice` wrote every value of `wide`.
    #[allow(unsafe_code)]
    unsafe {
        wide.assume_init_ref()
    }
}

/// Where each (image, channel) plane of `layout` starts in its storage, for layouts whose
/// dimensions past the channels are contiguous (any contiguous tensor, or rows narrowed out
/// of one).
fn plane_starts(layout: &Layout, op: &str) -> Result<Vec<usize>> {
    let (dims, strides) = (layout.shape().dims(), layout.stride());
    let mut expected = 1;
    for k in (2..dims.len()).rev() {
        if dims[k] > 1 && strides[k] != expected {
            candle_core::bail!(
                "{op}: the planes of {dims:?} (strides {strides:?}) are not contiguous"
            );
        }
        expected *= dims[k];
    }
    let offset = layout.start_offset();
    Ok((0..dims[0] * dims[1])
        .map(|plane| offset + (plane / dims[1]) * strides[0] + (plane % dims[1]) * strides[1])
        .collect())
}

/// The mean and (biased) variance of `x`, accumulated in f64 across 16 f32 lanes per chunk.
fn mean_and_variance(x: &[f32]) -> (f32, f32) {
    let mut sums = [0f64; 2];
    for block in x.chunks(BLOCK) {
        accumulate(block, &mut sums);
    }
    moments(sums, x.len())
}

/// Adds the sum and the sum of squares of `block` (at most [`BLOCK`] values, summed in 16 f32
/// lanes) to `sums`.
fn accumulate(block: &[f32], sums: &mut [f64; 2]) {
    const LANES: usize = 16;
    let mut lanes = [0f32; LANES];
    let mut squares = [0f32; LANES];
    let mut chunks = block.chunks_exact(LANES);
    for chunk in &mut chunks {
        for i in 0..LANES {
            lanes[i] += chunk[i];
            squares[i] += chunk[i] * chunk[i];
        }
    }
    for v in chunks.remainder() {
        lanes[0] += v;
        squares[0] += v * v;
    }
    sums[0] += lanes.iter().map(|v| f64::from(*v)).sum::<f64>();
    sums[1] += squares.iter().map(|v| f64::from(*v)).sum::<f64>();
}

/// The mean and (biased) variance from the sums of `n` values and of their squares.
fn moments(sums: [f64; 2], n: usize) -> (f32, f32) {
    let n = n as f64;
    let mean = sums[0] / n;
    let variance = (sums[1] / n - mean * mean).max(0.0);
    (mean as f32, variance as f32)
}

with_widest_vectors! {
    /// `out = x · scale + shift`, then SiLU when `silu`.
    fn apply(x: &[f32], out: &mut [MaybeUninit<f32>], scale: f32, shift: f32, silu: bool) => apply_lanes
}

#[inline(always)]
fn apply_lanes(x: &[f32], out: &mut [MaybeUninit<f32>], scale: f32, shift: f32, silu: bool) {
    if silu {
        for (o, v) in out.iter_mut().zip(x) {
            let y = v * scale + shift;
            o.write(y * sigmoid(y));
        }
    } else {
        for (o, v) in out.iter_mut().zip(x) {
            o.write(v * scale + shift);
        }
    }
}

/// `1 / (1 + e⁻ʸ)`, through `e^−|y|` so the exponential never overflows; branch-free.
#[inline(always)]
pub(crate) fn sigmoid(y: f32) -> f32 {
    let e = fast_exp(-y.abs());
    let inverse = 1.0 / (1.0 + e);
    if y >= 0.0 {
        inverse
    } else {
        e * inverse
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{max_difference, random};
    use super::*;
    use candle_core::{DType, Module};

    #[test]
    fn a_bf16_maps_statistics_are_its_f32_copys() {
        // Groups longer than a block (4 096 values) and shorter; the sums are the same ones.
        for (seed, shape, groups) in [(1, [2, 64, 33, 40], 32), (2, [1, 6, 5, 7], 3)] {
            let half = random(&shape, seed, 3.0).to_dtype(DType::BF16).unwrap();
            let wide = half.to_dtype(DType::F32).unwrap();
            let of_half = group_statistics(&half, groups, 1e-6).unwrap();
            assert_eq!(of_half, group_statistics(&wide, groups, 1e-6).unwrap());
            assert_eq!(of_half.mean.len(), shape[0] * groups);
            assert!(
                of_half.variance.iter().all(|v| *v > 0.5),
                "values of ±3 vary"
            );
        }
    }

    #[test]
    fn equals_candles_group_norm_and_silu() {
        // (batch, channels, height, width, groups)
        for (i, &(b, c, h, w, groups)) in [
            (1, 4, 1, 1, 2),
            (2, 32, 8, 8, 32),
            (1, 64, 5, 7, 32),
            (2, 320, 16, 16, 32),
            (1, 6, 3, 3, 1),
        ]
        .iter()
        .enumerate()
        {
            let seed = 10 * i as u64;
            // Off-centre values, so the mean matters.
            let x = (random(&[b, c, h, w], seed, 3.0) + 1.5).unwrap();
            let weight = random(&[c], seed + 1, 1.0);
            let bias = random(&[c], seed + 2, 1.0);
            let reference =
                candle_nn::GroupNorm::new(weight.clone(), bias.clone(), c, groups, 1e-5)
                    .unwrap()
                    .forward(&x)
                    .unwrap();
            let ours = group_norm(&x, &weight, &bias, groups, 1e-5, false).unwrap();
            let off = max_difference(&ours, &reference);
            assert!(off < 2e-5, "case {i}: off by {off}");
            let with_silu = group_norm(&x, &weight, &bias, groups, 1e-5, true).unwrap();
            let reference = candle_nn::ops::silu(&reference).unwrap();
            let off = max_difference(&with_silu, &reference);
            assert!(off < 2e-5, "case {i} with SiLU: off by {off}");
        }
    }

    #[test]
    fn a_bf16_map_is_normalised_in_bf16_as_its_f32_values_are() {
        // The same values in bf16 and in f32: the bf16 result is the f32 one rounded (within
        // a bf16 step, 2⁻⁸ of the value, of the largest), with and without SiLU; planes of
        // 80 × 64 cross the kernel's blocks of 4 096 values.
        for (i, &(b, c, h, w, groups)) in [(2, 64, 80, 64, 32), (1, 6, 3, 5, 2)].iter().enumerate()
        {
            let seed = 100 + 10 * i as u64;
            let x = (random(&[b, c, h, w], seed, 3.0) + 1.5)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            let wide = x.to_dtype(DType::F32).unwrap();
            let weight = random(&[c], seed + 1, 1.0);
            let bias = random(&[c], seed + 2, 1.0);
            for silu in [false, true] {
                let ours = group_norm(&x, &weight, &bias, groups, 1e-5, silu).unwrap();
                assert_eq!(ours.dtype(), DType::BF16);
                let theirs = group_norm(&wide, &weight, &bias, groups, 1e-5, silu).unwrap();
                let ours = ours.to_dtype(DType::F32).unwrap();
                let off = max_difference(&ours, &theirs);
                let largest = super::super::test_support::max_abs(&theirs);
                assert!(
                    off <= largest / 256.0,
                    "case {i}, SiLU {silu}: off by {off}"
                );
            }
        }
    }

    #[test]
    fn bands_normalised_with_the_whole_maps_statistics_equal_the_whole() {
        let x = (random(&[2, 64, 12, 9], 7, 2.0) + 0.5).unwrap();
        let (weight, bias) = (random(&[64], 8, 1.0), random(&[64], 9, 1.0));
        let whole = group_norm(&x, &weight, &bias, 32, 1e-6, true).unwrap();
        let statistics = group_statistics(&x, 32, 1e-6).unwrap();
        let bands: Vec<Tensor> = [(0, 5), (5, 1), (6, 6)]
            .iter()
            .map(|&(start, rows)| {
                let band = x.narrow(2, start, rows).unwrap();
                group_norm_with(&band, &weight, &bias, &statistics, true).unwrap()
            })
            .collect();
        let joined = Tensor::cat(&bands, 2).unwrap();
        assert_eq!(max_difference(&joined, &whole), 0.0);
        // A band's own statistics differ from the whole map's: this is what the test checks.
        let alone = group_norm(&x.narrow(2, 0, 5).unwrap(), &weight, &bias, 32, 1e-6, true);
        assert!(max_difference(&alone.unwrap(), &whole.narrow(2, 0, 5).unwrap()) > 1e-3);
        // A view whose planes are not contiguous is copied first, with the same result.
        let transposed = x.transpose(2, 3).unwrap();
        let normed = group_norm_with(&transposed, &weight, &bias, &statistics, true).unwrap();
        assert_eq!(
            max_difference(&normed, &whole.transpose(2, 3).unwrap()),
            0.0
        );
        let other_batch = group_statistics(&x.narrow(0, 0, 1).unwrap(), 32, 1e-6).unwrap();
        assert!(group_norm_with(&x, &weight, &bias, &other_batch, false).is_err());
    }

    #[test]
    fn sigmoid_is_symmetric_and_saturates() {
        for y in [-30.0f32, -3.0, -0.5, 0.0, 0.5, 3.0, 30.0] {
            let exact = 1.0 / (1.0 + (-y as f64).exp());
            assert!((f64::from(sigmoid(y)) - exact).abs() < 1e-7, "{y}");
        }
        assert!(sigmoid(-200.0) < 1e-37);
        assert_eq!(sigmoid(200.0), 1.0);
    }

    #[test]
    fn mismatched_parameters_are_refused() {
        let x = random(&[1, 6, 2, 2], 1, 1.0);
        let w = random(&[6], 2, 1.0);
        assert!(
            group_norm(&x, &w, &w, 4, 1e-5, false).is_err(),
            "6 channels, 4 groups"
        );
        let short = random(&[5], 3, 1.0);
        assert!(group_norm(&x, &short, &w, 3, 1e-5, false).is_err());
    }
}
