//! The models held in memory: a worker serves every model it has on disk, keeps the most
//! recently used ones loaded within its memory budget, loads one on demand when a job needs it
//! and unloads the least recently used to make room.
//!
//! Each model's size is read from its checkpoint's index before it is loaded
//! (`Model::inspect`: every weight's shape, at the dtype the engine holds it in), so the
//! budget is kept before memory is taken, not after. Loads happen one at a time. A model
//! unloaded while a job still runs on it stays alive until that job ends (the job holds it), so
//! with several job threads the budget can be exceeded by one model for the length of a job.

use crate::job::Unrunnable;
use horde_diffusion::{LoadOptions, LoadStage, Model};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// A loaded checkpoint, and the turn its jobs take: a job sets its LoRAs on the model and
/// generates while it holds the turn, so two jobs on one model never mix their LoRA sets.
pub struct Loaded {
    pub model: Arc<Model>,
    pub checkpoint: PathBuf,
    pub turn: Mutex<()>,
    /// The weights' bytes, as estimated before loading.
    pub bytes: u64,
}

/// A model that cannot be served, and why.
#[derive(Debug)]
pub struct LoadFailure {
    pub model: String,
    pub path: PathBuf,
    pub error: horde_diffusion::Error,
}

/// What happened to the resident set, in order (the log's and the tests' view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Residency {
    Loaded(String),
    Unloaded(String),
}

/// A model on disk, with its loaded size.
#[derive(Debug, Clone)]
struct OnDisk {
    checkpoint: PathBuf,
    bytes: u64,
}

/// The models a worker serves and the ones it holds loaded.
pub struct ResidentModels {
    on_disk: RwLock<BTreeMap<String, OnDisk>>,
    options: LoadOptions,
    /// What the loaded models may hold together; `None`: no limit.
    budget_bytes: Option<u64>,
    /// Loaded models, least recently used first.
    loaded: Mutex<Vec<(String, Arc<Loaded>)>>,
    /// Held while a model loads: one load at a time.
    loading: Mutex<()>,
    slowest_load_secs: AtomicU32,
    history: Mutex<Vec<Residency>>,
}

impl ResidentModels {
    /// Reads every checkpoint's index (no weight is loaded): a model whose file cannot be
    /// opened, or whose architecture the engine does not know, is reported and not served.
    pub fn open(
        checkpoints: &BTreeMap<String, PathBuf>,
        options: &LoadOptions,
        budget_bytes: Option<u64>,
    ) -> (Self, Vec<LoadFailure>) {
        let mut on_disk = BTreeMap::new();
        let mut failures = Vec::new();
        for (name, path) in checkpoints {
            match Model::inspect(path, options) {
                Ok((_, bytes)) => {
                    on_disk.insert(
                        name.clone(),
                        OnDisk {
                            checkpoint: path.clone(),
                            bytes,
                        },
                    );
                }
                Err(error) => failures.push(LoadFailure {
                    model: name.clone(),
                    path: path.clone(),
                    error,
                }),
            }
        }
        let resident = ResidentModels {
            on_disk: RwLock::new(on_disk),
            options: options.clone(),
            budget_bytes,
            loaded: Mutex::new(Vec::new()),
            loading: Mutex::new(()),
            slowest_load_secs: AtomicU32::new(0),
            history: Mutex::new(Vec::new()),
        };
        (resident, failures)
    }

    /// Loads models, in name order, while they fit the budget together; the others load when
    /// a job needs them. A model that fails to load is reported and no longer served.
    pub fn preload(&self, progress: &mut dyn FnMut(&str, LoadStage)) -> Vec<LoadFailure> {
        let mut failures = Vec::new();
        let mut held = 0u64;
        for (name, disk) in self.on_disk_models() {
            if self
                .budget_bytes
                .is_some_and(|budget| held + disk.bytes > budget)
            {
                continue;
            }
            match self.load(&name, &disk, &mut |stage| progress(&name, stage)) {
                Ok(_) => held += disk.bytes,
                Err(error) => failures.push(self.forget(&name, &disk, error)),
            }
        }
        failures
    }

    /// The model a job needs, loaded (first unloading the least recently used models its room
    /// needs) and marked most recently used.
    pub fn get(&self, name: &str) -> Result<Arc<Loaded>, Unrunnable> {
        if let Some(loaded) = self.touch(name) {
            return Ok(loaded);
        }
        let _one_load = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(loaded) = self.touch(name) {
            return Ok(loaded);
        }
        let disk = self
            .on_disk
            .read()
            .expect("models lock")
            .get(name)
            .cloned()
            .ok_or_else(|| Unrunnable(format!("model {name} is not served by this worker")))?;
        self.make_room(name, disk.bytes);
        tracing::info!(model = name, "loading the model for a job");
        self.load(name, &disk, &mut |_| {}).map_err(|error| {
            let failure = self.forget(name, &disk, error);
            Unrunnable(format!(
                "model {name} did not load ({}): {}",
                failure.path.display(),
                failure.error
            ))
        })
    }

    /// Every model served (on disk), by name.
    pub fn names(&self) -> Vec<String> {
        self.on_disk
            .read()
            .expect("models lock")
            .keys()
            .cloned()
            .collect()
    }

    /// The models loaded now.
    pub fn loaded_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .loaded
            .lock()
            .expect("loaded lock")
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// The longest load so far, in seconds.
    pub fn slowest_load_secs(&self) -> u32 {
        self.slowest_load_secs.load(Ordering::Relaxed)
    }

    /// Loads and unloads so far, in order.
    pub fn history(&self) -> Vec<Residency> {
        self.history.lock().expect("history lock").clone()
    }

