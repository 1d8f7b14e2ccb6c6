//! CLIP's image and text towers (the `interrogation` form's ViT-L/14, `openai/clip-vit-large-patch14`)
//! from transformers' `CLIPModel` safetensors layout, on candle.
//!
//! The transformer layers are candle-transformers' `models::clip`, which loads exactly
//! transformers' key names (`vision_model.embeddings.patch_embedding`, `pre_layrnorm`,
//! `encoder.layers.N.self_attn.q_proj`, `text_model.final_layer_norm`, `visual_projection`, …)
//! and computes the same layers; what it leaves to the caller is done here, where it decides the
//! numbers: the image preprocessing (PIL's bicubic, [`preprocess`]), the tokenizer (OpenAI's BPE
//! as the horde's interrogator uses it: start, tokens, end, zero padding, 77 at most), the pooling
//! of the text at its end token and both projections, normalised. The fixtures of
//! `tools/alchemy-fixtures/clip.py` pin all of it to transformers (`tests/clip_numbers.rs`).

pub mod config;
pub mod preprocess;
#[cfg(test)]
mod tests;
pub mod vision;

use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use image::RgbImage;
use instant_clip_tokenizer::{Token, Tokenizer};

pub use config::ClipFileConfig;
pub use preprocess::Preprocess;
pub use vision::VisionTower;

/// What loading or running CLIP can fail with; each names its file or field.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("{0}: {1}")]
    File(String, String),
    #[error("{0}: field `{1}`: {2}")]
    Config(String, String, String),
    #[error("image: {0}")]
    Image(String),
    #[error("tokens: {0}")]
    Tokens(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// This module's results.
pub type Result<T> = std::result::Result<T, ClipError>;

/// The context CLIP's text tower was trained with.
pub const CONTEXT: usize = 77;

/// Texts embedded in one pass of the text tower.
const TEXT_BATCH: usize = 64;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(Tokenizer::new)
}

/// `clip.tokenize(text, truncate=True)` without its padding: start, the BPE tokens of the
/// [`clean_text`] (lower-cased), end; over 77 the 77th becomes the end token.
pub fn tokenize(text: &str) -> Vec<u32> {
    let tokenizer = tokenizer();
    let mut tokens: Vec<Token> = vec![tokenizer.start_of_text()];
    tokenizer.encode(&clean_text(text), &mut tokens);
    tokens.truncate(CONTEXT - 1);
    tokens.push(tokenizer.end_of_text());
    tokens.into_iter().map(|t| u32::from(t.to_u16())).collect()
}

/// OpenAI's `basic_clean` and `whitespace_clean` before BPE: HTML entities unescaped twice
/// (`html.unescape(html.unescape(text))`), runs of whitespace made one space, trimmed. Of
/// `html.unescape` this knows the numeric entities and the named ones prompts carry (`&amp;`,
/// `&lt;`, `&gt;`, `&quot;`, `&apos;`, `&nbsp;`, each with its `;`); ftfy's `fix_text` (mojibake
/// repair) is not done: every term of the horde's lists tokenizes as OpenAI's tokenizer does.
pub fn clean_text(text: &str) -> String {
    let unescaped = unescape_html(&unescape_html(text));
    unescaped.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn unescape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match entity(rest) {
            Some((ch, len)) => {
                out.push(ch);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The character of the entity `text` starts with, and the entity's length.
fn entity(text: &str) -> Option<(char, usize)> {
    let end = text.get(..12.min(text.len()))?.find(';')?;
    let name = &text[1..end];
    let ch = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        _ => {
            let digits = name.strip_prefix('#')?;
            let code = match digits.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => digits.parse().ok()?,
            };
            char::from_u32(code)?
        }
    };
    Some((ch, end + 1))
}

/// The two towers and their projections.
pub struct Clip {
    vision: VisionTower,
    text: ClipTextTransformer,
    visual_projection: Linear,
    text_projection: Linear,
    logit_scale: f32,
    preprocess: Preprocess,
    device: Device,
}

/// The image tower alone, with its projection: what the safety checker is built on.
pub(crate) fn vision_tower(
    vb: &VarBuilder<'_>,
    prefix: &str,
    config: &ClipFileConfig,
) -> candle_core::Result<(VisionTower, Linear)> {
    let vision = VisionTower::new(vb.pp(prefix), config)?;
    let projection = candle_nn::linear_no_bias(
        config.vision_config.hidden_size,
        config.projection_dim,
        vb.pp("visual_projection"),
    )?;
    Ok((vision, projection))
}

/// The weights of a safetensors file, read into memory in float32 on `device`.
pub(crate) fn open_weights(path: &Path, device: &Device) -> Result<VarBuilder<'static>> {
    let mut tensors = crate::weights::load_f32(path, device)
        .map_err(|message| ClipError::File(path.display().to_string(), message))?;
    // Both towers run products of many rows: 257 patches, or 64 texts at once.
    crate::weights::transpose_product_weights(&mut tensors, |_| true)?;
    Ok(VarBuilder::from_tensors(tensors, DType::F32, device))
}

impl Clip {
    /// A `CLIPModel` directory: `config.json` and `model.safetensors` (transformers' layout).
    pub fn load(dir: &Path, device: &Device) -> Result<Clip> {
        Clip::load_files(
            &dir.join("config.json"),
            &dir.join("model.safetensors"),
            device,
        )
    }

