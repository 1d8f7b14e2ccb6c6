//! Worker bodies: `GET /workers…` and `PUT /workers/{id}`.

use crate::error::{ErrorBody, FieldErrors};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerKudosDetails {
    pub generated: f64,
    pub uptime: f64,
}

/// A worker's team: always an object, `{"id": null, "name": null}` for a worker in no team.
/// (The public horde answers the string `"None"` there, which horde-sdk cannot parse.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TeamRef {
    pub id: Option<String>,
    pub name: Option<String>,
}

/// WorkerDetails as the public horde returns it (image worker fields included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerDetails {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub id: String,
    pub online: bool,
    pub requests_fulfilled: u64,
    pub kudos_rewards: f64,
    pub kudos_details: WorkerKudosDetails,
    pub performance: String,
    pub threads: u32,
    pub uptime: u64,
    pub uncompleted_jobs: u64,
    pub maintenance_mode: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    pub info: Option<String>,
    pub nsfw: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub trusted: bool,
    pub flagged: bool,
    pub models: Vec<String>,
    pub team: TeamRef,
    pub bridge_agent: String,
    pub max_pixels: u64,
    /// Whole megapixelsteps, as horde-sdk types it.
    pub megapixelsteps_generated: u64,
    pub img2img: bool,
    pub painting: bool,
    #[serde(rename = "post-processing")]
    pub post_processing: bool,
    pub lora: bool,
    pub controlnet: bool,
    pub sdxl_controlnet: bool,
    /// A text worker's most tokens for one job (text workers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
    /// A text worker's largest context (text workers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_context_length: Option<u32>,
    /// An alchemist's forms (alchemists only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forms: Option<Vec<String>>,
    /// The active messages to the worker (shown to its owner and moderators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<crate::teams::WorkerMessage>>,
    /// This coordinator's reputation ledger of the worker (not in the public horde).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation: Option<WorkerReputation>,
    /// Beyond the public horde: what the worker runs on, as it last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<WorkerHardware>,
    /// Beyond the public horde: the models it holds in memory now (of `models`, which it has
    /// on disk), as it last reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loaded_models: Option<Vec<String>>,
}

/// Beyond the public horde: what a worker runs on, as it reports it in its pops (`hardware`),
/// shown by `GET /workers/{id}` and the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerHardware {
    /// Where the engine runs: `cpu`, or `cuda:N`.
    #[schema(max_length = 40)]
    pub device: String,
    /// The CPU's model name, as the operating system reports it.
    #[schema(max_length = 200)]
    pub cpu: String,
    /// CPU cores (hardware threads) the worker may use.
    pub cpu_cores: u32,
    /// The machine's memory, in bytes.
    pub ram_bytes: u64,
    /// The GPU's name, when the engine runs on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 200)]
    pub gpu: Option<String>,
    /// The GPU's memory, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_bytes: Option<u64>,
    /// The engine and its version (`horde-worker 0.1.0 (candle)`).
    #[schema(max_length = 200)]
    pub engine: String,
    /// The dtype the weights are held in: `f32`, `f16` or `bf16`.
    #[schema(max_length = 10)]
    pub dtype: String,
    /// The longest a model took to load on this worker, in seconds (0 before any load): the
    /// coordinator adds it to the deadline of a job whose model is not loaded yet.
    #[serde(default)]
    pub load_secs: u32,
}

/// The most characters of a hardware report's text fields.
pub const MAX_HARDWARE_TEXT: usize = 200;
/// The longest model load a worker may claim, in seconds.
pub const MAX_LOAD_SECS: u32 = 1800;

impl WorkerHardware {
    /// The bounds of a report: its text fields' lengths and the load time's range.
    pub fn check(&self, errors: &mut FieldErrors) {
        errors.max_chars("hardware.device", &self.device, 40);
        errors.max_chars("hardware.cpu", &self.cpu, MAX_HARDWARE_TEXT);
        if let Some(gpu) = &self.gpu {
            errors.max_chars("hardware.gpu", gpu, MAX_HARDWARE_TEXT);
        }
        errors.max_chars("hardware.engine", &self.engine, MAX_HARDWARE_TEXT);
        errors.max_chars("hardware.dtype", &self.dtype, 10);
        errors.range("hardware.load_secs", self.load_secs, 0, MAX_LOAD_SECS);
    }
}

