//! The products on Intel's AMX tile units (Sapphire Rapids and later), where the CPU has them.
//!
//! `vdpbf16ps` multiplies 32 bf16 pairs an instruction; `tdpbf16ps` multiplies a 16 × 32 tile
//! of `A` by a 32 × 16 tile of `B` into a 16 × 16 tile of f32: 8 192 multiplies, sixteen times
//! the vector instruction's, accumulated in f32 all the same. PyTorch's bf16 runs its products
//! there (oneDNN), which is why it took 2.3 s for a step where the vector kernel takes 6.
//!
//! The tiles take the operands as [`super`] already lays them out, nearly: `B`'s depth pairs
//! are one 32-bit word per column (a tile of `B` is 16 pairs of 16 columns, a row of words per
//! pair, so a strip of [`NR`](super::NR) = 32 columns is two tiles side by side), and `A` is
//! packed here row by row, each row's pairs together and padded to whole tiles of 16 pairs.
//! The microkernel keeps a 32 × 32 block of `C` in four tiles (`tmm0`–`tmm3`), loads two
//! tiles of `A` (`tmm4`, `tmm5`) and two of `B` (`tmm6`, `tmm7`) for every 16 pairs, and
//! stores its block to a buffer from which the vector code scales it into `C`, masked at the
//! edges, as the vector kernel does.
//!
//! Linux gives a process the tiles' 8 KiB of state only when asked (`arch_prctl`), once;
//! [`supported`] asks, and is false where the CPU, the OS or the request says no. The
//! instructions are written as inline assembly (Rust has no stable AMX intrinsics); each
//! thread loads the tile configuration before its tiles and releases them after, and nothing
//! else in the process uses them between.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Rows of a tile of `A` or `C`, and depth pairs of a tile of `B`.
pub(super) const TILE: usize = 16;
/// Rows of `C` per microkernel call: two tiles.
pub(crate) const MR: usize = 2 * TILE;
/// The most depth pairs per pass over a block (a strip's slice of `B`, `KC × 32` words, is
/// 80 KiB, read from L2). Each pass past the first writes the block's f32 sums to memory and
/// reads them back: at 384 pairs SDXL's 1 280-deep layers took two passes, and its 2 048 ×
/// 1 280 → 1 280 product 9.0 ms against 6.8 in one (one thread, `engine --part linear --model
/// sdxl --dtype bf16`); 512 to 1 024 were measured, 640 kept.
pub(super) const KC: usize = 640;
/// Rows per task: the packed block of `A` (`MC × (KC + 16)` words, 336 KiB) stays in L2.
pub(super) const MC: usize = 4 * MR;

/// Depth pairs per pass for a product `pairs` deep: the fewest passes of at most [`KC`], of
/// equal length in whole tiles but the last.
pub(super) fn depth_block(pairs: usize) -> usize {
    let passes = pairs.div_ceil(KC).max(1);
    pairs.div_ceil(passes).next_multiple_of(TILE)
}

/// Whether the AMX path is on (it is unless [`set_enabled`] turned it off).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the AMX path off (or back on) for the whole process, so that the benchmarks can time
/// the vector kernel beside it in one run.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether products run on the tiles: the CPU and the OS have them, and they are on.
pub(super) fn available() -> bool {
    ENABLED.load(Ordering::Relaxed) && supported()
}

/// Whether this CPU has AMX-TILE and AMX-BF16, the OS saves their state, and this process
/// was granted it (asked once).
pub(crate) fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(detect)
}

/// The words from one packed row of `A` to the next for `pairs` depth pairs: whole tiles,
/// and one tile's width more, two where that makes a multiple of 256 bytes, so that a tile's
/// 16 rows do not crowd into a few cache sets (four tile loads took 48–104 ns with rows 256
/// bytes apart against 31 with 640).
pub(crate) fn stride(pairs: usize) -> usize {
    let stride = pairs.next_multiple_of(TILE) + TILE;
    if stride.is_multiple_of(64) {
        stride + TILE
    } else {
        stride
    }
}

