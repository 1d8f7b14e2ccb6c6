//! Text generation ("kobold" on the public horde) as a kind of work: what is its own beside
//! images, written as pure rules over the generic queue and lifecycle (`kind.rs`).
//!
//! * [`reference`]: the text model reference (the public `db.json`, built in), which prices a
//!   model by its parameter count;
//! * [`pricing`]: the public horde's text kudos (the job's basis, the requester's charge, the
//!   worker's reward from the text it delivered);
//! * [`rules`]: what a text request must pass before it is queued (the public horde's rules
//!   with their `rc`, upfront kudos and what anonymous users may ask for);
//! * [`activity`]: the text models in use now (`/status/models?type=text`);
//! * [`kind`]: the [`Text`](kind::Text) job kind, what a text worker declares and when it may
//!   take a job (the public skip reasons).

pub mod activity;
pub mod kind;
pub mod pricing;
pub mod reference;
pub mod rules;

pub use kind::{Text, TextBody, TextSkip, TextWorkerCaps};
pub use reference::TextModelReference;
