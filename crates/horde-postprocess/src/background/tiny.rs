//! A tiny random U²-NetP checkpoint (the smallest layout of the family) for tests and first
//! runs (`horde model tiny`): the published key layout, every tensor random (batch-norm
//! statistics and `num_batches_tracked` included), widths 4 and 2 instead of 64 and 16.

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Output and middle width of every stage of the tiny network (U²-NetP: 64 and 16).
const TINY_OUT: usize = 4;
const TINY_MID: usize = 2;

/// `(stage, levels)`: the RSU depth of each stage (RSU4F has 4 levels, like RSU4).
const STAGES: [(&str, usize); 11] = [
    ("stage1", 7),
    ("stage2", 6),
    ("stage3", 5),
    ("stage4", 4),
    ("stage5", 4),
    ("stage6", 4),
    ("stage5d", 4),
    ("stage4d", 4),
    ("stage3d", 5),
    ("stage2d", 6),
    ("stage1d", 7),
];

/// Writes a tiny random U²-NetP checkpoint to `path` (`.safetensors`).
pub fn write_tiny_checkpoint(path: &Path, seed: u64) -> Result<()> {
    let mut rng = Normal::new(seed);
    let mut tensors = HashMap::new();
    for (stage, levels) in STAGES {
        let input = match stage {
            "stage1" => 3,
            s if s.ends_with('d') => 2 * TINY_OUT,
            _ => TINY_OUT,
        };
        let mut block = |name: String, i: usize, o: usize| {
            rebnconv(&mut tensors, &mut rng, &format!("{stage}.{name}"), i, o)
        };
        block("rebnconvin".into(), input, TINY_OUT)?;
        block("rebnconv1".into(), TINY_OUT, TINY_MID)?;
        for n in 2..=levels {
            block(format!("rebnconv{n}"), TINY_MID, TINY_MID)?;
        }
        for n in 2..levels {
            block(format!("rebnconv{n}d"), 2 * TINY_MID, TINY_MID)?;
        }
        block("rebnconv1d".into(), 2 * TINY_MID, TINY_OUT)?;
    }
    for n in 1..=6 {
        conv(&mut tensors, &mut rng, &format!("side{n}"), TINY_OUT, 1, 3)?;
    }
    conv(&mut tensors, &mut rng, "outconv", 6, 1, 1)?;
    candle_core::safetensors::save(&tensors, path).map_err(|e| Error::Unreadable {
        path: path.display().to_string(),
        reason: format!("cannot write: {e}"),
    })
}

fn conv(
    tensors: &mut HashMap<String, Tensor>,
    rng: &mut Normal,
    name: &str,
    in_c: usize,
    out_c: usize,
    k: usize,
) -> candle_core::Result<()> {
    let std = (2.0 / (in_c * k * k) as f64).sqrt();
    tensors.insert(
        format!("{name}.weight"),
        rng.tensor((out_c, in_c, k, k), 0.0, std)?,
    );
    tensors.insert(format!("{name}.bias"), rng.tensor(out_c, 0.0, 0.1)?);
    Ok(())
}

/// `REBNCONV`'s tensors: `conv_s1` and `bn_s1` with its running statistics.
fn rebnconv(
    tensors: &mut HashMap<String, Tensor>,
    rng: &mut Normal,
    prefix: &str,
    in_c: usize,
    out_c: usize,
) -> candle_core::Result<()> {
    conv(tensors, rng, &format!("{prefix}.conv_s1"), in_c, out_c, 3)?;
    let bn = format!("{prefix}.bn_s1");
    tensors.insert(format!("{bn}.weight"), rng.tensor(out_c, 1.0, 0.2)?);
    tensors.insert(format!("{bn}.bias"), rng.tensor(out_c, 0.0, 0.2)?);
    tensors.insert(format!("{bn}.running_mean"), rng.tensor(out_c, 0.0, 0.2)?);
    let var: Vec<f32> = (0..out_c)
        .map(|_| 0.5 + 1.5 * rng.uniform() as f32)
        .collect();
    tensors.insert(
        format!("{bn}.running_var"),
        Tensor::from_vec(var, out_c, &Device::Cpu)?,
    );
    let count = 1 + (rng.uniform() * 1e5) as i64;
    tensors.insert(
        format!("{bn}.num_batches_tracked"),
        Tensor::new(count, &Device::Cpu)?,
    );
    Ok(())
}

/// Seeded normal values (splitmix64 and Box–Muller): no `rand` dependency for a few thousand
/// numbers.
struct Normal(u64);

impl Normal {
    fn new(seed: u64) -> Self {
        Normal(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn sample(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn tensor(
        &mut self,
        shape: impl Into<candle_core::Shape>,
        mean: f64,
        std: f64,
    ) -> candle_core::Result<Tensor> {
        let shape = shape.into();
        let values: Vec<f32> = (0..shape.elem_count())
            .map(|_| (mean + std * self.sample()) as f32)
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu)
    }
}
