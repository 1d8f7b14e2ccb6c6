//! The post-processors of the horde (`post_processing` in a request, and alchemy's forms), run
//! by the worker on a finished image, on candle.
//!
//! Each family is one module with one entry point per image, so that a generation's chain and
//! an alchemy form call the same code:
//!
//! * [`upscale`]: the ESRGAN family (RRDBNet in the old and new key layouts, with
//!   pixel-unshuffle for ×2 and ×1) and the compact SRVGG network, their architecture and scale
//!   read from the checkpoint's tensors as spandrel reads them, run in overlapping tiles blended
//!   without seams so that memory stays bounded at any size.
//!
//! Numbers are pinned to the PyTorch reference (spandrel) by fixtures that
//! `tools/postprocess-fixtures` writes: see `tests/upscalers.rs`.

pub mod background;
pub mod face;
pub mod tensors;
pub mod tiles;
pub mod tiny;
pub mod upscale;

/// Why a post-processor could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The checkpoint could not be read at all.
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
    /// The checkpoint was read but is not a network this build runs.
    #[error("{path}: {reason}")]
    Unsupported { path: String, reason: String },
    /// A tensor operation failed while running the network.
    #[error("running the network: {0}")]
    Run(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
