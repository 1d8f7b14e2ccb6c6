//! What becomes of a product's f32 sums on their way into a bf16 output.
//!
//! A network held in bf16 wants each linear layer's output in bf16, its bias and the residual
//! added. Computed as an f32 product and narrowed after, that output crossed memory four times
//! more than it needs to: the residual widened to f32 for the product to start from, the sums
//! written in f32, read back and narrowed in a pass of their own; the feed-forward's first
//! layer wrote four times its input's width in f32 for the GEGLU to read. Here a product hands
//! each block of sums, still in L1, to an [`Epilogue`], which adds the bias and the residual (or
//! gates one half by the other) and rounds the result into the bf16 output: on the AMX tiles as
//! each 32 × 32 block leaves them ([`super::amx`]), on vectors as each 12 × 32 tile leaves the
//! registers ([`super::vector`]; in one pass over the f32 product where a GEGLU's halves are
//! not whole strips).

use super::Values;
use crate::kernels::convert::{narrow_bits, wide};
use crate::kernels::geglu::gelu;
use half::bf16;
use std::mem::MaybeUninit;
use std::ops::Range;

/// How a product's `rows × cols` sums become its bf16 output.
#[derive(Clone, Copy)]
pub(crate) enum Epilogue<'a> {
    /// `out = sums + bias + residual` (either may be absent), as wide as the product: a linear
    /// layer. The bias has `cols` values, the residual `rows × cols` row-major.
    Narrow {
        bias: Option<&'a [f32]>,
        residual: Option<Values<'a>>,
    },
    /// `out = (a + bias_a) · gelu(g + bias_g)` for `a` the sums of column `c` and `g` those of
    /// column `c + cols/2`, half as wide as the product: the feed-forward's first layer and its
    /// GEGLU. The bias has `cols` values.
    Geglu { bias: Option<&'a [f32]> },
    /// `out[b][o][y][x] = sums + bias[o]` for a convolution's sums, a row per output channel
    /// `o` and a column per position of its padded input grid ([`Grid`]): the grid's columns
    /// that are no output position are dropped. The bias has `rows` values.
    Conv { bias: Option<&'a [f32]>, grid: Grid },
}

/// Where a convolution's columns land: column `j` is image `j / image_words`, and within it
/// row `y` and column `x` of a grid `grid_w` wide; it is an output position when `y < out_h`
/// and `x < out_w`. The output is `[images, channels, out_h, out_w]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grid {
    pub(crate) images: usize,
    pub(crate) channels: usize,
    pub(crate) image_words: usize,
    pub(crate) grid_w: usize,
    pub(crate) out_h: usize,
    pub(crate) out_w: usize,
}

