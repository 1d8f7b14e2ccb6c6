//! Weights kept in the layout a bf16 kernel reads them in, from a layer's first call to the
//! next ones.
//!
//! A bf16 product reads its weights rearranged (a convolution's tap by tap, a linear layer's
//! packed in strips of columns). Made at every call, that is a pass over every weight of the
//! network at every step, read and written: for SD 1.5's UNet about 6 % of a bf16 step for
//! the convolutions and 3 % for the linear layers. Kept, it costs as much memory again as the
//! weights it copies, so a worker short of memory turns keeping off ([`keep_rearranged_weights`]),
//! and the text encoders, which run once per job rather than once per step, never keep
//! ([`without_keeping`]), nor do the VAE's. A model prepares its UNet's kept weights as it
//! loads (`Model::prepare_kept_weights`), so that no job pays for them.

use candle_core::{DType, Tensor, TensorId};
use std::any::{Any, TypeId};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

/// Whether layers keep their weights rearranged; on unless [`keep_rearranged_weights`] turned
/// it off.
static KEEP: AtomicBool = AtomicBool::new(true);

/// Whether each bf16 convolution and linear layer keeps its weights rearranged for its kernel
/// from one call to the next: a pass over every weight, read and written, saved at every step
/// (about 9 % of an SD 1.5 bf16 step), for as much memory again as those weights (the linear
/// layers' at most 1 GiB, `kernels::linear`; about 1.7 GB for SD 1.5's UNet). A worker with
/// `low_memory` turns it off at start, before any model runs (weights kept before it is
/// turned off stay in memory, unused).
pub fn keep_rearranged_weights(on: bool) {
    KEEP.store(on, Ordering::Relaxed);
}

thread_local! {
    /// Whether layers called on this thread keep their weights ([`without_keeping`]).
    static KEEP_HERE: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` with no layer it calls on this thread keeping its rearranged weights (those kept
/// before stay): for the networks that run once per job, the text encoders, whose kept
/// weights would cost as much memory again as theirs (1.4 GB for SDXL's two in bf16) to save a
/// pass over them per job, not per step.
pub(crate) fn without_keeping<T>(f: impl FnOnce() -> T) -> T {
    super::with_flag(&KEEP_HERE, false, f)
}

/// Whether layers called on this thread now keep their rearranged weights.
pub(crate) fn keeping() -> bool {
    KEEP.load(Ordering::Relaxed) && KEEP_HERE.with(Cell::get)
}

/// One layer's weights as its kernel reads them, made at its first call on this CPU and kept
/// with the layer (its clones share them), and with every layer built on the same bf16 weight
/// tensor ([`Kept::of`]). A layer whose weights change (a LoRA merged in) is a new layer on a
/// new tensor, with nothing kept.
pub(crate) struct Kept<T>(Arc<Entry<T>>);

/// A kept cell and, when it is shared, its key in [`shared`], which it leaves as its last layer
/// goes.
struct Entry<T> {
    cell: Arc<OnceLock<T>>,
    key: Option<Key>,
}

/// The kind of kept weights and the weight tensor they are made from.
type Key = (TypeId, TensorId);

/// The entries of the layers alive: a LoRA set's rebuilt UNet is built on the base tensors of
/// every layer it does not modify, and finds their kept weights here instead of making (and
/// holding) them again.
fn shared() -> MutexGuard<'static, HashMap<Key, Weak<dyn Any + Send + Sync>>> {
    static SHARED: OnceLock<Mutex<HashMap<Key, Weak<dyn Any + Send + Sync>>>> = OnceLock::new();
    let shared = SHARED.get_or_init(Default::default);
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Send + Sync + 'static> Kept<T> {
    /// The cell of the layers built on `weight`: the one a live layer on it holds, or a new
    /// one. Only bf16 weights are kept (the bf16 kernels'), so others get a cell of their own.
    pub(crate) fn of(weight: &Tensor) -> Kept<T> {
        if weight.dtype() != DType::BF16 {
            return Kept::default();
        }
        let key = (TypeId::of::<T>(), weight.id());
        // Upgraded and given back outside the lock: an entry's last drop takes the lock.
        let alive = shared().get(&key).and_then(Weak::upgrade);
        if let Some(Ok(entry)) = alive.map(|entry| entry.downcast::<Entry<T>>()) {
            return Kept(entry);
        }
        let entry = Arc::new(Entry {
            cell: Arc::default(),
            key: Some(key),
        });
        let any: Arc<dyn Any + Send + Sync> = entry.clone();
        shared().insert(key, Arc::downgrade(&any));
        Kept(entry)
    }
}

impl<T> Drop for Entry<T> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut shared = shared();
            // Its own entry only: a layer built since may have registered a new one.
            let this = (self as *const Self).cast::<()>();
            if shared
                .get(&key)
                .is_some_and(|entry| entry.as_ptr().cast::<()>() == this)
            {
                shared.remove(&key);
            }
        }
    }
}

impl<T> Kept<T> {
    /// Where the kernel keeps (or finds) the weights, while keeping is on.
    pub(crate) fn cell(&self) -> Option<Arc<OnceLock<T>>> {
        keeping().then(|| self.0.cell.clone())
    }

    /// Whether the weights were made and kept.
    #[cfg(test)]
    pub(crate) fn is_made(&self) -> bool {
        self.0.cell.get().is_some()
    }
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Kept(Arc::new(Entry {
            cell: Arc::default(),
            key: None,
        }))
    }
}

impl<T> Clone for Kept<T> {
    fn clone(&self) -> Self {
        Kept(self.0.clone())
    }
}

impl<T> std::fmt::Debug for Kept<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.0.cell.get().is_some() {
            "made"
        } else {
            "not made"
        };
        write!(f, "Kept({state})")
    }
}

/// The weights `cell` keeps, made by `make` the first time; made afresh into `made` when
/// nothing is kept.
pub(crate) fn kept_or_made<'a, T>(
    cell: Option<&'a OnceLock<T>>,
    made: &'a mut Option<T>,
    make: impl FnOnce() -> T,
) -> &'a T {
    match cell {
        Some(cell) => cell.get_or_init(make),
        None => made.insert(make()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Layers on one bf16 tensor share one cell (of each kind of kept weights) while any of
    /// them lives; the last to go takes it out of the registry, so a layer built later starts
    /// afresh; other tensors, and weights of other dtypes, have cells of their own.
    #[test]
    fn layers_on_one_bf16_tensor_share_a_cell_while_one_lives() {
        let weight = Tensor::zeros((4, 4), DType::BF16, &Device::Cpu).unwrap();
        let (first, second) = (Kept::<u32>::of(&weight), Kept::<u32>::of(&weight.clone()));
        first.0.cell.set(7).unwrap();
        assert_eq!(second.0.cell.get(), Some(&7));
        assert!(Kept::<u64>::of(&weight).0.cell.get().is_none());
        let equal = Tensor::zeros((4, 4), DType::BF16, &Device::Cpu).unwrap();
        assert!(Kept::<u32>::of(&equal).0.cell.get().is_none());
        drop((first, second));
        assert!(!shared().contains_key(&(TypeId::of::<u32>(), weight.id())));
        assert!(Kept::<u32>::of(&weight).0.cell.get().is_none());
        let wide = Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap();
        let (first, second) = (Kept::<u32>::of(&wide), Kept::<u32>::of(&wide));
        first.0.cell.set(7).unwrap();
        assert!(second.0.cell.get().is_none());
    }
}