    /// [`Clip::load`] of explicitly named files.
    pub fn load_files(config: &Path, weights: &Path, device: &Device) -> Result<Clip> {
        let config = ClipFileConfig::read(config)?;
        let vb = open_weights(weights, device)?;
        let named =
            |e: candle_core::Error| ClipError::File(weights.display().to_string(), e.to_string());
        let (vision, visual_projection) =
            vision_tower(&vb, "vision_model", &config).map_err(named)?;
        let text = ClipTextTransformer::new(vb.pp("text_model"), &config.text()).map_err(named)?;
        let text_projection = candle_nn::linear_no_bias(
            config.text_config.hidden_size,
            config.projection_dim,
            vb.pp("text_projection"),
        )
        .map_err(named)?;
        let logit_scale = vb
            .get((), "logit_scale")
            .and_then(|t| t.to_scalar::<f32>())
            .map_err(named)?;
        let mut preprocess = Preprocess::clip();
        preprocess.shortest_edge = config.vision_config.image_size as u32;
        preprocess.crop = config.vision_config.image_size as u32;
        Ok(Clip {
            vision,
            text,
            visual_projection,
            text_projection,
            logit_scale,
            preprocess,
            device: device.clone(),
        })
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `logit_scale.exp()`, the temperature of `logits_per_image`.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale.exp()
    }

    /// The preprocessing of the image tower.
    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// `image_embeds` of one image: projected and L2-normalised, `[projection_dim]`.
    pub fn image_embeds(&self, image: &RgbImage) -> Result<Tensor> {
        let pixels = self.preprocess.pixel_values(image, &self.device)?;
        Ok(self.image_embeds_from_pixels(&pixels)?.i(0)?)
    }

    /// `image_embeds` of preprocessed `[B, 3, H, W]` pixels: `[B, projection_dim]`, normalised.
    pub fn image_embeds_from_pixels(&self, pixels: &Tensor) -> Result<Tensor> {
        let pooled = self.vision.forward(pixels)?;
        Ok(l2_normalise(&self.visual_projection.forward(&pooled)?)?)
    }

    /// `text_embeds` of `texts`, tokenized with [`tokenize`]: `[N, projection_dim]`, normalised.
    /// Each batch is cut to its longest text: the attention is causal and the text is read at
    /// its end token, so the padding after it never changes the result.
    pub fn text_embeds(&self, texts: &[&str]) -> Result<Tensor> {
        let tokens: Vec<Vec<u32>> = texts.iter().map(|t| tokenize(t)).collect();
        self.text_embeds_from_tokens(&tokens)
    }

    /// [`Clip::text_embeds`] of token lists (each start … end, at most 77). The lists are
    /// batched shortest first, so that a batch pads little, and the rows put back in order.
    pub fn text_embeds_from_tokens(&self, tokens: &[Vec<u32>]) -> Result<Tensor> {
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| tokens[i].len());
        let mut parts = Vec::with_capacity(tokens.len().div_ceil(TEXT_BATCH));
        for indices in order.chunks(TEXT_BATCH) {
            let batch: Vec<&[u32]> = indices.iter().map(|&i| tokens[i].as_slice()).collect();
            let (ids, ends) = pad_batch(&batch, &self.device)?;
            let pooled = self.pooled_text(&ids, &ends)?;
            parts.push(l2_normalise(&self.text_projection.forward(&pooled)?)?);
        }
        if parts.is_empty() {
            let dim = self.text_projection.weight().dim(0)?;
            return Ok(Tensor::zeros((0, dim), DType::F32, &self.device)?);
        }
        let sorted = Tensor::cat(&parts, 0)?;
        let mut position = vec![0u32; tokens.len()];
        for (sorted_row, &original) in order.iter().enumerate() {
            position[original] = sorted_row as u32;
        }
        let position = Tensor::from_vec(position, tokens.len(), &self.device)?;
        Ok(sorted.index_select(&position, 0)?)
    }

    /// The final-norm hidden state at each text's end token (`pooler_output`).
    fn pooled_text(&self, ids: &Tensor, ends: &[usize]) -> Result<Tensor> {
        let hidden = self.text.forward_with_mask(ids, usize::MAX)?;
        let rows = ends
            .iter()
            .enumerate()
            .map(|(row, &end)| hidden.i((row, end)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }

    /// `logits_per_image` of one image against `texts`: `logit_scale.exp() × cosine`.
    pub fn logits_per_image(&self, image: &RgbImage, texts: &[&str]) -> Result<Tensor> {
        let image = self.image_embeds(image)?.unsqueeze(0)?;
        let texts = self.text_embeds(texts)?;
        Ok((image.matmul(&texts.t()?)? * f64::from(self.logit_scale()))?)
    }
}

/// Token lists zero-padded to the longest, as `[N, T]` u32, and each one's end position.
fn pad_batch(batch: &[&[u32]], device: &Device) -> Result<(Tensor, Vec<usize>)> {
    let width = batch.iter().map(|t| t.len()).max().unwrap_or(0);
    let mut ids = vec![0u32; batch.len() * width];
    let mut ends = Vec::with_capacity(batch.len());
    for (row, tokens) in batch.iter().enumerate() {
        if tokens.is_empty() || tokens.len() > CONTEXT {
            return Err(ClipError::Tokens(format!(
                "a list of {} tokens (1..=77)",
                tokens.len()
            )));
        }
        ids[row * width..row * width + tokens.len()].copy_from_slice(tokens);
        ends.push(tokens.len() - 1);
    }
    Ok((Tensor::from_vec(ids, (batch.len(), width), device)?, ends))
}

/// Each row over its L2 norm.
pub fn l2_normalise(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}