/// The words from one row of `A` to the next as the tiles read it, for `cols` values a row.
pub(crate) fn row_words(cols: usize) -> usize {
    stride(cols.div_ceil(2))
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // CPUID exists on every x86-64 CPU; leaf 7 is asked only when the CPU has it.
    let (max_leaf, leaf1) = (__cpuid(0).eax, __cpuid(1));
    if max_leaf < 7 {
        return false;
    }
    let leaf7 = __cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = ((leaf7.edx >> 22) & 1 == 1, (leaf7.edx >> 24) & 1 == 1);
    let os_saves_state = (leaf1.ecx >> 27) & 1 == 1; // OSXSAVE: XGETBV may be used
    if !(amx_bf16 && amx_tile && os_saves_state && super::supported()) {
        return false;
    }
    // SAFETY: XGETBV with ECX = 0 reads XCR0, allowed as OSXSAVE is set (checked above).
    let xcr0 = unsafe { xgetbv0() };
    let tile_state_enabled = (xcr0 >> 17) & 0b11 == 0b11; // XTILECFG and XTILEDATA
    tile_state_enabled && request_tile_data()
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// XCR0, the state components the OS saves.
///
/// # Safety
///
/// The CPU has XSAVE and the OS set CR4.OSXSAVE.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
unsafe fn xgetbv0() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: the caller's promise.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0, out("eax") low, out("edx") high,
            options(nomem, nostack, preserves_flags));
    }
    u64::from(high) << 32 | u64::from(low)
}

/// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`),
/// which it grants to the whole process; false when refused (a kernel before 5.16).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unsafe_code)]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let result: i64;
    // SAFETY: a system call that changes no memory of ours; it clobbers rcx and r11.
    unsafe {
        std::arch::asm!("syscall",
            inlateout("rax") SYS_ARCH_PRCTL => result,
            in("rdi") ARCH_REQ_XCOMP_PERM, in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    result == 0
}

/// The last pairs of a strip of `B` short of a whole tile, zero-padded to one (16 pairs of 32
/// words), on a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Tail(pub(super) [u32; TILE * 32]);

/// A block of `C` as the microkernel leaves it: [`MR`] rows of 32 f32.
#[repr(C, align(64))]
pub(super) struct Block(pub(super) [f32; MR * 32]);

/// The sums of a block, for an epilogue.
#[cfg(target_arch = "x86_64")]
fn block_sums(block: &Block) -> super::Sums {
    super::Sums {
        at: block.0.as_ptr(),
        stride: 32,
    }
}

/// Copies pairs `steps·16..len` of a strip of `B` (`len` pairs `pair_stride` words apart) to
/// the start of `tail`, whose other pairs the caller keeps zero: the last pairs short of a
/// whole tile, which a tile read in place would read past.
#[cfg(target_arch = "x86_64")]
fn copy_ragged_pairs(
    strip: &[u32],
    pair_stride: usize,
    (steps, len): (usize, usize),
    tail: &mut Tail,
) {
    for p in steps * TILE..len {
        let at = p * pair_stride;
        tail.0[(p - steps * TILE) * 32..][..32].copy_from_slice(&strip[at..at + 32]);
    }
}

/// A depth block: pairs `from..from + len`, `A`'s rows packed `stride` words apart.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Depth {
    from: usize,
    len: usize,
    stride: usize,
}

