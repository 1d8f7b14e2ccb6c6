//! The llama-family transformer (llama — Llama 1/2/3, Mistral — and qwen2) over a GGUF's weights,
//! with candle's quantized matrix multiplies and everything between them in plain Rust.
//!
//! Why not candle-transformers' `quantized_llama` / `quantized_qwen2`, which the engine ran
//! before: a generated token is one row through ~9 matrix multiplies a layer, and on a small
//! model the ~30 tensor ops around them (norms, RoPE, the cache's `Tensor::cat`, `repeat_kv`,
//! softmax, each with its allocation and dispatch, some through rayon beside candle's spinning
//! matmul pool) took a third of a decode step (`perf`, BENCHMARKS.md). Here the weights are the
//! same `QMatMul`s with the same kernels, the K/V cache grows in place (no copy per step),
//! grouped-query attention reads the shared K/V heads directly, the q/k/v and gate/up matrices
//! of a decode step share one quantised activation row (`QTensor::gemv_fused_shared_lhs`), and
//! attention runs on candle's own thread pool. The arithmetic is the one candle-transformers
//! does (checked against llama.cpp by tests/llama_cpp_numbers.rs).

use std::sync::Mutex;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use crate::gguf::{Architecture, GgufFile};
use crate::kquants::{Gemv, Q8K};
use crate::TextError;

/// A matrix (`[out, in]`, as GGUF stores it) and its optional bias (qwen2's q/k/v).
struct Linear {
    weight: QMatMul,
    bias: Option<Vec<f32>>,
    device: Device,
}

impl Linear {
    /// `m` rows of `x` (each `in` long) times the matrix's transpose, plus the bias.
    fn forward(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        if m == 1 {
            if let Some(w) = self.kquant() {
                let mut out = Gemv::forward(&[w], &Q8K::quantize(x))?.remove(0);
                self.add_bias(&mut out);
                return Ok(out);
            }
        }
        let input = Tensor::from_slice(x, (m, x.len() / m), &self.device)?;
        let mut out = self.weight.forward(&input)?.flatten_all()?.to_vec1()?;
        self.add_bias(&mut out);
        Ok(out)
    }

    fn add_bias(&self, out: &mut [f32]) {
        if let Some(bias) = &self.bias {
            for row in out.chunks_exact_mut(bias.len()) {
                add(row, bias);
            }
        }
    }

    /// The matrix, if the Q4_K/Q6_K kernels take it.
    fn kquant(&self) -> Option<&QTensor> {
        self.quantized().filter(|w| Gemv::takes(w))
    }

    fn quantized(&self) -> Option<&QTensor> {
        match &self.weight {
            QMatMul::QTensor(t) => Some(t),
            _ => None,
        }
    }
}

/// Several matrices applied to the same `x`. For a single row: `x` rounded once for those the
/// Q4_K/Q6_K kernels take; else, for quantised weights of one type, candle's fused product (one
/// rounding, one parallel region).
fn forward_shared(linears: &[&Linear], x: &[f32], m: usize) -> candle_core::Result<Vec<Vec<f32>>> {
    if m == 1 && linears.iter().any(|l| l.kquant().is_some()) {
        // The K-quant ones in one parallel region, the others one by one.
        let kquants: Vec<&QTensor> = linears.iter().filter_map(|l| l.kquant()).collect();
        let mut kquant_outs = Gemv::forward(&kquants, &Q8K::quantize(x))?.into_iter();
        return linears
            .iter()
            .map(|l| match l.kquant() {
                Some(_) => {
                    let mut out = next(&mut kquant_outs)?;
                    l.add_bias(&mut out);
                    Ok(out)
                }
                None => l.forward(x, 1),
            })
            .collect();
    }
    let quantized: Option<Vec<&QTensor>> = linears.iter().map(|l| l.quantized()).collect();
    if let (1, Some(weights)) = (m, quantized) {
        let input = Tensor::from_slice(x, (1, x.len()), &linears[0].device)?;
        if let Some(outs) = QTensor::gemv_fused_shared_lhs(&weights, &input)? {
            return linears
                .iter()
                .zip(outs)
                .map(|(linear, out)| {
                    let mut out: Vec<f32> = out.flatten_all()?.to_vec1()?;
                    linear.add_bias(&mut out);
                    Ok(out)
                })
                .collect();
        }
    }
    linears.iter().map(|l| l.forward(x, m)).collect()
}

