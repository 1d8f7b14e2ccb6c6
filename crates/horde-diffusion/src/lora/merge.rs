//! Merging a set of LoRAs into a model's weights, and the model's state: the base tensors as
//! loaded (recorded while the networks were built) and the networks of the set applied now.

use super::targets::{Target, Targets};
use super::{lora_error, Adapter, LoraApplication, Network, Weights};
use crate::clip::TextTransformer;
use crate::config::{
    Family, ModelConfig, SD1_CLIP_PREFIX, SD2_CLIP_PREFIX, SDXL_CLIP_G_PREFIX, SDXL_CLIP_L_PREFIX,
    UNET_PREFIX, VAE_PREFIX,
};
use crate::pipeline::release::ReleasedText;
use crate::text::TextConditioner;
use crate::unet::UNet;
use crate::Error;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// At most this share of a file's modules may map to nothing in the model (a few extra
/// modules some trainers add); more means a LoRA of another family.
const MAX_UNMAPPED_SHARE: f64 = 0.05;

type TensorMap = HashMap<String, Tensor>;

/// A `VarBuilder` backend that hands out another's tensors and remembers them by name (all but
/// the VAE's): the base tensors a LoRA set is merged from. They are the networks' own tensors
/// (shared storage), so remembering them costs no memory.
struct Recording<'a> {
    inner: VarBuilder<'a>,
    tensors: Arc<Mutex<TensorMap>>,
}

impl candle_nn::var_builder::SimpleBackend for Recording<'_> {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.inner.get_with_hints_dtype(shape, name, init, dtype)?;
        self.remember(name, &tensor);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.inner.get_unchecked_dtype(name, dtype)?;
        self.remember(name, &tensor);
        Ok(tensor)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

impl Recording<'_> {
    fn remember(&self, name: &str, tensor: &Tensor) {
        if !name.starts_with(VAE_PREFIX) {
            let mut tensors = self.tensors.lock().expect("recording lock");
            tensors.insert(name.to_string(), tensor.clone());
        }
    }
}

/// `vb` recording what the networks take from it, and where the record goes.
pub(crate) fn recording(vb: VarBuilder<'_>) -> (VarBuilder<'_>, Arc<Mutex<TensorMap>>) {
    let tensors = Arc::new(Mutex::new(TensorMap::new()));
    let (dtype, device) = (vb.dtype(), vb.device().clone());
    let backend = Recording {
        inner: vb,
        tensors: tensors.clone(),
    };
    (
        VarBuilder::from_backend(Box::new(backend), dtype, device),
        tensors,
    )
}

/// Hands out merged tensors where there are, the base ones elsewhere.
struct Merged {
    base: Arc<TensorMap>,
    merged: TensorMap,
}

impl candle_nn::var_builder::SimpleBackend for Merged {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, &Device::Cpu)?;
        if tensor.shape() != &shape {
            candle_core::bail!(
                "`{name}`: recorded as {:?}, asked as {shape:?}",
                tensor.dims()
            );
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.merged.get(name).or_else(|| self.base.get(name));
        let Some(tensor) = tensor else {
            candle_core::bail!("`{name}` was not recorded when the model was built");
        };
        tensor.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.merged.contains_key(name) || self.base.contains_key(name)
    }
}

/// A network as it runs now: the base one, or one rebuilt with a LoRA set merged in.
pub(crate) enum Active<'a, T> {
    Base(&'a T),
    Merged(Arc<T>),
}

impl<T> std::ops::Deref for Active<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Active::Base(t) => t,
            Active::Merged(t) => t,
        }
    }
}

/// One module's change in a set: the tensor it modifies, its adapter, its strength, its file.
struct Change<'a> {
    target: Target,
    adapter: &'a Adapter,
    strength: f64,
    file: &'a super::LoraFile,
}

/// Which set is applied: each file (by identity) with its two strengths.
type SetKey = Vec<(usize, u64, u64)>;

fn set_key(loras: &[LoraApplication]) -> SetKey {
    loras
        .iter()
        .map(|l| {
            (
                Arc::as_ptr(&l.file) as usize,
                l.model_strength.to_bits(),
                l.clip_strength.to_bits(),
            )
        })
        .collect()
}

/// The networks of the applied set (`None`: the base one).
#[derive(Default)]
struct Applied {
    key: SetKey,
    /// The set's files, kept alive so that no other file takes an address in `key`.
    _files: Vec<Arc<super::LoraFile>>,
    unet: Option<Arc<UNet>>,
    text: Option<Arc<TextConditioner>>,
}

