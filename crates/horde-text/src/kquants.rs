//! Q4_K and Q6_K matrices times one activation row (a decode step's matrix-vector products) with
//! AVX-512, on the GGUF's own blocks.
//!
//! Why: a decode step is bound by the bytes of weights it reads and by its per-row work. candle
//! 0.11 runs single-row Q4_K products on a repacked copy of the weights whose per-row scales are
//! unpacked to f32 (3072 bytes per 16 rows × 256 values against the file's 2304: on the
//! benchmark's Q4_K_M model, the Q4_K weights a third heavier than llama.cpp's), and Q6_K ones
//! (the output matrix of a Q4_K_M model, half its FFN-down and V matrices) with 256-bit AVX2.
//! These kernels read the blocks as they are, with llama.cpp's arithmetic
//! (`ggml_vec_dot_q4_K_q8_K`, `ggml_vec_dot_q6_K_q8_K`, as candle's AVX2 `vec_dot_q4k_q8k` and
//! `vec_dot_q6k_q8k` port them), 64 values per 512-bit register: the activation is rounded to
//! Q8_K (256 values a block, candle's and llama.cpp's rounding), the products and the 6-bit or
//! 8-bit scales are summed in integers, the mins (Q4_K) and the −32 offset (Q6_K) corrected
//! through the Q8_K sums of 16. The rows of all the matrices of one call are shared out in one
//! parallel region of candle's matmul pool. CPUs without AVX-512 F/BW take candle's kernels
//! ([`Gemv::available`]).

use candle_core::quantized::{GgmlDType, QTensor};

const QK_K: usize = 256;
/// Rows a worker takes at a time.
const ROWS_PER_ITEM: usize = 16;

/// One activation row rounded to Q8_K.
pub(crate) struct Q8K {
    /// Per block: the scale.
    d: Vec<f32>,
    /// Per block: the 256 values.
    qs: Vec<i8>,
    /// Per block: the sum of each 16 values (Q6_K's scales) and of each 32 (Q4_K's mins).
    sums: Vec<i16>,
    sums32: Vec<i16>,
}

impl Q8K {
    /// llama.cpp's `quantize_row_q8_K` (candle's `BlockQ8K::from_float`) of `x`.
    pub(crate) fn quantize(x: &[f32]) -> Self {
        let blocks = x.len() / QK_K;
        let mut q = Self {
            d: Vec::with_capacity(blocks),
            qs: vec![0; blocks * QK_K],
            sums: vec![0; blocks * 16],
            sums32: vec![0; blocks * 8],
        };
        for (b, xs) in x.chunks_exact(QK_K).enumerate() {
            let (amax, max) = xs.iter().fold((0f32, 0f32), |(amax, max), &v| {
                if amax < v.abs() {
                    (v.abs(), v)
                } else {
                    (amax, max)
                }
            });
            if amax == 0.0 {
                q.d.push(0.0);
                continue;
            }
            let iscale = -127f32 / max;
            let values = &mut q.qs[b * QK_K..(b + 1) * QK_K];
            for (v, x) in values.iter_mut().zip(xs) {
                *v = (iscale * x).round().clamp(-128.0, 127.0) as i8;
            }
            for (s, group) in q.sums[b * 16..].iter_mut().zip(values.chunks_exact(16)) {
                *s = group.iter().map(|&v| i16::from(v)).sum();
            }
            for (s, pair) in q.sums32[b * 8..]
                .iter_mut()
                .zip(q.sums[b * 16..].chunks_exact(2))
            {
                *s = pair[0] + pair[1];
            }
            q.d.push(1.0 / iscale);
        }
        q
    }
}

/// The K-quant matrices these kernels take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Q4K,
    Q6K,
}

impl Kind {
    fn of(w: &QTensor) -> Option<Self> {
        match w.dtype() {
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    /// Bytes of a block of 256 values: Q4_K `d`, `dmin` (f16), 12 bytes of packed 6-bit scales
    /// and mins, 128 of nibbles; Q6_K 128 bytes of low nibbles, 64 of high bit pairs, 16 i8
    /// scales, `d` (f16).
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }
}

/// Single-row products of Q4_K and Q6_K matrices.
pub(crate) struct Gemv;

impl Gemv {
    /// Whether this CPU has the instructions (AVX-512 F and BW, F16C, FMA).
    pub(crate) fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("f16c")
                && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Whether `w` is a CPU Q4_K or Q6_K matrix of whole blocks (and the CPU has the kernels).
    pub(crate) fn takes(w: &QTensor) -> bool {
        Kind::of(w).is_some()
            && w.device().is_cpu()
            && w.shape().dims2().is_ok_and(|(_, k)| k % QK_K == 0)
            && Self::available()
    }

