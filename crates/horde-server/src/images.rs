//! Generated images: WebP files under the data directory, one per job, or rows of the
//! database when coordinators share PostgreSQL (a worker may upload to one coordinator and the
//! client download from another).
//!
//! An image is checked (it must decode) before it is stored, and staged under a temporary
//! name first (always a local file: staging and committing happen in one request) so that a
//! refused submission never replaces an accepted image.

use crate::error::ApiError;
use horde_api::Rc;
use std::path::{Path, PathBuf};
use uuid::Uuid;

#[derive(Clone)]
pub struct ImageStore {
    dir: PathBuf,
    /// Where committed images go when coordinators share a database; `None`: files in `dir`.
    database: Option<horde_store::Store>,
}

/// Width and height of a decoded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

impl ImageStore {
    /// Images as files in `dir` (staging always happens there), committed into `database`
    /// when it is given.
    pub fn open(dir: &Path, database: Option<horde_store::Store>) -> std::io::Result<ImageStore> {
        std::fs::create_dir_all(dir)?;
        Ok(ImageStore {
            dir: dir.to_path_buf(),
            database,
        })
    }

    fn path(&self, job_id: Uuid) -> PathBuf {
        self.dir.join(format!("{job_id}.webp"))
    }

    pub async fn exists(&self, job_id: Uuid) -> Result<bool, ApiError> {
        match &self.database {
            Some(store) => Ok(store.has_image(job_id).await?),
            None => Ok(tokio::fs::try_exists(self.path(job_id))
                .await
                .unwrap_or(false)),
        }
    }

    /// Writes `bytes` under a temporary name; [`ImageStore::commit`] moves it into place.
    pub async fn stage(&self, job_id: Uuid, bytes: &[u8]) -> Result<PathBuf, ApiError> {
        let staged = self.dir.join(format!("{job_id}.{}.part", Uuid::new_v4()));
        tokio::fs::write(&staged, bytes)
            .await
            .map_err(ApiError::internal)?;
        Ok(staged)
    }

    /// Puts a staged image in place as the image of `job_id` (a file is moved; with a database
    /// its bytes are stored and the staged file is left for [`ImageStore::discard`]).
    pub async fn commit(&self, staged: &Path, job_id: Uuid) -> Result<(), ApiError> {
        match &self.database {
            Some(store) => {
                // The staged file stays until the caller discards it: a submission applied
                // again after another coordinator's change commits it again.
                let bytes = tokio::fs::read(staged).await.map_err(ApiError::internal)?;
                store.put_image(job_id, &bytes, crate::state::now()).await?;
                Ok(())
            }
            None => tokio::fs::rename(staged, self.path(job_id))
                .await
                .map_err(ApiError::internal),
        }
    }

    pub async fn discard(&self, staged: &Path) {
        let _ = tokio::fs::remove_file(staged).await;
    }

    pub async fn read(&self, job_id: Uuid) -> Option<Vec<u8>> {
        match &self.database {
            Some(store) => store.image(job_id).await.ok().flatten(),
            None => tokio::fs::read(self.path(job_id)).await.ok(),
        }
    }

    pub async fn remove(&self, job_id: Uuid) {
        match &self.database {
            Some(store) => {
                if let Err(error) = store.delete_image(job_id).await {
                    tracing::warn!(%error, job = %job_id, "could not remove an image");
                }
            }
            None => {
                let _ = tokio::fs::remove_file(self.path(job_id)).await;
            }
        }
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
