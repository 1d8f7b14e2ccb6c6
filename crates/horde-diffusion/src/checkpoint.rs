//! Opening checkpoints: single-file `.safetensors` in the original (LDM) key layout, as the AI
//! Horde model reference distributes them, and diffusers folders, whose keys are renamed to the
//! LDM layout (`crate::diffusers`) so the networks have one naming.
//!
//! Files are memory-mapped and tensors are read as plain tensors (never `Var`s, which triple peak
//! memory); every error names the file and what was expected.

use crate::Error;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where one LDM-named tensor is stored: which mapped file, under which name. A tensor made of
/// several stored ones (diffusers' separate q, k, v for OpenCLIP's fused `in_proj`) lists them
/// all, to be concatenated along the first dimension; `transpose` swaps a stored matrix.
#[derive(Debug, Clone)]
struct Location {
    parts: Vec<(usize, String)>,
    transpose: bool,
    shape: Vec<usize>,
}

impl Location {
    fn stored(file: usize, name: String, shape: Vec<usize>) -> Self {
        Location {
            parts: vec![(file, name)],
            transpose: false,
            shape,
        }
    }
}

/// The tensors of a checkpoint by their LDM names, with their shapes, before any is read.
#[derive(Clone)]
pub struct TensorIndex {
    path: PathBuf,
    files: Arc<Vec<(PathBuf, MmapedSafetensors)>>,
    tensors: BTreeMap<String, Location>,
    text_layers_removed: usize,
}

impl std::fmt::Debug for TensorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorIndex")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Memory-maps one `.safetensors` file.
pub(crate) fn map_file(path: &Path) -> Result<MmapedSafetensors, Error> {
    if !path.exists() {
        return Err(Error::Unreadable {
            path: path.into(),
            reason: "no such file".into(),
        });
    }
    // SAFETY: the mapping is read-only and lives as long as the loaded model; a checkpoint must
    // not be rewritten in place while a worker serves it (documented in the worker's config).
    #[allow(unsafe_code)]
    let mapped = unsafe { MmapedSafetensors::new(path) };
    mapped.map_err(|e| Error::Unreadable {
        path: path.into(),
        reason: format!(
            "not a complete safetensors file ({e}); is it truncated or of another format?"
        ),
    })
}

