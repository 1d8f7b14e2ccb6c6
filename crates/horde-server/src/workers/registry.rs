//! The workers component: every known worker in memory (the registry) so that a pop reads
//! nothing from the database, the recent speeds of finished jobs, and the matching view built
//! from them. The only code that locks the registry; the rest reads through
//! [`Workers::read`] and changes through [`Workers::change`].
//!
//! Lock order: the registry before the matching view's cache (a view is built from a read of
//! the registry); the speeds alone. No closure given to `read` or `change` takes another
//! component's lock.

use super::matching_view::MatchingView;
use horde_core::accounts::{User, Worker};
use horde_core::model_reference::ModelReference;
use horde_core::performance::ModelPerformance;
use horde_core::ReputationRules;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use uuid::Uuid;

/// At most this many more reliable waiting workers are considered at a pop.
const MAX_STANDBY: usize = 16;

/// The workers and what is known of them (see the module documentation).
pub struct Workers {
    registry: RwLock<WorkerRegistry>,
    /// Bumped when a worker joins, changes what it serves, or is paused or resumed.
    generation: AtomicU64,
    /// The last matching view: (unix second, workers generation, view).
    matching_cache: Mutex<Option<(i64, u64, Arc<MatchingView>)>>,
    speeds: Mutex<ModelPerformance>,
    /// The recent speeds of text models, in tokens a second.
    text_speeds: Mutex<ModelPerformance>,
    /// The recent speeds of alchemy forms, in forms a second.
    alchemy_speeds: Mutex<ModelPerformance>,
}

impl Workers {
    /// No workers yet; a worker is online while it checked in within `online_window_secs`.
    pub fn new(online_window_secs: i64) -> Self {
        Workers {
            registry: RwLock::new(WorkerRegistry::new(online_window_secs)),
            generation: AtomicU64::new(0),
            matching_cache: Mutex::new(None),
            speeds: Mutex::new(ModelPerformance::default()),
            text_speeds: Mutex::new(ModelPerformance::default()),
            alchemy_speeds: Mutex::new(ModelPerformance::default()),
        }
    }

    /// `f` of the registry as it stands.
    pub fn read<R>(&self, f: impl FnOnce(&WorkerRegistry) -> R) -> R {
        f(&self.registry.read().expect("registry lock"))
    }

    /// `f` applied to the registry.
    pub fn change<R>(&self, f: impl FnOnce(&mut WorkerRegistry) -> R) -> R {
        f(&mut self.registry.write().expect("registry lock"))
    }

    /// A copy of worker `id`'s entry, if known.
    pub fn get(&self, id: Uuid) -> Option<WorkerEntry> {
        self.read(|registry| registry.get(id).cloned())
    }

    /// Marks the set of workers or what they serve as changed.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The model reference and the models online workers serve. Rebuilt when a worker joins,
    /// changes what it serves or is paused, and at least every second (workers go offline by
    /// time); otherwise shared, since every pop and check needs it.
    pub fn matching_view(
        &self,
        model_reference: Arc<ModelReference>,
        now: i64,
    ) -> Arc<MatchingView> {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut cache = self.matching_cache.lock().expect("matching cache");
        if let Some((at, seen, view)) = cache.as_ref() {
            if *at == now && *seen == generation {
                return view.clone();
            }
        }
        let served = self.read(|registry| {
            registry
                .online_image(now)
                .filter(|w| !w.worker.paused)
                .flat_map(|w| w.worker.flags.models.iter().cloned())
                .collect()
        });
        let view = Arc::new(MatchingView::new(model_reference, served));
        *cache = Some((now, generation, view.clone()));
        view
    }

    /// Notes a finished job's speed on `model`.
    pub fn record_speed(&self, model: &str, now: i64, pixelsteps_per_sec: f64) {
        self.speeds
            .lock()
            .expect("speeds lock")
            .record(model, now, pixelsteps_per_sec);
    }

    /// Notes a finished text job's speed on `model`.
    pub fn record_text_speed(&self, model: &str, now: i64, tokens_per_sec: f64) {
        self.text_speeds
            .lock()
            .expect("text speeds lock")
            .record(model, now, tokens_per_sec);
    }

    /// Notes a finished form's speed.
    pub fn record_alchemy_speed(&self, form: &str, now: i64, forms_per_sec: f64) {
        self.alchemy_speeds
            .lock()
            .expect("alchemy speeds lock")
            .record(form, now, forms_per_sec);
    }

