//! bf16 matrix products on the CPU with the AVX512-BF16 dot product (`vdpbf16ps`).
//!
//! A network held in bf16 used to widen every operand to f32 and multiply in f32: half the
//! arithmetic rate the CPU has for bf16, and the widened copies on top. `vdpbf16ps` multiplies
//! 16 pairs of bf16 and adds both products of each pair to an f32 lane: twice the multiplies
//! of an f32 FMA per instruction, accumulated in f32 (as PyTorch's oneDNN does on such CPUs).
//!
//! `C (f32) = α·A·B (+ C)`. `B` is packed by [`PackedB::pack`] into strips of [`NR`]
//! columns, each a run of depth pairs `(B[2p][n], B[2p + 1][n])` (one 32-bit word per
//! column, zero past the end), which a strip's product loads as two vectors per pair. `A` (f32,
//! narrowed to bf16 as it is packed, or bf16) is packed [`MC`] rows at a time, [`KC`] pairs
//! deep, row by row, and each row's pair is broadcast to every lane. The microkernel keeps an
//! [`MR`] × [`NR`] tile of `C` in 24 vector registers. Tasks (blocks of rows, and of column
//! strips where there are few rows) run on rayon. A product finished in bf16, and a sum of
//! products (a convolution's taps), keep each tile in the registers through the whole depth
//! and every term, then hand it to an [`Epilogue`] ([`vector`]).
//!
//! Only CPUs with AVX512-BF16 run it ([`available`]); callers keep their f32 path for the
//! others. Where the CPU also has AMX tile units (Intel Sapphire Rapids and later), the same
//! packed operands go through [`amx`]'s tile microkernel instead, sixteen times the multiplies
//! an instruction.

use half::bf16;
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) mod amx;
mod epilogue;
mod vector;
use super::unfilled;
pub use amx::set_enabled as set_amx_enabled;
use epilogue::{BfOut, Sums};
pub(crate) use epilogue::{Epilogue, Grid};

/// Rows of the microkernel's tile of `C`.
pub(crate) const MR: usize = 12;
/// Vectors (of 16 f32) per row of the microkernel's tile.
const NRV: usize = 2;
/// Columns of the tile, and of a strip of packed `B`.
pub(crate) const NR: usize = 16 * NRV;
/// Depth pairs per pass over a block: a strip's slice of `B` (`KC × NR` words, 16 KiB) stays in
/// the L1 cache while every row strip of the block runs over it.
const KC: usize = 128;
/// Rows per task: the packed block of `A` (`MC × KC` words, 48 KiB) stays in the L2 cache.
const MC: usize = 8 * MR;

/// Whether the kernel is on (it is unless [`set_enabled`] turned it off).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the bf16 products off (or back on) for the whole process, so that the benchmarks
/// can time the widening path beside them in one run.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether this CPU runs the kernel (AVX512-BF16, checked at run time) and it is on.
pub fn available() -> bool {
    ENABLED.load(Ordering::Relaxed) && supported()
}

/// Which microkernel runs the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// `vdpbf16ps` on vector registers (AVX512-BF16).
    Vector,
    /// `tdpbf16ps` on AMX tiles.
    Tiles,
}

impl Kernel {
    /// The fastest this CPU runs (the tiles unless turned off with [`set_amx_enabled`]).
    pub(crate) fn best() -> Kernel {
        if amx::available() {
            Kernel::Tiles
        } else {
            Kernel::Vector
        }
    }

    /// Every kernel this CPU runs, for the tests.
    #[cfg(test)]
    fn all_supported() -> Vec<Kernel> {
        let mut kernels = Vec::new();
        if supported() {
            kernels.push(Kernel::Vector);
        }
        if amx::supported() {
            kernels.push(Kernel::Tiles);
        }
        kernels
    }

    /// Rows per task for a product of `rows` rows by `strips` column strips `pairs` deep,
    /// shared among `wanted` tasks or more. On the tiles, from [`amx::MC`] up to four times as
    /// many where `B` is larger than the L2 cache: each task reads all of `B`'s strips it is
    /// given once per block of rows, and every block of rows is packed once per group of
    /// strips, so the rows per task that move the fewest values (`row_blocks × strips·NR +
    /// column_groups × rows`, in depth pairs) win (the feed-forward's 512 × 1 280 → 10 240 read
    /// its 26 MB weight four times with 128: 10.4–11.3 ms, 9.0–9.4 with 512).
    fn rows_per_task(self, rows: usize, (strips, pairs): (usize, usize), wanted: usize) -> usize {
        const L2_WORDS: usize = 256 << 10;
        match self {
            Kernel::Vector => MC,
            Kernel::Tiles if strips * NR * pairs <= L2_WORDS => amx::MC,
            Kernel::Tiles => {
                let moved = |per_task: usize| {
                    let row_blocks = rows.div_ceil(per_task);
                    let column_groups = wanted.div_ceil(row_blocks).clamp(1, strips);
                    row_blocks * strips * NR + column_groups * rows
                };
                [amx::MC, 2 * amx::MC, 4 * amx::MC]
                    .into_iter()
                    .min_by_key(|&per_task| moved(per_task))
                    .unwrap_or(amx::MC)
            }
        }
    }
}

/// Whether this CPU runs the products on AMX tiles (and they are not turned off).
pub(crate) fn tiles_available() -> bool {
    available() && amx::available()
}

/// Whether this CPU has the instructions the kernel needs.
pub(crate) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The values of an operand, in f32 or in bf16.
#[derive(Clone, Copy)]
pub(crate) enum Values<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl Values<'_> {
    fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::Bf16(v) => v.len(),
        }
    }

    /// The bf16 bits of value `i` (f32 rounded to nearest even, as `half` does).
    #[inline(always)]
    fn bits(&self, i: usize) -> u16 {
        match self {
            Values::F32(v) => bf16::from_f32(v[i]).to_bits(),
            Values::Bf16(v) => v[i].to_bits(),
        }
    }
}

/// A `rows × cols` matrix read from `values`: element `(r, c)` at
/// `start + r·row_stride + c·col_stride`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    values: Values<'a>,
    start: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
    /// Laid out as the tiles read `A`, so they read it in place ([`View::in_tile_rows`]).
    tile_rows: bool,
}

impl<'a> View<'a> {
    /// The view, refused (with its sizes) when an element would fall outside `values`.
    pub(crate) fn new(
        values: Values<'a>,
        start: usize,
        (rows, cols): (usize, usize),
        (row_stride, col_stride): (usize, usize),
    ) -> View<'a> {
        let last = (rows.max(1) - 1) * row_stride + (cols.max(1) - 1) * col_stride;
        assert!(
            rows == 0 || cols == 0 || start + last < values.len(),
            "bf16 gemm: a {rows}×{cols} view at {start} with strides ({row_stride}, \
             {col_stride}) over {} values",
            values.len()
        );
        View {
            values,
            start,
            rows,
            cols,
            row_stride,
            col_stride,
            tile_rows: false,
        }
    }

    /// A `rows × cols` matrix of bf16 laid out as the AMX tiles read `A`, so that a product
    /// reads it in place instead of packing it: from a cache line (`values` at a multiple of
    /// 64 bytes, `start` of 32 values), rows [`amx::row_words`]`(cols)` words apart, and
    /// readable (zero) rows up to a whole block of [`amx::MR`]. The values of each row past
    /// `cols`, and of the rows past `rows`, must be zero: the maker's promise, as a tile reads
    /// them (a NaN there would spread into the outputs).
    pub(crate) fn in_tile_rows(
        values: &'a [bf16],
        start: usize,
        (rows, cols): (usize, usize),
    ) -> View<'a> {
        let row_stride = 2 * amx::row_words(cols);
        let readable = start + rows.next_multiple_of(amx::MR) * row_stride;
        assert!(
            (values.as_ptr() as usize).is_multiple_of(64)
                && start.is_multiple_of(32)
                && readable <= values.len(),
            "bf16 gemm: {rows}×{cols} tile rows at {start} of {} values",
            values.len()
        );
        View {
            tile_rows: true,
            ..View::new(Values::Bf16(values), start, (rows, cols), (row_stride, 1))
        }
    }

    /// A row-major matrix over all of `values`.
    pub(crate) fn rows(values: Values<'a>, rows: usize, cols: usize) -> View<'a> {
        View::new(values, 0, (rows, cols), (cols, 1))
    }

    /// The bf16 bits of element `(r, c)`.
    #[inline(always)]
    pub(crate) fn bits(&self, r: usize, c: usize) -> u16 {
        self.values
            .bits(self.start + r * self.row_stride + c * self.col_stride)
    }
}

/// A cache line of words: the row of an AMX tile.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line([u32; 16]);

/// Words in a buffer that starts on a cache line. An AMX tile row that straddles two lines
/// loads at a third of the speed (measured on this project's Xeon: four tile loads took 80–120
/// ns unaligned against 19–31 aligned), so the packed operands are kept aligned.
#[derive(Default)]
pub(crate) struct Words {
    lines: Vec<Line>,
    len: usize,
}

impl Words {
    /// `len` zero words.
    pub(crate) fn zeroed(len: usize) -> Words {
        let mut words = Words::default();
        words.reset(len);
        words
    }

    /// Makes it `len` words long, every one zero (the allocation kept).
    pub(crate) fn reset(&mut self, len: usize) {
        self.lines.clear();
        self.lines.resize(len.div_ceil(16), Line([0; 16]));
        self.len = len;
    }