struct Layer {
    attn_norm: Vec<f32>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
    /// The cached keys and values, one `kv_dim` row per position (RoPE applied to the keys).
    keys: Vec<f32>,
    values: Vec<f32>,
}

/// The shape of the attention and the rotary embedding's tables.
struct Attention {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
    /// NeoX RoPE (qwen2: pairs `i`, `i + d/2`) or interleaved (llama: pairs `2i`, `2i + 1`).
    neox: bool,
    /// `cos`/`sin` of position × frequency, `head_dim / 2` per position.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// A loaded transformer and its K/V cache.
pub(crate) struct Transformer {
    embeddings: Vec<f32>,
    dim: usize,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Linear,
    attention: Attention,
    positions: usize,
}

/// Reads the tensors and hyper-parameters of a llama-family GGUF.
struct Loader<'a> {
    gguf: &'a mut GgufFile,
    device: &'a Device,
    arch: &'static str,
}

impl Loader<'_> {
    fn qtensor(&mut self, name: &str) -> Result<QTensor, TextError> {
        let GgufFile {
            content,
            file,
            path,
        } = &mut *self.gguf;
        content
            .tensor(file, name, self.device)
            .map_err(|source| TextError::Gguf {
                path: path.clone(),
                source: source.context(format!("tensor {name}")),
            })
    }

    fn vector(&mut self, name: &str) -> Result<Vec<f32>, TextError> {
        let t = self.qtensor(name)?;
        Ok(t.dequantize(self.device)?.flatten_all()?.to_vec1()?)
    }

    fn linear(&mut self, name: &str, biased: bool) -> Result<Linear, TextError> {
        let weight = QMatMul::from_qtensor(self.qtensor(&format!("{name}.weight"))?)?;
        let bias = match biased {
            true => Some(self.vector(&format!("{name}.bias"))?),
            false => None,
        };
        Ok(Linear {
            weight,
            bias,
            device: self.device.clone(),
        })
    }

    fn layer(&mut self, i: usize) -> Result<Layer, TextError> {
        let p = format!("blk.{i}");
        let biased = self.arch == "qwen2";
        Ok(Layer {
            attn_norm: self.vector(&format!("{p}.attn_norm.weight"))?,
            q: self.linear(&format!("{p}.attn_q"), biased)?,
            k: self.linear(&format!("{p}.attn_k"), biased)?,
            v: self.linear(&format!("{p}.attn_v"), biased)?,
            o: self.linear(&format!("{p}.attn_output"), false)?,
            ffn_norm: self.vector(&format!("{p}.ffn_norm.weight"))?,
            gate: self.linear(&format!("{p}.ffn_gate"), false)?,
            up: self.linear(&format!("{p}.ffn_up"), false)?,
            down: self.linear(&format!("{p}.ffn_down"), false)?,
            keys: Vec::new(),
            values: Vec::new(),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.arch)
    }

    /// The attention's shape; RoPE tables for `positions`, as candle-transformers computes them.
    fn attention(&self, positions: usize) -> Result<Attention, TextError> {
        let heads = self.gguf.usize(&self.key("attention.head_count"))?;
        let kv_heads = self.gguf.usize(&self.key("attention.head_count_kv"))?;
        let dim = self.gguf.usize(&self.key("embedding_length"))?;
        let eps = self
            .gguf
            .f32(&self.key("attention.layer_norm_rms_epsilon"))?;
        let base = self.gguf.optional_f32(&self.key("rope.freq_base"))?;
        let head_dim = dim / heads;
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || head_dim % 2 != 0 {
            return Err(self.gguf.bad(
                &self.key("attention.head_count_kv"),
                format!("{heads} heads of {head_dim} over {kv_heads} KV heads"),
            ));
        }
        let theta: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / base.unwrap_or(10000.0).powf(i as f32 / head_dim as f32))
            .collect();
        let angles: Vec<f32> = (0..positions)
            .flat_map(|p| theta.iter().map(move |t| p as f32 * t))
            .collect();
        Ok(Attention {
            heads,
            kv_heads,
            head_dim,
            eps,
            neox: self.arch == "qwen2",
            cos: angles.iter().map(|a| a.cos()).collect(),
            sin: angles.iter().map(|a| a.sin()).collect(),
        })
    }
}

