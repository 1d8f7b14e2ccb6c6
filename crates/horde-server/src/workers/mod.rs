//! Workers: registration on first pop, check-in, owner settings, and their public details.
//!
//! All known workers live in memory (the registry) so that a pop reads nothing from the
//! database; a check-in is written only when something the worker declared changed or 30
//! seconds have passed since the last write. Each path changes only its own fields of a live
//! entry (check-in the declaration, submit and the sweeper the reputation, the owner the
//! settings), so concurrent pops, submits and edits never undo one another.

use crate::clock::now;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use horde_api::image::PopRequest;
use horde_api::worker::{
    ModifyWorker, SuspicionEntry, WorkerDetails, WorkerKudosDetails, WorkerReputation,
};
use horde_api::Rc;
use horde_core::accounts::{
    uptime_reward, KindFlags, User, Worker, WorkerFlags, UPTIME_REWARD_INTERVAL_SECS,
};
use horde_core::{Reputation, ReputationRules, WorkerCaps};
use std::collections::HashMap;
use uuid::Uuid;

pub mod matching_view;
pub mod registry;

pub use registry::{WorkerEntry, WorkerRegistry, Workers};

/// A check-in is written at most this often unless the worker's declaration changed.
const CHECK_IN_WRITE_INTERVAL_SECS: i64 = 30;

impl WorkerEntry {
    /// Whether this worker may be handed jobs: not paused, in maintenance or suspended.
    pub fn gets_jobs(&self, rules: &ReputationRules) -> bool {
        let w = &self.worker;
        !w.paused && !w.maintenance && !w.reputation.is_suspended(rules)
    }

    /// Takes what a check-in declared from `checked_in`, leaving the rest of this entry alone.
    fn apply_check_in(&mut self, checked_in: &WorkerEntry) {
        let (w, c) = (&mut self.worker, &checked_in.worker);
        w.last_check_in = c.last_check_in;
        w.uptime = c.uptime;
        w.flags = c.flags.clone();
        w.max_pixels = c.max_pixels;
        w.nsfw = c.nsfw;
        w.threads = c.threads;
        w.bridge_agent = c.bridge_agent.clone();
        self.amount = checked_in.amount;
        self.priority_user_ids = checked_in.priority_user_ids.clone();
        self.owner_trusted = checked_in.owner_trusted;
        self.owner_flagged = checked_in.owner_flagged;
        self.persisted_check_in = checked_in.persisted_check_in;
        self.hardware = checked_in.hardware.clone();
        self.loaded_models = checked_in.loaded_models.clone();
    }

    /// The text matching view of this worker (a text worker's; an image worker's declares no
    /// length, so no text request matches it).
    pub fn text_caps(&self) -> horde_core::text::TextWorkerCaps {
        let w = &self.worker;
        let text = w.flags.text.clone().unwrap_or_default();
        horde_core::text::TextWorkerCaps {
            worker_id: w.id,
            owner_id: w.user_id,
            owner_trusted: self.owner_trusted,
            models: w.flags.models.clone(),
            max_length: text.max_length,
            max_context_length: text.max_context_length,
            softprompts: text.softprompts,
            nsfw: w.nsfw,
            blacklist: w.flags.blacklist.clone(),
            amount: self.amount,
            bridge_agent: w.bridge_agent.clone(),
            priority_user_ids: self.priority_user_ids.clone(),
            maintenance: w.maintenance,
            require_upfront_kudos: w.flags.require_upfront_kudos,
            speed_tps: (w.reputation.busy_secs > 0.0).then(|| w.reputation.average_speed_mps()),
            extra_slow: w.flags.extra_slow_worker,
        }
    }

    /// The alchemy matching view of this worker: its forms and `max_tiles`.
    pub fn alchemist_caps(&self) -> horde_core::alchemy::AlchemistCaps {
        let w = &self.worker;
        horde_core::alchemy::AlchemistCaps {
            worker_id: w.id,
            owner_id: w.user_id,
            owner_trusted: self.owner_trusted,
            forms: w.flags.models.clone(),
            max_tiles: w.flags.alchemy.as_ref().map_or(0, |a| a.max_tiles),
            amount: self.amount,
            priority_user_ids: self.priority_user_ids.clone(),
            maintenance: w.maintenance,
            speed_fps: (w.reputation.busy_secs > 0.0).then(|| w.reputation.average_speed_mps()),
        }
    }

