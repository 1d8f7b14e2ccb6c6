//! BLIP's BERT text decoder (`BlipTextLMHeadModel`) with both attention caches.
//!
//! candle-transformers' `blip_text` caches the self-attention's keys and values but projects the
//! image's keys and values again at every generated token: with BLIP-large's 577 image tokens
//! that is about 11 GMAC a step, three times the vision tower over a caption. transformers keeps
//! them (`EncoderDecoderCache`), and so does this decoder: [`TextDecoder::start`] projects them
//! once per image, [`TextDecoder::forward`] feeds new ids. The weights are transformers' keys
//! under `text_decoder.`.

use super::config::TextConfig;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{
    embedding, layer_norm, linear, Activation, Embedding, LayerNorm, Linear, VarBuilder,
};

/// One attention block: projections, then the output's dense layer and residual norm.
#[derive(Debug, Clone)]
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    norm: LayerNorm,
    heads: usize,
}

impl Attention {
    fn load(cfg: &TextConfig, key_width: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let width = cfg.hidden_size;
        let own = vb.pp("self");
        Ok(Self {
            query: linear(width, width, own.pp("query"))?,
            key: linear(key_width, width, own.pp("key"))?,
            value: linear(key_width, width, own.pp("value"))?,
            dense: linear(width, width, vb.pp("output.dense"))?,
            norm: layer_norm(width, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: cfg.num_attention_heads,
        })
    }

    /// `[b, n, width]` to `[b, heads, n, head_dim]`.
    fn split(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, n, width) = xs.dims3()?;
        xs.reshape((b, n, self.heads, width / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Keys and values of `xs`, split into heads.
    fn keys_values(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.split(&self.key.forward(xs)?)?,
            self.split(&self.value.forward(xs)?)?,
        ))
    }

    /// Attends from `xs` to the given keys and values (with an additive mask), then the output.
    fn attend(
        &self,
        xs: &Tensor,
        (k, v): (&Tensor, &Tensor),
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let q = self.split(&self.query.forward(xs)?)?;
        let scale = 1.0 / ((q.dim(D::Minus1)? as f64).sqrt());
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs.matmul(v)?.transpose(1, 2)?.flatten_from(D::Minus2)?;
        self.norm.forward(&(self.dense.forward(&context)? + xs)?)
    }
}

/// One decoder layer: causal self-attention, cross-attention to the image, feed-forward.
#[derive(Debug, Clone)]
struct Layer {
    attention: Attention,
    cross: Attention,
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
    act: Activation,
    /// The mis-wired variant of the tests: cross-attention skipped.
    #[cfg(test)]
    skip_cross: bool,
}

impl Layer {
    fn load(cfg: &TextConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let (width, inner) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            attention: Attention::load(cfg, width, vb.pp("attention"))?,
            cross: Attention::load(cfg, cfg.encoder_hidden_size, vb.pp("crossattention"))?,
            intermediate: linear(width, inner, vb.pp("intermediate.dense"))?,
            output: linear(inner, width, vb.pp("output.dense"))?,
            norm: layer_norm(width, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            act: cfg.hidden_act,
            #[cfg(test)]
            skip_cross: false,
        })
    }

    fn forward(&self, xs: &Tensor, cache: &mut LayerCache, mask: &Tensor) -> Result<Tensor> {
        let (k, v) = self.attention.keys_values(xs)?;
        let (k, v) = match cache.own.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        let attended = self.attention.attend(xs, (&k, &v), Some(mask))?;
        cache.own = Some((k, v));
        let crossed = self
            .cross
            .attend(&attended, (&cache.image.0, &cache.image.1), None)?;
        #[cfg(test)]
        let crossed = if self.skip_cross { attended } else { crossed };
        let inner = self.act.forward(&self.intermediate.forward(&crossed)?)?;
        self.norm
            .forward(&(self.output.forward(&inner)? + crossed)?)
    }
}

/// One layer's cached keys and values: the ids fed so far, and the image's.
#[derive(Debug, Clone)]
struct LayerCache {
    own: Option<(Tensor, Tensor)>,
    image: (Tensor, Tensor),
}

/// The decoding state for one image: every layer's caches and the ids fed so far.
#[derive(Debug, Clone)]
pub struct DecoderState {
    layers: Vec<LayerCache>,
    fed: usize,
}

