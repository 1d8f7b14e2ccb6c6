//! BLIP's `config.json` and `preprocessor_config.json` as transformers reads them.
//!
//! transformers saves only the values that differ from its class defaults, so every field here
//! defaults to `BlipTextConfig`'s, `BlipVisionConfig`'s or `BlipImageProcessor`'s own value
//! (transformers 5.24); a field of the wrong type is an error naming the file.

use super::CaptionError;
use candle_transformers::models::{blip, blip_text};
use serde::Deserialize;
use std::path::Path;

/// `BlipTextConfig`: the BERT text decoder.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub encoder_hidden_size: usize,
    pub intermediate_size: usize,
    pub projection_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: candle_nn::Activation,
    pub layer_norm_eps: f64,
    pub bos_token_id: u32,
    pub pad_token_id: u32,
    pub sep_token_id: u32,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30524,
            hidden_size: 768,
            encoder_hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 768,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 512,
            hidden_act: candle_nn::Activation::Gelu,
            layer_norm_eps: 1e-12,
            bos_token_id: 30522,
            pad_token_id: 0,
            sep_token_id: 102,
        }
    }
}

/// `BlipVisionConfig`: the ViT image encoder.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub projection_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: candle_nn::Activation,
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 384,
            patch_size: 16,
            hidden_act: candle_nn::Activation::Gelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// `BlipConfig`: the two towers and the joint sizes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BlipConfig {
    #[serde(rename = "text_config")]
    pub text: TextConfig,
    #[serde(rename = "vision_config")]
    pub vision: VisionConfig,
    pub projection_dim: usize,
    pub image_text_hidden_size: usize,
}

impl Default for BlipConfig {
    fn default() -> Self {
        Self {
            text: TextConfig::default(),
            vision: VisionConfig::default(),
            projection_dim: 512,
            image_text_hidden_size: 256,
        }
    }
}

/// Reads a JSON file into `T`, naming the file (and the field) on failure.
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, CaptionError> {
    let text = std::fs::read_to_string(path).map_err(|source| CaptionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| CaptionError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl BlipConfig {
    /// Reads a checkpoint's `config.json`.
    pub fn read(path: &Path) -> Result<Self, CaptionError> {
        let config: Self = read_json(path)?;
        let vision = &config.vision;
        if vision.patch_size == 0 || !vision.image_size.is_multiple_of(vision.patch_size) {
            return Err(CaptionError::Format {
                path: path.to_path_buf(),
                message: format!(
                    "vision_config.image_size {} is not a multiple of patch_size {}",
                    vision.image_size, vision.patch_size
                ),
            });
        }
        Ok(config)
    }

    /// candle-transformers' configuration of the same network.
    pub fn to_candle(&self) -> blip::Config {
        let (t, v) = (&self.text, &self.vision);
        blip::Config {
            text_config: blip_text::Config {
                vocab_size: t.vocab_size,
                hidden_size: t.hidden_size,
                encoder_hidden_size: t.encoder_hidden_size,
                intermediate_size: t.intermediate_size,
                projection_dim: t.projection_dim,
                num_hidden_layers: t.num_hidden_layers,
                num_attention_heads: t.num_attention_heads,
                max_position_embeddings: t.max_position_embeddings,
                hidden_act: t.hidden_act,
                layer_norm_eps: t.layer_norm_eps,
                is_decoder: true,
            },
            vision_config: blip::VisionConfig {
                hidden_size: v.hidden_size,
                intermediate_size: v.intermediate_size,
                projection_dim: v.projection_dim,
                num_hidden_layers: v.num_hidden_layers,
                num_attention_heads: v.num_attention_heads,
                image_size: v.image_size,
                patch_size: v.patch_size,
                hidden_act: v.hidden_act,
                layer_norm_eps: v.layer_norm_eps,
            },
            projection_dim: self.projection_dim,
            image_text_hidden_size: self.image_text_hidden_size,
        }
    }
}

/// `size` of `preprocessor_config.json`.
#[derive(Debug, Clone, Deserialize)]
struct Size {
    height: usize,
    width: usize,
}

/// `preprocessor_config.json` as written by `BlipImageProcessor`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawProcessing {
    size: Option<Size>,
    resample: u32,
    do_resize: bool,
    do_rescale: bool,
    do_normalize: bool,
    rescale_factor: f64,
    image_mean: [f64; 3],
    image_std: [f64; 3],
}

impl Default for RawProcessing {
    fn default() -> Self {
        Self {
            size: None,
            resample: 3,
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
            rescale_factor: 1.0 / 255.0,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }
}

/// OpenAI CLIP's channel means and deviations, `BlipImageProcessor`'s defaults.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// How an image becomes `pixel_values`: a bicubic resize to `size`², rescale, normalise.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessing {
    pub size: usize,
    pub rescale_factor: f64,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl ImageProcessing {
    /// Reads `preprocessor_config.json`, or `BlipImageProcessor`'s defaults at the vision
    /// model's image size when the file is absent. Only the processing the model was trained
    /// with is accepted: bicubic resize, rescale and normalise all on, a square size.
    pub fn read(path: &Path, config: &BlipConfig) -> Result<Self, CaptionError> {
        let raw: RawProcessing = if path.exists() {
            read_json(path)?
        } else {
            RawProcessing::default()
        };
        let bad = |message: String| CaptionError::Format {
            path: path.to_path_buf(),
            message,
        };
        if raw.resample != 3 || !raw.do_resize || !raw.do_rescale || !raw.do_normalize {
            return Err(bad(
                "only the bicubic resize (resample 3) with rescale and normalize is supported"
                    .into(),
            ));
        }
        let square = raw.size.as_ref().is_none_or(|s| s.width == s.height);
        let size = raw
            .size
            .as_ref()
            .map_or(config.vision.image_size, |s| s.height);
        if !square || size != config.vision.image_size {
            return Err(bad(format!(
                "size must be square and equal to vision_config.image_size {}",
                config.vision.image_size
            )));
        }
        Ok(Self {
            size,
            rescale_factor: raw.rescale_factor,
            mean: raw.image_mean,
            std: raw.image_std,
        })
    }
}