    /// The matching view of this worker.
    pub fn caps(&self) -> WorkerCaps {
        let w = &self.worker;
        WorkerCaps {
            worker_id: w.id,
            owner_id: w.user_id,
            owner_trusted: self.owner_trusted,
            models: w.flags.models.clone(),
            max_pixels: w.max_pixels,
            nsfw: w.nsfw,
            blacklist: w.flags.blacklist.clone(),
            allow_img2img: w.flags.allow_img2img,
            allow_painting: w.flags.allow_painting,
            allow_post_processing: w.flags.allow_post_processing,
            nsfw_censor: !w.flags.no_nsfw_censor,
            declared_post_processors: w.flags.post_processors.clone(),
            allow_lora: w.flags.allow_lora,
            allow_controlnet: w.flags.allow_controlnet,
            control_types: w.flags.control_types.clone(),
            control_map_types: w.flags.control_map_types.clone(),
            amount: self.amount,
            bridge_agent: w.bridge_agent.clone(),
            priority_user_ids: self.priority_user_ids.clone(),
            maintenance: w.maintenance,
            require_upfront_kudos: w.flags.require_upfront_kudos,
            speed_mps: (w.reputation.busy_secs > 0.0).then(|| w.reputation.average_speed_mps()),
            extra_slow: w.flags.extra_slow_worker,
            step_limits: None,
            fallback: vec![],
            inpainting_models: vec![],
            loaded_models: self.loaded_models.clone(),
        }
    }

    pub fn details(
        &self,
        now: i64,
        online_window_secs: i64,
        rules: &ReputationRules,
    ) -> WorkerDetails {
        let w = &self.worker;
        let r = &w.reputation;
        let text = w.flags.text.as_ref();
        let alchemist = w.flags.alchemy.is_some();
        let performance = match (text, alchemist) {
            (Some(_), _) => format!("{:.1} tokens per second", r.average_speed_mps()),
            (None, true) => format!("{:.2} forms per second", r.average_speed_mps()),
            (None, false) => format!("{:.1} megapixelsteps per second", r.average_speed_mps()),
        };
        WorkerDetails {
            kind: w.kind().into(),
            name: w.name.clone(),
            id: w.id.to_string(),
            online: w.is_online(now, online_window_secs),
            requests_fulfilled: r.completed,
            kudos_rewards: w.kudos_generated + w.kudos_uptime,
            kudos_details: WorkerKudosDetails {
                generated: w.kudos_generated,
                uptime: w.kudos_uptime,
            },
            performance,
            threads: w.threads,
            uptime: w.uptime,
            uncompleted_jobs: r.timed_out,
            maintenance_mode: w.maintenance,
            paused: None,
            info: w.info.clone(),
            nsfw: w.nsfw,
            owner: None,
            trusted: self.owner_trusted,
            flagged: self.owner_flagged,
            models: w.flags.models.clone(),
            team: self.team.clone().unwrap_or_default(),
            bridge_agent: w.bridge_agent.clone(),
            max_pixels: w.max_pixels,
            megapixelsteps_generated: r.megapixelsteps.round() as u64,
            img2img: w.flags.allow_img2img,
            painting: w.flags.allow_painting,
            post_processing: w.flags.allow_post_processing,
            lora: w.flags.allow_lora,
            controlnet: w.flags.allow_controlnet,
            sdxl_controlnet: w.flags.allow_sdxl_controlnet,
            max_length: text.map(|t| t.max_length),
            max_context_length: text.map(|t| t.max_context_length),
            forms: alchemist.then(|| w.flags.models.clone()),
            messages: None,
            reputation: Some(reputation_details(r, w.uptime, rules)),
            hardware: self.hardware.clone(),
            loaded_models: self.loaded_models.clone(),
        }
    }
}

