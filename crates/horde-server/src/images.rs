//! Generated images: WebP files under the data directory, one per job, or rows of the
//! database when coordinators share PostgreSQL (a worker may upload to one coordinator and the
//! client download from another).
//!
//! An image is checked before it is stored: its header first (the size the job allows, before
//! any pixel is decoded), then a decode within memory limits fitted to that size. It is staged
//! under a temporary name first (always a local file: staging and committing happen in one
//! request) so that a refused submission never replaces an accepted image. Requests' source
//! images are kept the same way, by request and role (`sources`).

use crate::error::ApiError;
use horde_api::Rc;
use horde_core::image_header;
use std::path::{Path, PathBuf};
use uuid::Uuid;

mod sources;
pub use sources::ORPHAN_GRACE_SECS;

#[derive(Clone)]
pub struct ImageStore {
    dir: PathBuf,
    /// Where committed images go when coordinators share a database; `None`: files in `dir`.
    database: Option<horde_store::Store>,
    /// When orphaned source images were last swept (unix seconds; 0: not yet).
    last_orphan_sweep: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl ImageStore {
    /// Images as files in `dir` (staging always happens there), committed into `database`
    /// when it is given.
    pub fn open(dir: &Path, database: Option<horde_store::Store>) -> std::io::Result<ImageStore> {
        std::fs::create_dir_all(dir)?;
        Ok(ImageStore {
            dir: dir.to_path_buf(),
            database,
            last_orphan_sweep: Default::default(),
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
                store.put_image(job_id, &bytes, crate::clock::now()).await?;
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

/// Why an image was refused.
pub enum ImageRefusal {
    /// Not an image we read, a header that makes no sense, or pixels that do not decode.
    Undecodable(ApiError),
    /// Its header gives a size other than the allowed ones (nothing was decoded).
    WrongSize(ApiError),
}

/// Checks a worker's image ([`verify_image`]) off the async runtime; gives the bytes back.
pub async fn check_image(
    bytes: Vec<u8>,
    allowed: Vec<(u32, u32)>,
) -> Result<Vec<u8>, ImageRefusal> {
    tokio::task::spawn_blocking(move || verify_image(&bytes, &allowed).map(|()| bytes))
        .await
        .map_err(|e| ImageRefusal::Undecodable(ApiError::internal(e)))?
}

/// A worker's image: a WebP or PNG whose header gives one of the `allowed` sizes, read before
/// any pixel is decoded (a decompression bomb claims a size it cannot have here), then decoded
/// whole within memory limits fitted to that size.
pub fn verify_image(bytes: &[u8], allowed: &[(u32, u32)]) -> Result<(), ImageRefusal> {
    let undecodable = |message: String| {
        ImageRefusal::Undecodable(ApiError::new(Rc::ImageValidationFailed, message))
    };
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| matches!(f, image::ImageFormat::WebP | image::ImageFormat::Png))
        .ok_or_else(|| undecodable("The image is not a WebP or PNG image.".into()))?;
    let (width, height) = image_header::header_size(bytes, format)
        .ok_or_else(|| undecodable("The image's header could not be read.".into()))?;
    if !allowed.contains(&(width, height)) {
        let (w, h) = allowed.first().copied().unwrap_or_default();
        return Err(ImageRefusal::WrongSize(ApiError::new(
            Rc::ImageValidationFailed,
            format!("The image is {width}x{height} but the job asked for {w}x{h}."),
        )));
    }
    image_header::decode_within(bytes, format, width, height)
        .map(drop)
        .map_err(|e| undecodable(format!("The image could not be decoded: {e}")))
}
