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
