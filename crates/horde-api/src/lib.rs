//! Wire types of AI Horde API v2.
//!
//! Every struct here is a JSON body exactly as the public AI Horde sends or accepts it: field
//! names, optionality and the *effective* defaults of the public server (its `reqparse` parsers,
//! which differ from its swagger text in places; see `shared/docs/horde-api.md` §14). Bounds are
//! checked by [`validate`] functions so that a body that parses but is out of range yields the same
//! 400 `errors` map as the public server.
//!
//! This crate knows nothing of HTTP frameworks, databases or the queue: it is shared by the
//! coordinator, the client crate and the worker, so both ends of the wire agree by construction.

pub mod batch;
pub mod error;
pub mod filter;
pub mod image;
pub mod interrogation;
pub mod invite;
pub mod modes;
pub mod operations;
pub mod shared_key;
pub mod status;
pub mod styles;
pub mod teams;
pub mod text;
pub mod user;
pub mod webhook;
pub mod worker;

pub use error::{ErrorBody, Rc};

/// The anonymous API key of the public horde.
pub const ANONYMOUS_API_KEY: &str = "0000000000";

/// The bridge agent our own worker reports. The public horde gates capabilities on the bridge
/// name, so ours identifies as the reference worker it is compatible with.
pub const DEFAULT_CLIENT_AGENT: &str = "unknown:0:unknown";
