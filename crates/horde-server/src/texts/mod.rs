//! Text generation (`/generate/text/…`) in the coordinator: what is the text kind's own beside
//! the lifecycle written once for every kind (`lifecycle.rs`, `kinds.rs`).
//!
//! * `requests.rs` — the client's side: the rules a text request passes before it is queued
//!   (`horde_core::text::rules`, in the public horde's order), its price, the quota and
//!   concurrency it counts against, its status (with the texts) and its cancel;
//! * `jobs.rs` — the worker's side: a text pop registers or checks in a text worker (a worker is
//!   of one kind: its name cannot pop images), hands out a job from the text queue, and a submit
//!   keeps the text (in the results store, beside images) and pays for the tokens delivered.
//!
//! A text job cannot reach an image worker: the text queue takes only text workers' caps
//! (`horde_core::text::Text`), and a text worker's name is refused by the image pop.

mod jobs;
mod requests;

pub use requests::TextAccepted;