/// The text decoder and its language-model head.
#[derive(Debug, Clone)]
pub struct TextDecoder {
    words: Embedding,
    positions: Embedding,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    head_dense: Linear,
    head_norm: LayerNorm,
    head_act: Activation,
    vocab: Linear,
}

impl TextDecoder {
    /// Loads `text_decoder.*`; `vb` is the checkpoint's root (the head's tied weights present).
    pub fn load(cfg: &TextConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let (bert, head) = (
            vb.pp("text_decoder.bert"),
            vb.pp("text_decoder.cls.predictions"),
        );
        let width = cfg.hidden_size;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(cfg, bert.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<_>>()?;
        let vocab_weight = head.get((cfg.vocab_size, width), "decoder.weight")?;
        Ok(Self {
            words: embedding(cfg.vocab_size, width, bert.pp("embeddings.word_embeddings"))?,
            positions: embedding(
                cfg.max_position_embeddings,
                width,
                bert.pp("embeddings.position_embeddings"),
            )?,
            embed_norm: layer_norm(width, cfg.layer_norm_eps, bert.pp("embeddings.LayerNorm"))?,
            layers,
            head_dense: linear(width, width, head.pp("transform.dense"))?,
            head_norm: layer_norm(width, cfg.layer_norm_eps, head.pp("transform.LayerNorm"))?,
            head_act: cfg.hidden_act,
            vocab: Linear::new(vocab_weight, Some(head.get(cfg.vocab_size, "bias")?)),
        })
    }

    /// A fresh state for an image's embeddings `[1, tokens, encoder width]`: each layer's
    /// cross-attention keys and values, projected once.
    pub fn start(&self, image: &Tensor) -> Result<DecoderState> {
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                Ok(LayerCache {
                    own: None,
                    image: layer.cross.keys_values(image)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(DecoderState { layers, fed: 0 })
    }

    /// The logits `[1, n, vocab]` of `n` new ids following those already fed.
    pub fn forward(&self, ids: &[u32], state: &mut DecoderState) -> Result<Tensor> {
        let device = self.vocab.weight().device();
        let n = ids.len();
        let input = Tensor::new(ids, device)?.unsqueeze(0)?;
        let positions = Tensor::arange(state.fed as u32, (state.fed + n) as u32, device)?;
        let embedded =
            (self.words.forward(&input)? + self.positions.forward(&positions)?.unsqueeze(0)?)?;
        let mut xs = self.embed_norm.forward(&embedded)?;
        let mask = causal_mask(n, state.fed, device)?;
        for (layer, cache) in self.layers.iter().zip(&mut state.layers) {
            xs = layer.forward(&xs, cache, &mask)?;
        }
        state.fed += n;
        let hidden = self
            .head_norm
            .forward(&self.head_act.forward(&self.head_dense.forward(&xs)?)?)?;
        self.vocab.forward(&hidden)
    }
}

/// The additive mask `[n, past + n]` letting new id `i` see the past and new ids up to itself.
fn causal_mask(n: usize, past: usize, device: &candle_core::Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..past + n).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    Tensor::from_vec(values, (n, past + n), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caption::Captioner;
    use candle_core::Device;
    use std::path::PathBuf;

    /// The prefix logits with cross-attention skipped in every layer must miss transformers'
    /// (`tests/caption_numbers.rs` checks the wired decoder against the same numbers).
    #[test]
    fn skipping_cross_attention_fails_the_reference_logits() {
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blip");
        let captioner = Captioner::load(&fixtures.join("model"), &Device::Cpu).unwrap();
        let reference =
            candle_core::safetensors::load(fixtures.join("reference.safetensors"), &Device::Cpu)
                .unwrap();
        let (embeds, expected) = (
            &reference["flower.vision_embeds"],
            &reference["flower.prefix_logits"],
        );
        let prefix = captioner.prompt_ids("a picture of ");
        let mut mis_wired = captioner.decoder.clone();
        mis_wired
            .layers
            .iter_mut()
            .for_each(|layer| layer.skip_cross = true);
        let diff = |decoder: &TextDecoder| {
            let mut state = decoder.start(embeds).unwrap();
            let logits = decoder.forward(&prefix, &mut state).unwrap();
            let d = (logits - expected)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap();
            d.max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        let (wired, skipped) = (diff(&captioner.decoder), diff(&mis_wired));
        println!("prefix logits max diff: wired {wired:e}, cross-attention skipped {skipped:e}");
        assert!(wired < 2e-4, "{wired}");
        assert!(skipped > 2e-2, "{skipped}");
    }
}
