//! Sums of products on vector registers, for CPUs with AVX512-BF16 but no AMX tiles (AMD's
//! Zen 4 and later, Intel's Cooper Lake).
//!
//! A convolution is a sum of products, one per tap (`Σ_t A_t·B_t`: `A_t` the tap's weights,
//! `B_t` the input read from the tap's offset). Run as one product per tap, each product read
//! and wrote the whole f32 accumulator again, once per block of depth: at 64×64 that is 3.3 MB
//! a task, past the L2 cache, crossing memory up to 18 times for a 3×3 convolution; and a last
//! pass narrowed it to bf16. Here a task holds an [`MR`] × [`NR`] tile of sums in registers
//! through every term and the whole depth, then hands it, from L1, to the epilogue (as the AMX
//! tiles do, [`super::amx::sum_of_products`]): the accumulator never exists. A linear layer
//! finished in bf16 is the sum of one term (a GEGLU's tile with its gate's tile): its f32
//! product, written and read back by a pass of its own, had been a fifth of the feed-forward's
//! time (`engine --part linear --dtype bf16`: 8 192 × 320 → 2 560, 82 → 65 ms).

use super::{pack_a_into, Finish, PairedB, Tile, View, MR, NR, PACKED_A};

/// The bytes of packed `A` a task keeps (every term's rows, the whole depth): about half of
/// an L2 cache of 1 MiB, the rest for the strips of `B` its tiles read.
const A_BYTES_PER_TASK: usize = 384 << 10;
/// The most blocks of [`MR`] rows a task takes.
const MAX_GROUPS: usize = 8;

/// Rows per task for a sum of `terms` products `pairs` deep: as many whole blocks of [`MR`]
/// rows as keep its packed `A` within [`A_BYTES_PER_TASK`] (each block then reads every strip
/// of `B` the task runs, from L2 after the first), at least one.
pub(super) fn rows_per_task(terms: usize, pairs: usize) -> usize {
    let row_bytes = terms * pairs * std::mem::size_of::<u32>();
    let groups = (A_BYTES_PER_TASK / (MR * row_bytes.max(1))).clamp(1, MAX_GROUPS);
    groups * MR
}

/// `Σ_t A_t·B_t` over `terms` (their shapes agree; `A` `rows × depth` with its columns
/// adjacent, `depth > 0`): into `out` (`rows × cols` f32), or through `finish` into its bf16
/// output (then `out` is never touched). Tasks over blocks of rows and groups of column
/// strips, on rayon when `parallel`; each packs its rows of every term's `A` once, then runs
/// each tile through every term before it leaves the registers.
///
/// # Safety
///
/// The CPU has AVX512-BF16; the terms' shapes agree ([`super::check_terms`]) and `out` holds
/// their `rows × cols` unless `finish` is given.
#[allow(unsafe_code)]
pub(super) unsafe fn sum_of_products(
    out: Tile,
    terms: &[(View<'_>, PairedB<'_>)],
    parallel: bool,
    finish: Option<Finish<'_>>,
) {
    let (a0, b0) = terms[0];
    let (rows, pairs, cols) = (a0.rows, b0.pairs, b0.cols);
    assert!(pairs > 0, "bf16 gemm: a sum of products of no depth");
    // A GEGLU's tasks take each strip with its gate's, `gate` strips on.
    let gate = finish.and_then(|f| f.gate_strips);
    let strips = b0.strips() / if gate.is_some() { 2 } else { 1 };
    let per_task = rows_per_task(terms.len(), pairs);
    let row_blocks = rows.div_ceil(per_task);
    let wanted = if parallel {
        4 * rayon::current_num_threads()
    } else {
        1
    };
    let column_groups = wanted.div_ceil(row_blocks).clamp(1, strips);
    let strips_per_group = strips.div_ceil(column_groups);
    let run = |task: usize| {
        let (block, group) = (task / column_groups, task % column_groups);
        let rows = block * per_task..((block + 1) * per_task).min(rows);
        let strips = group * strips_per_group..((group + 1) * strips_per_group).min(strips);
        PACKED_A.with(|packed| {
            let packed = &mut *packed.borrow_mut();
            // Block g's rows of term t, MR rows of `pairs` words (zero rows past the end).
            let (groups, each) = (rows.len().div_ceil(MR), MR * pairs);
            packed.fit_for_overwrite(groups * terms.len() * each);
            let words = packed.as_mut_slice();
            for g in 0..groups {
                let first = rows.start + g * MR;
                let block_rows = first..(first + MR).min(rows.end);
                for (t, (a, _)) in terms.iter().enumerate() {
                    let at = (g * terms.len() + t) * each;
                    // Each real row's `pairs` words are written; the padding rows are zeroed.
                    words[at + block_rows.len() * pairs..at + each].fill(0);
                    pack_a_into(a, block_rows.clone(), (0, pairs), pairs, &mut words[at..]);
                }
            }
            let packed = packed.as_slice();
            let (mut sums, mut gates) = (Sums([0.0; MR * NR]), Sums([0.0; MR * NR]));
            let mut operands = Vec::with_capacity(terms.len());
            // Tile `g` of strip `s` into `into`.
            let mut tile = |g: usize, s: usize, into: &mut Sums| {
                operands.clear();
                operands.extend(terms.iter().enumerate().map(|(t, (_, b))| {
                    let a = &packed[(g * terms.len() + t) * each..][..each];
                    (a.as_ptr(), b.strip(s, 0, pairs).as_ptr())
                }));
                // SAFETY: each operand's `A` holds MR rows of `pairs` words (packed above) and
                // its strip `pairs` pairs of NR words `pair_stride` apart (cut by `strip`);
                // the CPU has AVX512-BF16 (the caller's promise).
                unsafe {
                    if NR.min(cols - s * NR) <= 16 {
                        micro::sum_tile::<1>(&operands, (pairs, b0.pair_stride), into)
                    } else {
                        micro::sum_tile::<2>(&operands, (pairs, b0.pair_stride), into)
                    }
                };
            };
            for s in strips {
                let width = NR.min(cols - s * NR);
                for g in 0..groups {
                    let first = rows.start + g * MR;
                    let tile_rows = MR.min(rows.end - first);
                    tile(g, s, &mut sums);
                    if let Some(offset) = gate {
                        tile(g, s + offset, &mut gates);
                    }
                    let columns = (s * NR, width);
                    match finish {
                        // SAFETY: the block's region of the finished output is this task's
                        // (its rows and strips are no other task's); `sums` (and `gates`)
                        // hold its rows of NR values.
                        Some(f) => unsafe {
                            let at = |sums: &Sums| super::Sums {
                                at: sums.0.as_ptr(),
                                stride: NR,
                            };
                            let gates = gate.map(|_| at(&gates));
                            f.epilogue.finish(
                                f.out,
                                first..first + tile_rows,
                                columns,
                                at(&sums),
                                gates,
                            )
                        },
                        // SAFETY: the `tile_rows × width` region from (first, s·NR) is inside
                        // the output (the caller's promise) and this task's alone.
                        None => unsafe {
                            sums.store(out.at(first, s * NR), out.row_stride(), (tile_rows, width))
                        },
                    }
                }
            }
        });
    };
    let tasks = row_blocks * column_groups;
    if parallel {
        use rayon::prelude::*;
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}

/// One tile of sums as the microkernel leaves it: [`MR`] rows of [`NR`] f32.
#[repr(C, align(64))]
pub(super) struct Sums(pub(super) [f32; MR * NR]);

impl Sums {
    /// Copies the first `rows × cols` of the tile to `c` (rows `row_stride` apart).
    ///
    /// # Safety
    ///
    /// The region is valid for writes.
    #[allow(unsafe_code)]
    unsafe fn store(&self, c: *mut f32, row_stride: usize, (rows, cols): (usize, usize)) {
        for (r, row) in self.0.chunks_exact(NR).take(rows).enumerate() {
            // SAFETY: row r's `cols ≤ NR` values are inside the region (the caller's promise).
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(r * row_stride), cols) };
        }
    }
}