/// A model's LoRA state.
pub(crate) struct Loras {
    config: ModelConfig,
    dtype: DType,
    device: Device,
    base: Arc<TensorMap>,
    targets: OnceLock<Targets>,
    applied: RwLock<Arc<Applied>>,
    /// Serialises `set` (the merge runs outside the `applied` lock, which jobs read).
    setting: Mutex<()>,
    /// Released text encoders (`pipeline::release`): not among `base`, read again to merge.
    released: Option<ReleasedText>,
}

impl Loras {
    pub(crate) fn new(
        config: &ModelConfig,
        recorded: &Mutex<TensorMap>,
        dtype: DType,
        device: &Device,
    ) -> Loras {
        let base = std::mem::take(&mut *recorded.lock().expect("recording lock"));
        Loras {
            config: config.clone(),
            dtype,
            device: device.clone(),
            base: Arc::new(base),
            targets: OnceLock::new(),
            applied: RwLock::new(Arc::new(Applied::default())),
            setting: Mutex::new(()),
            released: None,
        }
    }

    /// The model's text encoders are released between jobs: their tensors are not among the
    /// base ones (`ReleasedText::take`), and a set that changes them reads them again.
    pub(crate) fn release_text(&mut self, released: ReleasedText) {
        self.released = Some(released);
    }

    /// The text encoders of the applied set, if it changes them.
    pub(crate) fn merged_text(&self) -> Option<Arc<TextConditioner>> {
        self.applied().text.clone()
    }

    /// The shape of a base tensor, held or released.
    fn shape_of(&self, name: &str) -> Vec<usize> {
        match (self.base.get(name), &self.released) {
            (Some(tensor), _) => tensor.dims().to_vec(),
            (None, Some(released)) => released.shapes()[name].clone(),
            (None, None) => unreachable!("targets are base tensors"),
        }
    }

    fn applied(&self) -> Arc<Applied> {
        self.applied.read().expect("lora state lock").clone()
    }

