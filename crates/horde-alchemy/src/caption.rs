//! The `caption` form: BLIP's image captioning (`BlipForConditionalGeneration`, the horde's
//! `BLIP_Large` is `Salesforce/blip-image-captioning-large`) on candle.
//!
//! The vision tower is candle-transformers' `models::blip`, which reads transformers' safetensors
//! key layout directly; this module adds what a worker needs around it, each part pinned to the
//! reference by `tests/caption_numbers.rs` (fixtures from `tools/alchemy-fixtures/blip.py`):
//!
//! * [`decoder`]: the BERT text decoder, written here to keep the image's cross-attention keys
//!   and values across generated tokens as transformers does (candle's recomputes them);
//! * [`positions`]: the vision tower run above its training size as the horde runs it (512²),
//!   the position embeddings interpolated as BLIP's loader does;
//! * [`config`]: transformers' `config.json` read with transformers' own defaults (a saved
//!   config lists only the values that differ from them) and `preprocessor_config.json`;
//! * [`preprocess`]: `BlipImageProcessor` exactly: PIL's bicubic resize (the fixed-point
//!   two-pass filter, so the 8-bit image is PIL's to the bit), rescale, CLIP mean and std;
//! * [`tokenizer`]: the BERT WordPiece tokenizer of the checkpoint's `tokenizer.json`, encoding
//!   the prompt and decoding the generated ids as transformers does;
//! * [`generate`]: the decoding loop as the horde runs it (its BLIP code's nucleus sampling:
//!   repetition penalty 1.1, top-k 50, top-p, minimum and maximum lengths counted with the
//!   prompt), or greedy decoding, with transformers' logits processors.
//!
//! The horde's worker prompts the decoder with `"a picture of "` and strips those characters from
//! the decoded text; [`CaptionSettings::horde`] reads the form's payload as it does.

pub mod config;
pub mod decoder;
pub mod generate;
pub mod positions;
pub mod preprocess;
pub mod tokenizer;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::blip;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use config::{BlipConfig, ImageProcessing};
pub use decoder::TextDecoder;
pub use generate::{CaptionSettings, Draws, SeededDraws};
pub use tokenizer::WordPiece;

/// What can go wrong loading or running the captioner; each names the file or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum CaptionError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("caption setting `{field}`: {message}")]
    Setting {
        field: &'static str,
        message: String,
    },
    #[error("running BLIP: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The decoder's tied weights: transformers may omit the head's copy of the word embeddings
/// (and its bias alias) when it saves a checkpoint with `tie_word_embeddings`.
const TIED: [(&str, &str); 2] = [
    (
        "text_decoder.cls.predictions.decoder.weight",
        "text_decoder.bert.embeddings.word_embeddings.weight",
    ),
    (
        "text_decoder.cls.predictions.bias",
        "text_decoder.cls.predictions.decoder.bias",
    ),
];

/// A loaded BLIP captioning model with its tokenizer and image processing.
pub struct Captioner {
    model: blip::BlipForConditionalGeneration,
    decoder: TextDecoder,
    config: BlipConfig,
    processing: ImageProcessing,
    tokenizer: WordPiece,
    device: Device,
}

/// The files of a checkpoint folder (or of the folder holding the given `.safetensors` file).
fn checkpoint_files(path: &Path) -> (PathBuf, PathBuf) {
    if path.is_dir() {
        (path.to_path_buf(), path.join("model.safetensors"))
    } else {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        (dir, path.to_path_buf())
    }
}

/// The checkpoint's tensors in float32, with the tied head restored where it was left out.
fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, CaptionError> {
    let mut tensors =
        crate::weights::load_f32(path, device).map_err(|message| CaptionError::Format {
            path: path.to_path_buf(),
            message,
        })?;
    for (wanted, source) in TIED {
        if !tensors.contains_key(wanted) {
            if let Some(tensor) = tensors.get(source).cloned() {
                tensors.insert(wanted.to_string(), tensor);
            }
        }
    }
    // The vision tower's products have 1 025 rows; the decoder's, one token's.
    crate::weights::transpose_product_weights(&mut tensors, |name| {
        name.starts_with("vision_model.")
    })?;
    Ok(tensors)
}

/// The size the horde's worker runs BLIP's vision tower at (`blip_image_eval_size=512`).
pub const HORDE_IMAGE_SIZE: usize = 512;

/// The vision tower's position embeddings interpolated to `size`², the config following.
fn resize_positions(
    tensors: &mut HashMap<String, Tensor>,
    config: &mut BlipConfig,
    size: usize,
    weights: &Path,
) -> Result<(), CaptionError> {
    const KEY: &str = "vision_model.embeddings.position_embedding";
    let patch = config.vision.patch_size;
    if size == 0 || !size.is_multiple_of(patch) {
        return Err(CaptionError::Setting {
            field: "image_size",
            message: format!("{size} is not a positive multiple of the patch size {patch}"),
        });
    }
    let positions = tensors.get(KEY).ok_or_else(|| CaptionError::Format {
        path: weights.to_path_buf(),
        message: format!("no tensor {KEY}"),
    })?;
    let resized = positions::interpolate(positions, size / patch)?;
    tensors.insert(KEY.to_string(), resized);
    config.vision.image_size = size;
    Ok(())
}