impl Epilogue<'_> {
    /// The output's columns for a product of `cols`.
    pub(crate) fn width(&self, cols: usize) -> usize {
        match self {
            Epilogue::Narrow { .. } | Epilogue::Conv { .. } => cols,
            Epilogue::Geglu { .. } => cols / 2,
        }
    }

    /// Values from one row of the output to the next.
    pub(crate) fn row_stride(&self, cols: usize) -> usize {
        match self {
            Epilogue::Conv { grid, .. } => grid.out_w,
            _ => self.width(cols),
        }
    }

    /// Values the output holds for a `rows × cols` product.
    pub(crate) fn output_len(&self, rows: usize, cols: usize) -> usize {
        match self {
            Epilogue::Conv { grid, .. } => grid.images * grid.channels * grid.out_h * grid.out_w,
            _ => rows * self.width(cols),
        }
    }

    /// The columns from a sum to its gate (`cols/2` for a GEGLU), none otherwise.
    pub(super) fn gate_offset(&self, cols: usize) -> Option<usize> {
        matches!(self, Epilogue::Geglu { .. }).then_some(cols / 2)
    }

    /// Refuses (with the sizes) a bias or residual that does not fit a `rows × cols` product,
    /// or a GEGLU of an odd width.
    pub(super) fn check(&self, rows: usize, cols: usize) {
        let bias = match self {
            Epilogue::Narrow { bias, residual } => {
                let len = residual.map_or(rows * cols, |r| r.len());
                assert!(
                    len == rows * cols,
                    "bf16 gemm: a residual of {len} values for {rows}×{cols}"
                );
                bias
            }
            Epilogue::Geglu { bias } => {
                assert!(
                    cols.is_multiple_of(2),
                    "bf16 gemm: GEGLU of odd width {cols}"
                );
                bias
            }
            Epilogue::Conv { bias, grid } => {
                let len = bias.map_or(rows, <[f32]>::len);
                assert!(
                    len == rows && grid.channels == rows && grid.out_w <= grid.grid_w,
                    "bf16 gemm: a convolution's {rows} rows for {grid:?}, a bias of {len}"
                );
                return;
            }
        };
        let len = bias.map_or(cols, <[f32]>::len);
        assert!(
            len == cols,
            "bf16 gemm: a bias of {len} values for {cols} columns"
        );
    }

    /// Writes the output's `rows`, columns `first..first + width`, from `sums` (the product's
    /// columns from `first`) and, for a GEGLU, `gates` (its columns from `first + cols/2`).
    ///
    /// # Safety
    ///
    /// The region is inside `out` and the caller's alone; `sums` (and `gates`) hold
    /// `rows.len()` rows of `width` values; [`Epilogue::check`] passed for the product.
    #[allow(unsafe_code)]
    pub(super) unsafe fn finish(
        &self,
        out: BfOut,
        rows: Range<usize>,
        columns: (usize, usize),
        sums: Sums,
        gates: Option<Sums>,
    ) {
        if let Epilogue::Geglu { .. } = self {
            assert!(
                gates.is_some(),
                "bf16 gemm: a GEGLU finishes with its gates"
            );
        }
        // One call a block, in the widest vectors (the tiles hand over 32 × 32 at a time).
        finish_region(self, out, rows, columns, (sums, gates));
    }
}

/// [`Epilogue::finish`], whose promises its callers keep: compiled for AVX512-BF16, which
/// every product that reaches an epilogue ran on, rounding by its instruction; in the widest
/// vectors the CPU has otherwise.
#[allow(unsafe_code)]
fn finish_region(
    epilogue: &Epilogue<'_>,
    out: BfOut,
    rows: Range<usize>,
    columns: (usize, usize),
    sums: (Sums, Option<Sums>),
) {
    #[cfg(target_arch = "x86_64")]
    if super::supported() {
        // SAFETY: the CPU has AVX512-BF16, F, BW and VL, checked just above.
        return unsafe { finish_region_bf16(epilogue, out, rows, columns, sums) };
    }
    finish_region_in(epilogue, out, rows, columns, sums, Narrowing::Bits)
}

/// [`finish_region`] on a CPU with AVX512-BF16.
///
/// # Safety
///
/// The CPU has AVX-512F, BW, VL and BF16.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn finish_region_bf16(
    epilogue: &Epilogue<'_>,
    out: BfOut,
    rows: Range<usize>,
    columns: (usize, usize),
    sums: (Sums, Option<Sums>),
) {
    finish_lanes(epilogue, out, rows, columns, sums, Narrowing::Instruction)
}

with_widest_vectors! {
    /// [`finish_region`] in the widest vectors the CPU has, rounding by `narrow`.
    fn finish_region_in(
        epilogue: &Epilogue<'_>,
        out: BfOut,
        rows: Range<usize>,
        columns: (usize, usize),
        sums: (Sums, Option<Sums>),
        narrow: Narrowing
    ) => finish_lanes
}