    /// The UNet as it runs now.
    pub(crate) fn unet<'a>(&self, base: &'a UNet) -> Active<'a, UNet> {
        match &self.applied().unet {
            Some(unet) => Active::Merged(unet.clone()),
            None => Active::Base(base),
        }
    }

    /// The text encoders as they run now.
    pub(crate) fn text<'a>(&self, base: &'a TextConditioner) -> Active<'a, TextConditioner> {
        match &self.applied().text {
            Some(text) => Active::Merged(text.clone()),
            None => Active::Base(base),
        }
    }

    fn targets(&self) -> &Targets {
        self.targets
            .get_or_init(|| Targets::new(&self.config, self.base.keys().map(String::as_str)))
    }

    /// Applies `loras` (replacing the set applied before; the same set again is a no-op, the
    /// empty set restores the base networks). On an error the model is left without LoRAs.
    pub(crate) fn set(&self, loras: &[LoraApplication]) -> Result<(), Error> {
        let _one_at_a_time = self.setting.lock().expect("lora setting lock");
        let key = set_key(loras);
        if self.applied().key == key {
            return Ok(());
        }
        // The previous set's merged tensors go first, so that at most one set's exist at a
        // time (on an error the model is left with none).
        *self.applied.write().expect("lora state lock") = Arc::new(Applied::default());
        let (unet_deltas, text_deltas) = self.merged_tensors(loras)?;
        let unet = (!unet_deltas.is_empty())
            .then(|| self.rebuild_unet(unet_deltas))
            .transpose()?;
        let text = (!text_deltas.is_empty())
            .then(|| self.rebuild_text(text_deltas))
            .transpose()?;
        *self.applied.write().expect("lora state lock") = Arc::new(Applied {
            key,
            _files: loras.iter().map(|l| l.file.clone()).collect(),
            unet: unet.map(Arc::new),
            text: text.map(Arc::new),
        });
        Ok(())
    }

    /// The merged tensors of the set: the UNet's and the text encoders'. Each tensor is merged
    /// from its changes and their temporaries dropped before the next, so the merge needs
    /// little more memory than the merged tensors themselves.
    fn merged_tensors(&self, loras: &[LoraApplication]) -> Result<(TensorMap, TensorMap), Error> {
        let mut by_tensor: BTreeMap<String, Vec<Change<'_>>> = BTreeMap::new();
        for change in self.changes(loras)? {
            let tensor = change.target.tensor.clone();
            by_tensor.entry(tensor).or_default().push(change);
        }
        let (mut unet, mut text) = (TensorMap::new(), TensorMap::new());
        // Released text encoders, read again if the set changes them.
        let mut released: Option<TensorMap> = None;
        for (name, changes) in by_tensor {
            let base = match (self.base.get(&name), &self.released) {
                (Some(base), _) => base.clone(),
                (None, Some(r)) => {
                    if released.is_none() {
                        released = Some(r.tensors()?);
                    }
                    released.as_ref().expect("read above")[&name].clone()
                }
                (None, None) => unreachable!("targets are base tensors"),
            };
            let mut merged = base.to_dtype(DType::F32)?;
            for change in changes {
                let shape = self.target_shape(&change.target);
                let delta = delta(change.adapter, &shape, &self.device).map_err(|reason| {
                    lora_error(
                        &change.file.path,
                        format!("`{}`: {reason}", change.adapter.key),
                    )
                })?;
                merged = (merged + self.placed(&change.target, (delta * change.strength)?)?)?;
            }
            let merged = merged.to_dtype(base.dtype())?;
            if name.starts_with(UNET_PREFIX) {
                unet.insert(name, merged);
            } else {
                text.insert(name, merged);
            }
        }
        // The merged encoders are built from their unmodified tensors too.
        for (name, tensor) in released.into_iter().flatten() {
            text.entry(name).or_insert(tensor);
        }
        Ok((unet, text))
    }

    /// Every module of the set at a non-zero strength, with its target. Refuses a file whose
    /// modules mostly map to nothing here.
    fn changes<'a>(&self, loras: &'a [LoraApplication]) -> Result<Vec<Change<'a>>, Error> {
        let targets = self.targets();
        let mut changes = Vec::new();
        for lora in loras {
            let mut unmapped = Vec::new();
            for adapter in &lora.file.adapters {
                let Some(target) = self.target_of(targets, adapter.network, &adapter.module) else {
                    unmapped.push(adapter.key.as_str());
                    continue;
                };
                let strength = match adapter.network {
                    Network::UNet => lora.model_strength,
                    Network::Text(_) => lora.clip_strength,
                };
                if strength != 0.0 {
                    changes.push(Change {
                        target,
                        adapter,
                        strength,
                        file: &lora.file,
                    });
                }
            }
            self.check_mapped(&lora.file, &unmapped)?;
        }
        Ok(changes)
    }

    fn target_of(&self, targets: &Targets, network: Network, module: &str) -> Option<Target> {
        let target = targets.get(network, module)?;
        let released = |r: &ReleasedText| r.shapes().contains_key(&target.tensor);
        (self.base.contains_key(&target.tensor) || self.released.as_ref().is_some_and(released))
            .then(|| target.clone())
    }

    /// The shape a module's `Δ` must have: the target's, or its rows'.
    fn target_shape(&self, target: &Target) -> Vec<usize> {
        let mut shape = self.shape_of(&target.tensor);
        if let Some((_, count)) = target.rows {
            shape[0] = count;
        }
        shape
    }

    /// A row block's `Δ` placed in a zero tensor of its fused target's shape.
    fn placed(&self, target: &Target, delta: Tensor) -> Result<Tensor, Error> {
        let Some((start, count)) = target.rows else {
            return Ok(delta);
        };
        let full = self.shape_of(&target.tensor);
        let zeros = |rows: usize| {
            let mut shape = full.clone();
            shape[0] = rows;
            Tensor::zeros(shape, DType::F32, &self.device)
        };
        let after = full[0] - start - count;
        Ok(Tensor::cat(&[zeros(start)?, delta, zeros(after)?], 0)?)
    }

    /// Refuses a file whose modules mostly map to nothing here (another family), naming them.
    fn check_mapped(&self, file: &super::LoraFile, unmapped: &[&str]) -> Result<(), Error> {
        let total = file.adapters.len() + file.unknown.len();
        let missing = unmapped.len() + file.unknown.len();
        if missing == 0 {
            return Ok(());
        }
        let mut names: Vec<&str> = unmapped.to_vec();
        names.extend(file.unknown.iter().map(String::as_str));
        let examples = names
            .iter()
            .take(5)
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>();
        let what = format!(
            "{missing} of its {total} modules and keys fit nothing in this {} model ({}{})",
            self.config.family.name(),
            examples.join(", "),
            if names.len() > 5 { ", …" } else { "" }
        );
        if missing as f64 > MAX_UNMAPPED_SHARE * total as f64 || missing == total {
            return Err(lora_error(
                &file.path,
                format!("{what}: a LoRA for another model family?"),
            ));
        }
        tracing::warn!(path = %file.path.display(), "LoRA: ignoring {what}");
        Ok(())
    }

    fn rebuild_unet(&self, merged: TensorMap) -> Result<UNet, Error> {
        let vb = self.var_builder(merged);
        let unet = UNet::new(
            &self.config.unet,
            self.config.family,
            vb.pp(UNET_PREFIX.trim_end_matches('.')),
        )?;
        Ok(unet)
    }

    fn rebuild_text(&self, merged: TensorMap) -> Result<TextConditioner, Error> {
        let vb = self.var_builder(merged);
        let prefixes: &[&str] = match self.config.family {
            Family::Sd1 => &[SD1_CLIP_PREFIX],
            Family::Sd2 => &[SD2_CLIP_PREFIX],
            Family::Sdxl => &[SDXL_CLIP_L_PREFIX, SDXL_CLIP_G_PREFIX],
        };
        let encoders = self
            .config
            .text_encoders
            .iter()
            .zip(prefixes)
            .map(|(c, prefix)| TextTransformer::new(c, vb.pp(prefix.trim_end_matches('.'))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(TextConditioner::new(self.config.family, encoders))
    }

    fn var_builder(&self, merged: TensorMap) -> VarBuilder<'static> {
        let backend = Merged {
            base: self.base.clone(),
            merged,
        };
        VarBuilder::from_backend(Box::new(backend), self.dtype, self.device.clone())
    }
}