fn reputation_details(r: &Reputation, uptime: u64, rules: &ReputationRules) -> WorkerReputation {
    WorkerReputation {
        jobs_completed: r.completed,
        jobs_faulted: r.faulted,
        jobs_timed_out: r.timed_out,
        jobs_cancelled: r.cancelled,
        speed_mps: r.average_speed_mps(),
        uptime,
        reliability: r.reliability(),
        rated_by: r.rating.raters,
        rating: r.rating.mean(),
        suspicion: r.suspicion,
        suspicions: r
            .suspicions
            .iter()
            .map(|s| SuspicionEntry {
                reason: serde_json::to_value(s.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                at: s.at,
            })
            .collect(),
        suspended: r.is_suspended(rules),
    }
}

/// A worker as its first pop declares it, owned by `user_id`.
fn new_worker(user_id: i64, pop: &PopRequest, kind: &KindFlags, now: i64) -> Worker {
    Worker {
        id: Uuid::new_v4(),
        user_id,
        name: pop.name.clone(),
        info: None,
        created: now,
        last_check_in: now,
        bridge_agent: pop.bridge_agent.clone(),
        threads: pop.threads,
        max_pixels: pop.max_pixels,
        nsfw: pop.nsfw,
        flags: flags_of(pop, kind),
        maintenance: false,
        maintenance_msg: None,
        paused: false,
        kudos_generated: 0.0,
        kudos_uptime: 0.0,
        uptime: 0,
        uptime_rewarded: 0,
        reputation: Reputation::default(),
    }
}

/// Whether `pop` (with `kind`, a text worker's or alchemist's own declaration) declares what `worker`
/// declared at its last check-in.
fn declares_the_same(worker: &Worker, pop: &PopRequest, kind: &KindFlags) -> bool {
    let f = &worker.flags;
    let blacklist = pop.blacklist.iter().take(200).map(|w| w.chars().take(15));
    f.models == pop.models
        && f.blacklist.len() == pop.blacklist.len().min(200)
        && f.blacklist
            .iter()
            .zip(blacklist)
            .all(|(a, b)| a.chars().eq(b))
        && f.allow_img2img == pop.allow_img2img
        && f.allow_painting == pop.allow_painting
        && f.allow_post_processing == pop.allow_post_processing
        && f.post_processors == pop.post_processors
        && f.allow_lora == pop.allow_lora
        && f.allow_controlnet == pop.allow_controlnet
        && f.control_types == pop.control_types
        && f.control_map_types == pop.control_map_types
        && f.allow_sdxl_controlnet == pop.allow_sdxl_controlnet
        && f.no_nsfw_censor == (pop.nsfw_censor == Some(false))
        && f.text == kind.text
        && f.alchemy == kind.alchemy
        && f.require_upfront_kudos == pop.require_upfront_kudos
        && f.extra_slow_worker == pop.extra_slow_worker
        && f.limit_max_steps == pop.limit_max_steps
        && worker.max_pixels == pop.max_pixels
        && worker.nsfw == pop.nsfw
        && worker.threads == pop.threads
        && worker.bridge_agent == pop.bridge_agent
}

fn flags_of(pop: &PopRequest, kind: &KindFlags) -> WorkerFlags {
    WorkerFlags {
        models: pop.models.clone(),
        blacklist: pop
            .blacklist
            .iter()
            .take(200)
            .map(|w| w.chars().take(15).collect())
            .collect(),
        allow_img2img: pop.allow_img2img,
        allow_painting: pop.allow_painting,
        allow_post_processing: pop.allow_post_processing,
        post_processors: pop.post_processors.clone(),
        allow_lora: pop.allow_lora,
        allow_controlnet: pop.allow_controlnet,
        control_types: pop.control_types.clone(),
        control_map_types: pop.control_map_types.clone(),
        allow_sdxl_controlnet: pop.allow_sdxl_controlnet,
        no_nsfw_censor: pop.nsfw_censor == Some(false),
        text: kind.text.clone(),
        alchemy: kind.alchemy.clone(),
        require_upfront_kudos: pop.require_upfront_kudos,
        extra_slow_worker: pop.extra_slow_worker,
        limit_max_steps: pop.limit_max_steps,
    }
}

/// The kind a pop declares, as `Worker::kind` names it.
fn kind_name(kind: &KindFlags) -> &'static str {
    match (&kind.text, &kind.alchemy) {
        (Some(_), _) => "text",
        (None, Some(_)) => "interrogation",
        (None, None) => "image",
    }
}

/// Refuses a pop by a flagged owner's worker.
pub(crate) fn refuse_flagged_owner(owner: &User) -> ApiResult<()> {
    if owner.flagged {
        return Err(ApiError::new(
            Rc::WorkerFlaggedMaintenance,
            "Your account is flagged: your workers cannot take jobs.",
        ));
    }
    Ok(())
}

/// A worker in maintenance that found no job of its owner's is told so (its owner's message,
/// or the public horde's).
pub(crate) fn refuse_in_maintenance(entry: &WorkerEntry) -> ApiResult<()> {
    if !entry.worker.maintenance {
        return Ok(());
    }
    let msg =
        entry.worker.maintenance_msg.clone().unwrap_or_else(|| {
            "This worker has been put into maintenance mode by its owner.".into()
        });
    Err(ApiError::new(Rc::WorkerMaintenance, msg))
}

