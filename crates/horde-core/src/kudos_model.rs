//! The public horde's kudos model: a small neural network that predicts how long an image job
//! takes, from which its price follows.
//!
//! The weights are the public horde's own (`data/kudos-v21-206.npz`, AGPL-3.0-or-later, see the
//! `.license` file beside it), embedded in the binary so that our prices are the public horde's
//! prices. The network is 47 → 79 → 101 → 104 → 1, ReLU on the hidden layers, in f32. Its input
//! (horde-api.md §5.1): ten scaled numbers, then one-hot sampler, control type and source
//! processing, then a count per post-processor, each category in Python's sorted (byte) order
//! of the names the model was trained on. A job it cannot encode (an unknown control type or
//! post-processor) is priced by the closed formula instead, as on the public horde.

use horde_api::image::{ImageRequest, SourceProcessing};
use std::io::Read;
use std::sync::OnceLock;

const WEIGHTS: &[u8] = include_bytes!("../data/kudos-v21-206.npz");

/// Names the model was trained on, in Python's sorted order (uppercase before lowercase).
const SAMPLERS: [&str; 15] = [
    "ddim",
    "k_dpm_2",
    "k_dpm_2_a",
    "k_dpm_adaptive",
    "k_dpm_fast",
    "k_dpmpp_2m",
    "k_dpmpp_2s_a",
    "k_dpmpp_sde",
    "k_euler",
    "k_euler_a",
    "k_heun",
    "k_lms",
    "plms",
    "uni_pc",
    "uni_pc_bh2",
];
const CONTROL_TYPES: [&str; 10] = [
    "None",
    "canny",
    "depth",
    "fakescribbles",
    "hed",
    "hough",
    "normal",
    "openpose",
    "scribble",
    "seg",
];
const SOURCE_PROCESSING: [&str; 4] = ["img2img", "inpainting", "outpainting", "txt2img"];
const POST_PROCESSORS: [&str; 8] = [
    "4x_AnimeSharp",
    "CodeFormers",
    "GFPGAN",
    "NMKD_Siax",
    "RealESRGAN_x2plus",
    "RealESRGAN_x4plus",
    "RealESRGAN_x4plus_anime_6B",
    "strip_background",
];

/// Number of inputs: 10 numbers and the four categories.
pub const INPUTS: usize =
    10 + SAMPLERS.len() + CONTROL_TYPES.len() + SOURCE_PROCESSING.len() + POST_PROCESSORS.len();

/// Kudos of the basis job (512×512, 50 steps, cfg 7.5, k_euler, karras): 10, plus the public
/// horde's fixed adjustment of 1.
const BASIS_KUDOS: f64 = 10.0 + 1.0;

/// One dense layer: `weights` is `[out][in]`, row-major.
#[derive(Debug)]
struct Dense {
    weights: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
}

impl Dense {
    fn apply(&self, x: &[f32], relu: bool) -> Vec<f32> {
        self.bias
            .iter()
            .zip(self.weights.chunks_exact(self.inputs))
            .map(|(b, row)| {
                let sum = b + dot(row, x);
                if relu {
                    sum.max(0.0)
                } else {
                    sum
                }
            })
            .collect()
    }
}