    /// `f` of the recent text speeds by model (tokens a second).
    pub fn text_speeds<R>(&self, f: impl FnOnce(&ModelPerformance) -> R) -> R {
        f(&self.text_speeds.lock().expect("text speeds lock"))
    }

    /// `f` of the recent speeds by model.
    pub fn speeds<R>(&self, f: impl FnOnce(&ModelPerformance) -> R) -> R {
        f(&self.speeds.lock().expect("speeds lock"))
    }
}

#[derive(Debug, Clone)]
pub struct WorkerEntry {
    pub worker: Worker,
    pub owner_trusted: bool,
    pub owner_flagged: bool,
    pub owner_alias: String,
    /// When the check-in was last written to the store.
    pub persisted_check_in: i64,
    pub amount: u32,
    pub priority_user_ids: Vec<i64>,
    /// When the worker's latest pop found nothing (cleared when it gets a job): it is standing
    /// by for work.
    pub waiting_since: Option<i64>,
    /// Its team, as stored (`teams.rs` keeps it).
    pub team: Option<horde_api::worker::TeamRef>,
    /// The messages to it that were active when last read from the store (`teams.rs`); a pop
    /// shows those still active.
    pub messages: Vec<horde_core::teams::WorkerMessage>,
    /// What it runs on, as its latest pop reported it (stored with the worker, like its flags).
    pub hardware: Option<horde_api::worker::WorkerHardware>,
    /// The models it holds in memory, as its latest image pop declared them (`None`: it did not
    /// say). In memory only: it changes with every load, like `amount`.
    pub loaded_models: Option<Vec<String>>,
}

#[derive(Debug)]
pub struct WorkerRegistry {
    by_id: HashMap<Uuid, WorkerEntry>,
    by_name: HashMap<String, Uuid>,
    /// A worker is online while it has checked in within this many seconds.
    pub online_window_secs: i64,
}

impl WorkerRegistry {
    pub fn new(online_window_secs: i64) -> Self {
        WorkerRegistry {
            by_id: HashMap::new(),
            by_name: HashMap::new(),
            online_window_secs,
        }
    }

    pub fn insert(&mut self, entry: WorkerEntry) {
        self.by_name
            .insert(entry.worker.name.clone(), entry.worker.id);
        self.by_id.insert(entry.worker.id, entry);
    }
    pub fn get(&self, id: Uuid) -> Option<&WorkerEntry> {
        self.by_id.get(&id)
    }
    /// Every known worker, online or not.
    pub fn all(&self) -> impl Iterator<Item = &WorkerEntry> {
        self.by_id.values()
    }
    pub fn get_mut(&mut self, id: Uuid) -> Option<&mut WorkerEntry> {
        self.by_id.get_mut(&id)
    }
    /// Every known worker, to change.
    pub fn all_mut(&mut self) -> impl Iterator<Item = &mut WorkerEntry> {
        self.by_id.values_mut()
    }
    /// Forgets a deleted worker.
    pub fn remove(&mut self, id: Uuid) -> Option<WorkerEntry> {
        let entry = self.by_id.remove(&id)?;
        self.by_name.remove(&entry.worker.name);
        Some(entry)
    }
    pub fn by_name(&self, name: &str) -> Option<&WorkerEntry> {
        self.by_name.get(name).and_then(|id| self.by_id.get(id))
    }
    pub fn rename(&mut self, id: Uuid, new_name: &str) {
        if let Some(entry) = self.by_id.get_mut(&id) {
            self.by_name.remove(&entry.worker.name);
            entry.worker.name = new_name.to_string();
            self.by_name.insert(new_name.to_string(), id);
        }
    }
    /// Every online worker, of every kind.
    pub fn online(&self, now: i64) -> impl Iterator<Item = &WorkerEntry> {
        let window = self.online_window_secs;
        self.by_id
            .values()
            .filter(move |e| e.worker.is_online(now, window))
    }
    /// The online image workers: what image matching, wait estimates and image figures see.
    pub fn online_image(&self, now: i64) -> impl Iterator<Item = &WorkerEntry> {
        self.online(now).filter(|e| e.worker.kind() == "image")
    }
    /// The online alchemists.
    pub fn online_alchemists(&self, now: i64) -> impl Iterator<Item = &WorkerEntry> {
        self.online(now)
            .filter(|e| e.worker.flags.alchemy.is_some())
    }
    /// The online text workers.
    pub fn online_text(&self, now: i64) -> impl Iterator<Item = &WorkerEntry> {
        self.online(now).filter(|e| e.worker.flags.text.is_some())
    }
    /// The workers that checked in at or after `since` (online or not).
    pub fn seen_since(&self, since: i64) -> impl Iterator<Item = &WorkerEntry> {
        self.by_id
            .values()
            .filter(move |e| e.worker.last_check_in >= since)
    }
    /// The workers more reliable than `me` (by a clear margin) that could take a job right
    /// now: they popped and found nothing within the last `hold_secs`, and nothing stops them
    /// from getting jobs. Most reliable first, each as `view` shows it.
    pub fn standing_by_better_than<C>(
        &self,
        me: &WorkerEntry,
        now: i64,
        hold_secs: i64,
        rules: &ReputationRules,
        view: impl Fn(&WorkerEntry) -> C,
    ) -> Vec<C> {
        /// Reliabilities closer than this are treated as equal.
        const MARGIN: f64 = 0.05;
        let mine = me.worker.reputation.reliability();
        let mut better: Vec<(f64, &WorkerEntry)> = self
            .standing_by_beside(me, now, hold_secs, rules)
            .map(|e| (e.worker.reputation.reliability(), e))
            .filter(|(reliability, _)| *reliability >= mine + MARGIN)
            .collect();
        better.sort_by(|a, b| b.0.total_cmp(&a.0));
        better
            .into_iter()
            .take(MAX_STANDBY)
            .map(|(_, e)| view(e))
            .collect()
    }