    /// Makes it `len` words long for a caller that writes every word before reading any: the
    /// words it held keep their old values, and lines are only ever added (zero), never taken
    /// away, so a thread's buffer that serves large and small blocks in turn (a sum of
    /// products, then attention's two products) is not zeroed again each time it grows back:
    /// those memsets were 2–4 % of a bf16 UNet step.
    pub(crate) fn fit_for_overwrite(&mut self, len: usize) {
        let lines = len.div_ceil(16);
        if self.lines.len() < lines {
            self.lines.resize(lines, Line([0; 16]));
        }
        self.len = len;
    }

    pub(crate) fn as_slice(&self) -> &[u32] {
        // SAFETY: the lines are `16·lines.len() ≥ len` initialised u32s, contiguous.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len)
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u32] {
        // SAFETY: as `as_slice`, borrowed mutably through `self`.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len)
        }
    }

    /// The words as bf16 values, two to a word (the first in the low half, as on a
    /// little-endian CPU a word's bytes are its two values').
    pub(crate) fn as_bf16(&self) -> &[bf16] {
        // SAFETY: `2·len` u16-sized values, each bit pattern a valid bf16, aligned (a u32's
        // alignment is a bf16's twice over).
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts(self.lines.as_ptr().cast(), 2 * self.len)
        }
    }

    /// [`Words::as_bf16`], mutably.
    pub(crate) fn as_bf16_mut(&mut self) -> &mut [bf16] {
        // SAFETY: as `as_bf16`, borrowed mutably through `self`.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), 2 * self.len)
        }
    }
}

/// `B` (`depth × cols`) as the microkernel reads it: strips of [`NR`] columns, each
/// `pairs` words per column in depth-pair order, zeros past the edges.
pub(crate) struct PackedB {
    words: Words,
    depth: usize,
    cols: usize,
    pairs: usize,
}

impl PackedB {
    /// Packs `b` (its rows are the product's depth), on rayon when `parallel`.
    pub(crate) fn pack(b: View<'_>, parallel: bool) -> PackedB {
        PackedB::pack_into(b, parallel, Words::default())
    }

    /// [`PackedB::pack`] into `words`, whatever they held (every word is written): a buffer
    /// kept from an earlier pack is reused instead of fresh memory, whose pages the kernel
    /// would clear first (`linear::MadePack`).
    pub(crate) fn pack_into(b: View<'_>, parallel: bool, mut words: Words) -> PackedB {
        let pairs = b.rows.div_ceil(2);
        let strips = b.cols.div_ceil(NR);
        words.fit_for_overwrite(strips * pairs * NR);
        let fill = |(strip, out): (usize, &mut [u32])| pack_strip(&b, strip * NR, out);
        if parallel {
            let chunks = words.as_mut_slice().par_chunks_mut(pairs * NR);
            chunks.enumerate().for_each(fill);
        } else {
            let chunks = words.as_mut_slice().chunks_mut(pairs * NR);
            chunks.enumerate().for_each(fill);
        }
        PackedB {
            words,
            depth: b.rows,
            cols: b.cols,
            pairs,
        }
    }

    /// Its buffer, for [`PackedB::pack_into`] to reuse.
    pub(crate) fn into_words(self) -> Words {
        self.words
    }

    /// The bytes a packed `depth × cols` holds.
    pub(crate) fn bytes_for(depth: usize, cols: usize) -> usize {
        cols.div_ceil(NR) * depth.div_ceil(2) * NR * 4
    }

    /// The bytes it holds.
    pub(crate) fn bytes(&self) -> usize {
        PackedB::bytes_for(self.depth, self.cols)
    }

    /// The depth and columns of the packed `B`.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.depth, self.cols)
    }

    /// The packed words as the product reads them.
    pub(crate) fn paired(&self) -> PairedB<'_> {
        PairedB {
            words: self.words.as_slice(),
            origin: 0,
            strip_stride: self.pairs * NR,
            pair_stride: NR,
            pairs: self.pairs,
            depth: self.depth,
            cols: self.cols,
        }
    }

    /// Swaps the two halves of every packed pair: the depth pairs wired the wrong way round, a
    /// mistake the tests must catch.
    #[cfg(test)]
    pub(crate) fn swap_pair_halves(&mut self) {
        for w in self.words.as_mut_slice() {
            *w = w.rotate_left(16);
        }
    }
}

/// `B` (`depth × cols`) in depth pairs, as the microkernel reads it: for column strip `s` and
/// pair `p`, [`NR`] words (one per column) from `origin + s·strip_stride + p·pair_stride`.
/// A [`PackedB`], or words laid out so by their maker (a convolution's input, whose pairs of
/// channels are rows of words and each tap a shifted origin).
#[derive(Clone, Copy)]
pub(crate) struct PairedB<'a> {
    words: &'a [u32],
    origin: usize,
    strip_stride: usize,
    pair_stride: usize,
    pairs: usize,
    depth: usize,
    cols: usize,
}

impl<'a> PairedB<'a> {
    /// Strips [`NR`] words apart within rows of `pair_stride` words, one row per pair of
    /// `depth`, from `origin`; refused (with its sizes) when a strip would read past `words`.
    pub(crate) fn rows(
        words: &'a [u32],
        origin: usize,
        (depth, cols): (usize, usize),
        pair_stride: usize,
    ) -> PairedB<'a> {
        let b = PairedB {
            words,
            origin,
            strip_stride: NR,
            pair_stride,
            pairs: depth.div_ceil(2),
            depth,
            cols,
        };
        let end = b.origin
            + (b.strips().max(1) - 1) * b.strip_stride
            + (b.pairs.max(1) - 1) * b.pair_stride
            + NR;
        assert!(
            depth == 0 || cols == 0 || end <= words.len(),
            "bf16 gemm: {depth}×{cols} in rows of {pair_stride} words from {origin} reads past \
             {} words",
            words.len()
        );
        b
    }

    fn strips(&self) -> usize {
        self.cols.div_ceil(NR)
    }

    /// The words of strip `s` for pairs `from..from + len`.
    fn strip(&self, s: usize, from: usize, len: usize) -> &'a [u32] {
        let base = self.origin + s * self.strip_stride + from * self.pair_stride;
        &self.words[base..base + (len - 1) * self.pair_stride + NR]
    }
}

/// Strip of `b` starting at column `first` into `out` (`pairs × NR` words, zeroed).
fn pack_strip(b: &View<'_>, first: usize, out: &mut [u32]) {
    if let (Values::Bf16(values), 1) = (b.values, b.row_stride) {
        return pack_weight_strip(values, b, first, out);
    }
    let columns = NR.min(b.cols - first);
    // The lanes past the last column are zeros (the buffer may hold an earlier pack's words).
    for lane in columns..NR {
        out.iter_mut()
            .skip(lane)
            .step_by(NR)
            .for_each(|word| *word = 0);
    }
    for lane in 0..columns {
        let c = first + lane;
        for (p, word) in out.iter_mut().skip(lane).step_by(NR).enumerate() {
            let k = 2 * p;
            let low = u32::from(b.bits(k, c));
            let high = if k + 1 < b.rows {
                u32::from(b.bits(k + 1, c))
            } else {
                0
            };
            *word = low | high << 16;
        }
    }
}

/// [`pack_strip`] for bf16 values whose depth is adjacent (a linear layer's weight as
/// stored, `[cols, depth]`): each column's pairs are two adjacent values, so the strip is a
/// transpose of its columns' rows, done 16 pairs at a time through a block that stays in L1
/// (value by value through [`View::bits`] this was 3 % of a bf16 UNet step's samples).
fn pack_weight_strip(values: &[bf16], b: &View<'_>, first: usize, out: &mut [u32]) {
    const BLOCK: usize = 16;
    let columns = NR.min(b.cols - first);
    let pairs = b.rows.div_ceil(2);
    for from in (0..pairs).step_by(BLOCK) {
        let n = BLOCK.min(pairs - from);
        let mut block = [[0u32; BLOCK]; NR];
        for (lane, words) in block.iter_mut().enumerate().take(columns) {
            let column = b.start + (first + lane) * b.col_stride;
            // An odd depth's last pair gets a zero high half from `copy_pairs`.
            let depth = 2 * from..(2 * (from + n)).min(b.rows);
            copy_pairs(&values[column..][depth], words);
        }
        for q in 0..n {
            for (lane, words) in block.iter().enumerate() {
                out[(from + q) * NR + lane] = words[q];
            }
        }
    }
}

/// Where the product goes: `rows × cols` values from `start` of `values`, rows
/// `row_stride` apart.
pub(crate) struct Out<'a> {
    pub(crate) values: &'a mut [MaybeUninit<f32>],
    pub(crate) start: usize,
    pub(crate) row_stride: usize,
}

impl Out<'_> {
    /// The `rows × cols` region the tasks write, refused (with its sizes) when it does not fit
    /// in the values.
    fn tile(self, rows: usize, cols: usize) -> Tile {
        assert!(
            self.start + (rows - 1) * self.row_stride + cols <= self.values.len()
                && cols <= self.row_stride,
            "bf16 gemm: {rows}×{cols} output at {} (rows {} apart) in {} values",
            self.start,
            self.row_stride,
            self.values.len()
        );
        Tile {
            ptr: self
                .values
                .as_mut_ptr()
                .cast::<f32>()
                .wrapping_add(self.start),
            row_stride: self.row_stride,
        }
    }
}

