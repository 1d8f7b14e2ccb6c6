//! Models by name: the worker looks a name up in the model reference, downloads the files the
//! reference lists into its models directory ([`download`]: resumed, verified against the
//! reference's SHA-256, within a disk budget), and keeps the most recently used models loaded
//! within a memory budget.

pub mod download;
pub mod reference;
pub mod resident;
pub mod resolve;
pub mod wanted;
