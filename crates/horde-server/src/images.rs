//! Generated images: WebP files under the data directory, one per job.
//!
//! An image is checked (it must decode) before it is stored, and stored under a temporary name
//! first so that a refused submission never replaces an accepted image.

use crate::error::ApiError;
use horde_api::Rc;
use std::path::{Path, PathBuf};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

/// Width and height of a decoded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

impl ImageStore {
    pub fn open(dir: &Path) -> std::io::Result<ImageStore> {
        std::fs::create_dir_all(dir)?;
        Ok(ImageStore {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self, job_id: Uuid) -> PathBuf {
        self.dir.join(format!("{job_id}.webp"))
    }

    pub fn exists(&self, job_id: Uuid) -> bool {
        self.path(job_id).exists()
    }

    /// Writes `bytes` under a temporary name; [`ImageStore::commit`] moves it into place.
    pub async fn stage(&self, job_id: Uuid, bytes: &[u8]) -> Result<PathBuf, ApiError> {
        let staged = self.dir.join(format!("{job_id}.{}.part", Uuid::new_v4()));
        tokio::fs::write(&staged, bytes)
            .await
            .map_err(ApiError::internal)?;
        Ok(staged)
    }

    pub async fn commit(&self, staged: &Path, job_id: Uuid) -> Result<(), ApiError> {
        tokio::fs::rename(staged, self.path(job_id))
            .await
            .map_err(ApiError::internal)
    }

    pub async fn discard(&self, staged: &Path) {
        let _ = tokio::fs::remove_file(staged).await;
    }

    pub async fn read(&self, job_id: Uuid) -> Option<Vec<u8>> {
        tokio::fs::read(self.path(job_id)).await.ok()
    }

    pub async fn remove(&self, job_id: Uuid) {
        let _ = tokio::fs::remove_file(self.path(job_id)).await;
    }
}

/// Checks that `bytes` is an image we can decode (WebP, or PNG), off the async runtime.
pub async fn check_image(bytes: Vec<u8>) -> Result<(Vec<u8>, ImageSize), ApiError> {
    tokio::task::spawn_blocking(move || {
        let format = image::guess_format(&bytes).map_err(|_| {
            ApiError::new(
                Rc::ImageValidationFailed,
                "The image is not a WebP or PNG image.",
            )
        })?;
        let decoded = image::load_from_memory_with_format(&bytes, format).map_err(|e| {
            ApiError::new(
                Rc::ImageValidationFailed,
                format!("The image could not be decoded: {e}"),
            )
        })?;
        let size = ImageSize {
            width: decoded.width(),
            height: decoded.height(),
        };
        Ok((bytes, size))
    })
    .await
    .map_err(ApiError::internal)?
}