impl Transformer {
    /// The model of `gguf`, with room for `positions` tokens.
    pub(crate) fn load(
        gguf: &mut GgufFile,
        architecture: Architecture,
        positions: usize,
        device: &Device,
    ) -> Result<Self, TextError> {
        let arch = match architecture {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        };
        let mut loader = Loader { gguf, device, arch };
        let dim = loader.gguf.usize(&loader.key("embedding_length"))?;
        let blocks = loader.gguf.usize(&loader.key("block_count"))?;
        let attention = loader.attention(positions)?;
        let embeddings = loader.vector("token_embd.weight")?;
        let has_output = loader
            .gguf
            .content
            .tensor_infos
            .contains_key("output.weight");
        let output = match has_output {
            true => loader.linear("output", false)?,
            // Tied embeddings.
            false => loader.linear("token_embd", false)?,
        };
        let layers = (0..blocks)
            .map(|i| loader.layer(i))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            norm: loader.vector("output_norm.weight")?,
            embeddings,
            dim,
            layers,
            output,
            attention,
            positions,
        })
    }

    /// Runs `tokens` at positions `pos..` after the cached ones (`pos = 0` empties the cache)
    /// and returns the logits after the last one.
    pub(crate) fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, TextError> {
        if pos == 0 {
            for layer in &mut self.layers {
                layer.keys.clear();
                layer.values.clear();
            }
        }
        let m = tokens.len();
        if m == 0 || pos + m > self.positions {
            return Err(candle_core::Error::Msg(format!(
                "{m} tokens at position {pos} do not fit the context of {}",
                self.positions
            ))
            .into());
        }
        let mut x = self.embed(tokens)?;
        for layer in &mut self.layers {
            layer.forward(&mut x, m, pos, &self.attention)?;
        }
        let last = rms_norm(&x[(m - 1) * self.dim..], &self.norm, self.attention.eps);
        Ok(self.output.forward(&last, 1)?)
    }

    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>, TextError> {
        let dim = self.dim;
        let mut x = Vec::with_capacity(tokens.len() * dim);
        for &t in tokens {
            let at = t as usize * dim;
            let row = self.embeddings.get(at..at + dim).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "token {t} is outside the vocabulary of {}",
                    self.embeddings.len() / dim
                ))
            })?;
            x.extend_from_slice(row);
        }
        Ok(x)
    }
}

impl Layer {
    /// One block on the `m` rows of `x` (in place): attention, then the gated MLP, each with
    /// its residual.
    fn forward(
        &mut self,
        x: &mut [f32],
        m: usize,
        pos: usize,
        a: &Attention,
    ) -> candle_core::Result<()> {
        let h = rms_norm_rows(x, &self.attn_norm, a.eps);
        let mut qkv = forward_shared(&[&self.q, &self.k, &self.v], &h, m)?.into_iter();
        let (mut q, mut k, v) = (next(&mut qkv)?, next(&mut qkv)?, next(&mut qkv)?);
        a.rope(&mut q, pos, a.heads);
        a.rope(&mut k, pos, a.kv_heads);
        let past = self.keys.len() / (a.kv_heads * a.head_dim);
        self.keys.extend_from_slice(&k);
        self.values.extend_from_slice(&v);
        let attended = a.attend(&q, &self.keys, &self.values, past);
        add(x, &self.o.forward(&attended, m)?);

        let h = rms_norm_rows(x, &self.ffn_norm, a.eps);
        let mut gate_up = forward_shared(&[&self.gate, &self.up], &h, m)?.into_iter();
        let (mut gate, up) = (next(&mut gate_up)?, next(&mut gate_up)?);
        for (g, u) in gate.iter_mut().zip(&up) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
        add(x, &self.down.forward(&gate, m)?);
        Ok(())
    }
}