/// `a · b` over eight running sums (so the compiler can use SIMD lanes; a single running sum
/// is one long chain of dependent additions, several times slower). The order of additions
/// differs from a plain loop by float rounding only, far below the hundredths prices keep.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for i in 0..8 {
            lanes[i] += ca[i] * cb[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[derive(Debug)]
pub struct KudosModel {
    /// Tells this model's memoised predictions from another's.
    id: u64,
    layers: Vec<Dense>,
    /// Predicted seconds of the basis job.
    basis_secs: f64,
}

/// Why the embedded weights could not be read (a broken build, never a user error).
#[derive(Debug)]
pub struct WeightsError(pub String);

impl KudosModel {
    /// The model with the embedded weights, read once.
    pub fn embedded() -> &'static KudosModel {
        static MODEL: OnceLock<KudosModel> = OnceLock::new();
        MODEL.get_or_init(|| {
            KudosModel::from_npz(WEIGHTS).expect("the embedded kudos weights are well formed")
        })
    }

    /// Reads `w0, b0 … w3, b3` from a NumPy `.npz` archive.
    pub fn from_npz(bytes: &[u8]) -> Result<KudosModel, WeightsError> {
        let err = |e: &dyn std::fmt::Display| WeightsError(e.to_string());
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| err(&e))?;
        let mut layers = Vec::new();
        let mut inputs = INPUTS;
        for i in 0..4 {
            let (w_shape, weights) = read_npy(&mut archive, &format!("w{i}.npy"))?;
            let (b_shape, bias) = read_npy(&mut archive, &format!("b{i}.npy"))?;
            if w_shape.len() != 2 || w_shape[1] != inputs || b_shape != [w_shape[0]] {
                return Err(WeightsError(format!(
                    "layer {i}: weights {w_shape:?} and bias {b_shape:?} do not take {inputs} inputs"
                )));
            }
            inputs = w_shape[0];
            layers.push(Dense {
                weights,
                bias,
                inputs: w_shape[1],
            });
        }
        if inputs != 1 {
            return Err(WeightsError(format!("{inputs} outputs, not 1")));
        }
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut model = KudosModel {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            layers,
            basis_secs: 0.0,
        };
        model.basis_secs = model.predict_secs(&basis_features());
        Ok(model)
    }

    /// Predicted seconds of a job, rounded to hundredths as the public horde rounds them.
    ///
    /// Memoised per thread: requests repeat a few configurations (sizes, steps, samplers), and
    /// a prediction is some 22 000 multiply-adds, a few percent of accepting a request.
    pub fn predict_secs(&self, features: &[f32; INPUTS]) -> f64 {
        let key = features.map(f32::to_bits);
        let slot = memo_slot(&key);
        let hit = MEMO.with(|memo| match memo.borrow()[slot] {
            Some((model, k, secs)) if model == self.id && k == key => Some(secs),
            _ => None,
        });
        if let Some(secs) = hit {
            return secs;
        }
        let secs = self.compute_secs(features);
        MEMO.with(|memo| memo.borrow_mut()[slot] = Some((self.id, key, secs)));
        secs
    }

    /// [`KudosModel::predict_secs`] without the memo.
    pub fn compute_secs(&self, features: &[f32; INPUTS]) -> f64 {
        let mut x = features.to_vec();
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.apply(&x, i < last);
        }
        round2(f64::from(x[0]))
    }

    /// The kudos of one image of `request` before LoRA and TI surcharges, or `None` when the
    /// model cannot encode the request.
    pub fn base_kudos(&self, request: &ImageRequest) -> Option<f64> {
        let secs = self.predict_secs(&features(request)?);
        Some(round2(secs / self.basis_secs * BASIS_KUDOS))
    }
}

/// Predictions memoised by each thread: (model id, features' bits, seconds), direct-mapped.
const MEMO_SLOTS: usize = 64;
type Memo = [Option<(u64, [u32; INPUTS], f64)>; MEMO_SLOTS];
thread_local! {
    static MEMO: std::cell::RefCell<Memo> = const { std::cell::RefCell::new([None; MEMO_SLOTS]) };
}