/// Reads `name#id` aliases into user ids.
fn priority_ids(owner: i64, aliases: &[String]) -> ApiResult<Vec<i64>> {
    let mut ids = vec![owner];
    for alias in aliases {
        let id = horde_core::accounts::user_id_of_alias(alias).ok_or_else(|| {
            ApiError::new(
                Rc::InvalidPriorityUsername,
                format!("Priority usernames must be in the form alias#id, not '{alias}'."),
            )
        })?;
        ids.push(id);
    }
    Ok(ids)
}

impl AppState {
    /// Refuses a pop from a worker whose suspicion reached the threshold.
    pub(crate) fn refuse_suspended(&self, entry: &WorkerEntry) -> ApiResult<()> {
        let reputation = &entry.worker.reputation;
        if reputation.is_suspended(&self.config.workers.reputation_rules()) {
            return Err(ApiError::new(
                Rc::WorkerFlaggedMaintenance,
                format!(
                    "This worker is suspended: its suspicion is {} (threshold {}). See \
                     /api/v2/workers/{} for the reasons; a moderator must clear it.",
                    reputation.suspicion, self.config.workers.suspicion_threshold, entry.worker.id
                ),
            ));
        }
        Ok(())
    }

    /// Loads every known worker into the registry (at start).
    pub async fn load_workers(&self) -> Result<(), horde_store::StoreError> {
        let workers = self.store.workers_seen_since(0).await?;
        let mut owners: HashMap<i64, Option<User>> = HashMap::new();
        for worker in workers {
            let owner = match owners.get(&worker.user_id) {
                Some(known) => known.clone(),
                None => {
                    let loaded = self.store.user_by_id(worker.user_id).await?;
                    owners.insert(worker.user_id, loaded.clone());
                    loaded
                }
            };
            let entry = stored_entry(worker, owner);
            self.workers.change(|registry| registry.insert(entry));
        }
        let reported = self.store.all_worker_hardware().await?;
        self.workers.change(|registry| {
            for (id, hardware) in reported {
                if let Some(entry) = registry.get_mut(id) {
                    entry.hardware = Some(hardware);
                }
            }
        });
        Ok(())
    }

    /// Adds worker `id` to the registry from the database when it is not there (it registered
    /// on another coordinator sharing the database).
    pub(crate) async fn load_worker(&self, id: Uuid) -> Result<(), horde_store::StoreError> {
        if self.workers.read(|registry| registry.get(id).is_some()) {
            return Ok(());
        }
        if let Some(worker) = self.store.worker_by_id(id).await? {
            self.add_stored_worker(worker).await?;
        }
        Ok(())
    }

    /// The registry's entry of the worker named `name`, loaded from the database when it
    /// registered on another coordinator sharing it.
    async fn stored_worker_named(
        &self,
        name: &str,
    ) -> Result<Option<WorkerEntry>, horde_store::StoreError> {
        if !self.is_clustered() {
            return Ok(None);
        }
        match self.store.worker_by_name(name).await? {
            Some(worker) => Ok(Some(self.add_stored_worker(worker).await?)),
            None => Ok(None),
        }
    }

    pub(crate) async fn add_stored_worker(
        &self,
        worker: Worker,
    ) -> Result<WorkerEntry, horde_store::StoreError> {
        let owner = self.store.user_by_id(worker.user_id).await?;
        let mut entry = stored_entry(worker, owner);
        entry.hardware = self.store.worker_hardware(entry.worker.id).await?;
        let known = self.workers.change(|registry| {
            let known = registry.get(entry.worker.id).cloned();
            if known.is_none() {
                registry.insert(entry.clone());
            }
            known
        });
        if let Some(known) = known {
            return Ok(known);
        }
        self.workers.changed();
        Ok(entry)
    }

    /// Stores the check-ins not yet written (they are written at most every 30 s), so that a
    /// clean shutdown keeps every worker's uptime and last check-in.
    pub async fn flush_check_ins(&self) -> Result<(), horde_store::StoreError> {
        let unwritten: Vec<Worker> = self.workers.read(|registry| {
            registry
                .all()
                .filter(|e| e.worker.last_check_in > e.persisted_check_in)
                .map(|e| e.worker.clone())
                .collect()
        });
        for worker in &unwritten {
            self.store.save_check_in(worker).await?;
        }
        Ok(())
    }