/// `out ← α·a·b`, or `out ← out + α·a·b` when `accumulate`; on rayon when `parallel`.
/// `a` is `rows × depth` with its columns adjacent (`col_stride` 1).
///
/// # Panics
///
/// When the CPU lacks AVX512-BF16 ([`available`]), or the shapes or buffers do not fit.
///
/// # Safety
///
/// When `accumulate`, every value of `out`'s `rows × cols` region has been written.
#[allow(unsafe_code)]
pub(crate) unsafe fn matmul(
    out: Out<'_>,
    a: View<'_>,
    b: PairedB<'_>,
    alpha: f32,
    accumulate: bool,
    parallel: bool,
) {
    // SAFETY: the caller's promise.
    unsafe { matmul_on(Kernel::best(), out, a, b, (alpha, accumulate), parallel) }
}

/// [`matmul`] on the given microkernel.
///
/// # Safety
///
/// As [`matmul`]; the CPU runs `kernel`.
#[allow(unsafe_code)]
unsafe fn matmul_on(
    kernel: Kernel,
    out: Out<'_>,
    a: View<'_>,
    b: PairedB<'_>,
    (alpha, accumulate): (f32, bool),
    parallel: bool,
) {
    assert!(available(), "bf16 gemm on a CPU without AVX512-BF16");
    assert!(
        kernel == Kernel::Vector || amx::supported(),
        "bf16 gemm on AMX tiles on a CPU without them"
    );
    assert!(
        a.cols == b.depth && a.col_stride == 1,
        "bf16 gemm: A is {}×{} (column stride {}), B {}×{}",
        a.rows,
        a.cols,
        a.col_stride,
        b.depth,
        b.cols
    );
    let (rows, cols) = (a.rows, b.cols);
    if rows == 0 || cols == 0 {
        return;
    }
    let c = out.tile(rows, cols);
    let job = Job {
        a,
        b,
        c,
        alpha,
        accumulate,
        finish: None,
    };
    // SAFETY: the output holds the product's region (asserted by `tile`), written before when
    // `accumulate` (the caller's promise); the CPU runs `kernel` (asserted above).
    unsafe { job.run(kernel, b.strips(), parallel) };
}

/// `out ← epilogue(a·b)`, in bf16 (see [`Epilogue`]; `out` holds `rows ×
/// epilogue.width(cols)` values, row-major): each block of sums is finished as it leaves the
/// tiles or the registers ([`vector`]), or (a GEGLU whose halves are not whole strips) in a
/// pass over the f32 product. On rayon when `parallel`.
///
/// # Panics
///
/// As [`matmul`]; when `out`, the bias or the residual do not fit the product.
pub(crate) fn matmul_to_bf16(
    out: &mut [MaybeUninit<bf16>],
    a: View<'_>,
    b: PairedB<'_>,
    epilogue: Epilogue<'_>,
    parallel: bool,
) {
    matmul_to_bf16_on(Kernel::best(), out, a, b, epilogue, parallel)
}

/// [`matmul_to_bf16`] on the given microkernel (one the CPU runs).
#[allow(unsafe_code)]
fn matmul_to_bf16_on(
    kernel: Kernel,
    out: &mut [MaybeUninit<bf16>],
    a: View<'_>,
    b: PairedB<'_>,
    epilogue: Epilogue<'_>,
    parallel: bool,
) {
    let (rows, cols) = (a.rows, b.cols);
    let Some(out) = bf16_output(out, &epilogue, (rows, cols)) else {
        return;
    };
    // The tiles finish a GEGLU's blocks two strips at a time, a sum's and its gate's.
    let gate_strips = epilogue.gate_offset(cols).map(|half| half / NR);
    let in_strips = epilogue
        .gate_offset(cols)
        .is_none_or(|half| half.is_multiple_of(NR));
    let mut sums: Box<[MaybeUninit<f32>]> = Box::new([]);
    if kernel == Kernel::Vector && in_strips && a.col_stride == 1 && b.pairs > 0 {
        check_terms(&[(a, b)]);
        let finish = Finish {
            epilogue,
            out,
            gate_strips,
        };
        let unused = Tile {
            ptr: std::ptr::null_mut(),
            row_stride: cols,
        };
        // The products' sums never leave the registers but into the epilogue: no f32 product
        // crosses memory, and no pass finishes it after (a fifth of the feed-forward's time).
        assert!(available(), "bf16 gemm on a CPU without AVX512-BF16");
        // SAFETY: the CPU has AVX512-BF16 (asserted just above); `A` fits `B` and has adjacent
        // columns (checked above); with a finish the sums go only to `out`, never to the unused
        // tile.
        unsafe { vector::sum_of_products(unused, &[(a, b)], parallel, Some(finish)) };
        return;
    }
    if kernel == Kernel::Tiles && in_strips {
        // Partial sums cross memory only where the depth takes more than one pass.
        if b.pairs > amx::KC {
            sums = unfilled::<f32>(rows * cols);
        }
        let job = Job {
            a,
            b,
            c: Tile {
                ptr: sums.as_mut_ptr().cast(),
                row_stride: cols,
            },
            alpha: 1.0,
            accumulate: false,
            finish: Some(Finish {
                epilogue,
                out,
                gate_strips,
            }),
        };
        let strips = b.strips() / if gate_strips.is_some() { 2 } else { 1 };
        // SAFETY: the partial sums hold the product's region when the depth takes more than
        // one pass (the only time they are touched); the CPU runs the tiles (`kernel`).
        unsafe { job.run(kernel, strips, parallel) };
        return;
    }
    sums = unfilled::<f32>(rows * cols);
    let into = Out {
        values: &mut sums,
        start: 0,
        row_stride: cols,
    };
    // SAFETY: nothing is accumulated.
    #[allow(unsafe_code)]
    unsafe {
        matmul_on(kernel, into, a, b, (1.0, false), parallel)
    };
    // SAFETY: the product wrote every sum.
    #[allow(unsafe_code)]
    unsafe {
        finish_after(&mut sums, (rows, cols), (epilogue, out), parallel)
    };
}

/// `out` as the tasks of a product finished by `epilogue` write it; none when the product is
/// empty.
///
/// # Panics
///
/// When `out`, or the epilogue's bias or residual, do not fit the `rows × cols` product.
fn bf16_output(
    out: &mut [MaybeUninit<bf16>],
    epilogue: &Epilogue<'_>,
    (rows, cols): (usize, usize),
) -> Option<BfOut> {
    epilogue.check(rows, cols);
    let len = epilogue.output_len(rows, cols);
    assert!(
        out.len() == len,
        "bf16 gemm: {} values for an output of {len}",
        out.len()
    );
    (rows > 0 && cols > 0 && len > 0).then(|| BfOut::new(out, epilogue.row_stride(cols)))
}

/// Finishes the `rows × cols` f32 `sums` into `out` in one pass (on rayon when `parallel`),
/// where the product ran on vectors.
///
/// # Safety
///
/// Every sum was written.
#[allow(unsafe_code)]
unsafe fn finish_after(
    sums: &mut [MaybeUninit<f32>],
    (rows, cols): (usize, usize),
    (epilogue, out): (Epilogue<'_>, BfOut),
    parallel: bool,
) {
    let width = epilogue.width(cols);
    let at = Tile {
        ptr: sums.as_mut_ptr().cast(),
        row_stride: cols,
    };
    let finish = |first: usize| {
        let rows = first..(first + ROWS_PER_FINISH).min(rows);
        let sums = Sums {
            at: at.at(first, 0).cast_const(),
            stride: cols,
        };
        let gates = epilogue.gate_offset(cols).map(|half| Sums {
            at: at.at(first, half).cast_const(),
            stride: cols,
        });
        // SAFETY: the product wrote every sum; each call finishes its own rows.
        #[allow(unsafe_code)]
        unsafe {
            epilogue.finish(out, rows, (0, width), sums, gates)
        };
    };
    let tasks = rows.div_ceil(ROWS_PER_FINISH);
    if parallel {
        (0..tasks)
            .into_par_iter()
            .for_each(|t| finish(t * ROWS_PER_FINISH));
    } else {
        (0..tasks).for_each(|t| finish(t * ROWS_PER_FINISH));
    }
}

/// Rows per task of the pass that finishes a product on vectors.
const ROWS_PER_FINISH: usize = 16;

/// A product's bf16 output and how its sums become it.
#[derive(Clone, Copy)]
struct Finish<'a> {
    epilogue: Epilogue<'a>,
    out: BfOut,
    /// For a GEGLU: the strips from a sum's to its gate's.
    gate_strips: Option<usize>,
}

/// `out ← epilogue(Σ A_t·B_t)` in bf16 over `terms`, whose shapes agree (`rows × depth` by
/// `depth × cols`): a convolution's taps. The sum stays in the AMX tiles
/// ([`amx::sum_of_products`]) or the vector registers ([`vector::sum_of_products`]) through
/// every term and each block of sums is finished as it leaves them.
///
/// # Panics
///
/// As [`matmul`]; when `terms` is empty or their shapes differ; when `out`, or the epilogue's
/// bias or residual, do not fit.
pub(crate) fn matmul_sum_to_bf16(
    out: &mut [MaybeUninit<bf16>],
    terms: &[(View<'_>, PairedB<'_>)],
    epilogue: Epilogue<'_>,
    parallel: bool,
) {
    matmul_sum_to_bf16_on(Kernel::best(), out, terms, epilogue, parallel)
}

