//! Text encoders released between jobs (`LoadOptions::release_text_encoders`).
//!
//! Why: a job needs its text encoders for a fraction of a second before its first step, and
//! never again; SDXL's two (CLIP-L and OpenCLIP-bigG) are 1.6 GB in bf16, a quarter of the model,
//! held through every step beside the UNet's activations. Released, the model keeps only what it
//! takes to read them again: the checkpoint's path and their names and shapes. Each job builds
//! them for its encoding and drops them before its steps, so the encoders and the UNet's
//! activations are never held at once.
//!
//! A single-file checkpoint is read again with plain file reads, tensor by tensor (`unmapped`:
//! through a memory map, 1.6 GB of mapped pages would count in the resident memory beside their
//! converted copies while the encoders are built); the file's pages stay in the page cache, so
//! a job reads no disk once the file is cached. A diffusers folder, whose tensors are renamed,
//! fused and transposed on the way (`checkpoint`), is read through its index.
//!
//! A LoRA set that changes the text encoders is merged from their weights read again the same
//! way; the merged encoders are then held while that set is applied, as without the option.

use super::unmapped::Unmapped;
use crate::clip::TextTransformer;
use crate::config::{
    ClipConfig, Family, SD1_CLIP_PREFIX, SD2_CLIP_PREFIX, SDXL_CLIP_G_PREFIX, SDXL_CLIP_L_PREFIX,
};
use crate::text::TextConditioner;
use crate::Error;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The key prefixes of a family's text encoders, in the order of `ModelConfig::text_encoders`.
pub(crate) fn text_prefixes(family: Family) -> &'static [&'static str] {
    match family {
        Family::Sd1 => &[SD1_CLIP_PREFIX],
        Family::Sd2 => &[SD2_CLIP_PREFIX],
        Family::Sdxl => &[SDXL_CLIP_L_PREFIX, SDXL_CLIP_G_PREFIX],
    }
}

/// The text encoders of `configs` from `vb`.
pub(crate) fn build_encoders(
    family: Family,
    configs: &[ClipConfig],
    vb: &VarBuilder<'_>,
) -> candle_core::Result<TextConditioner> {
    let encoders = configs
        .iter()
        .zip(text_prefixes(family))
        .map(|(c, prefix)| TextTransformer::new(c, vb.pp(prefix.trim_end_matches('.'))))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(TextConditioner::new(family, encoders))
}

/// Opens the weights again: a `VarBuilder` of the checkpoint the model was loaded from.
pub(crate) type Source = Arc<dyn Fn() -> Result<VarBuilder<'static>, Error> + Send + Sync>;

/// How to read a checkpoint's weights again, and its path.
pub(crate) type Reopen = (Source, PathBuf);

/// The text encoders a model holds between jobs.
pub(crate) enum TextWeights {
    Held(TextConditioner),
    Released(ReleasedText),
}

/// What a model keeps of released text encoders: how to read them again.
#[derive(Clone)]
pub(crate) struct ReleasedText {
    family: Family,
    configs: Vec<ClipConfig>,
    /// Every text-encoder tensor's name and shape.
    shapes: Arc<BTreeMap<String, Vec<usize>>>,
    source: Source,
    /// The checkpoint.
    path: PathBuf,
    dtype: DType,
    device: Device,
}

impl ReleasedText {
    /// Takes the text encoders' tensors out of `recorded` (the base tensors LoRA sets are merged
    /// from), keeping their names and shapes, so that nothing holds them after loading.
    pub(crate) fn take(
        (family, configs): (Family, &[ClipConfig]),
        recorded: &Mutex<HashMap<String, Tensor>>,
        (source, path): Reopen,
        (dtype, device): (DType, &Device),
    ) -> ReleasedText {
        let prefixes = text_prefixes(family);
        let mut recorded = recorded.lock().expect("recording lock");
        let names: Vec<String> = recorded
            .keys()
            .filter(|name| prefixes.iter().any(|p| name.starts_with(p)))
            .cloned()
            .collect();
        let shapes = names
            .into_iter()
            .filter_map(|name| {
                let tensor = recorded.remove(&name)?;
                Some((name, tensor.dims().to_vec()))
            })
            .collect();
        ReleasedText {
            family,
            configs: configs.to_vec(),
            shapes: Arc::new(shapes),
            source,
            path,
            dtype,
            device: device.clone(),
        }
    }

    /// The encoders' tensors: read from a single file, or through the checkpoint's index.
    fn var_builder(&self) -> Result<VarBuilder<'static>, Error> {
        let unreadable = |e: std::io::Error| Error::Unreadable {
            path: self.path.clone(),
            reason: format!("reading the released text encoders again: {e}"),
        };
        let held_as = (self.dtype, &self.device);
        match read_unmapped(&self.path, &self.shapes, held_as).map_err(unreadable)? {
            Some(tensors) => Ok(VarBuilder::from_tensors(tensors, self.dtype, &self.device)),
            None => (self.source)(),
        }
    }

    /// The names and shapes of the encoders' tensors.
    pub(crate) fn shapes(&self) -> &BTreeMap<String, Vec<usize>> {
        &self.shapes
    }

    /// The encoders, read again (for one job's encoding).
    pub(crate) fn conditioner(&self) -> Result<TextConditioner, Error> {
        let vb = self.var_builder()?;
        build_encoders(self.family, &self.configs, &vb).map_err(|e| self.error(e))
    }

    /// Every tensor of the encoders, read again (the base a LoRA set is merged from).
    pub(crate) fn tensors(&self) -> Result<HashMap<String, Tensor>, Error> {
        let vb = self.var_builder()?;
        self.shapes
            .iter()
            .map(|(name, shape)| {
                let tensor = vb.get(shape.as_slice(), name).map_err(|e| self.error(e))?;
                Ok((name.clone(), tensor))
            })
            .collect()
    }

    fn error(&self, e: candle_core::Error) -> Error {
        Error::Layout {
            path: self.path.clone(),
            reason: format!("reading the released text encoders again: {e}"),
        }
    }
}

/// The tensors `shapes` of the single-file checkpoint `path`, each read with a plain file read
/// (`unmapped`) and converted to `dtype` on `device` before the next is read; `None` for a
/// folder, or when one is not stored plainly in the shape recorded (the index then reads them).
fn read_unmapped(
    path: &Path,
    shapes: &BTreeMap<String, Vec<usize>>,
    (dtype, device): (DType, &Device),
) -> std::io::Result<Option<HashMap<String, Tensor>>> {
    let Some(file) = Unmapped::open(path) else {
        return Ok(None);
    };
    let plain = |(name, shape): (&String, &Vec<usize>)| file.shape(name) == Some(shape.as_slice());
    if !shapes.iter().all(plain) {
        return Ok(None);
    }
    let read = |name: &String| {
        let stored = file.read(name).expect("a plain entry")?;
        let held = stored.to_dtype(dtype).and_then(|t| t.to_device(device));
        Ok((name.clone(), held.map_err(std::io::Error::other)?))
    };
    shapes
        .keys()
        .map(read)
        .collect::<std::io::Result<_>>()
        .map(Some)
}