    /// Finds or registers the worker named in a pop, and records its check-in and the address
    /// it popped from (for `/operations/block_worker_ipaddr`). `kind` is what a text worker or
    /// an alchemist declares beyond an image pop's fields (nothing: an image worker); a name
    /// already registered for another kind is refused (`PolymorphicNameConflict`).
    pub async fn check_in(
        &self,
        user: &User,
        pop: &PopRequest,
        kind: &KindFlags,
    ) -> ApiResult<WorkerEntry> {
        let entry = self.check_in_worker(user, pop, kind).await?;
        self.note_worker_address(entry.worker.id).await?;
        Ok(entry)
    }

    async fn check_in_worker(
        &self,
        user: &User,
        pop: &PopRequest,
        kind: &KindFlags,
    ) -> ApiResult<WorkerEntry> {
        let now = now();
        let priority_user_ids = priority_ids(user.id, &pop.priority_usernames)?;
        if let Some(entry) = self.check_in_in_memory(user, pop, kind, &priority_user_ids, now) {
            return Ok(entry);
        }
        let existing = self
            .workers
            .read(|registry| registry.by_name(&pop.name).cloned());
        let joined = existing.as_ref().is_none_or(|e| {
            !e.worker
                .is_online(now, self.config.workers.online_window_secs)
        });
        let existing = match existing {
            Some(entry) => Some(entry),
            None => self.stored_worker_named(&pop.name).await?,
        };
        let mut entry = match existing {
            Some(entry) if entry.worker.user_id != user.id => {
                return Err(ApiError::new(
                    Rc::WrongCredentials,
                    "Wrong credentials to submit as this worker.",
                ));
            }
            Some(entry) if entry.worker.kind() != kind_name(kind) => {
                return Err(ApiError::new(
                    Rc::PolymorphicNameConflict,
                    format!(
                        "The worker name '{}' is already taken by a worker of another kind ({}).",
                        pop.name,
                        entry.worker.kind()
                    ),
                ));
            }
            Some(entry) => entry,
            None => {
                self.check_invite_only(user).await?;
                self.register_worker(user, pop, kind, now).await?
            }
        };
        let flags = flags_of(pop, kind);
        let declared_changed = !declares_the_same(&entry.worker, pop, kind);
        let elapsed = now - entry.worker.last_check_in;
        if entry
            .worker
            .is_online(now, self.config.workers.online_window_secs)
            && elapsed > 0
            && !entry.worker.maintenance
            && !entry.worker.paused
        {
            entry.worker.uptime += elapsed as u64;
        }
        entry.worker.last_check_in = now;
        entry.worker.flags = flags;
        entry.worker.max_pixels = pop.max_pixels;
        entry.worker.nsfw = pop.nsfw;
        entry.worker.threads = pop.threads;
        entry.worker.bridge_agent = pop.bridge_agent.clone();
        entry.amount = pop.amount;
        entry.priority_user_ids = priority_user_ids;
        entry.owner_trusted = user.trusted;
        entry.owner_flagged = user.flagged;
        entry.loaded_models = pop.loaded_models.clone();
        if declared_changed || now - entry.persisted_check_in >= CHECK_IN_WRITE_INTERVAL_SECS {
            self.store.save_check_in(&entry.worker).await?;
            entry.persisted_check_in = now;
        }
        if entry.hardware != pop.hardware {
            let id = entry.worker.id;
            self.store
                .save_worker_hardware(id, pop.hardware.as_ref())
                .await?;
            entry.hardware = pop.hardware.clone();
        }
        self.pay_uptime(&mut entry, now).await?;
        let checked_in = self
            .workers
            .change(|registry| match registry.get_mut(entry.worker.id) {
                Some(live) => {
                    live.apply_check_in(&entry);
                    live.clone()
                }
                None => {
                    registry.insert(entry.clone());
                    entry
                }
            });
        if joined || declared_changed {
            self.workers.changed();
        }
        Ok(checked_in)
    }