/// The AVX512-BF16 code.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod micro {
    use super::{Sums, MR, NR};
    use std::arch::x86_64::*;

    /// `sums ← Σ_t A_t·B_t` for one tile, its first `16·V` columns: each operand's `A` holds
    /// MR rows of `pairs` words, its `B` `pairs` pairs of NR words `stride` apart (the first
    /// `16·V` read). The 12 × `V` accumulators stay in registers through every operand.
    ///
    /// # Safety
    ///
    /// The CPU has AVX512-BF16; the operands hold what is said above.
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn sum_tile<const V: usize>(
        operands: &[(*const u32, *const u32)],
        (pairs, stride): (usize, usize),
        sums: &mut Sums,
    ) {
        assert!(V <= NR / 16);
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        for &(a, b) in operands {
            for p in 0..pairs {
                // SAFETY: pair p of the strip, in bounds (the caller's promise).
                let bv: [__m512bh; V] = std::array::from_fn(|v| unsafe {
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                        b.add(p * stride + 16 * v).cast(),
                    ))
                });
                for (r, acc_row) in acc.iter_mut().enumerate() {
                    // SAFETY: row r's pair p, in bounds (the caller's promise).
                    let pair = unsafe { *a.add(r * pairs + p) };
                    let av =
                        std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair as i32));
                    for (acc, bv) in acc_row.iter_mut().zip(bv) {
                        *acc = _mm512_dpbf16_ps(*acc, av, bv);
                    }
                }
            }
        }
        for (acc_row, row) in acc.iter().zip(sums.0.chunks_exact_mut(NR)) {
            for (v, acc) in acc_row.iter().enumerate() {
                // SAFETY: 16 values of the row's NR.
                unsafe { _mm512_storeu_ps(row.as_mut_ptr().add(16 * v), *acc) };
            }
        }
    }
}

/// Stand-in off x86-64, where AVX512-BF16 is never available and nothing calls it.
#[cfg(not(target_arch = "x86_64"))]
#[allow(unsafe_code)]
mod micro {
    use super::Sums;

    pub(super) unsafe fn sum_tile<const V: usize>(
        _: &[(*const u32, *const u32)],
        _: (usize, usize),
        _: &mut Sums,
    ) {
        unreachable!("bf16 gemm without AVX512-BF16");
    }
}