impl TensorIndex {
    /// Indexes a single-file checkpoint (LDM names as stored).
    pub fn open_file(path: &Path) -> Result<TensorIndex, Error> {
        let mapped = map_file(path)?;
        let tensors = mapped
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                (
                    name.clone(),
                    Location::stored(0, name, view.shape().to_vec()),
                )
            })
            .collect();
        Ok(TensorIndex {
            path: path.into(),
            files: Arc::new(vec![(path.into(), mapped)]),
            tensors,
            text_layers_removed: 0,
        })
    }

    /// Indexes several files whose tensors are renamed by `rename(file_index, stored_name)`;
    /// `None` drops a tensor the model does not use.
    pub(crate) fn open_renamed(
        path: &Path,
        files: Vec<(PathBuf, MmapedSafetensors)>,
        rename: impl Fn(usize, &str) -> Option<Vec<String>>,
    ) -> TensorIndex {
        let mut tensors = BTreeMap::new();
        for (file, (_, mapped)) in files.iter().enumerate() {
            for (name, view) in mapped.tensors() {
                for ldm in rename(file, &name).unwrap_or_default() {
                    tensors.insert(
                        ldm,
                        Location::stored(file, name.clone(), view.shape().to_vec()),
                    );
                }
            }
        }
        TensorIndex {
            path: path.into(),
            files: Arc::new(files),
            tensors,
            text_layers_removed: 0,
        }
    }

    /// Final OpenCLIP text-encoder layers the file lacks (see `ClipConfig::layers_removed`).
    pub fn text_layers_removed(&self) -> usize {
        self.text_layers_removed
    }

    pub(crate) fn set_text_layers_removed(&mut self, removed: usize) {
        self.text_layers_removed = removed;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The LDM names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors
            .range(prefix.to_string()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }

    pub fn shape(&self, name: &str) -> Result<Vec<usize>, Error> {
        self.tensors
            .get(name)
            .map(|l| l.shape.clone())
            .ok_or_else(|| self.layout_error(&format!("missing tensor `{name}`")))
    }

    /// How many consecutive indices `prefix0.`, `prefix1.`, … exist.
    pub fn count_indices(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| self.has_prefix(&format!("{prefix}{i}.")))
            .count()
    }

    /// The shape of the first tensor under `prefix` whose name ends with `suffix`.
    pub fn first_with_suffix(&self, prefix: &str, suffix: &str) -> Option<Vec<usize>> {
        self.tensors
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .find(|(k, _)| k.ends_with(suffix))
            .map(|(_, l)| l.shape.clone())
    }

    pub(crate) fn layout_error(&self, reason: &str) -> Error {
        Error::Layout {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(&self, what: &str) -> Error {
        Error::Unsupported {
            path: self.path.clone(),
            reason: what.into(),
        }
    }

    /// A `VarBuilder` reading these tensors as `dtype` on `device`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    fn load(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        let location = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: missing tensor `{name}`", self.path.display()))
        })?;
        let parts = location
            .parts
            .iter()
            .map(|(file, stored)| {
                let (file_path, mapped) = &self.files[*file];
                mapped.load(stored, device).map_err(|e| {
                    candle_core::Error::Msg(format!(
                        "{}: cannot read `{stored}`: {e}",
                        file_path.display()
                    ))
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let tensor = if parts.len() == 1 {
            parts.into_iter().next().expect("one part")
        } else {
            Tensor::cat(&parts, 0)?
        };
        if location.transpose {
            tensor.t()?.contiguous()
        } else {
            Ok(tensor)
        }
    }

    /// Replaces the tensors `parts` by one named `name`, their concatenation along dimension 0.
    pub(crate) fn fuse(&mut self, name: &str, parts: &[String]) -> bool {
        let found: Option<Vec<Location>> =
            parts.iter().map(|p| self.tensors.get(p).cloned()).collect();
        let Some(found) = found else { return false };
        let mut shape = found[0].shape.clone();
        shape[0] = found.iter().map(|l| l.shape[0]).sum();
        for part in parts {
            self.tensors.remove(part);
        }
        let stored = found.into_iter().flat_map(|l| l.parts).collect();
        self.tensors.insert(
            name.into(),
            Location {
                parts: stored,
                transpose: false,
                shape,
            },
        );
        true
    }

    /// Reads the matrix `name` transposed (Hugging Face `Linear` weights as OpenCLIP matrices).
    pub(crate) fn transpose(&mut self, name: &str) {
        if let Some(location) = self.tensors.get_mut(name) {
            location.transpose = !location.transpose;
            location.shape.reverse();
        }
    }
}

impl candle_nn::var_builder::SimpleBackend for TensorIndex {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut tensor = self.load(name, device)?;
        // Diffusers stores some 1×1 convolutions of the LDM layout as linear weights.
        if tensor.shape() != &shape && same_but_trailing_ones(tensor.dims(), shape.dims()) {
            tensor = tensor.reshape(shape.dims())?;
        }
        if tensor.shape() != &shape {
            return Err(candle_core::Error::Msg(format!(
                "{}: tensor `{name}` has shape {:?}, the model expects {:?}",
                self.path.display(),
                tensor.dims(),
                shape.dims()
            )));
        }
        tensor.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

fn same_but_trailing_ones(a: &[usize], b: &[usize]) -> bool {
    let trim = |d: &[usize]| {
        d.iter()
            .rposition(|&x| x != 1)
            .map(|i| d[..=i].to_vec())
            .unwrap_or_default()
    };
    trim(a) == trim(b)
}

/// Extensions of pickled PyTorch checkpoints, which must be converted before they load.
const PICKLED: [&str; 3] = ["ckpt", "pt", "pth"];

/// Opens a checkpoint: a `.safetensors` file (LDM layout) or a diffusers folder. A pickled
/// checkpoint is refused by its extension, with what to do, rather than with a safetensors
/// parse error.
pub fn open(path: &Path) -> Result<TensorIndex, Error> {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if PICKLED.iter().any(|p| extension.eq_ignore_ascii_case(p)) && !path.is_dir() {
        return Err(Error::Unreadable {
            path: path.into(),
            reason: "is a pickled checkpoint: convert it with `horde model convert` (the \
                     worker converts the ones it downloads)"
                .into(),
        });
    }
    if path.is_dir() {
        crate::diffusers::open_folder(path)
    } else {
        TensorIndex::open_file(path)
    }
}
