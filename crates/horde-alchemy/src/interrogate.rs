//! The `interrogation` form: an image ranked against the horde's seven term lists by CLIP
//! similarity, in the public result shape.
//!
//! As the horde's interrogator (horde-clipfree's `Interrogator.rank`, which the alchemist worker
//! called with `rank=True, top_count=5`) does: each list's normalised text embeddings against the
//! normalised image embedding, `softmax(100 × cosine)` over the list, the top five with their
//! probability × 100 as `confidence`. The worker submits `{"interrogation": {"tags": [{"text",
//! "confidence"}…], "sites": …, "artists": …, "flavors": …, "mediums": …, "movements": …,
//! "techniques": …}}` (horde-sdk's `AlchemyInterrogationDetails`), which is what
//! [`Interrogator::interrogate`] returns. The lists (`data/`, from horde-clipfree, AGPL-3.0) are
//! embedded once per model, on the first interrogation, and kept in memory: 7465 terms are most
//! of the form's time otherwise.

use std::sync::{Arc, Mutex};

use candle_core::{Tensor, D};
use image::RgbImage;
use serde::Serialize;

use crate::clip::{tokenize, Clip, Result};

/// How many terms of each list the form returns (the alchemist's `top_count`).
pub const TOP_COUNT: usize = 5;

/// The ranked lists' names, in the public result's order, with their committed files.
const HORDE_LISTS: [(&str, &str); 7] = [
    ("tags", include_str!("../data/tags.txt")),
    ("sites", include_str!("../data/sites.txt")),
    ("artists", include_str!("../data/artists.txt")),
    ("flavors", include_str!("../data/flavors.txt")),
    ("mediums", include_str!("../data/mediums.txt")),
    ("movements", include_str!("../data/movements.txt")),
    ("techniques", include_str!("../data/techniques.txt")),
];

/// Named lists of terms, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct TermLists {
    lists: Vec<(String, Vec<String>)>,
}

impl TermLists {
    /// The horde's lists (`data/*.txt`), read as horde-clipfree reads them: every line, stripped.
    pub fn horde() -> TermLists {
        TermLists::new(
            HORDE_LISTS
                .iter()
                .map(|(name, text)| (name.to_string(), parse_list(text)))
                .collect(),
        )
    }

    /// Lists given by name.
    pub fn new(lists: Vec<(String, Vec<String>)>) -> TermLists {
        TermLists { lists }
    }

    /// The lists, in order.
    pub fn lists(&self) -> &[(String, Vec<String>)] {
        &self.lists
    }

    /// How many terms in all.
    pub fn len(&self) -> usize {
        self.lists.iter().map(|(_, terms)| terms.len()).sum()
    }

    /// No terms at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One term list file: each line stripped (Python's `line.strip()`), blank lines kept as terms,
/// as `load_list` keeps them.
pub fn parse_list(text: &str) -> Vec<String> {
    text.split_inclusive('\n')
        .map(|line| line.trim().to_string())
        .collect()
}

/// One ranked term of the result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ranked {
    /// The term.
    pub text: String,
    /// Its softmax probability within its list, in percent.
    pub confidence: f32,
}

/// The interrogation form on one CLIP model.
pub struct Interrogator {
    clip: Clip,
    lists: TermLists,
    embeds: Mutex<Option<Arc<Vec<Tensor>>>>,
}

impl Interrogator {
    /// The form over `lists` ([`TermLists::horde`] for the horde's).
    pub fn new(clip: Clip, lists: TermLists) -> Interrogator {
        Interrogator {
            clip,
            lists,
            embeds: Mutex::new(None),
        }
    }

    /// The CLIP model.
    pub fn clip(&self) -> &Clip {
        &self.clip
    }

    /// The form's result for one image: `{"interrogation": {list: [{text, confidence}…]}}` with
    /// the top [`TOP_COUNT`] of each list.
    pub fn interrogate(&self, image: &RgbImage) -> Result<serde_json::Value> {
        let ranked = self.rank(image, TOP_COUNT)?;
        let details: serde_json::Map<String, serde_json::Value> = ranked
            .into_iter()
            .map(|(name, terms)| (name, serde_json::json!(terms)))
            .collect();
        Ok(serde_json::json!({ "interrogation": details }))
    }

    /// The top `top_count` terms of each list for one image, in the lists' order.
    pub fn rank(&self, image: &RgbImage, top_count: usize) -> Result<Vec<(String, Vec<Ranked>)>> {
        let image = self.clip.image_embeds(image)?.unsqueeze(0)?;
        let embeds = self.list_embeds()?;
        let mut out = Vec::with_capacity(self.lists.lists.len());
        for ((name, terms), texts) in self.lists.lists.iter().zip(embeds.iter()) {
            out.push((name.clone(), rank_list(&image, texts, terms, top_count)?));
        }
        Ok(out)
    }

    /// Each list's normalised text embeddings, computed on first use and kept.
    pub fn list_embeds(&self) -> Result<Arc<Vec<Tensor>>> {
        let mut cached = self
            .embeds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(embeds) = cached.as_ref() {
            return Ok(embeds.clone());
        }
        let mut embeds = Vec::with_capacity(self.lists.lists.len());
        for (_, terms) in &self.lists.lists {
            let tokens: Vec<Vec<u32>> = terms.iter().map(|t| tokenize(t)).collect();
            embeds.push(self.clip.text_embeds_from_tokens(&tokens)?);
        }
        let embeds = Arc::new(embeds);
        *cached = Some(embeds.clone());
        Ok(embeds)
    }
}

/// `Interrogator.rank` of one list: `softmax(100 × image · textsᵀ)`, the top `top_count`
/// (highest first), confidence in percent.
pub fn rank_list(
    image: &Tensor,
    texts: &Tensor,
    terms: &[String],
    top_count: usize,
) -> Result<Vec<Ranked>> {
    let logits = (image.matmul(&texts.t()?)? * 100.0)?;
    let probs = candle_nn::ops::softmax(&logits, D::Minus1)?
        .squeeze(0)?
        .to_vec1::<f32>()?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    Ok(order
        .into_iter()
        .take(top_count.min(terms.len()))
        .map(|i| Ranked {
            text: terms[i].clone(),
            confidence: probs[i] * 100.0,
        })
        .collect())
}