fn next(it: &mut impl Iterator<Item = Vec<f32>>) -> candle_core::Result<Vec<f32>> {
    it.next()
        .ok_or_else(|| candle_core::Error::Msg("a matrix multiply returned nothing".into()))
}

impl Attention {
    /// Rotates each of the `heads` heads of each row of `x` (rows at positions `pos..`).
    fn rope(&self, x: &mut [f32], pos: usize, heads: usize) {
        let half = self.head_dim / 2;
        for (i, head) in x.chunks_exact_mut(self.head_dim).enumerate() {
            let p = pos + i / heads;
            let cos = &self.cos[p * half..(p + 1) * half];
            let sin = &self.sin[p * half..(p + 1) * half];
            for j in 0..half {
                let (a, b) = if self.neox {
                    (j, j + half)
                } else {
                    (2 * j, 2 * j + 1)
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[j] - x1 * sin[j];
                head[b] = x0 * sin[j] + x1 * cos[j];
            }
        }
    }

    /// Causal attention of the query rows `q` (at cache positions `past..`) over the cache;
    /// each query head reads its group's K/V head. Runs on candle's matmul thread pool.
    fn attend(&self, q: &[f32], keys: &[f32], values: &[f32], past: usize) -> Vec<f32> {
        let (hd, heads) = (self.head_dim, self.heads);
        let group = heads / self.kv_heads;
        let mut out = vec![0f32; q.len()];
        let slots: Vec<Mutex<&mut [f32]>> = out.chunks_mut(hd).map(Mutex::new).collect();
        let item = |i: usize| {
            let (t, h) = (i / heads, i % heads);
            let head = Head {
                q: &q[i * hd..(i + 1) * hd],
                keys,
                values,
                kv: (h / group) * hd,
                kv_dim: self.kv_heads * hd,
                n: past + t + 1,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let mut o = slots[i].lock().unwrap_or_else(|e| e.into_inner());
            head.attend(&mut o);
        };
        candle_core::utils::barrier_pool()
            .execute_chunked(slots.len(), |range| range.for_each(item));
        drop(slots);
        out
    }
}

/// One query head against the first `n` cached positions of its K/V head (at `kv` in each
/// `kv_dim` row).
struct Head<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    kv: usize,
    kv_dim: usize,
    n: usize,
    scale: f32,
}

impl Head<'_> {
    /// Adds the attention-weighted values to `out`; with AVX-512 where the CPU has it (the
    /// crate is built for baseline x86-64, whose vectors are 128 bits wide).
    fn attend(&self, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.q.len().is_multiple_of(16) && is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F and the head's width is a multiple of 16 (checked
            // above).
            #[allow(unsafe_code)]
            unsafe {
                self.attend_avx512(out)
            };
            return;
        }
        self.attend_portable(out)
    }

    fn attend_portable(&self, out: &mut [f32]) {
        let mut scores: Vec<f32> = (0..self.n)
            .map(|j| dot(self.q, self.row(self.keys, j)) * self.scale)
            .collect();
        softmax(&mut scores);
        for (j, p) in scores.iter().enumerate() {
            axpy(out, *p, self.row(self.values, j));
        }
    }

    /// [`Self::attend_portable`] 16 lanes at a time: one register chain a score, and the
    /// weighted values summed in registers (two chains) rather than through `out`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `self.q.len()` is a multiple of 16.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(unsafe_code)]
    unsafe fn attend_avx512(&self, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let hd = self.q.len();
        let load = |x: &[f32], c: usize| {
            debug_assert!(c + 16 <= x.len());
            // SAFETY: every caller passes `c + 16 <= hd` and a slice `hd` long (`self.q`, a
            // `row`, `out`).
            unsafe { _mm512_loadu_ps(x.as_ptr().add(c)) }
        };
        let mut scores = vec![0f32; self.n];
        for (j, s) in scores.iter_mut().enumerate() {
            let k = self.row(self.keys, j);
            let mut acc = _mm512_setzero_ps();
            for c in (0..hd).step_by(16) {
                acc = _mm512_fmadd_ps(load(self.q, c), load(k, c), acc);
            }
            *s = _mm512_reduce_add_ps(acc) * self.scale;
        }
        softmax(&mut scores);
        for c in (0..hd).step_by(16) {
            let (mut even, mut odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mut pairs = scores.chunks_exact(2);
            for (i, p) in pairs.by_ref().enumerate() {
                let (a, b) = (
                    self.row(self.values, 2 * i),
                    self.row(self.values, 2 * i + 1),
                );
                even = _mm512_fmadd_ps(_mm512_set1_ps(p[0]), load(a, c), even);
                odd = _mm512_fmadd_ps(_mm512_set1_ps(p[1]), load(b, c), odd);
            }
            if let [p] = pairs.remainder() {
                let a = self.row(self.values, self.n - 1);
                even = _mm512_fmadd_ps(_mm512_set1_ps(*p), load(a, c), even);
            }
            let sum = _mm512_add_ps(load(out, c), _mm512_add_ps(even, odd));
            // SAFETY: `c + 16 <= hd == out.len()`.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(c), sum) };
        }
    }

    /// Position `j`'s part of a cache (its K/V head).
    #[inline(always)]
    fn row<'c>(&self, cache: &'c [f32], j: usize) -> &'c [f32] {
        let at = j * self.kv_dim + self.kv;
        &cache[at..at + self.q.len()]
    }
}