/// [`matmul_sum_to_bf16`] on the given microkernel (one the CPU runs).
#[allow(unsafe_code)]
fn matmul_sum_to_bf16_on(
    kernel: Kernel,
    out: &mut [MaybeUninit<bf16>],
    terms: &[(View<'_>, PairedB<'_>)],
    epilogue: Epilogue<'_>,
    parallel: bool,
) {
    let (a0, b0) = *terms.first().expect("bf16 gemm: a sum of no products");
    let (rows, cols) = (a0.rows, b0.cols);
    assert!(
        epilogue.gate_offset(cols).is_none(),
        "bf16 gemm: a sum of products is not gated"
    );
    let Some(out) = bf16_output(out, &epilogue, (rows, cols)) else {
        return;
    };
    if a0.cols > 0 {
        assert!(available(), "bf16 gemm on a CPU without AVX512-BF16");
        assert!(
            kernel == Kernel::Vector || amx::supported(),
            "bf16 gemm on AMX tiles on a CPU without them"
        );
        check_terms(terms);
        let finish = Finish {
            epilogue,
            out,
            gate_strips: None,
        };
        let unused = Tile {
            ptr: std::ptr::null_mut(),
            row_stride: cols,
        };
        // SAFETY: the CPU runs `kernel` (asserted above), the terms' shapes agree (checked
        // above); with a finish the sums go only to `out`, never to the unused tile.
        unsafe {
            match kernel {
                Kernel::Tiles => amx::sum_of_products(unused, terms, parallel, Some(finish)),
                Kernel::Vector => vector::sum_of_products(unused, terms, parallel, Some(finish)),
            }
        };
        return;
    }
    let mut sums = unfilled::<f32>(rows * cols);
    let into = Out {
        values: &mut sums,
        start: 0,
        row_stride: cols,
    };
    matmul_sum_on(kernel, into, terms, parallel);
    // SAFETY: the sum of the products wrote every sum.
    unsafe { finish_after(&mut sums, (rows, cols), (epilogue, out), parallel) };
}

/// Refuses (with their shapes) terms of a sum whose shapes differ, or whose `A` is not
/// row-major.
fn check_terms(terms: &[(View<'_>, PairedB<'_>)]) {
    let (a0, b0) = terms[0];
    assert!(
        terms
            .iter()
            .all(|(a, b)| (a.rows, a.cols, b.depth, b.cols, b.pair_stride)
                == (a0.rows, a0.cols, b0.depth, b0.cols, b0.pair_stride)
                && a.col_stride == 1)
            && a0.cols == b0.depth,
        "bf16 gemm: the terms of a sum differ in shape, or A ({}×{}) does not fit B ({}×{})",
        a0.rows,
        a0.cols,
        b0.depth,
        b0.cols
    );
}

/// `out ← Σ A_t·B_t` (f32) on the given microkernel (one the CPU runs): the sum stays in the
/// tiles ([`amx::sum_of_products`]) or the registers ([`vector::sum_of_products`]) through
/// every term.
fn matmul_sum_on(kernel: Kernel, out: Out<'_>, terms: &[(View<'_>, PairedB<'_>)], parallel: bool) {
    assert!(available(), "bf16 gemm on a CPU without AVX512-BF16");
    let (a0, b0) = *terms.first().expect("bf16 gemm: a sum of no products");
    check_terms(terms);
    if a0.rows == 0 || b0.cols == 0 || a0.cols == 0 {
        for (i, (a, b)) in terms.iter().enumerate() {
            let into = Out {
                values: &mut *out.values,
                start: out.start,
                row_stride: out.row_stride,
            };
            // SAFETY: the first term writes every value of the region; the later ones add.
            #[allow(unsafe_code)]
            unsafe {
                matmul_on(Kernel::Vector, into, *a, *b, (1.0, i > 0), parallel)
            };
        }
        return;
    }
    assert!(
        a0.cols == b0.depth,
        "bf16 gemm: A is {}×{}, B {}×{}",
        a0.rows,
        a0.cols,
        b0.depth,
        b0.cols
    );
    let (rows, cols) = (a0.rows, b0.cols);
    let c = out.tile(rows, cols);
    assert!(
        kernel == Kernel::Vector || amx::supported(),
        "bf16 gemm on AMX tiles on a CPU without them"
    );
    // SAFETY: the CPU has AVX512-BF16 (asserted above) and runs `kernel` (asserted just
    // above); the shapes agree and the output holds their region (asserted above).
    #[allow(unsafe_code)]
    unsafe {
        match kernel {
            Kernel::Tiles => amx::sum_of_products(c, terms, parallel, None),
            Kernel::Vector => vector::sum_of_products(c, terms, parallel, None),
        }
    };
}

/// The output as the tasks write it: a raw pointer, since tasks share its rows.
#[derive(Clone, Copy)]
struct Tile {
    ptr: *mut f32,
    row_stride: usize,
}

impl Tile {
    /// Where row `r`, column `c` of the output is (a method, so that closures capture the
    /// whole `Tile`, which is `Sync`, rather than its pointer).
    fn at(&self, r: usize, c: usize) -> *mut f32 {
        self.ptr.wrapping_add(r * self.row_stride + c)
    }

    fn row_stride(&self) -> usize {
        self.row_stride
    }
}

// SAFETY: tasks write disjoint tiles through the pointer (see `matmul`).
#[allow(unsafe_code)]
unsafe impl Send for Tile {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for Tile {}

/// One product's operands, shared by its tasks.
struct Job<'a> {
    a: View<'a>,
    b: PairedB<'a>,
    c: Tile,
    alpha: f32,
    accumulate: bool,
    /// Where the sums go in bf16 (on the tiles only): `c` then holds only partial sums, of
    /// depth blocks before the last.
    finish: Option<Finish<'a>>,
}

thread_local! {
    /// Each thread's packed block of `A`, reused from task to task.
    static PACKED_A: RefCell<Words> = RefCell::new(Words::default());
}

impl Job<'_> {
    /// Runs the product as tasks over blocks of rows and groups of the first `strips` column
    /// strips (a GEGLU's tasks take each strip with its gate's).
    ///
    /// # Safety
    ///
    /// The output holds the product's region, written before when `accumulate`; the CPU runs
    /// `kernel`, and `finish` comes only with the tiles.
    #[allow(unsafe_code)]
    unsafe fn run(&self, kernel: Kernel, strips: usize, parallel: bool) {
        let rows = self.a.rows;
        // Enough tasks for every thread: the column strips are shared out too when there are
        // few row blocks (a text encoder's 77 tokens, attention's blocks of keys).
        let wanted = if parallel {
            4 * rayon::current_num_threads()
        } else {
            1
        };
        let rows_per_task = kernel.rows_per_task(rows, (self.b.strips(), self.b.pairs), wanted);
        let row_blocks = rows.div_ceil(rows_per_task);
        let column_groups = wanted.div_ceil(row_blocks).clamp(1, strips);
        let strips_per_group = strips.div_ceil(column_groups);
        let tasks = row_blocks * column_groups;
        let run = |task: usize| {
            let (block, group) = (task / column_groups, task % column_groups);
            let strips = group * strips_per_group..((group + 1) * strips_per_group).min(strips);
            let rows = block * rows_per_task..((block + 1) * rows_per_task).min(rows);
            // SAFETY: the tasks' tiles of C are disjoint (their rows or strips differ), inside
            // the output, and written before read unless `accumulate` says they were; the CPU
            // runs `kernel` (the caller's promises).
            unsafe {
                match kernel {
                    Kernel::Vector => self.block(rows, strips),
                    Kernel::Tiles => self.block_on_tiles(rows, strips),
                }
            };
        };
        if parallel {
            (0..tasks).into_par_iter().for_each(run);
        } else {
            (0..tasks).for_each(run);
        }
    }

    /// The tiles of `rows` × the columns of `strips`, depth block by depth block.
    ///
    /// # Safety
    ///
    /// As `matmul`'s task: the tile is this task's alone, and the CPU has AVX512-BF16.
    #[allow(unsafe_code)]
    unsafe fn block(&self, rows: std::ops::Range<usize>, strips: std::ops::Range<usize>) {
        let pairs = self.b.pairs;
        PACKED_A.with(|packed| {
            let packed = &mut *packed.borrow_mut();
            let mut from = 0;
            while from < pairs {
                let len = KC.min(pairs - from);
                pack_a(&self.a, rows.clone(), (from, len), (MR, len), packed);
                for s in strips.clone() {
                    let b = self.b.strip(s, from, len);
                    let cols = NR.min(self.b.cols - s * NR);
                    for (i, a) in packed.as_slice().chunks_exact(MR * len).enumerate() {
                        let first = rows.start + i * MR;
                        let tile_rows = MR.min(rows.end - first);
                        let c = self.c.ptr.wrapping_add(first * self.c.row_stride + s * NR);
                        let accumulate = self.accumulate || from > 0;
                        let b = (b, self.b.pair_stride);
                        let (shape, scale) = ((tile_rows, cols), (self.alpha, accumulate));
                        let row_stride = self.c.row_stride;
                        // SAFETY: `a` holds MR rows of `len` pairs and `b` `len` pairs of NR
                        // lanes, `pair_stride` apart; the tile (`tile_rows × cols` from `c`) is
                        // inside the output and this task's; earlier depth blocks wrote it when
                        // `from > 0`. A strip of 16 columns or fewer takes the half-width
                        // kernel (attention's heads of 40: 48 lanes computed instead of 64).
                        unsafe {
                            if cols <= 16 {
                                micro::tile::<1>(len, a, b, c, row_stride, shape, scale)
                            } else {
                                micro::tile::<NRV>(len, a, b, c, row_stride, shape, scale)
                            }
                        };
                    }
                }
                from += len;
            }
        });
    }
}