    /// The workers of `me`'s kind standing by (as for [`Self::standing_by_better_than`], whatever
    /// their reliability) that declared the models they hold in memory, each as `view` shows it,
    /// with those models: routing by loaded model leaves them the requests of their models.
    pub fn standing_by_holding<C>(
        &self,
        me: &WorkerEntry,
        now: i64,
        hold_secs: i64,
        rules: &ReputationRules,
        view: impl Fn(&WorkerEntry) -> C,
    ) -> Vec<(C, Vec<String>)> {
        self.standing_by_beside(me, now, hold_secs, rules)
            .filter_map(|e| {
                let held = e.loaded_models.clone()?;
                Some((view(e), held))
            })
            .take(MAX_STANDBY)
            .collect()
    }

    /// The other workers of `me`'s kind that could take a job right now: they popped and found
    /// nothing within the last `hold_secs`, and nothing stops them from getting jobs.
    fn standing_by_beside<'a>(
        &'a self,
        me: &'a WorkerEntry,
        now: i64,
        hold_secs: i64,
        rules: &'a ReputationRules,
    ) -> impl Iterator<Item = &'a WorkerEntry> {
        self.by_id
            .values()
            .filter(move |e| e.worker.id != me.worker.id)
            .filter(move |e| e.worker.kind() == me.worker.kind())
            .filter(move |e| e.waiting_since.is_some() && now - e.worker.last_check_in < hold_secs)
            .filter(move |e| e.gets_jobs(rules) && !e.owner_flagged)
    }

    pub fn count_of_user(&self, user_id: i64) -> usize {
        self.by_id
            .values()
            .filter(|e| e.worker.user_id == user_id)
            .count()
    }
    /// Shows `owner`'s roles on their workers at once (they are read again at each check-in
    /// too, but a flagged owner's workers may never check in again).
    pub fn note_owner_roles(&mut self, owner: &User) {
        for entry in self.by_id.values_mut() {
            if entry.worker.user_id == owner.id {
                entry.owner_trusted = owner.trusted;
                entry.owner_flagged = owner.flagged;
            }
        }
    }

    pub fn ids_of_user(&self, user_id: i64) -> Vec<String> {
        let mut ids: Vec<&WorkerEntry> = self
            .by_id
            .values()
            .filter(|e| e.worker.user_id == user_id)
            .collect();
        ids.sort_by_key(|e| e.worker.created);
        ids.iter().map(|e| e.worker.id.to_string()).collect()
    }

    /// The suspicion counted against the workers of `user_id`, all together.
    pub fn suspicion_of_user(&self, user_id: i64) -> u32 {
        self.by_id
            .values()
            .filter(|e| e.worker.user_id == user_id)
            .map(|e| e.worker.reputation.suspicion)
            .sum()
    }
}
