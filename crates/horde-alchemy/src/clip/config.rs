//! transformers' `CLIPConfig` as its `config.json` spells it (a `CLIPModel` checkpoint's, and
//! the safety checker's, whose class takes the same config), with transformers' defaults for the
//! fields older files leave out, turned into candle-transformers' CLIP configurations.

use std::path::Path;

use candle_transformers::models::clip::{text_model, vision_model};
use serde::Deserialize;

use crate::clip::{ClipError, Result};

/// `config.json` of a `CLIPModel` (or `StableDiffusionSafetyChecker`).
#[derive(Clone, Debug, Deserialize)]
pub struct ClipFileConfig {
    /// The shared embedding width of both projections.
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
    /// The text tower (`CLIPTextConfig`).
    #[serde(default)]
    pub text_config: TextFileConfig,
    /// The image tower (`CLIPVisionConfig`).
    #[serde(default)]
    pub vision_config: VisionFileConfig,
}

/// `text_config` (transformers' `CLIPTextConfig` defaults).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct TextFileConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

/// `vision_config` (transformers' `CLIPVisionConfig` defaults).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct VisionFileConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

fn default_projection_dim() -> usize {
    512
}

impl Default for TextFileConfig {
    fn default() -> Self {
        TextFileConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl Default for VisionFileConfig {
    fn default() -> Self {
        VisionFileConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipFileConfig {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClipError::File(path.display().to_string(), e.to_string()))?;
        let config: ClipFileConfig = serde_json::from_str(&text)
            .map_err(|e| ClipError::File(path.display().to_string(), e.to_string()))?;
        config.check(path)?;
        Ok(config)
    }

    /// The towers candle-transformers implements: quick GELU and layer-norm epsilon 1e-5 (every
    /// OpenAI CLIP and the safety checker), heads dividing the width, patches tiling the image.
    fn check(&self, path: &Path) -> Result<()> {
        let field = |name: &str, why: String| {
            Err(ClipError::Config(
                path.display().to_string(),
                name.to_string(),
                why,
            ))
        };
        let t = &self.text_config;
        let v = &self.vision_config;
        for (name, act) in [
            ("text_config.hidden_act", &t.hidden_act),
            ("vision_config.hidden_act", &v.hidden_act),
        ] {
            if act != "quick_gelu" {
                return field(name, format!("{act:?}: only quick_gelu is implemented"));
            }
        }
        for (name, eps) in [
            ("text_config.layer_norm_eps", t.layer_norm_eps),
            ("vision_config.layer_norm_eps", v.layer_norm_eps),
        ] {
            if (eps - 1e-5).abs() > 1e-12 {
                return field(name, format!("{eps}: only 1e-5 is implemented"));
            }
        }
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return field(
                "text_config.num_attention_heads",
                "must divide hidden_size".into(),
            );
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return field(
                "vision_config.num_attention_heads",
                "must divide hidden_size".into(),
            );
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return field("vision_config.patch_size", "must divide image_size".into());
        }
        Ok(())
    }

    /// candle-transformers' text configuration.
    pub fn text(&self) -> text_model::ClipTextConfig {
        let t = &self.text_config;
        text_model::ClipTextConfig {
            vocab_size: t.vocab_size,
            embed_dim: t.hidden_size,
            activation: text_model::Activation::QuickGelu,
            intermediate_size: t.intermediate_size,
            max_position_embeddings: t.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: t.num_attention_heads,
            projection_dim: self.projection_dim,
        }
    }

    /// candle-transformers' vision configuration.
    pub fn vision(&self) -> vision_model::ClipVisionConfig {
        let v = &self.vision_config;
        vision_model::ClipVisionConfig {
            embed_dim: v.hidden_size,
            activation: text_model::Activation::QuickGelu,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            projection_dim: self.projection_dim,
            num_channels: v.num_channels,
            image_size: v.image_size,
            patch_size: v.patch_size,
        }
    }
}