/// FNV-1a over the features' bits.
fn memo_slot(key: &[u32; INPUTS]) -> usize {
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, word| {
        (h ^ u64::from(*word)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % MEMO_SLOTS as u64) as usize
}

/// The basis job: 512×512, 50 steps, cfg 7.5, k_euler with karras, text to image.
fn basis_features() -> [f32; INPUTS] {
    let mut request = ImageRequest::new("basis");
    let p = &mut request.params;
    (p.width, p.height, p.steps, p.cfg_scale, p.karras) = (512, 512, Some(50), 7.5, true);
    p.sampler_name = horde_api::image::Sampler::KEuler;
    features(&request).expect("the basis job is encodable")
}

/// The model's input for a request, or `None` for a control type or post-processor it was
/// not trained on.
pub fn features(request: &ImageRequest) -> Option<[f32; INPUTS]> {
    let p = &request.params;
    let has_source = request.source_image.is_some();
    let has_control = p.control_type.is_some();
    let requested_denoise = p.denoising_strength.unwrap_or(1.0);
    let (denoising, control_strength) = match (has_source, has_control) {
        (true, true) => (1.0, p.control_strength.unwrap_or(requested_denoise)),
        (true, false) => (requested_denoise, 1.0),
        (false, _) => (1.0, 1.0),
    };
    let numbers = [
        f64::from(p.height) / 1024.0,
        f64::from(p.width) / 1024.0,
        f64::from(p.effective_steps()) / 100.0,
        p.cfg_scale / 30.0,
        denoising,
        control_strength,
        flag(p.karras),
        flag(p.hires_fix),
        flag(has_source),
        flag(request.source_mask.is_some()),
    ];
    let mut x = [0f32; INPUTS];
    for (slot, value) in x.iter_mut().zip(numbers) {
        *slot = value as f32;
    }
    let mut offset = numbers.len();
    let sampler = p.sampler_name.name();
    let sampler = if SAMPLERS.contains(&sampler.as_str()) {
        sampler
    } else {
        "k_euler".to_string()
    };
    one_hot(&mut x, &mut offset, &SAMPLERS, &sampler)?;
    let control = p.control_type.map_or("None".to_string(), |c| {
        serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    });
    one_hot(&mut x, &mut offset, &CONTROL_TYPES, &control)?;
    let processing = match (has_source, request.source_processing) {
        (false, _) => "txt2img",
        (true, SourceProcessing::Img2img | SourceProcessing::Remix) => "img2img",
        (true, SourceProcessing::Inpainting) => "inpainting",
        (true, SourceProcessing::Outpainting) => "outpainting",
    };
    one_hot(&mut x, &mut offset, &SOURCE_PROCESSING, processing)?;
    for name in &p.post_processing {
        let index = POST_PROCESSORS.iter().position(|known| known == name)?;
        x[offset + index] += 1.0;
    }
    Some(x)
}

fn one_hot(x: &mut [f32], offset: &mut usize, names: &[&str], name: &str) -> Option<()> {
    let index = names.iter().position(|known| *known == name)?;
    x[*offset + index] = 1.0;
    *offset += names.len();
    Some(())
}

fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Reads one little-endian f32 array (`.npy`, C order) from the archive: its shape and values.
fn read_npy<R: Read + std::io::Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
) -> Result<(Vec<usize>, Vec<f32>), WeightsError> {
    let mut bytes = Vec::new();
    archive
        .by_name(name)
        .and_then(|mut file| Ok(file.read_to_end(&mut bytes)?))
        .map_err(|e| WeightsError(format!("{name}: {e}")))?;
    let bad = |why: &str| WeightsError(format!("{name}: {why}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy array"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        _ if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("truncated header")),
    };
    let header = std::str::from_utf8(
        bytes
            .get(start..start + header_len)
            .ok_or(bad("truncated header"))?,
    )
    .map_err(|_| bad("header is not text"))?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(bad("not a little-endian f32 array in C order"));
    }
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .ok_or(bad("no shape"))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_, _>>()?;
    let data = &bytes[start + header_len..];
    let count: usize = shape.iter().product();
    if data.len() != count * 4 {
        return Err(bad("data length does not match the shape"));
    }
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((shape, values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use horde_api::image::{ControlType, Sampler};

    /// The request of the public horde's sample table (horde-api.md §5.1): cfg 5, karras,
    /// k_euler_a, text to image.
    fn sample(width: u32, height: u32, steps: u32) -> ImageRequest {
        let mut request = ImageRequest::new("sample");
        let p = &mut request.params;
        (p.width, p.height, p.steps, p.cfg_scale, p.karras) =
            (width, height, Some(steps), 5.0, true);
        p.sampler_name = Sampler::KEulerA;
        request
    }

    fn kudos(request: &ImageRequest) -> f64 {
        KudosModel::embedded()
            .base_kudos(request)
            .expect("encodable")
    }

    #[test]
    fn memoised_predictions_equal_fresh_ones_and_belong_to_their_model() {
        let model = KudosModel::embedded();
        // More configurations than memo slots, twice over: hits, misses and evictions.
        for round in 0..2 {
            for width in (64..=1024).step_by(64) {
                for steps in [10, 30, 50] {
                    let f = features(&sample(width, 512, steps)).unwrap();
                    assert_eq!(
                        model.predict_secs(&f),
                        model.compute_secs(&f),
                        "round {round}"
                    );
                }
            }
        }
        // Another model with other weights is never answered from the first one's memo.
        let mut other = KudosModel::from_npz(WEIGHTS).unwrap();
        other.layers[3].bias[0] += 1.0;
        let f = features(&sample(512, 512, 30)).unwrap();
        assert_eq!(model.predict_secs(&f), model.compute_secs(&f));
        assert_eq!(other.predict_secs(&f), other.compute_secs(&f));
        assert!(other.predict_secs(&f) > model.predict_secs(&f));
    }

    #[test]
    fn the_embedded_weights_are_the_reference_files() {
        // The SHA-256 of ../shared/reference/kudos/kudos-v21-206.npz.
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(WEIGHTS)),
            "098b626ab8ca7379efe8d3c9aa28d2120b5ad96b6189af370d5412d4ed24f04d",
            "data/ holds the public horde's weights unchanged"
        );
    }

    #[test]
    fn the_basis_job_costs_eleven_and_takes_the_documented_time() {
        let model = KudosModel::embedded();
        assert_eq!(model.basis_secs, 6.45);
        let mut basis = sample(512, 512, 50);
        (basis.params.cfg_scale, basis.params.sampler_name) = (7.5, Sampler::KEuler);
        assert_eq!(kudos(&basis), 11.0);
    }

    #[test]
    fn prices_match_the_public_horde_sample_table() {
        let table: [((u32, u32), [f64; 5]); 5] = [
            ((512, 512), [4.26, 5.76, 7.61, 10.98, 19.92]),
            ((768, 768), [6.51, 9.11, 11.75, 16.44, 29.91]),
            ((1024, 1024), [12.53, 15.98, 20.99, 29.59, 48.54]),
            ((1024, 1536), [18.09, 25.27, 35.83, 51.88, 73.11]),
            ((2048, 2048), [86.87, 100.23, 113.58, 134.4, 175.86]),
        ];
        for ((width, height), row) in table {
            for (steps, expected) in [10, 20, 30, 50, 100].into_iter().zip(row) {
                assert_eq!(
                    kudos(&sample(width, height, steps)),
                    expected,
                    "{width}x{height}, {steps} steps"
                );
            }
        }
    }

    #[test]
    fn prices_match_the_public_horde_variants() {
        let variant = |edit: &dyn Fn(&mut ImageRequest)| {
            let mut request = sample(512, 512, 30);
            edit(&mut request);
            kudos(&request)
        };
        assert_eq!(variant(&|r| r.params.sampler_name = Sampler::KEuler), 7.84);
        assert_eq!(variant(&|r| r.params.sampler_name = Sampler::KHeun), 12.91);
        assert_eq!(
            variant(&|r| r.params.sampler_name = Sampler::KDpmppSde),
            12.93
        );
        assert_eq!(
            variant(&|r| r.params.sampler_name = Sampler::KDpmAdaptive),
            13.29
        );
        assert_eq!(
            variant(&|r| r.params.sampler_name = Sampler::Lcm),
            7.84,
            "as k_euler"
        );
        assert_eq!(
            variant(&|r| r.params.sampler_name = Sampler::Ddim),
            7.84,
            "as k_euler"
        );
        assert_eq!(
            variant(&|r| r.params.post_processing = vec!["RealESRGAN_x4plus".into()]),
            10.28
        );
        assert_eq!(
            variant(&|r| r.params.post_processing = vec!["GFPGAN".into()]),
            9.21
        );
        assert_eq!(
            variant(&|r| {
                r.source_image = Some("img".into());
                r.params.denoising_strength = Some(0.5);
            }),
            6.60
        );
        assert_eq!(
            variant(&|r| {
                r.source_image = Some("img".into());
                r.source_mask = Some("mask".into());
                r.source_processing = SourceProcessing::Inpainting;
            }),
            9.47
        );
        assert_eq!(
            variant(&|r| {
                r.source_image = Some("img".into());
                r.params.control_type = Some(ControlType::Canny);
            }),
            13.69
        );
        // Control strength is the network's control input; without it, the denoising strength
        // stands in (horde-api.md §5.1).
        let control = |strength: Option<f64>, denoise: Option<f64>| {
            variant(&|r| {
                r.source_image = Some("img".into());
                r.params.control_type = Some(ControlType::Canny);
                r.params.control_strength = strength;
                r.params.denoising_strength = denoise;
            })
        };
        let half = control(Some(0.5), None);
        assert_ne!(half, 13.69);
        assert_eq!(half, control(None, Some(0.5)));
        assert_eq!(control(Some(0.5), Some(0.9)), half, "denoising is then 1");
        let mut hires = sample(1024, 1024, 30);
        hires.params.hires_fix = true;
        assert_eq!(kudos(&hires), 24.61);
    }

    #[test]
    fn post_processors_the_model_never_saw_are_not_encodable() {
        let mut request = sample(512, 512, 30);
        request.params.post_processing = vec!["4xNomos8kSC".into()];
        assert!(features(&request).is_none());
    }

    #[test]
    fn malformed_weights_are_refused_with_a_reason() {
        let error = KudosModel::from_npz(b"not a zip").unwrap_err();
        assert!(!error.0.is_empty());
    }
}
