//! Diffusers folders (`model_index.json`, `unet/`, `vae/`, `text_encoder/`…): their tensors are
//! renamed to the single-file (LDM) layout so one set of networks serves both formats.

use crate::checkpoint::TensorIndex;
use crate::Error;
use std::path::Path;

/// Opens a diffusers folder.
pub fn open_folder(path: &Path) -> Result<TensorIndex, Error> {
    if !path.join("model_index.json").exists() {
        return Err(Error::Layout {
            path: path.into(),
            reason: "a folder but not a diffusers model (no model_index.json); expected a .safetensors file or a diffusers folder".into(),
        });
    }
    Err(Error::Unsupported {
        path: path.into(),
        reason:
            "diffusers folders are not supported yet; use the single-file .safetensors checkpoint"
                .into(),
    })
}