#[inline(always)]
#[allow(unsafe_code)]
fn finish_lanes(
    epilogue: &Epilogue<'_>,
    out: BfOut,
    rows: Range<usize>,
    (first, width): (usize, usize),
    (sums, gates): (Sums, Option<Sums>),
    narrow: Narrowing,
) {
    const CHUNK: usize = 32;
    const ZEROS: [f32; CHUNK] = [0.0; CHUNK];
    if let Epilogue::Conv { bias, grid } = *epilogue {
        // Every row of a block has the same runs: found once (a tile's 32 columns cross a
        // few grid rows), or again for each row of a wider region (the vector path's).
        const CACHED: usize = 16;
        let mut cached = [Run::default(); CACHED];
        let mut count = 0;
        for run in grid.runs(first, width) {
            if count == CACHED {
                count = usize::MAX;
                break;
            }
            cached[count] = run;
            count += 1;
        }
        for (i, o) in rows.enumerate() {
            // SAFETY: row `i` of `sums` holds `width` values (as below).
            let sums = unsafe { sums.row(i, 0, width) };
            let bias = bias.map_or(0.0, |b| b[o]);
            let plane = o * grid.out_h * grid.out_w;
            if count <= CACHED {
                cached[..count]
                    .iter()
                    .for_each(|run| land(sums, bias, plane, *run, (out, narrow)));
            } else {
                grid.runs(first, width)
                    .for_each(|run| land(sums, bias, plane, run, (out, narrow)));
            }
        }
        return;
    }
    let mut values = [0f32; CHUNK];
    for (i, r) in rows.enumerate() {
        for from in (0..width).step_by(CHUNK) {
            let n = CHUNK.min(width - from);
            let column = first + from;
            // SAFETY: row `i` of `sums` (and `gates`) holds `width` values (the promise of
            // `Epilogue::finish`'s caller).
            let row = |s: Sums| unsafe { s.row(i, from, n) };
            let values = &mut values[..n];
            match *epilogue {
                Epilogue::Narrow { bias, residual } => {
                    let bias = bias.map_or(&ZEROS[..n], |b| &b[column..][..n]);
                    let residual = residual.map(|v| v.slice(r * out.row_stride + column, n));
                    add_row(row(sums), bias, residual, values);
                }
                Epilogue::Conv { .. } => unreachable!("landed above"),
                Epilogue::Geglu { bias } => {
                    let Some(gates) = gates else { return };
                    let gate_column = column + out.row_stride;
                    let bias_a = bias.map_or(&ZEROS[..n], |b| &b[column..][..n]);
                    let bias_g = bias.map_or(&ZEROS[..n], |b| &b[gate_column..][..n]);
                    gate_row(row(sums), row(gates), (bias_a, bias_g), values);
                }
            }
            // SAFETY: the region is inside `out` and the caller's (as above).
            let into = unsafe { out.row(r, column, n) };
            narrow.plus(values, 0.0, into);
        }
    }
}

/// A row's residual, in the dtype it came in.
#[derive(Clone, Copy)]
pub(super) enum Row<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl<'a> Values<'a> {
    /// `n` values from `start`.
    fn slice(self, start: usize, n: usize) -> Row<'a> {
        match self {
            Values::F32(v) => Row::F32(&v[start..][..n]),
            Values::Bf16(v) => Row::Bf16(&v[start..][..n]),
        }
    }
}

/// A run of a convolution's columns that are output positions, along one row of its grid:
/// `n` sums from `from` (of the region's), landing from `at` of channel 0's plane (add a
/// channel's plane offset).
#[derive(Clone, Copy, Default)]
struct Run {
    from: usize,
    n: usize,
    at: usize,
}

impl Grid {
    /// The runs of output positions among columns `first..first + width`: two divisions to
    /// place the first, then steps along the grid's rows.
    fn runs(self, first: usize, width: usize) -> impl Iterator<Item = Run> {
        let grid_h = self.image_words / self.grid_w;
        let (image, at) = (first / self.image_words, first % self.image_words);
        let (mut image, mut y, mut x) = (image, at / self.grid_w, at % self.grid_w);
        let (mut j, end) = (first, first + width);
        std::iter::from_fn(move || {
            while j < end {
                let len = (self.grid_w - x).min(end - j);
                let here = (image, y, x, j);
                j += len;
                x += len;
                if x == self.grid_w {
                    x = 0;
                    y += 1;
                    if y == grid_h {
                        (y, image) = (0, image + 1);
                    }
                }
                let (image, y, x, j) = here;
                if image < self.images && y < self.out_h && x < self.out_w {
                    let plane = self.out_h * self.out_w;
                    return Some(Run {
                        from: j - first,
                        n: len.min(self.out_w - x),
                        at: image * self.channels * plane + y * self.out_w + x,
                    });
                }
            }
            None
        })
    }
}

