//! A tiny random RetinaFace in facexlib's ResNet-50 key layout, for tests and first runs
//! (`horde model tiny`): one Bottleneck a stage, stem 4, planes 4/8/16/32 (so the FPN reads
//! 32, 64 and 128 channels) and an FPN/SSH width of 8, the same sizes as the `r50_narrow`
//! fixture that facexlib ran. Every tensor is random (BatchNorm statistics and counters too).

use crate::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor};
use std::collections::HashMap;
use std::path::Path;

const STEM: usize = 4;
const PLANES: [usize; 4] = [4, 8, 16, 32];
const WIDTH: usize = 8;

/// Writes the tiny checkpoint to `path` as safetensors (whatever its extension).
pub fn write_tiny_checkpoint(path: &Path, seed: u64) -> Result<()> {
    let mut random = Random::new(seed);
    let tensors = layout()
        .into_iter()
        .map(|(name, kind, shape)| Ok((name, random.tensor(kind, &shape)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()?;
    candle_core::safetensors::save(&tensors, path).map_err(|e| Error::Unreadable {
        path: path.display().to_string(),
        reason: format!("cannot write: {e}"),
    })
}

#[derive(Clone, Copy)]
enum Kind {
    /// A convolution weight, N(0, gain/√fan_in).
    Conv { gain: f64 },
    /// BatchNorm γ, N(1, 0.2).
    Scale,
    /// BatchNorm β, a running mean or a head's bias, N(0, 0.1).
    Shift,
    /// A running variance, U(0.5, 1.5).
    Variance,
    /// `num_batches_tracked`, a random count (i64, no dimensions).
    Count,
}

fn layout() -> Vec<(String, Kind, Vec<usize>)> {
    let mut out = Vec::new();
    let mut conv_bn = |conv: &str, bn: &str, c_in: usize, c_out: usize, k: usize, gain: f64| {
        out.push((
            format!("{conv}.weight"),
            Kind::Conv { gain },
            vec![c_out, c_in, k, k],
        ));
        for (name, kind) in [
            ("weight", Kind::Scale),
            ("bias", Kind::Shift),
            ("running_mean", Kind::Shift),
            ("running_var", Kind::Variance),
        ] {
            out.push((format!("{bn}.{name}"), kind, vec![c_out]));
        }
        out.push((format!("{bn}.num_batches_tracked"), Kind::Count, vec![]));
    };
    // the stem sees 0..255 minus the mean: a small gain keeps activations near 1
    conv_bn("body.conv1", "body.bn1", 3, STEM, 7, 1.0 / 60.0);
    let mut inplanes = STEM;
    for (s, &p) in PLANES.iter().enumerate() {
        let b = format!("body.layer{}.0", s + 1);
        conv_bn(
            &format!("{b}.conv1"),
            &format!("{b}.bn1"),
            inplanes,
            p,
            1,
            1.0,
        );
        conv_bn(&format!("{b}.conv2"), &format!("{b}.bn2"), p, p, 3, 1.0);
        conv_bn(&format!("{b}.conv3"), &format!("{b}.bn3"), p, 4 * p, 1, 1.0);
        let (d0, d1) = (format!("{b}.downsample.0"), format!("{b}.downsample.1"));
        conv_bn(&d0, &d1, inplanes, 4 * p, 1, 1.0);
        inplanes = 4 * p;
    }
    for (i, &p) in PLANES[1..].iter().enumerate() {
        let o = format!("fpn.output{}", i + 1);
        conv_bn(&format!("{o}.0"), &format!("{o}.1"), 4 * p, WIDTH, 1, 1.0);
    }
    for m in ["fpn.merge1", "fpn.merge2"] {
        conv_bn(&format!("{m}.0"), &format!("{m}.1"), WIDTH, WIDTH, 3, 1.0);
    }
    let (half, quarter) = (WIDTH / 2, WIDTH / 4);
    for s in ["ssh1", "ssh2", "ssh3"] {
        for (name, c_in, c_out) in [
            ("conv3X3", WIDTH, half),
            ("conv5X5_1", WIDTH, quarter),
            ("conv5X5_2", quarter, quarter),
            ("conv7X7_2", quarter, quarter),
            ("conv7x7_3", quarter, quarter),
        ] {
            conv_bn(
                &format!("{s}.{name}.0"),
                &format!("{s}.{name}.1"),
                c_in,
                c_out,
                3,
                1.0,
            );
        }
    }
    for (head, values) in [("ClassHead", 2), ("BboxHead", 4), ("LandmarkHead", 10)] {
        for i in 0..3 {
            let key = format!("{head}.{i}.conv1x1");
            let shape = vec![2 * values, WIDTH, 1, 1];
            out.push((format!("{key}.weight"), Kind::Conv { gain: 1.0 }, shape));
            out.push((format!("{key}.bias"), Kind::Shift, vec![2 * values]));
        }
    }
    out
}

/// SplitMix64 with Box–Muller normals: deterministic for a seed, no dependency.
struct Random(u64);

impl Random {
    fn new(seed: u64) -> Self {
        Random(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `(0, 1]`.
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self, mean: f64, std: f64) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        mean + std * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn tensor(&mut self, kind: Kind, shape: &[usize]) -> candle_core::Result<Tensor> {
        let n: usize = shape.iter().product();
        let fan_in: usize = shape.iter().skip(1).product();
        let shape = Shape::from(shape.to_vec());
        let draw = |random: &mut Random| -> f32 {
            let value = match kind {
                Kind::Conv { gain } => random.normal(0.0, gain / (fan_in as f64).sqrt()),
                Kind::Scale => random.normal(1.0, 0.2),
                Kind::Shift => random.normal(0.0, 0.1),
                Kind::Variance => 0.5 + random.uniform(),
                Kind::Count => (1000 + random.next_u64() % 99_000) as f64,
            };
            value as f32
        };
        let values: Vec<f32> = (0..n).map(|_| draw(self)).collect();
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?;
        match kind {
            // PyTorch stores the count as an int64 scalar
            Kind::Count => t.to_dtype(DType::I64),
            _ => Ok(t),
        }
    }
}