/// What a worker has done and how far it is trusted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerReputation {
    pub jobs_completed: u64,
    pub jobs_faulted: u64,
    /// Jobs taken back because their deadline passed.
    pub jobs_timed_out: u64,
    /// Jobs in flight when their requester cancelled (they judge nothing).
    pub jobs_cancelled: u64,
    /// Average megapixelsteps per second over the completed jobs, pop to submit.
    pub speed_mps: f64,
    /// Seconds online.
    pub uptime: u64,
    /// Smoothed share of judged jobs completed, 0 to 1, moved by requesters' ratings (at most a
    /// quarter of the way to 1 or 0); routing prefers higher.
    pub reliability: f64,
    /// Requesters who rated its images (`POST /generate/rate/{id}`), each one voice.
    #[serde(default)]
    pub rated_by: u32,
    /// The mean of those requesters' mean ratings (1..10); absent before any rating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<f64>,
    pub suspicion: u32,
    /// The latest suspicion events, oldest first.
    pub suspicions: Vec<SuspicionEntry>,
    /// Suspicion reached the threshold: no jobs until a moderator clears it.
    pub suspended: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SuspicionEntry {
    /// unreasonably_fast, wrong_image_size, undecodable_image or repeated_faults.
    pub reason: String,
    /// Unix seconds.
    pub at: i64,
}

/// The query of `GET /workers`: `type` (`image`, `text`, `interrogation`; empty, absent or
/// `all` for every kind) and `name`, which takes precedence over `type` as on the public horde.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct WorkerListQuery {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl WorkerListQuery {
    /// Whether a worker of `kind` named `name` is listed: with a `name`, the worker of that
    /// name (case-insensitive) whatever its kind; otherwise every worker of the asked kind.
    pub fn lists(&self, kind: &str, name: &str) -> bool {
        if let Some(wanted) = self.name.as_deref().filter(|n| !n.is_empty()) {
            return wanted.to_lowercase() == name.to_lowercase();
        }
        match self.kind.as_deref() {
            None | Some("") | Some("all") => true,
            Some(asked) => asked == kind,
        }
    }
}

/// The body of `PUT /workers/{id}`; every field optional, at least one required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModifyWorker {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1000)]
    pub maintenance_msg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1000)]
    pub info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 5, max_length = 100)]
    pub name: Option<String>,
    /// The id of the team the worker joins, or `""` to leave its team. The answer names the
    /// team (`"None"` when it left), as the public horde's does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 36)]
    pub team: Option<String>,
    /// Moderators only: clears the worker's suspicion so that it gets jobs again (not in the
    /// public horde, which resets suspicion per user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_suspicion: Option<bool>,
}

impl ModifyWorker {
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let mut errors = FieldErrors::default();
        if let Some(info) = &self.info {
            errors.range("info", info.chars().count(), 0, 1000);
        }
        if let Some(name) = &self.name {
            errors.range("name", name.chars().count(), 5, 100);
        }
        if let Some(msg) = &self.maintenance_msg {
            errors.range("maintenance_msg", msg.chars().count(), 0, 1000);
        }
        if let Some(team) = &self.team {
            errors.max_chars("team", team, 36);
        }
        errors.into_result()
    }
    pub fn is_empty(&self) -> bool {
        self == &ModifyWorker::default()
    }
}

/// The answer of `PUT /workers/{id}`: the fields that were set.
pub type ModifyWorkerResponse = ModifyWorker;

#[cfg(test)]
mod tests {
    use super::*;

    fn query(kind: Option<&str>, name: Option<&str>) -> WorkerListQuery {
        WorkerListQuery {
            kind: kind.map(str::to_string),
            name: name.map(str::to_string),
        }
    }

    #[test]
    fn an_empty_or_all_type_lists_every_kind_and_a_kind_lists_its_own() {
        for every in [None, Some(""), Some("all")] {
            assert!(query(every, None).lists("image", "w1"), "{every:?}");
        }
        assert!(query(Some("image"), None).lists("image", "w1"));
        assert!(!query(Some("text"), None).lists("image", "w1"));
    }

    #[test]
    fn a_name_takes_precedence_over_the_type_and_ignores_case() {
        assert!(query(Some("text"), Some("My-Worker")).lists("image", "my-worker"));
        assert!(!query(None, Some("other")).lists("image", "my-worker"));
    }
}