    /// `w · x` for each `[n, k]` matrix `w` of `ws` and the activation `x` (from
    /// [`Q8K::quantize`]), in one parallel region of candle's matmul thread pool. Each `w` must
    /// pass [`Self::takes`].
    pub(crate) fn forward(ws: &[&QTensor], x: &Q8K) -> candle_core::Result<Vec<Vec<f32>>> {
        let mut matrices = Vec::with_capacity(ws.len());
        let mut outs = Vec::with_capacity(ws.len());
        for w in ws {
            let (n, k) = w.shape().dims2()?;
            let bytes = w.data()?;
            let kind = Kind::of(w).filter(|_| Self::takes(w));
            let row_bytes = kind.map_or(0, |kind| x.d.len() * kind.block_bytes());
            let (Some(kind), true) = (kind, k / QK_K == x.d.len() && bytes.len() == n * row_bytes)
            else {
                candle_core::bail!(
                    "gemv: a [{n}, {k}] {:?} matrix against {} Q8_K blocks",
                    w.dtype(),
                    x.d.len()
                );
            };
            matrices.push((kind, bytes, row_bytes));
            outs.push(vec![0f32; n]);
        }
        // (matrix, first row, its output rows): the work items.
        let slots: Vec<(usize, usize, std::sync::Mutex<&mut [f32]>)> = outs
            .iter_mut()
            .enumerate()
            .flat_map(|(i, out)| {
                out.chunks_mut(ROWS_PER_ITEM)
                    .enumerate()
                    .map(move |(c, rows)| (i, c * ROWS_PER_ITEM, std::sync::Mutex::new(rows)))
            })
            .collect();
        candle_core::utils::barrier_pool().execute_chunked(slots.len(), |items| {
            for (i, first, rows) in &slots[items] {
                let (kind, data, row_bytes) = &matrices[*i];
                let mut dst = rows.lock().unwrap_or_else(|e| e.into_inner());
                for (r, d) in dst.iter_mut().enumerate() {
                    let at = (first + r) * row_bytes;
                    *d = row_dot(*kind, &data[at..at + row_bytes], x);
                }
            }
        });
        drop(slots);
        Ok(outs)
    }
}

/// One row's dot product (the row: `x.d.len()` blocks of `kind`).
fn row_dot(kind: Kind, row: &[u8], x: &Q8K) -> f32 {
    debug_assert_eq!(row.len(), x.d.len() * kind.block_bytes());
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `Gemv::forward` runs only where `takes` saw AVX-512 F and BW, F16C and FMA,
        // and passes a row of exactly `x.d.len()` blocks of `kind`.
        #[allow(unsafe_code)]
        unsafe {
            match kind {
                Kind::Q4K => avx512::q4k_row(row, x),
                Kind::Q6K => avx512::q6k_row(row, x),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, row, x);
        unreachable!("Gemv::takes is false off x86_64")
    }
}

/// The six-bit scales and mins of a Q4_K block (llama.cpp's `utmp` unpacking): little-endian,
/// the bytes of the first two words are the 8 scales, of the last two the 8 mins.
#[inline(always)]
fn scales_and_mins(packed: &[u8]) -> [u32; 4] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let word =
        |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (u0, u1, u2) = (word(0), word(4), word(8));
    [
        u0 & KMASK1,
        (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4),
        u1 & KMASK1,
        ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4),
    ]
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{scales_and_mins, Q8K, QK_K};

    /// i16 lane indices: each of the 32 lanes' scale, eight lanes (16 values) a scale.
    fn eights(first: [i16; 4]) -> [i16; 32] {
        std::array::from_fn(|i| first[i / 8])
    }

    /// i16 lane indices: `a` in the low 16 lanes (32 values), `b` in the high.
    fn halves(a: i16, b: i16) -> [i16; 32] {
        std::array::from_fn(|i| if i < 16 { a } else { b })
    }

    /// 64 activation values: 32 from `q8 + a` in the low and 32 from `q8 + b` in the high half.
    ///
    /// # Safety
    /// AVX-512F; `q8 + a` and `q8 + b` are followed by 32 readable bytes.
    #[inline(always)]
    unsafe fn pair(q8: *const i8, a: usize, b: usize) -> __m512i {
        let lo = _mm256_loadu_si256(q8.add(a).cast());
        let hi = _mm256_loadu_si256(q8.add(b).cast());
        _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
    }

    /// A Q4_K row against `x`.
    ///
    /// # Safety
    /// AVX-512 F and BW, F16C, FMA; `row` holds `x.d.len()` blocks of 144 bytes.
    #[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
    pub(super) unsafe fn q4k_row(row: &[u8], x: &Q8K) -> f32 {
        // Each 64 bytes of nibbles hold 32-value groups (4h, 4h+2) in their low and (4h+1,
        // 4h+3) in their high nibbles; a scale is the group's.
        let idx = [halves(0, 2), halves(1, 3), halves(4, 6), halves(5, 7)]
            .map(|i| _mm512_loadu_si512(i.as_ptr().cast()));
        let m4 = _mm512_set1_epi8(0x0F);
        let mut acc = _mm512_setzero_ps();
        let mut acc_m = _mm_setzero_ps();
        for (b, block) in row.chunks_exact(144).enumerate() {
            // SAFETY (loads): `block` is 144 bytes (`d`, `dmin` at 0..4, nibbles at 16..144);
            // `x.qs` holds `QK_K` values and `x.sums32` 8 sums for block `b`.
            let d_dmin = _mm_mul_ps(
                _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([
                    block[0], block[1], block[2], block[3],
                ]))),
                _mm_set1_ps(x.d[b]),
            );
            let [s0, s1, m0, m1] = scales_and_mins(&block[4..16]);
            let mins = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, m1 as i32, m0 as i32));
            let sums = _mm_loadu_si128(x.sums32.as_ptr().add(b * 8).cast());
            let dmin = _mm_shuffle_ps::<0b01_01_01_01>(d_dmin, d_dmin);
            acc_m = _mm_fmadd_ps(dmin, _mm_cvtepi32_ps(_mm_madd_epi16(mins, sums)), acc_m);
            let scales = _mm512_cvtepu8_epi16(_mm256_zextsi128_si256(_mm_set_epi32(
                0, 0, s1 as i32, s0 as i32,
            )));
            let d = _mm_cvtss_f32(d_dmin);
            let q4 = block.as_ptr().add(16);
            let q8 = x.qs.as_ptr().add(b * QK_K);
            let mut sumi = _mm512_setzero_si512();
            for h in 0..2 {
                let bits = _mm512_loadu_si512(q4.add(64 * h).cast());
                let lo = _mm512_and_si512(bits, m4);
                let hi = _mm512_and_si512(_mm512_srli_epi16(bits, 4), m4);
                let base = 128 * h;
                for (i, (w, a)) in [
                    (lo, pair(q8, base, base + 64)),
                    (hi, pair(q8, base + 32, base + 96)),
                ]
                .into_iter()
                .enumerate()
                {
                    let s = _mm512_permutexvar_epi16(idx[2 * h + i], scales);
                    let p = _mm512_madd_epi16(s, _mm512_maddubs_epi16(w, a));
                    sumi = _mm512_add_epi32(sumi, p);
                }
            }
            acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
        }
        _mm512_reduce_add_ps(acc) - hsum(acc_m)
    }

    /// The sum of the four lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m128) -> f32 {
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps::<1>(v, v)))
    }

    /// A Q6_K row against `x`.
    ///
    /// # Safety
    /// AVX-512 F and BW, F16C, FMA; `row` holds `x.d.len()` blocks of 210 bytes.
    #[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
    pub(super) unsafe fn q6k_row(row: &[u8], x: &Q8K) -> f32 {
        // Per 128 values (half h): the low nibbles of 64 bytes of `ql` are values 0..64, their
        // high nibbles 64..128; bit pairs 0, 1, 2, 3 of 32 bytes of `qh` top values 0..32,
        // 32..64, 64..96, 96..128. A scale covers 16 values.
        let idx = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
            .map(|s| _mm512_loadu_si512(eights(s).as_ptr().cast()));
        // Per 16-bit lane: shift the low 32 bytes' `qh` by 0 (values 0..32) and the high's by 2
        // (32..64); 4 and 6 for the upper 64 values.
        let shift_low = _mm512_loadu_si512(halves(0, 2).as_ptr().cast());
        let shift_high = _mm512_loadu_si512(halves(4, 6).as_ptr().cast());
        let (m4, m2) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(3));
        let mut acc = _mm512_setzero_ps();
        let mut acc_offset = _mm256_setzero_ps();
        for (b, block) in row.chunks_exact(210).enumerate() {
            // SAFETY (loads): `block` is 210 bytes (`ql` 0..128, `qh` 128..192, scales
            // 192..208, `d` 208..210); `x.qs` holds `QK_K` values and `x.sums` 16 sums for
            // block `b`.
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
                u16::from_le_bytes([block[208], block[209]]),
            )))) * x.d[b];
            let scales = _mm512_cvtepi8_epi16(_mm256_zextsi128_si256(_mm_loadu_si128(
                block.as_ptr().add(192).cast(),
            )));
            let sums = _mm256_loadu_si256(x.sums.as_ptr().add(b * 16).cast());
            let offset = _mm256_madd_epi16(_mm512_castsi512_si256(scales), sums);
            acc_offset = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(offset), acc_offset);
            let q8 = x.qs.as_ptr().add(b * QK_K);
            let mut sumi = _mm512_setzero_si512();
            for h in 0..2 {
                let ql = _mm512_loadu_si512(block.as_ptr().add(64 * h).cast());
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    block.as_ptr().add(128 + 32 * h).cast(),
                ));
                let top = |shift| {
                    _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, shift), m2), 4)
                };
                let low = _mm512_or_si512(_mm512_and_si512(ql, m4), top(shift_low));
                let high = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                    top(shift_high),
                );
                for (i, w) in [low, high].into_iter().enumerate() {
                    let a = _mm512_loadu_si512(q8.add(128 * h + 64 * i).cast());
                    let s = _mm512_permutexvar_epi16(idx[2 * h + i], scales);
                    let p = _mm512_madd_epi16(s, _mm512_maddubs_epi16(w, a));
                    sumi = _mm512_add_epi32(sumi, p);
                }
            }
            acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
        }
        let offset = _mm_add_ps(
            _mm256_castps256_ps128(acc_offset),
            _mm256_extractf128_ps::<1>(acc_offset),
        );
        _mm512_reduce_add_ps(acc) - 32.0 * hsum(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    /// A random `[n, k]` matrix quantised to `dtype` by candle, and a random activation row.
    fn case(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> (QTensor, Vec<f32>, Tensor) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x: Vec<f32> = (0..k).map(|_| rng.random_range(-2.0..2.0)).collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let dequantized = q.dequantize(&Device::Cpu).unwrap();
        (q, x, dequantized)
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }

    fn row(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn matches_candles_products_and_the_dequantized_ones() {
        if !Gemv::available() {
            eprintln!("no AVX-512 F/BW here: the kernels are not used");
            return;
        }
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            for (n, k, seed) in [(48, 256, 1), (40, 768, 2), (64, 2048, 3)] {
                let (q, x, dequantized) = case(dtype, n, k, seed);
                let ours = Gemv::forward(&[&q], &Q8K::quantize(&x)).unwrap().remove(0);
                let input = Tensor::from_slice(&x, (1, k), &Device::Cpu).unwrap();
                let candle = row(&QMatMul::from_qtensor(q).unwrap().forward(&input).unwrap());
                let exact = row(&input.matmul(&dequantized.t().unwrap()).unwrap());
                let scale = exact.iter().map(|v| v.abs()).fold(0.0, f32::max);
                let (vs_candle, vs_exact) = (max_diff(&ours, &candle), max_diff(&ours, &exact));
                println!("{dtype:?} [{n}, {k}]: |ours − candle| ≤ {vs_candle:.2e}, |ours − f32| ≤ {vs_exact:.2e} (outputs up to {scale:.1})");
                // Same rounding of the activation, integer sums: only the float order differs.
                assert!(
                    vs_candle <= 1e-5 * scale,
                    "{dtype:?} [{n}, {k}]: {vs_candle} off candle's"
                );
                // The activation's 8-bit rounding: about 1% of the largest output.
                assert!(
                    vs_exact <= 2e-2 * scale,
                    "{dtype:?} [{n}, {k}]: {vs_exact} off f32"
                );
            }
        }
    }

    #[test]
    fn one_call_runs_several_matrices_of_both_kinds() {
        if !Gemv::available() {
            return;
        }
        let (a, x, _) = case(GgmlDType::Q4K, 32, 512, 4);
        let (b, _, _) = case(GgmlDType::Q6K, 80, 512, 5);
        let q8 = Q8K::quantize(&x);
        let both = Gemv::forward(&[&a, &b], &q8).unwrap();
        assert_eq!(both[0], Gemv::forward(&[&a], &q8).unwrap()[0]);
        assert_eq!(both[1], Gemv::forward(&[&b], &q8).unwrap()[0]);
        assert_eq!((both[0].len(), both[1].len()), (32, 80));
        let (c, _, _) = case(GgmlDType::Q4K, 16, 256, 6);
        assert!(
            Gemv::forward(&[&c], &q8).is_err(),
            "a matrix 256 wide against 512 values"
        );
    }

    #[test]
    fn unpacks_the_six_bit_scales_as_llama_cpp() {
        // Scales 1..8 and mins 41..48, packed as llama.cpp's `quantize_row_q4_K` writes them.
        let (sc, mn): (Vec<u8>, Vec<u8>) = ((1..=8).collect(), (41..=48).collect());
        let mut packed = [0u8; 12];
        for j in 0..4 {
            packed[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            packed[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            packed[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
        }
        let out: Vec<u8> = scales_and_mins(&packed)
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert_eq!(&out[..8], &sc[..]);
        assert_eq!(&out[8..], &mn[..]);
    }
}