/// An adapter's `Δ` (scale included, strength not), in f32 on `device`, shaped `shape`.
pub(crate) fn delta(adapter: &Adapter, shape: &[usize], device: &Device) -> Result<Tensor, String> {
    let product = unshaped_delta(&adapter.weights, device)
        .map_err(|e| format!("cannot compute the change: {e}"))?;
    fit(product, shape)
}

fn unshaped_delta(weights: &Weights, device: &Device) -> candle_core::Result<Tensor> {
    let f32_on = |t: &Tensor| t.to_device(device)?.to_dtype(DType::F32);
    match weights {
        Weights::LowRank {
            down,
            up,
            mid,
            scale,
        } => {
            let mid = mid.as_ref().map(f32_on).transpose()?;
            low_rank(&f32_on(down)?, &f32_on(up)?, mid.as_ref())? * *scale
        }
        Weights::Hadamard {
            w1a,
            w1b,
            w2a,
            w2b,
            scale,
        } => hadamard(&f32_on(w1a)?, &f32_on(w1b)?, &f32_on(w2a)?, &f32_on(w2b)?)? * *scale,
    }
}

/// `up · down` as `[out, in·kh·kw]`; with LoCon's Tucker core `mid` `[r, r, kh, kw]` (`down`
/// then `[r, in, 1, 1]`), `Σ up[o,a] · mid[a,b,y,x] · down[b,i]` as `[out, in, kh, kw]`.
fn low_rank(down: &Tensor, up: &Tensor, mid: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (out, rank) = (up.dim(0)?, up.dim(1)?);
    let up = up.reshape((out, rank))?;
    let Some(mid) = mid else {
        let down = down.reshape((down.dim(0)?, ()))?;
        return up.matmul(&down);
    };
    let (_, _, kh, kw) = mid.dims4()?;
    let down = down.reshape((down.dim(0)?, ()))?;
    let inputs = down.dim(1)?;
    // [out, r·kh·kw] → [out·kh·kw, r] (per tap), times down [r, in].
    let up_mid = up.matmul(&mid.reshape((rank, ()))?)?;
    let per_tap = up_mid
        .reshape((out, mid.dim(1)?, kh * kw))?
        .transpose(1, 2)?
        .reshape((out * kh * kw, ()))?;
    per_tap
        .matmul(&down)?
        .reshape((out, kh * kw, inputs))?
        .transpose(1, 2)?
        .reshape((out, inputs, kh, kw))
}

/// LoHa's `(w1a · w1b) ⊙ (w2a · w2b)`.
fn hadamard(w1a: &Tensor, w1b: &Tensor, w2a: &Tensor, w2b: &Tensor) -> candle_core::Result<Tensor> {
    let one = w1a.matmul(&w1b.reshape((w1b.dim(0)?, ()))?)?;
    let two = w2a.matmul(&w2b.reshape((w2b.dim(0)?, ()))?)?;
    one * two
}

/// `delta` reshaped to `shape` if it is that shape flattened past the first dimension (a 1×1
/// convolution's adapter on a linear layer and back); otherwise the file's module does not fit
/// this model's.
fn fit(delta: Tensor, shape: &[usize]) -> Result<Tensor, String> {
    let dims = delta.dims().to_vec();
    let rest = |d: &[usize]| d.iter().skip(1).product::<usize>();
    if dims.first() == shape.first() && rest(&dims) == rest(shape) {
        return delta.reshape(shape).map_err(|e| e.to_string());
    }
    Err(format!(
        "changes a {dims:?} weight, but this model's is {shape:?}: a LoRA for another model family?"
    ))
}