/// `x / rms(x) * w`, as candle's `rms_norm`.
fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let sum2: f32 = x.iter().map(|v| v * v).sum();
    let rms = (sum2 / x.len() as f32 + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v / rms * w).collect()
}

fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    x.chunks_exact(w.len())
        .flat_map(|row| rms_norm(row, w, eps))
        .collect()
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// A dot product in eight lanes (so that it vectorises).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

fn axpy(out: &mut [f32], p: f32, v: &[f32]) {
    for (o, v) in out.iter_mut().zip(v) {
        *o += p * v;
    }
}

fn softmax(x: &mut [f32]) {
    let mut max = f32::NEG_INFINITY;
    for v in x.iter() {
        max = max.max(*v);
    }
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random values in [-1, 1) from a fixed seed.
    fn random(n: usize, seed: u64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn the_vector_attention_matches_the_portable_one() {
        // 37 positions of 3 K/V heads of 64 (an odd count: the pairs' remainder runs).
        let (hd, kv_dim, n) = (64, 3 * 64, 37);
        let (q, keys, values) = (random(hd, 1), random(n * kv_dim, 2), random(n * kv_dim, 3));
        let head = Head {
            q: &q,
            keys: &keys,
            values: &values,
            kv: 64,
            kv_dim,
            n,
            scale: 0.125,
        };
        let start = random(hd, 4);
        let mut portable = start.clone();
        head.attend_portable(&mut portable);
        let mut dispatched = start.clone();
        head.attend(&mut dispatched);
        let diff = portable
            .iter()
            .zip(&dispatched)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let moved = portable
            .iter()
            .zip(&start)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        println!(
            "attention: vector vs portable ≤ {diff:.1e} (the values move the output by {moved:.2})"
        );
        assert!(moved > 0.05);
        assert!(diff <= 1e-5, "{diff}");
    }
}
