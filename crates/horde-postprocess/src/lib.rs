//! The post-processors of the horde (`post_processing` in a request, and alchemy's forms), run
//! by the worker on a finished image, on candle.
//!
//! Each family is one module with one entry point per image, so that a generation's chain and
//! an alchemy form call the same code:
//!
//! * [`upscale`]: the ESRGAN family (RRDBNet in the old and new key layouts, with
//!   pixel-unshuffle for ×2 and ×1) and the compact SRVGG network, their architecture and scale
//!   read from the checkpoint's tensors as spandrel reads them, run in overlapping tiles blended
//!   without seams so that memory stays bounded at any size (`Upscaler::upscale`).
//! * [`face`]: face restoration as GFPGAN's inference does it: RetinaFace finds the faces, each
//!   is aligned to the 512² template by its five landmarks, restored by GFPGAN, CodeFormer or
//!   RestoreFormer, and pasted back with a soft mask (`FaceFixer::fix`).
//! * [`background`]: `strip_background`, a U²-Net, U²-NetP or ISNet salient-object mask made
//!   the image's alpha channel with rembg's pre- and post-processing
//!   (`BackgroundRemover::remove`).
//! * [`tiny`]: small random checkpoints of each, in the published key layouts, for tests and
//!   first runs (`horde model tiny`).
//!
//! Numbers are pinned to the PyTorch references (spandrel, spandrel_extra_arches, facexlib,
//! OpenCV, backgroundremover's and dis-inference's published code, rembg's pipeline) by fixtures
//! that `tools/postprocess-fixtures` writes: see the tests of each family.

pub mod background;
pub mod face;
pub mod tensors;
#[cfg(test)]
mod test_support;
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