/// The tile instructions.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) mod tiles {
    use super::{Block, Tail, TILE};
    use std::arch::asm;

    /// Palette 1; tiles 0–3 `C`'s, 4–5 `A`'s, 6–7 `B`'s, each 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    const CONFIG: Config = {
        let mut bytes = [0u8; 64];
        bytes[0] = 1;
        let mut t = 0;
        while t < 8 {
            bytes[16 + 2 * t] = 64; // bytes a row (little-endian u16)
            bytes[48 + t] = TILE as u8; // rows
            t += 1;
        }
        Config(bytes)
    };

    /// Loads the tile configuration (and zeroes the tiles) for this thread.
    ///
    /// # Safety
    ///
    /// [`super::supported`] is true.
    pub(crate) unsafe fn configure() {
        // SAFETY: the caller's promise; the configuration is 64 valid bytes.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG.0, options(nostack, readonly)) };
    }

    /// Gives this thread's tiles back, so that the OS need not save them.
    ///
    /// # Safety
    ///
    /// [`super::supported`] is true.
    pub(crate) unsafe fn release() {
        // SAFETY: the caller's promise.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// Zeroes the tiles of `C`.
    ///
    /// # Safety
    ///
    /// [`configure`] ran on this thread.
    #[inline(always)]
    pub(crate) unsafe fn zero() {
        // SAFETY: the caller's promise.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            )
        };
    }

    /// Adds `A·B` to the tiles of `C`, through two tiles of rows when `tall` and two of
    /// columns when `wide` (one otherwise: tiles that would hold nothing of the output are
    /// skipped): `steps` tiles of 16 depth pairs, `A`'s rows `a_stride` words apart and its
    /// second tile `16·a_stride` words on, `B`'s pairs `b_stride` words apart and its second
    /// tile 16 words on; then one more step from `tail` (16 pairs of 32 words) when given.
    ///
    /// # Safety
    ///
    /// [`configure`] ran on this thread; every tile row read is inside its operand.
    #[inline(always)]
    pub(super) unsafe fn add_product(
        (a, a_stride): (*const u32, usize),
        (b, b_stride): (*const u32, usize),
        steps: usize,
        tail: Option<&Tail>,
        (tall, wide): (bool, bool),
    ) {
        let tails = tail.map(std::slice::from_ref);
        // SAFETY: the caller's promises, for the one term.
        unsafe {
            add_sum_of_products(
                (&[(a, b)], &[]),
                (a_stride, b_stride),
                steps,
                tails,
                (tall, wide),
            )
        }
    }

    /// Adds `Σ_t A_t·B_t` to the tiles of `C`, depth step by depth step with every term's
    /// tiles inside each step (so that terms reading the same words of `B`, a convolution's
    /// taps along a row, find them in L1): `terms` the terms' `(A, B)`, strides and shape as
    /// [`add_product`]'s, then one more step from each term's tail in `tails` when given.
    /// Each step also prefetches, for the strips of `B` in `ahead` (one per run of terms that
    /// read the same lines), the lines of that step's rows that the next strip reads.
    ///
    /// # Safety
    ///
    /// As [`add_product`], for every term; `tails`, when given, has one tail per term.
    #[inline(always)]
    pub(super) unsafe fn add_sum_of_products(
        (terms, ahead): (&[(*const u32, *const u32)], &[*const u32]),
        (a_stride, b_stride): (usize, usize),
        steps: usize,
        tails: Option<&[Tail]>,
        (tall, wide): (bool, bool),
    ) {
        let operands = (terms, ahead);
        // SAFETY: the caller's promises.
        unsafe {
            match (tall, wide) {
                (true, true) => add_sum::<2, 2>(operands, a_stride, b_stride, steps, tails),
                (true, false) => add_sum::<2, 1>(operands, a_stride, b_stride, steps, tails),
                (false, true) => add_sum::<1, 2>(operands, a_stride, b_stride, steps, tails),
                (false, false) => add_sum::<1, 1>(operands, a_stride, b_stride, steps, tails),
            }
        }
    }

    /// [`add_sum_of_products`] through `MB` tiles of rows and `NB` of columns.
    ///
    /// # Safety
    ///
    /// As [`add_sum_of_products`].
    #[inline(always)]
    unsafe fn add_sum<const MB: usize, const NB: usize>(
        (terms, ahead): (&[(*const u32, *const u32)], &[*const u32]),
        a_stride: usize,
        b_stride: usize,
        steps: usize,
        tails: Option<&[Tail]>,
    ) {
        // SAFETY: the caller's promises, for each step's tile rows; prefetching reads nothing.
        unsafe {
            for step in 0..steps {
                for &b in ahead {
                    prefetch_next_strip(b.wrapping_add(step * TILE * b_stride), b_stride);
                }
                for &(a, b) in terms {
                    let (a, b) = (a.add(step * TILE), b.add(step * TILE * b_stride));
                    multiply::<MB, NB>(a, a_stride, b, b_stride);
                }
            }
            for (&(a, _), tail) in terms.iter().zip(tails.into_iter().flatten()) {
                multiply::<MB, NB>(a.add(steps * TILE), a_stride, tail.0.as_ptr(), 32);
            }
        }
    }

    /// Prefetches into L2, for the 16 rows (`b_stride` words apart) of a tile step of a strip
    /// of `B` from `b`, the lines that the next strip (`NR` words on) reads past this one's:
    /// the rows of a convolution's input are a pair of channels each, far apart, too many for
    /// the hardware's prefetchers to follow, and each strip read them from L3 (prefetching
    /// took 12–35 % off the VAE's 128–512² bf16 convolutions, `engine --part conv --dtype
    /// bf16`).
    #[inline(always)]
    fn prefetch_next_strip(b: *const u32, b_stride: usize) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        const NR: usize = crate::kernels::bf16_gemm::NR;
        for r in 0..TILE {
            let row = b.wrapping_add(r * b_stride);
            // SAFETY: a prefetch reads nothing and faults on no address.
            unsafe {
                _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(NR + NR / 2).cast());
                _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(2 * NR + 1).cast());
            }
        }
    }

    /// Stores the tiles of `C` into `out`.
    ///
    /// # Safety
    ///
    /// [`configure`] ran on this thread.
    #[inline(always)]
    pub(super) unsafe fn store(out: &mut Block) {
        // SAFETY: the block holds 32 rows of 32 f32, as the four tiles store them.
        unsafe { store_to(out.0.as_mut_ptr(), 32) };
    }

    /// Stores the tiles of `C` into the 32 × 32 f32 from `c`, rows `row_stride` values apart.
    ///
    /// # Safety
    ///
    /// [`configure`] ran on this thread; the 32 rows of 32 values from `c` are writable.
    #[inline(always)]
    pub(super) unsafe fn store_to(c: *mut f32, row_stride: usize) {
        let s = row_stride * 4;
        // SAFETY: the caller's promises; each tile is 16 rows of 16 f32 of the block.
        unsafe {
            asm!("tilestored [{c} + {s}], tmm0", c = in(reg) c, s = in(reg) s,
                options(nostack));
            asm!("tilestored [{c} + {s}], tmm1", c = in(reg) c.add(16), s = in(reg) s,
                options(nostack));
            asm!("tilestored [{c} + {s}], tmm2", c = in(reg) c.add(16 * row_stride),
                s = in(reg) s, options(nostack));
            asm!("tilestored [{c} + {s}], tmm3", c = in(reg) c.add(16 * row_stride + 16),
                s = in(reg) s, options(nostack));
        }
    }

    /// Loads the tiles of `C` from the 32 × 32 f32 from `c`, rows `row_stride` values apart
    /// (instead of [`zero`]: the product then adds to them).
    ///
    /// # Safety
    ///
    /// [`configure`] ran on this thread; the 32 rows of 32 values from `c` are readable.
    #[inline(always)]
    pub(super) unsafe fn load_from(c: *const f32, row_stride: usize) {
        let s = row_stride * 4;
        // SAFETY: the caller's promises.
        unsafe {
            asm!("tileloadd tmm0, [{c} + {s}]", c = in(reg) c, s = in(reg) s,
                options(nostack, readonly));
            asm!("tileloadd tmm1, [{c} + {s}]", c = in(reg) c.add(16), s = in(reg) s,
                options(nostack, readonly));
            asm!("tileloadd tmm2, [{c} + {s}]", c = in(reg) c.add(16 * row_stride),
                s = in(reg) s, options(nostack, readonly));
            asm!("tileloadd tmm3, [{c} + {s}]", c = in(reg) c.add(16 * row_stride + 16),
                s = in(reg) s, options(nostack, readonly));
        }
    }

    /// One step: the tiles of `A` and `B` at `a` and `b` loaded and multiplied into `C`'s.
    ///
    /// # Safety
    ///
    /// As [`add_product`].
    #[inline(always)]
    unsafe fn multiply<const MB: usize, const NB: usize>(
        a: *const u32,
        a_stride: usize,
        b: *const u32,
        b_stride: usize,
    ) {
        let (sa, sb) = (a_stride * 4, b_stride * 4);
        // SAFETY: the caller's promises.
        unsafe {
            asm!(
                "tileloadd tmm4, [{a} + {sa}]",
                "tileloadd tmm6, [{b} + {sb}]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                a = in(reg) a, sa = in(reg) sa, b = in(reg) b, sb = in(reg) sb,
                options(nostack, readonly)
            );
            if NB == 2 {
                asm!(
                    "tileloadd tmm7, [{b} + {sb}]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    b = in(reg) b.add(16), sb = in(reg) sb,
                    options(nostack, readonly)
                );
            }
            if MB == 2 {
                asm!(
                    "tileloadd tmm5, [{a} + {sa}]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    a = in(reg) a.add(TILE * a_stride), sa = in(reg) sa,
                    options(nostack, readonly)
                );
                if NB == 2 {
                    asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
                }
            }
        }
    }
}