    /// The check-in of most pops: a worker already online, declaring what it declared before,
    /// with nothing to write (the check-in was stored less than 30 s ago and no uptime reward is
    /// due) is updated in place, under one lock and without copying it first. `None` sends the
    /// pop down the full path.
    fn check_in_in_memory(
        &self,
        user: &User,
        pop: &PopRequest,
        kind: &KindFlags,
        priority_user_ids: &[i64],
        now: i64,
    ) -> Option<WorkerEntry> {
        let window = self.config.workers.online_window_secs;
        self.workers.change(|registry| {
            let id = registry.by_name(&pop.name)?.worker.id;
            let live = registry.get_mut(id)?;
            let w = &live.worker;
            let same = w.user_id == user.id
                && w.is_online(now, window)
                && declares_the_same(w, pop, kind)
                && live.hardware == pop.hardware
                && now - live.persisted_check_in < CHECK_IN_WRITE_INTERVAL_SECS;
            if !same {
                return None;
            }
            let elapsed = now - w.last_check_in;
            let adds_uptime = elapsed > 0 && !w.maintenance && !w.paused;
            let uptime = w.uptime + if adds_uptime { elapsed as u64 } else { 0 };
            if uptime.saturating_sub(w.uptime_rewarded) >= UPTIME_REWARD_INTERVAL_SECS {
                return None;
            }
            live.worker.uptime = uptime;
            live.worker.last_check_in = now;
            live.amount = pop.amount;
            if live.loaded_models != pop.loaded_models {
                live.loaded_models = pop.loaded_models.clone();
            }
            if live.priority_user_ids != priority_user_ids {
                live.priority_user_ids = priority_user_ids.to_vec();
            }
            live.owner_trusted = user.trusted;
            live.owner_flagged = user.flagged;
            Some(live.clone())
        })
    }

    /// Pays the owner for each full 10 minutes of uptime not yet paid for (the public horde's
    /// uptime reward; in escrow for untrusted owners).
    async fn pay_uptime(&self, entry: &mut WorkerEntry, now: i64) -> ApiResult<()> {
        let w = &entry.worker;
        let unpaid = w.uptime.saturating_sub(w.uptime_rewarded);
        let intervals = unpaid / UPTIME_REWARD_INTERVAL_SECS;
        if intervals == 0 {
            return Ok(());
        }
        let kudos = uptime_reward(&w.flags) * intervals as f64;
        let rewarded_until = w.uptime_rewarded + intervals * UPTIME_REWARD_INTERVAL_SECS;
        let reward = horde_store::ledger::UptimeReward {
            worker_id: w.id,
            owner_id: w.user_id,
            kudos,
            escrow: !entry.owner_trusted,
            from: w.uptime_rewarded,
            until: rewarded_until,
            at: now,
        };
        if !self.store.reward_uptime(&reward).await? {
            // Another coordinator paid for it: take its figures.
            if let Some(stored) = self.store.worker_by_id(w.id).await? {
                entry.worker.kudos_uptime = stored.kudos_uptime;
                entry.worker.uptime_rewarded =
                    stored.uptime_rewarded.max(entry.worker.uptime_rewarded);
            }
            return Ok(());
        }
        entry.worker.kudos_uptime += kudos;
        entry.worker.uptime_rewarded = rewarded_until;
        let id = entry.worker.id;
        let kudos_uptime = entry.worker.kudos_uptime;
        self.workers.change(|registry| {
            if let Some(live) = registry.get_mut(id) {
                live.worker.kudos_uptime = kudos_uptime;
                live.worker.uptime_rewarded = rewarded_until;
            }
        });
        Ok(())
    }

    async fn register_worker(
        &self,
        user: &User,
        pop: &PopRequest,
        kind: &KindFlags,
        now: i64,
    ) -> ApiResult<WorkerEntry> {
        refuse_profanity(&pop.name, Rc::ProfaneWorkerName, "worker name")?;
        refuse_profanity(&pop.bridge_agent, Rc::ProfaneBridgeAgent, "bridge agent")?;
        let owned = self
            .workers
            .read(|registry| registry.count_of_user(user.id));
        horde_core::user_rules::check_new_worker(user, owned).map_err(crate::error::refused)?;
        let worker = new_worker(user.id, pop, kind, now);
        self.store
            .insert_worker(&worker)
            .await
            .map_err(|e| match e {
                horde_store::StoreError::Duplicate(_) => ApiError::new(
                    Rc::WrongCredentials,
                    "Wrong credentials to submit as this worker.",
                ),
                other => other.into(),
            })?;
        tracing::info!(worker = %worker.name, owner = user.id, "registered worker");
        Ok(WorkerEntry {
            owner_trusted: user.trusted,
            owner_flagged: user.flagged,
            owner_alias: user.alias(),
            persisted_check_in: now,
            amount: pop.amount,
            priority_user_ids: vec![user.id],
            waiting_since: None,
            team: None,
            messages: vec![],
            hardware: None,
            loaded_models: None,
            worker,
        })
    }