/// One run of a channel's sums plus `bias`, rounded into its output positions (`plane`: the
/// channel's offset in each image).
#[inline(always)]
#[allow(unsafe_code)]
fn land(sums: &[f32], bias: f32, plane: usize, run: Run, (out, narrow): (BfOut, Narrowing)) {
    // SAFETY: the run's positions are inside the output (the grid's runs are output
    // positions of its images), and the channel's region is this caller's (the promise of
    // `Epilogue::finish`'s caller).
    let into = unsafe { out.at(plane + run.at, run.n) };
    narrow.plus(&sums[run.from..][..run.n], bias, into);
}

/// How the epilogue rounds f32 to bf16 (to nearest, ties to even, either way).
#[derive(Clone, Copy)]
enum Narrowing {
    /// `vcvtneps2bf16`, 16 values an instruction, on CPUs with AVX512-BF16 (only: see
    /// [`finish_region`]): the same bf16 as `narrow_bits` but for results below f32's smallest
    /// normal (1.2e-38), which the instruction flushes to zero. In integer steps the rounding
    /// was about a third of the epilogues' instructions.
    Instruction,
    /// [`narrow_bits`], value by value (vectorised by the compiler).
    Bits,
}

impl Narrowing {
    /// `out[i] = bf16(values[i] + bias)`.
    #[inline(always)]
    #[allow(unsafe_code)]
    fn plus(self, values: &[f32], bias: f32, out: &mut [MaybeUninit<bf16>]) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Instruction` is used only on CPUs with AVX512-BF16 (`finish_region`,
            // and the tests where `supported()`).
            Narrowing::Instruction => unsafe { narrow_plus(values, bias, out) },
            _ => {
                for (o, v) in out.iter_mut().zip(values) {
                    o.write(bf16::from_bits(narrow_bits(v + bias)));
                }
            }
        }
    }
}

/// `out[i] = bf16(values[i] + bias)` by `vcvtneps2bf16`, 16 at a time, the last under a mask.
///
/// # Safety
///
/// The CPU has AVX-512F, BW, VL and BF16.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[inline]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn narrow_plus(values: &[f32], bias: f32, out: &mut [MaybeUninit<bf16>]) {
    use std::arch::x86_64::*;
    let n = values.len().min(out.len());
    let bias = _mm512_set1_ps(bias);
    for from in (0..n).step_by(16) {
        let mask: __mmask16 = crate::kernels::lanes(n - from);
        // SAFETY: the lanes under `mask` are inside both slices.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, values.as_ptr().add(from));
            let narrow: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_add_ps(v, bias)));
            _mm256_mask_storeu_epi16(out.as_mut_ptr().add(from).cast(), mask, narrow);
        }
    }
}

/// `out = sums + bias (+ residual)`.
#[inline(always)]
fn add_row(sums: &[f32], bias: &[f32], residual: Option<Row<'_>>, out: &mut [f32]) {
    for ((o, s), b) in out.iter_mut().zip(sums).zip(bias) {
        *o = s + b;
    }
    match residual {
        None => {}
        Some(Row::F32(r)) => out.iter_mut().zip(r).for_each(|(o, r)| *o += r),
        Some(Row::Bf16(r)) => out.iter_mut().zip(r).for_each(|(o, r)| *o += wide(*r)),
    }
}

/// `out = (a + bias_a) · gelu(g + bias_g)`.
#[inline(always)]
fn gate_row(a: &[f32], g: &[f32], (bias_a, bias_g): (&[f32], &[f32]), out: &mut [f32]) {
    let inputs = a.iter().zip(g).zip(bias_a).zip(bias_g);
    for (o, (((a, g), bias_a), bias_g)) in out.iter_mut().zip(inputs) {
        *o = (a + bias_a) * gelu(g + bias_g);
    }
}

/// A bf16 output, rows `row_stride` values apart; the tasks of a product write disjoint
/// regions of it, hence a pointer.
#[derive(Clone, Copy)]
pub(crate) struct BfOut {
    ptr: *mut bf16,
    row_stride: usize,
}

impl BfOut {
    /// All of `values`, rows of `row_stride`.
    pub(super) fn new(values: &mut [MaybeUninit<bf16>], row_stride: usize) -> BfOut {
        BfOut {
            ptr: values.as_mut_ptr().cast(),
            row_stride,
        }
    }

    /// `n` values of row `r` from column `c`.
    ///
    /// # Safety
    ///
    /// They are inside the output, and no one else's while the slice lives.
    #[allow(unsafe_code)]
    unsafe fn row<'a>(&self, r: usize, c: usize, n: usize) -> &'a mut [MaybeUninit<bf16>] {
        // SAFETY: the caller's promise.
        unsafe { self.at(r * self.row_stride + c, n) }
    }

    /// `n` values from value `i`.
    ///
    /// # Safety
    ///
    /// As [`BfOut::row`].
    #[allow(unsafe_code)]
    unsafe fn at<'a>(&self, i: usize, n: usize) -> &'a mut [MaybeUninit<bf16>] {
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i).cast(), n) }
    }
}

// SAFETY: the tasks write disjoint regions through the pointer (see `Epilogue::finish`).
#[allow(unsafe_code)]
unsafe impl Send for BfOut {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for BfOut {}

/// Rows of f32 sums, `stride` values apart, from `at`.
#[derive(Clone, Copy)]
pub(super) struct Sums {
    pub(super) at: *const f32,
    pub(super) stride: usize,
}

impl Sums {
    /// `n` values of row `i` from column `c`.
    ///
    /// # Safety
    ///
    /// They are inside the sums.
    #[allow(unsafe_code)]
    unsafe fn row<'a>(&self, i: usize, c: usize, n: usize) -> &'a [f32] {
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts(self.at.add(i * self.stride + c), n) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn both_narrowings_round_as_the_half_crate_does() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        // Normal values of every exponent (the instruction flushes subnormals to zero), ties
        // that round down and up, and a length that leaves a masked last vector.
        let values: Vec<f32> = (0..4_099)
            .map(|_| f32::from_bits(rng.random()))
            .map(|v| {
                if v.is_normal() {
                    v
                } else {
                    1.0 + v.abs().min(1.0)
                }
            })
            .chain([f32::from_bits(0x3F80_8000), f32::from_bits(0x3F81_8000)])
            .collect();
        let bias = 0.375;
        let expected: Vec<u16> = values
            .iter()
            .map(|v| bf16::from_f32(v + bias).to_bits())
            .collect();
        let mut narrowings = vec![Narrowing::Bits];
        if crate::kernels::bf16_gemm::supported() {
            narrowings.push(Narrowing::Instruction);
        }
        for narrowing in narrowings {
            let mut out = vec![MaybeUninit::new(bf16::ZERO); values.len() + 1];
            narrowing.plus(&values, bias, &mut out[..values.len()]);
            for ((o, e), v) in out.iter().zip(&expected).zip(&values) {
                // SAFETY: every value was written (with zero before).
                #[allow(unsafe_code)]
                let o = unsafe { o.assume_init() };
                assert_eq!(o.to_bits(), *e, "{v:e} + {bias}");
            }
            // SAFETY: as above.
            #[allow(unsafe_code)]
            let past = unsafe { out[values.len()].assume_init() };
            assert_eq!(past, bf16::ZERO, "nothing written past the values");
        }
    }
}