impl super::Job<'_> {
    /// The tiles of `rows` × the columns of `strips` on the AMX tiles, depth block by depth
    /// block, as [`Job::block`](super::Job::block) does on vectors. With a
    /// [`Finish`](super::Finish), the last depth block's sums go to it, block by block (a
    /// GEGLU's with their gates', `gate_strips` on), and `C` holds only the earlier blocks'.
    ///
    /// # Safety
    ///
    /// As `matmul`'s task: the tile is this task's alone; the CPU has AVX512-BF16 and AMX
    /// ([`supported`]).
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    pub(super) unsafe fn block_on_tiles(
        &self,
        rows: std::ops::Range<usize>,
        strips: std::ops::Range<usize>,
    ) {
        let pairs = self.b.pairs;
        let gate_strips = self.finish.and_then(|f| f.gate_strips);
        super::PACKED_A.with(|packed| {
            let packed = &mut *packed.borrow_mut();
            let mut blocks = [Block([0.0; MR * 32]), Block([0.0; MR * 32])];
            let mut tails = [Tail([0; TILE * 32]); 2];
            // SAFETY: the CPU has AMX (the caller's promise).
            unsafe { tiles::configure() };
            let (mut from, block) = (0, depth_block(pairs));
            while from < pairs {
                let len = block.min(pairs - from);
                let depth = Depth {
                    from,
                    len,
                    stride: stride(len),
                };
                super::pack_a(
                    &self.a,
                    rows.clone(),
                    (from, len),
                    (MR, depth.stride),
                    packed,
                );
                let finish = self.finish.filter(|_| from + len == pairs);
                // Before the last depth block a GEGLU's gates are partial sums like the rest.
                let gates = match (finish, gate_strips) {
                    (None, Some(offset)) => strips.start + offset..strips.end + offset,
                    _ => 0..0,
                };
                for s in strips.clone().chain(gates) {
                    let [sum_tail, gate_tail] = &mut tails;
                    let tail = self.ragged_tail(s, depth, sum_tail);
                    let gate = match (finish, gate_strips) {
                        (Some(_), Some(offset)) => {
                            Some((s + offset, self.ragged_tail(s + offset, depth, gate_tail)))
                        }
                        _ => None,
                    };
                    let cols = super::NR.min(self.b.cols - s * super::NR);
                    for (i, a) in packed
                        .as_slice()
                        .chunks_exact(MR * depth.stride)
                        .enumerate()
                    {
                        let first = rows.start + i * MR;
                        let block_rows = first..(first + MR).min(rows.end);
                        let at = (a.as_ptr(), first);
                        let Some(finish) = finish else {
                            // SAFETY: as `partial_sums`' promises, which the caller's imply.
                            unsafe { self.partial_sums(at, (s, tail), depth, &mut blocks[0]) };
                            continue;
                        };
                        let [sums, gates] = &mut blocks;
                        // SAFETY: as `sums_into`'s promises, which the caller's imply; the
                        // block's region of the output is this task's.
                        unsafe {
                            self.sums_into(sums, at, (s, tail), depth);
                            let gates = gate.map(|(g, tail)| {
                                self.sums_into(gates, at, (g, tail), depth);
                                block_sums(gates)
                            });
                            let columns = (s * super::NR, cols);
                            let sums = block_sums(sums);
                            finish
                                .epilogue
                                .finish(finish.out, block_rows, columns, sums, gates);
                        }
                    }
                }
                from += len;
            }
            // SAFETY: as above.
            unsafe { tiles::release() };
        });
    }

    /// Strip `s`'s last pairs of `depth` short of a whole tile, zero-padded to one in `tail`:
    /// a tile read in place would read past the operand, or values not its own. None when the
    /// depth block is whole tiles.
    #[cfg(target_arch = "x86_64")]
    fn ragged_tail<'t>(&self, s: usize, depth: Depth, tail: &'t mut Tail) -> Option<&'t Tail> {
        let steps = depth.len / TILE;
        if depth.len.is_multiple_of(TILE) {
            return None;
        }
        tail.0.fill(0);
        let b = self.b.strip(s, depth.from, depth.len);
        copy_ragged_pairs(b, self.b.pair_stride, (steps, depth.len), tail);
        Some(tail)
    }

    /// Adds (or, in the first depth block, writes) the block of `C` at row `first` of strip
    /// `s` for `depth`: `a` its rows of `A` packed for the block.
    ///
    /// # Safety
    ///
    /// The tiles are configured; `a` holds MR rows of `depth.stride` words; the block's region
    /// of `C` is inside it and this task's, written before unless `depth.from` is 0 and not
    /// `accumulate`.
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    unsafe fn partial_sums(
        &self,
        (a, first): (*const u32, usize),
        (s, tail): (usize, Option<&Tail>),
        depth: Depth,
        block: &mut Block,
    ) {
        let (tile_rows, cols) = self.block_shape(first, s);
        let c = self.c.ptr.wrapping_add(first * self.c.row_stride + s * 32);
        let accumulate = self.accumulate || depth.from > 0;
        // A whole block unscaled goes from the tiles to the output and back, without the block
        // buffer and its pass.
        let whole = tile_rows == MR && cols == 32 && self.alpha == 1.0;
        // SAFETY: the caller's promises; a whole block's 32 × 32 from `c` is inside the output.
        unsafe {
            match (whole, accumulate) {
                (true, true) => tiles::load_from(c, self.c.row_stride),
                _ => tiles::zero(),
            }
            self.add_strip((a, first), (s, tail), depth);
            if whole {
                tiles::store_to(c, self.c.row_stride);
                return;
            }
            tiles::store(block);
            let shape = (tile_rows, cols);
            scale_into(block, c, self.c.row_stride, shape, self.alpha, accumulate);
        }
    }

    /// The block of `C` at row `first` of strip `s`, summed over the whole depth, into
    /// `block`: the sums of `depth` and, after the first depth block, the partial ones in `C`.
    ///
    /// # Safety
    ///
    /// As [`Job::partial_sums`], `C` written before when `depth.from > 0`.
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    unsafe fn sums_into(
        &self,
        block: &mut Block,
        (a, first): (*const u32, usize),
        (s, tail): (usize, Option<&Tail>),
        depth: Depth,
    ) {
        let (tile_rows, cols) = self.block_shape(first, s);
        let c = self.c.ptr.wrapping_add(first * self.c.row_stride + s * 32);
        let whole = tile_rows == MR && cols == 32;
        // SAFETY: the caller's promises.
        unsafe {
            match (whole, depth.from > 0) {
                (true, true) => tiles::load_from(c, self.c.row_stride),
                _ => tiles::zero(),
            }
            self.add_strip((a, first), (s, tail), depth);
            tiles::store(block);
        }
        if depth.from > 0 && !whole {
            for r in 0..tile_rows {
                for (col, sum) in block.0[r * 32..][..cols].iter_mut().enumerate() {
                    // SAFETY: inside the block's region of `C`, written before.
                    *sum += unsafe { *c.add(r * self.c.row_stride + col) };
                }
            }
        }
    }

    /// The rows and columns of the block at row `first` of strip `s` that are the output's.
    #[cfg(target_arch = "x86_64")]
    fn block_shape(&self, first: usize, s: usize) -> (usize, usize) {
        (
            MR.min(self.a.rows - first),
            super::NR.min(self.b.cols - s * super::NR),
        )
    }

    /// Adds the block's product over `depth` to the tiles.
    ///
    /// # Safety
    ///
    /// As [`Job::partial_sums`].
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    unsafe fn add_strip(
        &self,
        (a, first): (*const u32, usize),
        (s, tail): (usize, Option<&Tail>),
        depth: Depth,
    ) {
        let (tile_rows, cols) = self.block_shape(first, s);
        let b = self.b.strip(s, depth.from, depth.len).as_ptr();
        // Row and column tiles that hold nothing of the output are skipped.
        let shape = (tile_rows > TILE, cols > TILE);
        let steps = depth.len / TILE;
        // SAFETY: `a` holds MR rows of `stride ≥ 16·(steps + 1)` words, `b` `steps·16 ≤ len`
        // pairs of 32 words `pair_stride` apart (a strip's slice), the tail 16 pairs of 32
        // (the caller's promises).
        unsafe {
            tiles::add_product(
                (a, depth.stride),
                (b, self.b.pair_stride),
                steps,
                tail,
                shape,
            )
        };
    }

    /// Stand-in off x86-64, where [`supported`] is false and nothing calls it.
    #[cfg(not(target_arch = "x86_64"))]
    #[allow(unsafe_code)]
    pub(super) unsafe fn block_on_tiles(
        &self,
        _: std::ops::Range<usize>,
        _: std::ops::Range<usize>,
    ) {
        unreachable!("bf16 gemm on AMX tiles off x86-64");
    }
}