impl Captioner {
    /// Loads a checkpoint in transformers' layout: a folder with `config.json`,
    /// `model.safetensors`, `tokenizer.json` and (optionally) `preprocessor_config.json`, or the
    /// `.safetensors` file itself with those files beside it. Images are seen at the size the
    /// checkpoint was trained at (`BlipProcessor`'s); see [`Captioner::load_at`] for the horde's.
    pub fn load(path: &Path, device: &Device) -> Result<Self, CaptionError> {
        Self::load_at(path, device, None)
    }

    /// [`Captioner::load`], with the vision tower run at `image_size`² when given (the horde's
    /// worker uses [`HORDE_IMAGE_SIZE`]): the position embeddings are interpolated as BLIP's
    /// loader does and images are resized to that size.
    pub fn load_at(
        path: &Path,
        device: &Device,
        image_size: Option<usize>,
    ) -> Result<Self, CaptionError> {
        let (dir, weights) = checkpoint_files(path);
        let mut config = BlipConfig::read(&dir.join("config.json"))?;
        let mut processing = ImageProcessing::read(&dir.join("preprocessor_config.json"), &config)?;
        let tokenizer = WordPiece::read(&dir.join("tokenizer.json"))?;
        let mut tensors = load_tensors(&weights, device)?;
        if let Some(size) = image_size.filter(|&s| s != config.vision.image_size) {
            resize_positions(&mut tensors, &mut config, size, &weights)?;
            processing.size = size;
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let format = |e: candle_core::Error| CaptionError::Format {
            path: weights.clone(),
            message: e.to_string(),
        };
        let candle_config = config.to_candle();
        let model =
            blip::BlipForConditionalGeneration::new(&candle_config, vb.clone()).map_err(format)?;
        let decoder = TextDecoder::load(&config.text, vb).map_err(format)?;
        Ok(Self {
            model,
            decoder,
            config,
            processing,
            tokenizer,
            device: device.clone(),
        })
    }

    /// The model's configuration as read from `config.json`.
    pub fn config(&self) -> &BlipConfig {
        &self.config
    }

    /// The checkpoint's tokenizer.
    pub fn tokenizer(&self) -> &WordPiece {
        &self.tokenizer
    }

    /// `BlipProcessor`'s `pixel_values` for an image: `[1, 3, size, size]`.
    pub fn pixel_values(&self, image: &image::RgbImage) -> Result<Tensor, CaptionError> {
        Ok(preprocess::pixel_values(
            image,
            &self.processing,
            &self.device,
        )?)
    }

    /// The vision model's last hidden state (after its final norm): `[1, 1 + patches, width]`.
    pub fn vision_embeds(&self, pixel_values: &Tensor) -> Result<Tensor, CaptionError> {
        Ok(self.model.vision_model().forward(pixel_values)?)
    }

    /// The text decoder's logits `[1, ids, vocab]` for `ids` attending to `embeds`.
    pub fn decoder_logits(&self, embeds: &Tensor, ids: &[u32]) -> Result<Tensor, CaptionError> {
        let mut state = self.decoder.start(embeds)?;
        Ok(self.decoder.forward(ids, &mut state)?)
    }

    /// The decoder's prefix for a prompt, as the horde's BLIP builds it: the prompt tokenised
    /// with `[CLS]` replaced by the decoder's start token `[DEC]` and the final `[SEP]` cut.
    pub fn prompt_ids(&self, prompt: &str) -> Vec<u32> {
        let mut ids = self.tokenizer.encode(prompt);
        ids.pop();
        ids[0] = self.config.text.bos_token_id;
        ids
    }

    /// The generated ids (the prefix included) for `embeds` under `settings`, taking the
    /// sampler's uniform draws from `draws`.
    pub fn generate_ids(
        &self,
        embeds: &Tensor,
        settings: &CaptionSettings,
        draws: &mut dyn Draws,
    ) -> Result<Vec<u32>, CaptionError> {
        settings.check(self.config.text.max_position_embeddings)?;
        let prefix = self.prompt_ids(&settings.prompt);
        let mut state = self.decoder.start(embeds)?;
        let step = |ids: &[u32]| -> Result<Vec<f32>, CaptionError> {
            let logits = self.decoder.forward(ids, &mut state)?;
            let last = logits.dim(1)? - 1;
            Ok(logits.get(0)?.get(last)?.to_vec1::<f32>()?)
        };
        generate::run(prefix, self.config.text.sep_token_id, settings, step, draws)
    }

    /// The caption of an image: the horde's `caption` form's `result.caption`.
    pub fn caption(
        &self,
        image: &image::RgbImage,
        settings: &CaptionSettings,
    ) -> Result<String, CaptionError> {
        let embeds = self.vision_embeds(&self.pixel_values(image)?)?;
        let mut draws = SeededDraws::new(settings.seed);
        let ids = self.generate_ids(&embeds, settings, &mut draws)?;
        Ok(self.text_of(&ids, &settings.prompt))
    }

    /// The decoded text of generated ids with the prompt's characters cut from its start, as
    /// the horde's BLIP does (`caption[len(prompt):]`).
    pub fn text_of(&self, ids: &[u32], prompt: &str) -> String {
        let text = self.tokenizer.decode(ids);
        text.chars().skip(prompt.chars().count()).collect()
    }
}

/// The form's result object: `{"caption": "…"}`.
pub fn caption_result(caption: &str) -> serde_json::Value {
    serde_json::json!({ "caption": caption })
}