/// Packs rows `rows` of `a`, depth pairs `from..from + len`, into `packed`: groups of
/// `group` rows (zero rows past the end), each row's `len` pairs together from a multiple of
/// `stride` words (zeros after them).
fn pack_a(
    a: &View<'_>,
    rows: std::ops::Range<usize>,
    (from, len): (usize, usize),
    (group, stride): (usize, usize),
    packed: &mut Words,
) {
    let (real, groups) = (rows.len(), rows.len().div_ceil(group));
    if stride == len {
        // Every word of the real rows is written: only the padding rows need zeros.
        packed.fit_for_overwrite(groups * group * stride);
        packed.as_mut_slice()[real * stride..].fill(0);
    } else {
        packed.reset(groups * group * stride);
    }
    pack_a_into(a, rows, (from, len), stride, packed.as_mut_slice());
}

/// [`pack_a`] into `packed`, zeroed and long enough for the rows.
fn pack_a_into(
    a: &View<'_>,
    rows: std::ops::Range<usize>,
    (from, len): (usize, usize),
    stride: usize,
    packed: &mut [u32],
) {
    let k0 = 2 * from;
    let k1 = (2 * (from + len)).min(a.cols);
    for (i, r) in rows.enumerate() {
        let out = &mut packed[i * stride..i * stride + len];
        let start = a.start + r * a.row_stride;
        match a.values {
            Values::Bf16(v) => copy_pairs(&v[start + k0..start + k1], out),
            Values::F32(v) => narrow_pairs(&v[start + k0..start + k1], out),
        }
    }
}

/// `values` into `out` two to a word (the first in the low half; a zero high half after an
/// odd last). On a little-endian CPU a word's bytes are its two values' own, so it is one
/// copy (the weights of a convolution on small maps, packed at every call, took a fifth of
/// its time word by word).
pub(crate) fn copy_pairs(values: &[bf16], out: &mut [u32]) {
    let words = values.len().div_ceil(2);
    assert!(out.len() >= words, "bf16 gemm: pairs into too few words");
    #[cfg(target_endian = "little")]
    {
        // SAFETY: `out` holds at least `values.len()` halves (asserted above); a byte copy
        // needs no alignment, and every bit pattern is a valid u32.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr().cast::<u8>(),
                out.as_mut_ptr().cast::<u8>(),
                2 * values.len(),
            )
        };
        if !values.len().is_multiple_of(2) {
            out[words - 1] &= 0xFFFF;
        }
    }
    #[cfg(not(target_endian = "little"))]
    for (word, pair) in out.iter_mut().zip(values.chunks(2)) {
        let high = pair.get(1).map_or(0, |h| u32::from(h.to_bits()));
        *word = u32::from(pair[0].to_bits()) | high << 16;
    }
}

/// `values` (f32) rounded to bf16 in pairs into `out`, a zero high half after an odd last.
fn narrow_pairs(values: &[f32], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX512-BF16, checked just above.
        #[allow(unsafe_code)]
        unsafe {
            micro::narrow_pairs(values, out)
        };
        return;
    }
    for (word, pair) in out.iter_mut().zip(values.chunks(2)) {
        let high = pair
            .get(1)
            .map_or(0, |h| u32::from(bf16::from_f32(*h).to_bits()));
        *word = u32::from(bf16::from_f32(pair[0]).to_bits()) | high << 16;
    }
}

/// The AVX512-BF16 code.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod micro {
    use super::{MR, NR, NRV};
    use std::arch::x86_64::*;

    /// `C ← α·A·B (+ C)` for one `MR × 16·V` tile, `rows × cols` of it stored: `a` holds MR
    /// rows of `len` pairs, `b` `len` pairs of NR lanes (the first `16·V` read), `stride`
    /// words apart.
    ///
    /// # Safety
    ///
    /// The CPU has AVX512-BF16; `c` is valid for `rows` rows (`row_stride` apart) of `cols`
    /// values, written before when `accumulate`; `rows ≤ MR`, `cols ≤ NR`.
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn tile<const V: usize>(
        len: usize,
        a: &[u32],
        (b, stride): (&[u32], usize),
        c: *mut f32,
        row_stride: usize,
        (rows, cols): (usize, usize),
        (alpha, accumulate): (f32, bool),
    ) {
        assert!(len > 0 && a.len() >= MR * len && b.len() >= (len - 1) * stride + NR);
        assert!(rows <= MR && cols <= 16 * V && V <= NRV);
        let (a, b) = (a.as_ptr(), b.as_ptr());
        let pair_of_b = |p: usize| -> [__m512bh; V] {
            // SAFETY: pair p of the strip, in bounds (asserted above).
            std::array::from_fn(|v| unsafe {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    b.add(p * stride + 16 * v).cast(),
                ))
            })
        };
        let pair_of_a = |r: usize, p: usize| -> __m512bh {
            // SAFETY: row r's pair p, in bounds (asserted above).
            let pair = unsafe { *a.add(r * len + p) };
            std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair as i32))
        };
        // The accumulators start from the first pair's products: started from an array of
        // zeros they were zeroed through a `memset` on the stack at every call (2 % of a bf16
        // UNet step, attention's first product being 20 pairs deep).
        let (zero, first) = (_mm512_setzero_ps(), pair_of_b(0));
        let mut acc: [[__m512; V]; MR] = std::array::from_fn(|r| {
            let av = pair_of_a(r, 0);
            first.map(|bv| _mm512_dpbf16_ps(zero, av, bv))
        });
        for p in 1..len {
            let bv = pair_of_b(p);
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let av = pair_of_a(r, p);
                for (acc, bv) in acc_row.iter_mut().zip(bv) {
                    *acc = _mm512_dpbf16_ps(*acc, av, bv);
                }
            }
        }
        let alpha = _mm512_set1_ps(alpha);
        for (r, acc_row) in acc.iter().enumerate().take(rows) {
            for (v, acc) in acc_row.iter().enumerate() {
                let first = 16 * v;
                if first >= cols {
                    break;
                }
                let mask: __mmask16 = crate::kernels::lanes(cols - first);
                // SAFETY: the lanes under `mask` are inside the tile (the caller's promise).
                unsafe {
                    let ptr = c.add(r * row_stride + first);
                    let value = if accumulate {
                        _mm512_fmadd_ps(*acc, alpha, _mm512_maskz_loadu_ps(mask, ptr))
                    } else {
                        _mm512_mul_ps(*acc, alpha)
                    };
                    _mm512_mask_storeu_ps(ptr, mask, value);
                }
            }
        }
    }

    /// `values` rounded to bf16 (nearest even, `vcvtneps2bf16`: subnormal inputs become zero)
    /// in pairs into `out`.
    ///
    /// # Safety
    ///
    /// The CPU has AVX512-BF16.
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn narrow_pairs(values: &[f32], out: &mut [u32]) {
        assert!(out.len() >= values.len().div_ceil(2));
        let mut chunks = values.chunks_exact(16);
        let mut words = out.chunks_exact_mut(8);
        for (chunk, words) in (&mut chunks).zip(&mut words) {
            // SAFETY: 16 values in, 8 words (16 bf16) out.
            unsafe {
                let wide = _mm512_loadu_ps(chunk.as_ptr());
                let narrow: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(wide));
                _mm256_storeu_si256(words.as_mut_ptr().cast(), narrow);
            }
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mask: __mmask16 = (1u16 << rest.len()) - 1;
            let mut tail = [0u32; 8];
            // SAFETY: the masked load reads only `rest`; 8 words out into `tail`.
            unsafe {
                let wide = _mm512_maskz_loadu_ps(mask, rest.as_ptr());
                let narrow: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(wide));
                _mm256_storeu_si256(tail.as_mut_ptr().cast(), narrow);
            }
            let words = &mut out[values.len() / 16 * 8..];
            let n = rest.len().div_ceil(2);
            words[..n].copy_from_slice(&tail[..n]);
        }
    }
}