/// `C ← α·block (+ C)` for the `rows × cols` of `block` that are the output's.
///
/// # Safety
///
/// The CPU has AVX-512F; `c` is valid for `rows` rows (`row_stride` apart) of `cols` values,
/// written before when `accumulate`; `rows ≤ 32`, `cols ≤ 32`.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn scale_into(
    block: &Block,
    c: *mut f32,
    row_stride: usize,
    (rows, cols): (usize, usize),
    alpha: f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let alpha = _mm512_set1_ps(alpha);
    for r in 0..rows {
        for first in (0..cols).step_by(16) {
            let mask: __mmask16 = crate::kernels::lanes(cols - first);
            // SAFETY: the block holds 32 rows of 32; the lanes under `mask` are inside the
            // output's region (the caller's promise).
            unsafe {
                let value = _mm512_loadu_ps(block.0.as_ptr().add(r * 32 + first));
                let ptr = c.add(r * row_stride + first);
                let value = if accumulate {
                    _mm512_fmadd_ps(value, alpha, _mm512_maskz_loadu_ps(mask, ptr))
                } else {
                    _mm512_mul_ps(value, alpha)
                };
                _mm512_mask_storeu_ps(ptr, mask, value);
            }
        }
    }
}

/// `out ← Σ A_t·B_t` over `terms` (each `rows × depth` by `depth × cols`), summed in the tiles:
/// a convolution's taps, whose products would otherwise each add their `C` into the output
/// (nine passes over a map of f32 for a 3×3 kernel). Tasks are blocks of [`MR`] rows by groups
/// of column strips; each packs its rows of every term's `A` once, then runs every strip
/// through all the terms before storing it, or handing it to `finish` (the sums then never
/// reach `out`). Within a strip the terms take turns at each step of depth: a convolution's
/// taps along a row read nearly the same words of `B`, which then come from L1 for all but
/// the first, where a term's whole depth at a time had evicted them (12–18 % off the UNet's
/// 32×32 and the VAE's bf16 convolutions, `engine --part conv --dtype bf16`); and the lines
/// the next strip reads are prefetched as each step runs ([`tiles::add_sum_of_products`]).
///
/// # Safety
///
/// The CPU has AVX512-BF16 and AMX ([`supported`]); the terms' shapes agree and `out` holds
/// their `rows × cols` (checked by the caller, [`super::matmul_sum_to_bf16`]).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(super) unsafe fn sum_of_products(
    out: super::Tile,
    terms: &[(super::View<'_>, super::PairedB<'_>)],
    parallel: bool,
    finish: Option<super::Finish<'_>>,
) {
    let (a0, b0) = terms[0];
    let (rows, pairs, cols) = (a0.rows, b0.pairs, b0.cols);
    let (strips, stride) = (b0.strips(), stride(pairs));
    // A laid out for the tiles (`View::in_tile_rows`) has rows `stride` words apart.
    let in_place = terms.iter().all(|(a, _)| a.tile_rows);
    let row_blocks = rows.div_ceil(MR);
    let wanted = if parallel {
        4 * rayon::current_num_threads()
    } else {
        1
    };
    let column_groups = wanted.div_ceil(row_blocks).clamp(1, strips);
    let leads = lines_apart(terms);
    let strips_per_group = strips.div_ceil(column_groups);
    let run = |task: usize| {
        let (block, group) = (task / column_groups, task % column_groups);
        let first = block * MR;
        let rows = first..(first + MR).min(rows);
        let strips = group * strips_per_group..((group + 1) * strips_per_group).min(strips);
        super::PACKED_A.with(|packed| {
            let packed = &mut *packed.borrow_mut();
            // Each term's rows of `A`, `stride` words apart: in place where the maker laid
            // them out so, packed here otherwise.
            let rows_of_a: Vec<*const u32> = if in_place {
                let at = |a: &super::View<'_>| match a.values {
                    super::Values::Bf16(v) => v[a.start + first * a.row_stride..].as_ptr().cast(),
                    super::Values::F32(_) => unreachable!("tile rows are bf16"),
                };
                terms.iter().map(|(a, _)| at(a)).collect()
            } else {
                packed.reset(terms.len() * MR * stride);
                let each = packed.as_mut_slice().chunks_exact_mut(MR * stride);
                for ((a, _), into) in terms.iter().zip(each) {
                    super::pack_a_into(a, rows.clone(), (0, pairs), stride, into);
                }
                let packed = packed.as_slice().chunks_exact(MR * stride);
                packed.map(<[u32]>::as_ptr).collect()
            };
            let (steps, ragged) = (pairs / TILE, !pairs.is_multiple_of(TILE));
            let mut tails = vec![Tail([0; TILE * 32]); if ragged { terms.len() } else { 0 }];
            let mut block = Block([0.0; MR * 32]);
            let tile_rows = rows.len();
            // Each term's `A` and strip of `B`, and the strips to prefetch from: per strip.
            let mut operands = Vec::with_capacity(terms.len());
            let mut ahead = Vec::with_capacity(leads.len());
            // SAFETY: the CPU has AMX (the caller's promise).
            unsafe { tiles::configure() };
            for s in strips {
                let width = super::NR.min(cols - s * super::NR);
                for (tail, (_, b)) in tails.iter_mut().zip(terms) {
                    copy_ragged_pairs(b.strip(s, 0, pairs), b0.pair_stride, (steps, pairs), tail);
                }
                // SAFETY: each term's `A` holds MR rows of `stride ≥ 16·(steps + 1)` words
                // (packed above, or laid out so by its maker: `View::in_tile_rows` asserts
                // that its rows up to a whole block are inside its values), its `B` strip `pairs` pairs of 32 words `pair_stride` apart, its tail
                // 16 pairs of 32; the tiles were configured above.
                unsafe {
                    tiles::zero();
                    operands.clear();
                    operands.extend(
                        (rows_of_a.iter().zip(terms))
                            .map(|(&a, (_, b))| (a, b.strip(s, 0, pairs).as_ptr())),
                    );
                    ahead.clear();
                    ahead.extend(leads.iter().map(|&t| operands[t].1));
                    let strides = (stride, b0.pair_stride);
                    let tails = ragged.then_some(&tails[..]);
                    let shape = (tile_rows > TILE, width > TILE);
                    tiles::add_sum_of_products((&operands, &ahead), strides, steps, tails, shape);
                    if let Some(finish) = finish {
                        // The block's region of the finished output is this task's.
                        tiles::store(&mut block);
                        let (columns, sums) = ((s * super::NR, width), block_sums(&block));
                        finish
                            .epilogue
                            .finish(finish.out, rows.clone(), columns, sums, None);
                        continue;
                    }
                    if tile_rows == MR && width == 32 {
                        // A whole block goes from the tiles to the output, without the block
                        // buffer and its pass; its 32 × 32 is inside the output and this
                        // task's.
                        tiles::store_to(out.at(first, s * super::NR), out.row_stride());
                        continue;
                    }
                    tiles::store(&mut block);
                }
                let c = out.at(first, s * super::NR);
                // SAFETY: the `tile_rows × width` region from `c` is inside the output and
                // this task's alone.
                unsafe { scale_into(&block, c, out.row_stride(), (tile_rows, width), 1.0, false) };
            }
            // SAFETY: as above.
            unsafe { tiles::release() };
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

/// The terms whose strips of `B` start a run of lines of their own, in order: a term whose
/// strip starts within a few words after one of them (a convolution's taps along a row, a word
/// apart) reads that term's lines.
#[cfg(target_arch = "x86_64")]
fn lines_apart(terms: &[(super::View<'_>, super::PairedB<'_>)]) -> Vec<usize> {
    /// A few words, in bytes.
    const NEAR: usize = 8 * std::mem::size_of::<u32>();
    let start = |t: usize| terms[t].1.strip(0, 0, 1).as_ptr() as usize;
    let mut leads: Vec<usize> = Vec::new();
    for t in 0..terms.len() {
        let near = |&l: &usize| (start(l)..start(l) + NEAR).contains(&start(t));
        if !leads.iter().any(near) {
            leads.push(t);
        }
    }
    leads
}

/// Stand-in off x86-64, where [`supported`] is false and nothing calls it.
#[cfg(not(target_arch = "x86_64"))]
#[allow(unsafe_code)]
pub(super) unsafe fn sum_of_products(
    _: super::Tile,
    _: &[(super::View<'_>, super::PairedB<'_>)],
    _: bool,
    _: Option<super::Finish<'_>>,
) {
    unreachable!("bf16 gemm on AMX tiles off x86-64");
}
