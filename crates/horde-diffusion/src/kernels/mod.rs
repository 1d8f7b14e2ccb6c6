//! Our own CPU kernels, where candle's CPU ops are slow or hungry for what Stable Diffusion
//! does (attention, convolutions, linear layers with their bias and residual, the feed-forward's
//! GEGLU, group norm with SiLU, the map-to-tokens transpose, bf16 ↔ f32). Each is a candle custom op with a CPU implementation only; the networks call it on
//! the CPU in f32 and candle's own ops everywhere else (CUDA, Metal, half precision), so a GPU
//! build keeps working unchanged. Each kernel is tested against candle's ops on random inputs
//! of many shapes.
//!
//! On CPUs with AVX512-BF16 the products of the linear layers, attention and the stride-1
//! convolutions of a network held in bf16 run in bf16 with f32 accumulation (`bf16_gemm`,
//! picked at run time; on AMX tiles where the CPU has them); elsewhere bf16 is widened to f32
//! around the f32 kernels.

/// Defines `fn $name(args)` that runs the `#[inline(always)]` function `$portable(args)`
/// compiled for AVX-512F, or for AVX2 with FMA, when the CPU has them (checked at run time),
/// and as plain code otherwise: the element-wise loops of the kernels are written so the
/// compiler turns them into vector code of whatever width it is allowed.
macro_rules! with_widest_vectors {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $portable:ident) => {
        $(#[$doc])*
        #[allow(unsafe_code)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, checked just above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }
    };
}

pub(crate) mod activation;
pub(crate) mod attention;
pub(crate) mod bf16_gemm;
pub(crate) mod conv;
pub(crate) mod convert;
pub(crate) mod geglu;
pub(crate) mod group_norm;
pub(crate) mod im2col;
pub(crate) mod kept;
pub(crate) mod layer_norm;
pub(crate) mod linear;
pub(crate) mod transpose;
pub(crate) mod winograd;
pub(crate) mod winograd4;

use candle_core::{CpuStorage, Layout, Result, WithDType};
use std::cell::Cell;
use std::mem::MaybeUninit;
use std::thread::LocalKey;

/// The mask of the first `remaining` lanes of a 16-lane vector (all 16 from 16 on): the
/// last, partial vector of a row under AVX-512's masked loads and stores.
#[inline(always)]
pub(crate) fn lanes(remaining: usize) -> u16 {
    match remaining {
        n if n >= 16 => 0xFFFF,
        n => (1u16 << n) - 1,
    }
}

/// Runs `f` with this thread's `flag` set to `value`, then puts back the value it had, also
/// when `f` panics: the worker runs jobs on tokio's blocking threads, which outlive a job's
/// panic and take the next job, and that job must not inherit the failed one's tiling.
pub(crate) fn with_flag<T>(
    flag: &'static LocalKey<Cell<bool>>,
    value: bool,
    f: impl FnOnce() -> T,
) -> T {
    let _restore = Restore {
        flag,
        before: flag.with(|t| t.replace(value)),
    };
    f()
}

/// Puts a thread's flag back to `before` when dropped (by the return or by the unwinding).
struct Restore {
    flag: &'static LocalKey<Cell<bool>>,
    before: bool,
}

impl Drop for Restore {
    fn drop(&mut self) {
        self.flag.with(|t| t.set(self.before));
    }
}

/// A convolution kernel's operands as its custom op takes them: the input and the weight
/// contiguous, the bias as plain values.
fn conv_operands(
    x: &candle_core::Tensor,
    weight: &candle_core::Tensor,
    bias: Option<&candle_core::Tensor>,
) -> Result<(candle_core::Tensor, candle_core::Tensor, Option<Vec<f32>>)> {
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    Ok((x, weight, bias))
}

/// The f32 values of a custom op's input, which the op's wrapper made contiguous.
fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    contiguous_values(storage, layout, op)
}

/// The values of a custom op's input of element type `T`, which the op's wrapper made
/// contiguous.
fn contiguous_values<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    let all = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&all[start..end]),
        None => candle_core::bail!("{op} needs contiguous inputs"),
    }
}

/// A buffer of `len` values for an output that the op writes whole before anything reads it,
/// left unzeroed: zeroing is one more pass over every output, and with the worker's allocator
/// keeping freed memory (so fresh pages are rare) `memset` was 5 % of a UNet step. candle's
/// own CPU ops allocate their outputs the same way. The values are `MaybeUninit` until the op
/// has written them all and says so with [`filled`]; no `Vec<T>` or `&[T]` ever holds one that
/// was not written.
fn unfilled<T>(len: usize) -> Box<[MaybeUninit<T>]> {
    Box::new_uninit_slice(len)
}

/// The values of a buffer from [`unfilled`], once the op has written them all.
///
/// # Safety
///
/// Every element of `buffer` has been written (each call site says how).
#[allow(unsafe_code)]
unsafe fn filled<T>(buffer: Box<[MaybeUninit<T>]>) -> Vec<T> {
    // SAFETY: the caller promises every element was written.
    unsafe { buffer.assume_init() }.into_vec()
}

/// What the kernels' tests share: seeded random tensors and how far two tensors differ.
#[cfg(test)]
pub(crate) mod test_support {
    use candle_core::{Device, Tensor};

    /// Uniform values in `[-scale, scale)` from a seeded ChaCha stream.
    pub(crate) fn random(shape: &[usize], seed: u64, scale: f32) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// The largest absolute value of `t`.
    pub(crate) fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The largest absolute difference between `a` and `b`.
    pub(crate) fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).unwrap())
    }
}
