//! The horde's domain, pure and synchronous.
//!
//! Everything that decides something lives here: how a request is normalised and priced, which
//! waiting request a worker gets (matching and queue order), how a job's submission changes its
//! request, how rate limits count. Time is passed in as `now` (unix seconds or milliseconds), never
//! read from a clock, so tests drive it.
//!
//! A rule that refuses returns a refusal enum implementing [`Refusal`]: the public horde's
//! `rc` and message travel with the rule, and the server only turns them into an answer.
//!
//! Architecture invariant: horde-core knows nothing of HTTP, SQL, files or async runtimes.

pub mod accounts;
pub mod activity;
pub mod alchemy;
pub mod bridge;
pub mod deadline;
pub mod eta;
pub mod image_header;
pub mod invites;
pub mod ip_timeouts;
pub mod keys;
pub mod kind;
pub mod kudos_model;
pub mod matching;
pub mod model_reference;
pub mod modes;
pub mod performance;
pub mod post_processing;
pub mod pricing;
pub mod profanity;
pub mod prompt_filter;
pub mod queue;
pub mod quota;
pub mod ratelimit;
pub mod ratings;
pub mod registration;
pub mod reputation;
pub mod request;
pub mod request_rules;
pub mod routing;
pub mod seed;
pub mod shared_key;
pub mod styles;
pub mod teams;
pub mod text;
pub mod ttl;
pub mod upfront;
pub mod user_rules;
pub mod webhook;
pub mod work;

pub use accounts::{User, Worker, WorkerFlags};
pub use kind::{Capabilities, Image, JobKind};
pub use matching::{SkipReason, WorkerCaps};
pub use queue::{Assignment, DeadlineTerms, PopOutcome, Queue};
pub use reputation::{Reputation, ReputationRules, SuspicionReason};
pub use request::{Job, JobState, LiveRequest, StatusCounts};
pub use routing::Standby;

/// A rule's refusal: the public horde's return code and the message the caller is told.
pub trait Refusal {
    fn rc(&self) -> horde_api::Rc;
    fn message(&self) -> String;
}