    /// Applies `PUT /workers/{id}`: owner settings; `paused` and `reset_suspicion` for
    /// moderators only.
    pub async fn modify_worker(
        &self,
        user: &User,
        id: Uuid,
        change: ModifyWorker,
    ) -> ApiResult<ModifyWorker> {
        change.validate().map_err(ApiError::validation)?;
        if change.is_empty() {
            return Err(ApiError::new(
                Rc::NoWorkerModSelected,
                "No worker modification selected!",
            ));
        }
        if let Some(name) = &change.name {
            refuse_profanity(name, Rc::ProfaneWorkerName, "worker name")?;
        }
        if let Some(info) = &change.info {
            refuse_profanity(info, Rc::ProfaneWorkerInfo, "worker info")?;
        }
        let turn = self.live.write_turn().await;
        let mut edited = self.worker_entry(id)?;
        let owner = edited.worker.user_id == user.id;
        if !owner && !user.moderator {
            return Err(ApiError::new(
                Rc::NotOwner,
                "Only the owner of this worker or a moderator can modify it.",
            ));
        }
        if change.paused.is_some() && !user.moderator {
            return Err(ApiError::new(
                Rc::NotModerator,
                "Only a moderator can pause a worker.",
            ));
        }
        if change.reset_suspicion.is_some() && !user.moderator {
            return Err(ApiError::new(
                Rc::NotModerator,
                "Only a moderator can clear a worker's suspicion.",
            ));
        }
        if let Some(name) = &change.name {
            let taken = self
                .workers
                .read(|registry| registry.by_name(name).is_some_and(|e| e.worker.id != id));
            if taken {
                return Err(ApiError::new(
                    Rc::WorkerNameAlreadyExists,
                    format!("A worker named '{name}' already exists."),
                ));
            }
            edited.worker.name = name.clone();
        }
        let w = &mut edited.worker;
        if let Some(m) = change.maintenance {
            w.maintenance = m;
        }
        if let Some(msg) = &change.maintenance_msg {
            w.maintenance_msg = Some(msg.clone());
        }
        if let Some(p) = change.paused {
            w.paused = p;
        }
        if let Some(info) = &change.info {
            w.info = Some(info.clone());
        }
        let clear_suspicion = change.reset_suspicion == Some(true);
        let team = self.team_change(change.team.as_deref()).await?;
        self.store
            .save_worker_settings(&edited.worker)
            .await
            .map_err(|e| match e {
                horde_store::StoreError::Duplicate(_) => ApiError::new(
                    Rc::WorkerNameAlreadyExists,
                    "A worker with this name already exists.",
                ),
                other => other.into(),
            })?;
        if clear_suspicion {
            self.change_reputation_ordered(&turn, id, |r| r.clear_suspicion())
                .await?;
            tracing::info!(worker = %edited.worker.name, moderator = user.id, "suspicion cleared");
        }
        self.workers.change(|registry| {
            registry.rename(id, &edited.worker.name);
            if let Some(live) = registry.get_mut(id) {
                let (live, w) = (&mut live.worker, &edited.worker);
                live.info = w.info.clone();
                live.maintenance = w.maintenance;
                live.maintenance_msg = w.maintenance_msg.clone();
                live.paused = w.paused;
            }
        });
        self.workers.changed();
        let mut change = change;
        if let Some(team) = team {
            change.team = Some(self.move_worker(id, team).await?);
        }
        Ok(change)
    }

    /// A copy of the worker's live entry, or the AI Horde 404.
    pub fn worker_entry(&self, id: Uuid) -> ApiResult<WorkerEntry> {
        self.workers.get(id).ok_or_else(|| {
            ApiError::new(
                Rc::WorkerNotFound,
                format!("Worker with ID '{id}' not found."),
            )
        })
    }

    pub fn worker_details(&self, id: Uuid, viewer: Viewer) -> ApiResult<WorkerDetails> {
        let details = self
            .workers
            .read(|registry| Some(self.details_for(registry.get(id)?, now(), viewer)));
        details.ok_or_else(|| {
            ApiError::new(
                Rc::WorkerNotFound,
                format!("Worker with ID '{id}' not found."),
            )
        })
    }

    pub fn worker_details_by_name(&self, name: &str, viewer: Viewer) -> ApiResult<WorkerDetails> {
        let details = self
            .workers
            .read(|registry| Some(self.details_for(registry.by_name(name)?, now(), viewer)));
        details.ok_or_else(|| {
            ApiError::new(
                Rc::WorkerNotFound,
                format!("Worker with name '{name}' not found."),
            )
        })
    }

