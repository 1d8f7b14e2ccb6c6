//! Interrogation ("alchemy", `/interrogate/…`) in the coordinator: what is the kind's own beside
//! the lifecycle written once for every kind (`lifecycle.rs`, `kinds.rs`).
//!
//! * `requests.rs` — the client's side: the forms checked and kept once each, the source image
//!   decoded, checked and stored as WebP (a URL is passed on as sent), the price, the status of
//!   each form, the cancel;
//! * `jobs.rs` — the alchemist's side: a pop registers or checks in an alchemist (a worker of
//!   its own kind) and hands out the first wanted form it runs, with a signed URL of the source
//!   image and, for a post-processor, an upload URL; a submit keeps the result (a
//!   post-processor's uploaded image becomes its download URL).

mod jobs;
mod requests;