/// Stand-ins off x86-64, where [`available`] is false and nothing calls them.
#[cfg(not(target_arch = "x86_64"))]
#[allow(unsafe_code)]
mod micro {
    pub(super) unsafe fn tile<const V: usize>(
        _: usize,
        _: &[u32],
        _: (&[u32], usize),
        _: *mut f32,
        _: usize,
        _: (usize, usize),
        _: (f32, bool),
    ) {
        unreachable!("bf16 gemm without AVX512-BF16");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// One product's sizes and wiring.
    #[derive(Clone, Copy, Debug)]
    struct Case {
        rows: usize,
        depth: usize,
        cols: usize,
        /// `A` and `B` given in bf16 (else f32, narrowed while packing).
        a_bf16: bool,
        /// `B` stored `[cols, depth]`, as a linear layer's weight (else `[depth, cols]`).
        b_as_weight: bool,
        accumulate: bool,
        parallel: bool,
    }

    /// How far a product is from the exact product of its bf16-rounded inputs and from the
    /// exact product of the unrounded ones, each as the worst ratio of the difference to the
    /// element's magnitude `Σ|a·b|` (plus the starting value's when accumulating).
    struct Errors {
        rounded: f64,
        unrounded: f64,
    }

    fn uniform(n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn round(values: &[f32]) -> Vec<f32> {
        values.iter().map(|v| bf16::from_f32(*v).to_f32()).collect()
    }

    /// Runs `case` through the kernel (`B` packed, then given to `rewire` to mis-wire it or
    /// not) with α = 0.75, the output at an offset and with a wider row stride than its
    /// columns.
    fn run(kernel: Kernel, case: Case, seed: u64, rewire: fn(&mut PackedB)) -> Errors {
        let Case {
            rows, depth, cols, ..
        } = case;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (a, b, start) = (
            uniform(rows * depth, &mut rng),
            uniform(depth * cols, &mut rng),
            uniform(rows * cols, &mut rng),
        );
        // b[k][n] as a function, whichever way it is stored.
        let b_at = |b: &[f32], k: usize, n: usize| {
            if case.b_as_weight {
                b[n * depth + k]
            } else {
                b[k * cols + n]
            }
        };
        let a_halves: Vec<bf16> = a.iter().map(|v| bf16::from_f32(*v)).collect();
        let a_view = if case.a_bf16 {
            View::rows(Values::Bf16(&a_halves), rows, depth)
        } else {
            View::rows(Values::F32(&a), rows, depth)
        };
        let strides = if case.b_as_weight {
            (1, depth)
        } else {
            (cols, 1)
        };
        // B in bf16 too when A is (a linear layer's weight packed from its bf16 rows).
        let b_halves: Vec<bf16> = b.iter().map(|v| bf16::from_f32(*v)).collect();
        let b_values = if case.a_bf16 {
            Values::Bf16(&b_halves)
        } else {
            Values::F32(&b)
        };
        let mut packed = PackedB::pack(
            View::new(b_values, 0, (depth, cols), strides),
            case.parallel,
        );
        rewire(&mut packed);
        // Unscaled products too: the tiles store whole unscaled blocks straight to the output.
        let alpha = if seed.is_multiple_of(2) { 1.0 } else { 0.75f32 };
        let (offset, row_stride) = (3, cols + 5);
        let mut out = vec![MaybeUninit::new(f32::NAN); offset + rows * row_stride];
        for r in 0..rows {
            for n in 0..cols {
                out[offset + r * row_stride + n] = MaybeUninit::new(start[r * cols + n]);
            }
        }
        let target = Out {
            values: &mut out,
            start: offset,
            row_stride,
        };
        // SAFETY: every value of the output region was written just above.
        #[allow(unsafe_code)]
        unsafe {
            matmul_on(
                kernel,
                target,
                a_view,
                packed.paired(),
                (alpha, case.accumulate),
                case.parallel,
            )
        };
        let (a_rounded, b_rounded) = (round(&a), round(&b));
        let mut errors = Errors {
            rounded: 0.0,
            unrounded: 0.0,
        };
        for r in 0..rows {
            for n in 0..cols {
                let (mut exact, mut of_rounded, mut magnitude) = (0f64, 0f64, 0f64);
                for k in 0..depth {
                    let (x, y) = (a[r * depth + k] as f64, b_at(&b, k, n) as f64);
                    let (xr, yr) = (a_rounded[r * depth + k] as f64, b_at(&b_rounded, k, n));
                    exact += x * y;
                    of_rounded += xr * yr as f64;
                    magnitude += (x * y).abs();
                }
                let alpha = alpha as f64;
                let (mut exact, mut of_rounded, mut magnitude) =
                    (alpha * exact, alpha * of_rounded, alpha * magnitude);
                if case.accumulate {
                    let s = start[r * cols + n] as f64;
                    (exact, of_rounded, magnitude) =
                        (exact + s, of_rounded + s, magnitude + s.abs());
                }
                // SAFETY: the region was written before the product, which wrote it again.
                #[allow(unsafe_code)]
                let ours = unsafe { out[offset + r * row_stride + n].assume_init() } as f64;
                let magnitude = magnitude + 1e-30;
                errors.rounded = errors.rounded.max((ours - of_rounded).abs() / magnitude);
                errors.unrounded = errors.unrounded.max((ours - exact).abs() / magnitude);
            }
        }
        // Nothing outside the region was touched: the gaps between rows stay NaN.
        for r in 0..rows {
            for n in cols..row_stride.min(out.len() - offset - r * row_stride) {
                // SAFETY: every value of `out` was written when it was made.
                #[allow(unsafe_code)]
                let gap = unsafe { out[offset + r * row_stride + n].assume_init() };
                assert!(gap.is_nan(), "{case:?}: wrote past the row's end");
            }
        }
        errors
    }

    /// The shapes: one row and one column; depths odd, under one pair, across several of
    /// the kernel's depth blocks; columns off the vector width; rows across several tasks
    /// and partial tiles.
    fn cases() -> Vec<Case> {
        let shapes = [
            (1, 1, 1),
            (1, 2, 16),
            (3, 5, 7),
            (13, 33, 65),
            (12, 32, 32),
            (97, 257, 33),
            (200, 320, 96),
            (5, 1001, 3),
            (130, 64, 300),
            (2, 600, 47),
            // The tile kernel's edges: whole tiles, one row or column past them, depths
            // across its blocks with and without a ragged last tile.
            (32, 64, 32),
            (33, 32, 17),
            (16, 800, 16),
            (64, 1600, 64),
            (40, 40, 80),
            // `B` larger than the L2 cache: the tile kernel takes more rows per task.
            (300, 520, 1056),
            // Three depth passes on the tiles, the last ragged (1 300 pairs: 448, 448, 404).
            (20, 2600, 40),
        ];
        let mut cases = Vec::new();
        for (i, (rows, depth, cols)) in shapes.into_iter().enumerate() {
            let bit = |n: usize| (i >> n) & 1 == 1;
            cases.push(Case {
                rows,
                depth,
                cols,
                a_bf16: bit(0),
                b_as_weight: !bit(1),
                accumulate: bit(2),
                parallel: !bit(0),
            });
            cases.push(Case {
                a_bf16: !bit(0),
                b_as_weight: bit(1),
                accumulate: !bit(2),
                parallel: bit(0),
                ..cases[cases.len() - 1]
            });
        }
        cases
    }

    #[test]
    fn products_equal_the_exact_product_of_the_bf16_rounded_inputs() {
        if !available() {
            eprintln!("no AVX512-BF16 on this CPU: the kernel is not run");
            return;
        }
        for kernel in Kernel::all_supported() {
            let (mut worst_rounded, mut worst_unrounded) = (0f64, 0f64);
            for (seed, case) in cases().into_iter().enumerate() {
                let errors = run(kernel, case, seed as u64, |_| {});
                // f32 accumulation of exact bf16 products: rounding errors of order depth·2⁻²⁴.
                assert!(
                    errors.rounded < 1e-5,
                    "{kernel:?} {case:?}: {}",
                    errors.rounded
                );
                // bf16 inputs: each within 2⁻⁹ relative, so products within about 2⁻⁸.
                assert!(
                    errors.unrounded < 1e-2,
                    "{kernel:?} {case:?}: {}",
                    errors.unrounded
                );
                worst_rounded = worst_rounded.max(errors.rounded);
                worst_unrounded = worst_unrounded.max(errors.unrounded);
            }
            println!("{kernel:?}: worst {worst_rounded:e} of the rounded inputs' product, {worst_unrounded:e} of the unrounded");
        }
    }

    /// `epilogue` of the `rows × cols` f32 `sums`, rounded to bf16, and each value's
    /// magnitude (`magnitude` of its sums, plus the bias's and residual's).
    fn finished_after(
        epilogue: Epilogue<'_>,
        (sums, magnitude): (&[f32], &[f32]),
        rows: usize,
        cols: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let width = epilogue.width(cols);
        let (mut values, mut magnitudes) = (Vec::new(), Vec::new());
        for r in 0..rows {
            for c in 0..width {
                let (at, bias_at) = (r * cols + c, |c: usize| c);
                let (value, size) = match epilogue {
                    Epilogue::Narrow { bias, residual } => {
                        let b = bias.map_or(0.0, |b| b[bias_at(c)]);
                        let res = residual.map_or(0.0, |v| match v {
                            Values::F32(v) => v[at],
                            Values::Bf16(v) => v[at].to_f32(),
                        });
                        (sums[at] + b + res, magnitude[at] + b.abs() + res.abs())
                    }
                    Epilogue::Geglu { bias } => {
                        let (b_a, b_g) = bias.map_or((0.0, 0.0), |b| (b[c], b[c + width]));
                        let gate = crate::kernels::geglu::gelu(sums[at + width] + b_g);
                        let size = (magnitude[at] + b_a.abs()) * (1.0 + magnitude[at + width]);
                        ((sums[at] + b_a) * gate, size)
                    }
                    Epilogue::Conv { .. } => unreachable!("the convolutions' tests land theirs"),
                };
                values.push(bf16::from_f32(value).to_f32());
                magnitudes.push(size);
            }
        }
        (values, magnitudes)
    }

    #[test]
    fn products_finished_in_bf16_equal_the_f32_product_finished_after() {
        // Bias and residual added, or GEGLU, as the sums are rounded: within a bf16 rounding
        // step (2⁻⁷ of the value; the sums' own f32 rounding may tip it either way) and f32
        // rounding of the magnitude, of the f32 product finished after it. Shapes: a single
        // value, partial tiles, depths over several of the tiles' depth blocks (the partial
        // sums kept in f32 between them), ragged depths, a GEGLU whose halves are whole strips
        // (finished two strips at a time on the tiles) and one whose halves are not.
        let shapes = [
            (1, 1, 2),
            (5, 33, 64),
            (37, 800, 96),
            (70, 1601, 130),
            (64, 320, 128),
            (100, 64, 256),
        ];
        for kernel in Kernel::all_supported() {
            for (i, (rows, depth, cols)) in shapes.into_iter().enumerate() {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(40 + i as u64);
                let a: Vec<bf16> = uniform(rows * depth, &mut rng)
                    .into_iter()
                    .map(bf16::from_f32)
                    .collect();
                let w: Vec<bf16> = uniform(cols * depth, &mut rng)
                    .into_iter()
                    .map(bf16::from_f32)
                    .collect();
                let bias = uniform(cols, &mut rng);
                let residual_f32 = uniform(rows * cols, &mut rng);
                let residual_bf16: Vec<bf16> =
                    residual_f32.iter().map(|v| bf16::from_f32(*v)).collect();
                let a_view = View::rows(Values::Bf16(&a), rows, depth);
                let packed = PackedB::pack(
                    View::new(Values::Bf16(&w), 0, (depth, cols), (1, depth)),
                    true,
                );
                // The f32 sums, and each one's magnitude Σ|a·w|.
                let mut sums = vec![MaybeUninit::new(0f32); rows * cols];
                let into = Out {
                    values: &mut sums,
                    start: 0,
                    row_stride: cols,
                };
                // SAFETY: nothing is accumulated.
                #[allow(unsafe_code)]
                unsafe {
                    matmul_on(kernel, into, a_view, packed.paired(), (1.0, false), true)
                };
                // SAFETY: written whole when made.
                #[allow(unsafe_code)]
                let sums: Vec<f32> = sums.iter().map(|v| unsafe { v.assume_init() }).collect();
                let magnitude: Vec<f32> = (0..rows * cols)
                    .map(|at| {
                        let (r, c) = (at / cols, at % cols);
                        let a = &a[r * depth..][..depth];
                        let w = &w[c * depth..][..depth];
                        a.iter()
                            .zip(w)
                            .map(|(x, y)| (x.to_f32() * y.to_f32()).abs())
                            .sum()
                    })
                    .collect();
                let epilogues = [
                    Epilogue::Narrow {
                        bias: Some(&bias),
                        residual: Some(Values::Bf16(&residual_bf16)),
                    },
                    Epilogue::Narrow {
                        bias: None,
                        residual: Some(Values::F32(&residual_f32)),
                    },
                    Epilogue::Narrow {
                        bias: Some(&bias),
                        residual: None,
                    },
                    Epilogue::Geglu { bias: Some(&bias) },
                    Epilogue::Geglu { bias: None },
                ];
                for (e, epilogue) in epilogues.into_iter().enumerate() {
                    let width = epilogue.width(cols);
                    let mut out = vec![MaybeUninit::new(bf16::NAN); rows * width];
                    let parallel = (i + e) % 2 == 0;
                    let view = a_view;
                    matmul_to_bf16_on(kernel, &mut out, view, packed.paired(), epilogue, parallel);
                    let (theirs, size) = finished_after(epilogue, (&sums, &magnitude), rows, cols);
                    for (at, (theirs, size)) in theirs.iter().zip(&size).enumerate() {
                        // SAFETY: written whole when made.
                        #[allow(unsafe_code)]
                        let ours = unsafe { out[at].assume_init() }.to_f32();
                        let allowed = theirs.abs() / 128.0 + 1e-5 * size;
                        assert!(
                            (ours - theirs).abs() <= allowed,
                            "{kernel:?} {rows}×{depth}→{cols}, epilogue {e}, value {at}: \
                             {ours} against {theirs}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn pairs_wired_the_wrong_way_round_are_caught() {
        if !available() {
            eprintln!("no AVX512-BF16 on this CPU: the kernel is not run");
            return;
        }
        for kernel in Kernel::all_supported() {
            for (seed, case) in cases().into_iter().enumerate().filter(|(_, c)| c.depth > 1) {
                let errors = run(kernel, case, seed as u64, PackedB::swap_pair_halves);
                println!("{kernel:?} {case:?}: mis-wired, off by {}", errors.rounded);
                assert!(
                    errors.rounded > 1e-2,
                    "{kernel:?} {case:?}: {}",
                    errors.rounded
                );
            }
        }
    }

    /// `Σ A_t·B_t` over `terms` on `kernel` into a fresh `rows × cols` output (NaN before).
    /// A sum's random operands (bf16-rounded): `terms` matrices `A` (`rows × depth` each, one
    /// after another) and `B`'s words in rows of `width`, one per depth pair, term `t`
    /// reading from column `t` on (as a convolution's taps read shifted columns).
    struct SumOperands {
        a: Vec<f32>,
        b: Vec<f32>,
        words: Vec<u32>,
        width: usize,
        shape: (usize, usize, usize),
        terms: usize,
    }

    impl SumOperands {
        fn new((rows, depth, cols): (usize, usize, usize), terms: usize, seed: u64) -> Self {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let a = round(&uniform(terms * rows * depth, &mut rng));
            let pairs = depth.div_ceil(2);
            let width = cols + terms + NR;
            let b = round(&uniform(2 * pairs * width, &mut rng));
            let words: Vec<u32> = (0..pairs * width)
                .map(|w| {
                    let (p, n) = (w / width, w % width);
                    let low = bf16::from_f32(b[(2 * p) * width + n]).to_bits();
                    let high = if 2 * p + 1 < depth {
                        bf16::from_f32(b[(2 * p + 1) * width + n]).to_bits()
                    } else {
                        0
                    };
                    u32::from(low) | u32::from(high) << 16
                })
                .collect();
            SumOperands {
                a,
                b,
                words,
                width,
                shape: (rows, depth, cols),
                terms,
            }
        }

        fn terms(&self) -> Vec<(View<'_>, PairedB<'_>)> {
            let (rows, depth, cols) = self.shape;
            (0..self.terms)
                .map(|t| {
                    let start = t * rows * depth;
                    let a = View::new(Values::F32(&self.a), start, (rows, depth), (depth, 1));
                    (a, PairedB::rows(&self.words, t, (depth, cols), self.width))
                })
                .collect()
        }
    }

    #[test]
    fn sums_finished_as_a_convolution_land_on_its_output_positions() {
        // Two images of an 11 × 9 grid with 9 × 7 outputs each (a 3×3 convolution's padded
        // grid): columns past each row's outputs and the image's last rows are dropped, every
        // output position is written (NaN before), as the f32 sums plus the bias rounded. The
        // vector path finishes whole rows of sums, 18 runs of outputs each.
        if !available() {
            return;
        }
        let grid = Grid {
            images: 2,
            channels: 37,
            image_words: 11 * 9,
            grid_w: 9,
            out_h: 9,
            out_w: 7,
        };
        let cols = grid.image_words + grid.out_h * grid.grid_w;
        let (rows, depth) = (grid.channels, 70);
        let operands = SumOperands::new((rows, depth, cols), 3, 7);
        let bias: Vec<f32> = (0..rows).map(|o| o as f32 / 8.0 - 2.0).collect();
        for kernel in Kernel::all_supported() {
            let sums = summed(kernel, &operands.terms(), (rows, cols), true);
            let epilogue = Epilogue::Conv {
                bias: Some(&bias),
                grid,
            };
            let mut out = vec![MaybeUninit::new(bf16::NAN); 2 * rows * 9 * 7];
            matmul_sum_to_bf16_on(kernel, &mut out, &operands.terms(), epilogue, false);
            for (at, ours) in out.iter().enumerate() {
                let (plane, y, x) = (at / 63, at % 63 / 7, at % 7);
                let (image, o) = (plane / rows, plane % rows);
                // SAFETY: both were written whole when made.
                #[allow(unsafe_code)]
                let (ours, sum) = unsafe {
                    let column = image * grid.image_words + y * grid.grid_w + x;
                    (
                        ours.assume_init().to_f32(),
                        sums[o * cols + column].assume_init(),
                    )
                };
                let theirs = bf16::from_f32(sum + bias[o]).to_f32();
                assert!(
                    (ours - theirs).abs() <= theirs.abs() / 128.0 + 1e-4,
                    "{kernel:?}: image {image}, channel {o}, ({y}, {x}): {ours} against {theirs}"
                );
            }
        }
    }

    fn summed(
        kernel: Kernel,
        terms: &[(View<'_>, PairedB<'_>)],
        (rows, cols): (usize, usize),
        parallel: bool,
    ) -> Vec<MaybeUninit<f32>> {
        let mut out = vec![MaybeUninit::new(f32::NAN); rows * cols];
        let target = Out {
            values: &mut out,
            start: 0,
            row_stride: cols,
        };
        matmul_sum_on(kernel, target, terms, parallel);
        out
    }

    /// Sums of products (a convolution's taps) equal the sum of the exact products of the
    /// bf16-rounded inputs, on every kernel; each term's `B` read in place from one shared
    /// buffer at its own origin, as a convolution's taps are.
    #[test]
    fn sums_of_products_equal_the_exact_sum() {
        if !available() {
            return;
        }
        let shapes = [
            (1, 2, 1),
            (33, 40, 70),
            (64, 320, 96),
            (20, 17, 33),
            (70, 700, 40),
            // More rows than one task of the vector kernel takes (60 at this depth).
            (200, 1000, 40),
        ];
        for kernel in Kernel::all_supported() {
            for (i, &(rows, depth, cols)) in shapes.iter().enumerate() {
                let terms = 3;
                let operands = SumOperands::new((rows, depth, cols), terms, 40 + i as u64);
                let (a, b, width) = (&operands.a, &operands.b, operands.width);
                let out = summed(kernel, &operands.terms(), (rows, cols), i % 2 == 0);
                let mut worst = 0f64;
                for r in 0..rows {
                    for n in 0..cols {
                        let (mut exact, mut magnitude) = (0f64, 0f64);
                        for t in 0..terms {
                            for k in 0..depth {
                                let x = a[t * rows * depth + r * depth + k] as f64;
                                let y = b[k * width + n + t] as f64;
                                exact += x * y;
                                magnitude += (x * y).abs();
                            }
                        }
                        // SAFETY: the sum wrote every value of the output.
                        #[allow(unsafe_code)]
                        let ours = unsafe { out[r * cols + n].assume_init() } as f64;
                        worst = worst.max((ours - exact).abs() / (magnitude + 1e-30));
                    }
                }
                assert!(worst < 1e-5, "{kernel:?} {:?}: {worst}", shapes[i]);
            }
        }
    }

    /// Where `B` outgrows the L2 cache the tile kernel takes more rows per task, each block
    /// of rows reading `B` once (the case above with `B` that large takes 256); otherwise
    /// [`amx::MC`], as does the vector kernel.
    #[test]
    fn tasks_take_more_rows_where_b_outgrows_the_l2_cache() {
        let tiles = |rows, (depth, cols): (usize, usize)| {
            Kernel::Tiles.rows_per_task(rows, (cols.div_ceil(NR), depth.div_ceil(2)), 8)
        };
        assert_eq!(tiles(300, (520, 1056)), 2 * amx::MC);
        // The feed-forward's 512 × 1 280 → 10 240 (a 26 MB weight): one block of rows.
        assert_eq!(tiles(512, (1280, 10240)), 4 * amx::MC);
        // Its 8 192 × 1 280 → 320 (0.8 MB, in L2): the usual blocks.
        assert_eq!(tiles(8192, (1280, 320)), amx::MC);
        let vector = Kernel::Vector.rows_per_task(512, (320, 640), 8);
        assert_eq!(vector, MC);
    }

    /// The tiles take a product's depth in the fewest passes of at most `amx::KC` pairs, of
    /// whole tiles: a pass past the first adds the earlier passes' f32 sums back from memory,
    /// and SDXL's 1 280-wide layers (640 pairs) take one (they took two of 384 and 256, at
    /// 0.6–0.7 of the speed).
    #[test]
    fn the_tiles_take_a_products_depth_in_the_fewest_passes_of_whole_tiles() {
        for pairs in 1..=3000 {
            let block = amx::depth_block(pairs);
            assert!(
                block <= amx::KC && block.is_multiple_of(16),
                "{pairs}: {block}"
            );
            assert_eq!(
                pairs.div_ceil(block),
                pairs.div_ceil(amx::KC),
                "{pairs}: {block}"
            );
        }
        assert_eq!(amx::depth_block(640), 640);
        // SDXL's 5 120-deep feed-forward output: four equal passes, not three and a sliver.
        assert_eq!(amx::depth_block(2560), 640);
        assert_eq!(amx::depth_block(1300), 448);
    }

    /// `A` laid out in tile rows (`View::in_tile_rows`) and read in place gives the sums the
    /// packed `A` gives, bit for bit; the same values at plain row strides, declared as tile
    /// rows, do not (so the in-place path is the one the tiles read).
    #[test]
    fn a_read_in_place_from_tile_rows_equals_a_packed() {
        if !tiles_available() {
            eprintln!("no AMX on this CPU: the in-place path is not run");
            return;
        }
        for (i, &(rows, depth, cols)) in [(33, 40, 70), (64, 320, 96), (20, 17, 33)]
            .iter()
            .enumerate()
        {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(70 + i as u64);
            let terms = 3;
            let a = round(&uniform(terms * rows * depth, &mut rng));
            let (pairs, width) = (depth.div_ceil(2), cols + terms + NR);
            let words: Vec<u32> = (0..pairs * width)
                .map(|_| {
                    let [low, high] = [0, 1].map(|_| bf16::from_f32(rng.random_range(-1f32..1.0)));
                    u32::from(low.to_bits()) | u32::from(high.to_bits()) << 16
                })
                .collect();
            // Tap t's rows `row_len` values apart, its matrices `block` values apart, in a
            // buffer on a cache line with room for a whole block of tile rows past the last.
            let tile_len = 2 * amx::row_words(depth);
            let laid_out = |row_len: usize| {
                let block = rows.next_multiple_of(amx::MR) * row_len;
                let room = rows.next_multiple_of(amx::MR) * tile_len;
                let mut buffer = Words::zeroed((terms * block + room).div_ceil(2));
                for t in 0..terms {
                    for r in 0..rows {
                        for k in 0..depth {
                            let value = bf16::from_f32(a[(t * rows + r) * depth + k]);
                            buffer.as_bf16_mut()[t * block + r * row_len + k] = value;
                        }
                    }
                }
                (buffer, block)
            };
            let sums = |views: Vec<View<'_>>| {
                let terms: Vec<_> = (views.into_iter().enumerate())
                    .map(|(t, view)| (view, PairedB::rows(&words, t, (depth, cols), width)))
                    .collect();
                let out = summed(Kernel::Tiles, &terms, (rows, cols), true);
                // SAFETY: the sum wrote every value of the output.
                #[allow(unsafe_code)]
                let sums: Vec<f32> = out
                    .into_iter()
                    .map(|v| unsafe { v.assume_init() })
                    .collect();
                sums
            };
            let packed = sums(
                (0..terms)
                    .map(|t| {
                        View::new(Values::F32(&a), t * rows * depth, (rows, depth), (depth, 1))
                    })
                    .collect(),
            );
            let (tiled, block) = laid_out(tile_len);
            let in_tile_rows = |t| View::in_tile_rows(tiled.as_bf16(), t * block, (rows, depth));
            let in_place = sums((0..terms).map(in_tile_rows).collect());
            assert_eq!(packed, in_place, "shape {:?}", (rows, depth, cols));
            // Rows `depth` values apart (up to 32 values, so that each starts on a cache
            // line), read as tile rows: the rows are read from the wrong places.
            let plain_len = depth.next_multiple_of(32);
            assert_ne!(plain_len, tile_len);
            let (plain, block) = laid_out(plain_len);
            let misread = |t| View::in_tile_rows(plain.as_bf16(), t * block, (rows, depth));
            let misread = sums((0..terms).map(misread).collect());
            assert_ne!(packed, misread, "shape {:?}", (rows, depth, cols));
        }
    }

    /// A view declared in tile rows that its buffer cannot hold, or off a cache line, is
    /// refused rather than read past its end.
    #[test]
    fn tile_rows_that_do_not_fit_are_refused() {
        let words = Words::zeroed(amx::MR * amx::row_words(40));
        let values = words.as_bf16();
        let fits = std::panic::catch_unwind(|| View::in_tile_rows(values, 0, (32, 40)).rows);
        assert_eq!(fits.ok(), Some(32));
        for (start, rows) in [(32, 32), (0, 33), (1, 1)] {
            let refused =
                std::panic::catch_unwind(|| View::in_tile_rows(values, start, (rows, 40)).rows);
            assert!(refused.is_err(), "start {start}, {rows} rows");
        }
    }

    /// A CPU whose flags list AMX runs the tile kernel (else the tests above would pass on
    /// the vector kernel alone, and a broken detection would go unseen).
    #[test]
    fn cpus_with_amx_run_the_tile_kernel() {
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags: Vec<&str> = flags
            .lines()
            .find(|l| l.starts_with("flags"))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        let has_amx = ["amx_tile", "amx_bf16", "avx512_bf16"]
            .iter()
            .all(|f| flags.contains(f));
        assert_eq!(
            amx::supported(),
            has_amx,
            "AMX detection against /proc/cpuinfo"
        );
        if has_amx {
            assert_eq!(Kernel::best(), Kernel::Tiles);
        }
    }

    #[test]
    fn narrowing_rounds_as_the_half_crate_does() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        // Normal values of every exponent (the instruction flushes subnormals to zero).
        let values: Vec<f32> = (0..10_000)
            .map(|_| {
                let v = f32::from_bits(rng.random());
                if v.is_normal() {
                    v
                } else {
                    1.0 + v.abs().min(1.0)
                }
            })
            .chain([
                1.0,
                f32::from_bits(0x3F80_8000),
                f32::from_bits(0x3F81_8000),
            ])
            .collect();
        let mut out = vec![0u32; values.len().div_ceil(2)];
        narrow_pairs(&values, &mut out);
        for (i, v) in values.iter().enumerate() {
            let bits = (out[i / 2] >> (16 * (i % 2))) as u16;
            assert_eq!(bits, bf16::from_f32(*v).to_bits(), "{v:e}");
        }
        assert_eq!(
            out[out.len() - 1] >> 16,
            0,
            "an odd last value has a zero partner"
        );
    }
}