    /// Whether a budget limits what is loaded.
    pub fn budget_bytes(&self) -> Option<u64> {
        self.budget_bytes
    }

    /// The loaded size of each model served.
    pub fn sizes(&self) -> BTreeMap<String, u64> {
        self.on_disk_models()
            .into_iter()
            .map(|(name, disk)| (name, disk.bytes))
            .collect()
    }

    fn on_disk_models(&self) -> Vec<(String, OnDisk)> {
        self.on_disk
            .read()
            .expect("models lock")
            .iter()
            .map(|(name, disk)| (name.clone(), disk.clone()))
            .collect()
    }

    /// The loaded model of `name`, now the most recently used.
    fn touch(&self, name: &str) -> Option<Arc<Loaded>> {
        let mut loaded = self.loaded.lock().expect("loaded lock");
        let at = loaded.iter().position(|(n, _)| n == name)?;
        let entry = loaded.remove(at);
        let model = entry.1.clone();
        loaded.push(entry);
        Some(model)
    }

    /// Unloads the least recently used models until `bytes` more fit the budget.
    fn make_room(&self, for_model: &str, bytes: u64) {
        let Some(budget) = self.budget_bytes else {
            return;
        };
        let mut loaded = self.loaded.lock().expect("loaded lock");
        while !loaded.is_empty()
            && loaded.iter().map(|(_, l)| l.bytes).sum::<u64>() + bytes > budget
        {
            let (name, _) = loaded.remove(0);
            tracing::info!(unloaded = %name, to_load = for_model, "unloading the least recently used model to make room");
            self.history
                .lock()
                .expect("history lock")
                .push(Residency::Unloaded(name));
        }
    }

    fn load(
        &self,
        name: &str,
        disk: &OnDisk,
        progress: &mut dyn FnMut(LoadStage),
    ) -> Result<Arc<Loaded>, horde_diffusion::Error> {
        let started = Instant::now();
        let model = Model::load(&disk.checkpoint, &self.options, progress)?;
        let secs = started.elapsed().as_secs_f64().ceil() as u32;
        self.slowest_load_secs.fetch_max(secs, Ordering::Relaxed);
        let loaded = Arc::new(Loaded {
            model: Arc::new(model),
            checkpoint: disk.checkpoint.clone(),
            turn: Mutex::new(()),
            bytes: disk.bytes,
        });
        self.loaded
            .lock()
            .expect("loaded lock")
            .push((name.to_string(), loaded.clone()));
        self.history
            .lock()
            .expect("history lock")
            .push(Residency::Loaded(name.to_string()));
        Ok(loaded)
    }

    /// Stops serving a model that failed to load.
    fn forget(&self, name: &str, disk: &OnDisk, error: horde_diffusion::Error) -> LoadFailure {
        self.on_disk.write().expect("models lock").remove(name);
        tracing::warn!(model = name, %error, "model not served: it did not load");
        LoadFailure {
            model: name.to_string(),
            path: disk.checkpoint.clone(),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use horde_diffusion::tiny::{write_tiny_checkpoint, TinyArch};

    fn two_models(dir: &std::path::Path) -> BTreeMap<String, PathBuf> {
        ["A", "B"]
            .iter()
            .zip([3, 4])
            .map(|(name, seed)| {
                let path = dir.join(format!("{name}.safetensors"));
                write_tiny_checkpoint(TinyArch::Sd15, &path, seed).unwrap();
                (name.to_string(), path)
            })
            .collect()
    }

    #[test]
    fn a_budget_of_one_model_loads_on_demand_and_unloads_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let models = two_models(dir.path());
        let options = LoadOptions::default();
        let (probe, failures) = ResidentModels::open(&models, &options, None);
        assert!(failures.is_empty(), "{failures:?}");
        let size = probe.sizes()["A"];
        assert!(size > 0 && size == probe.sizes()["B"]);
        let (resident, _) = ResidentModels::open(&models, &options, Some(size + size / 2));
        assert!(resident.preload(&mut |_, _| {}).is_empty());
        assert_eq!(resident.loaded_names(), ["A"], "only one fits at start");
        assert_eq!(resident.names(), ["A", "B"], "both are served");
        let b = resident.get("B").unwrap();
        assert_eq!(resident.loaded_names(), ["B"]);
        resident.get("B").unwrap();
        resident.get("A").unwrap();
        assert_eq!(
            resident.history(),
            [
                Residency::Loaded("A".into()),
                Residency::Unloaded("A".into()),
                Residency::Loaded("B".into()),
                Residency::Unloaded("B".into()),
                Residency::Loaded("A".into()),
            ]
        );
        // The job that held B keeps its model though B was unloaded.
        assert!(b.model.config().unet.context_dim > 0);
        let unknown = resident.get("C").err().expect("C is not served");
        assert!(unknown.0.contains("not served"), "{unknown:?}");
    }

    #[test]
    fn without_a_budget_every_model_stays_and_a_broken_file_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let mut models = two_models(dir.path());
        let broken = dir.path().join("broken.safetensors");
        std::fs::write(&broken, b"not a checkpoint").unwrap();
        models.insert("Broken".into(), broken);
        let (resident, failures) = ResidentModels::open(&models, &LoadOptions::default(), None);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].model, "Broken");
        assert!(resident.preload(&mut |_, _| {}).is_empty());
        resident.get("B").unwrap();
        resident.get("A").unwrap();
        assert_eq!(resident.loaded_names(), ["A", "B"]);
        assert!(!resident
            .history()
            .iter()
            .any(|event| matches!(event, Residency::Unloaded(_))));
    }
}