    /// The online workers `query` lists.
    pub fn online_worker_details(
        &self,
        query: &horde_api::worker::WorkerListQuery,
        viewer: Viewer,
    ) -> Vec<WorkerDetails> {
        let now = now();
        let mut list: Vec<WorkerDetails> = self.workers.read(|registry| {
            registry
                .online(now)
                .filter(|e| query.lists(e.worker.kind(), &e.worker.name))
                .map(|e| self.details_for(e, now, viewer))
                .collect()
        });
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The public details of the workers seen in the last `secs` seconds, with when each last
    /// checked in (the dashboard's workers table).
    pub fn recent_worker_details(&self, secs: i64) -> Vec<(WorkerDetails, i64)> {
        let now = now();
        self.workers.read(|registry| {
            registry
                .seen_since(now - secs)
                .map(|e| {
                    let details = self.details_for(e, now, Viewer::default());
                    (details, e.worker.last_check_in)
                })
                .collect()
        })
    }

    /// A worker's details as `viewer` may see them: its owner's alias for the owner and
    /// moderators, whether it is paused for moderators only (as on the public horde, so that
    /// a paused bad actor does not notice).
    fn details_for(&self, entry: &WorkerEntry, now: i64, viewer: Viewer) -> WorkerDetails {
        let mut details = entry.details(
            now,
            self.config.workers.online_window_secs,
            &self.config.workers.reputation_rules(),
        );
        if viewer.moderator || viewer.user_id == Some(entry.worker.user_id) {
            details.owner = Some(entry.owner_alias.clone());
            details.messages = Some(crate::teams::active_messages(entry, now));
        }
        if viewer.moderator {
            details.paused = Some(entry.worker.paused);
        }
        details
    }
}

/// Who reads worker details: the owner of the workers and moderators see more.
#[derive(Debug, Clone, Copy, Default)]
pub struct Viewer {
    pub user_id: Option<i64>,
    pub moderator: bool,
}

impl Viewer {
    /// The viewer a caller is (`auth::Viewer`: a registered user, or nobody).
    pub fn of(user: Option<&User>) -> Viewer {
        match user {
            Some(user) if !user.is_anonymous() => Viewer {
                user_id: Some(user.id),
                moderator: user.moderator,
            },
            _ => Viewer::default(),
        }
    }
}

/// The registry entry of a stored worker, before its next check-in.
fn stored_entry(worker: Worker, owner: Option<User>) -> WorkerEntry {
    WorkerEntry {
        owner_trusted: owner.as_ref().is_some_and(|u| u.trusted),
        owner_flagged: owner.as_ref().is_some_and(|u| u.flagged),
        owner_alias: owner.map(|u| u.alias()).unwrap_or_default(),
        persisted_check_in: worker.last_check_in,
        amount: 1,
        priority_user_ids: vec![worker.user_id],
        waiting_since: None,
        team: None,
        messages: vec![],
        hardware: None,
        loaded_models: None,
        worker,
    }
}

/// Refuses public `text` (a worker's name, bridge agent or info) that is profane, with the
/// public horde's code and message.
fn refuse_profanity(text: &str, rc: Rc, what: &str) -> ApiResult<()> {
    if horde_core::profanity::is_profane(text) {
        return Err(ApiError::new(
            rc,
            format!(
                "As our API is public, we do not allow profanity in the {what}, please try again."
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-memory check-in skips a worker only when the full path would store the same
    /// declaration: both read a pop the same way (blacklist cut to 200 words of 15 characters).
    #[test]
    fn a_declaration_is_the_same_exactly_when_flags_of_it_are() {
        let mut pop = PopRequest::new("w");
        pop.models = vec!["stable_diffusion".into()];
        pop.blacklist = (0..250)
            .map(|i| format!("a-very-long-blacklisted-word-{i}"))
            .collect();
        let worker = new_worker(1, &pop, &KindFlags::default(), 0);
        assert!(declares_the_same(&worker, &pop, &KindFlags::default()));
        let changes: [fn(&mut PopRequest); 6] = [
            |p| p.models.push("SDXL 1.0".into()),
            |p| p.blacklist[3] = "other".into(),
            |p| p.max_pixels += 64,
            |p| p.allow_lora = !p.allow_lora,
            |p| p.bridge_agent = "my-bridge:1:x".into(),
            |p| p.threads += 1,
        ];
        for change in changes {
            let mut changed = pop.clone();
            change(&mut changed);
            assert!(
                !declares_the_same(&worker, &changed, &KindFlags::default()),
                "{changed:?}"
            );
        }
        let mut longer = pop.clone();
        longer.blacklist.push("beyond the 200 kept".into());
        assert!(
            declares_the_same(&worker, &longer, &KindFlags::default()),
            "words past the 200th are not kept"
        );
    }
}
