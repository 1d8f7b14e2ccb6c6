//! Horde-wide status bodies: heartbeat, models, performance.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Heartbeat {
    pub message: String,
    pub version: String,
}

/// One entry of `GET /status/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActiveModel {
    pub name: String,
    pub count: u32,
    pub performance: f64,
    pub queued: f64,
    pub jobs: f64,
    pub eta: i64,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HordePerformance {
    pub queued_requests: u64,
    pub queued_text_requests: u64,
    pub worker_count: u64,
    pub text_worker_count: u64,
    pub thread_count: u64,
    pub text_thread_count: u64,
    pub queued_megapixelsteps: f64,
    pub past_minute_megapixelsteps: f64,
    pub queued_forms: f64,
    pub interrogator_count: u64,
    pub interrogator_thread_count: u64,
    pub queued_tokens: f64,
    pub past_minute_tokens: f64,
}

/// Images and pixelsteps finished in one period (`SinglePeriodImgStat`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SinglePeriodImgStat {
    pub images: u64,
    /// Pixelsteps (width × height × steps) of those images.
    pub ps: u64,
}

/// `GET /stats/img/totals` (`StatsImgTotals`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatsImgTotals {
    pub minute: SinglePeriodImgStat,
    pub hour: SinglePeriodImgStat,
    pub day: SinglePeriodImgStat,
    pub month: SinglePeriodImgStat,
    pub total: SinglePeriodImgStat,
}

/// Texts and tokens delivered in one period (`SinglePeriodTxtStat`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SinglePeriodTxtStat {
    pub requests: u64,
    pub tokens: u64,
}

/// `GET /stats/text/totals` (`StatsTxtTotals`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatsTxtTotals {
    pub minute: SinglePeriodTxtStat,
    pub hour: SinglePeriodTxtStat,
    pub day: SinglePeriodTxtStat,
    pub month: SinglePeriodTxtStat,
    pub total: SinglePeriodTxtStat,
}

/// `GET /stats/text/models` (`TxtModelStats`): texts delivered per model, in the shape of
/// [`ImgModelStats`].
pub type TxtModelStats = ImgModelStats;

/// `GET /stats/img/models` (`ImgModelStats`): images finished per model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImgModelStats {
    pub day: std::collections::BTreeMap<String, u64>,
    pub month: std::collections::BTreeMap<String, u64>,
    pub total: std::collections::BTreeMap<String, u64>,
}

/// Which models a listing covers: those of the model reference, the others, or all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelState {
    Known,
    Custom,
    All,
}
