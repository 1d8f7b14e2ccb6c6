//! Generated images: WebP files under the data directory, one per job, or rows of the
//! database when coordinators share PostgreSQL (a worker may upload to one coordinator and the
//! client download from another).
//!
//! An image is checked before it is stored: its header first (the size the job allows, before
//! any pixel is decoded), then a decode within memory limits fitted to that size. It is staged
//! under a temporary name first (always a local file: staging and committing happen in one
//! request) so that a refused submission never replaces an accepted image. Source images of
//! requests are checked from their header only: they go to workers as sent.

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
    let (width, height) = header_size(bytes, format)
        .map_err(|e| undecodable(format!("The image's header could not be read: {e}")))?;
    if !allowed.contains(&(width, height)) {
        let (w, h) = allowed.first().copied().unwrap_or_default();
        return Err(ImageRefusal::WrongSize(ApiError::new(
            Rc::ImageValidationFailed,
            format!("The image is {width}x{height} but the job asked for {w}x{h}."),
        )));
    }
    decode_within(bytes, format, width, height)
        .map_err(|e| undecodable(format!("The image could not be decoded: {e}")))
}

/// The width and height an image's header declares, without decoding its pixels.
pub fn header_size(bytes: &[u8], format: image::ImageFormat) -> image::ImageResult<(u32, u32)> {
    image::ImageReader::with_format(std::io::Cursor::new(bytes), format).into_dimensions()
}

/// Decodes an image whose header said `width` × `height`, allowing the decoder no larger an
/// image and no more memory than that size needs (the second wall behind the header check).
fn decode_within(
    bytes: &[u8],
    format: image::ImageFormat,
    width: u32,
    height: u32,
) -> image::ImageResult<()> {
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // Four bytes a pixel (RGBA), twice over for the decoder's own buffers, and 1 MiB besides.
    limits.max_alloc = Some(u64::from(width) * u64::from(height) * 8 + (1 << 20));
    reader.limits(limits);
    let decoded = reader.decode()?;
    if (decoded.width(), decoded.height()) != (width, height) {
        return Err(image::ImageError::Limits(
            image::error::LimitError::from_kind(image::error::LimitErrorKind::DimensionError),
        ));
    }
    Ok(())
}

/// The largest source image a request may carry, per side (the public horde's 3072 × 3072).
pub const MAX_SOURCE_SIDE: u32 = 3072;

/// Checks a request's source image or mask from its header only (it is handed to workers as
/// sent, never decoded here): a base64 WebP, PNG or JPEG of at most 3072 × 3072. URLs pass.
pub fn check_source_image(field: &str, text: &str) -> Result<(), ApiError> {
    use base64::Engine;
    if text.starts_with("http://") || text.starts_with("https://") {
        return Ok(());
    }
    let unreadable = || {
        ApiError::new(
            Rc::SourceImageUnreadable,
            format!("{field} is neither an http(s) URL nor a base64 WebP, PNG or JPEG image."),
        )
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| unreadable())?;
    let format = image::guess_format(&bytes).map_err(|_| unreadable())?;
    if !matches!(
        format,
        image::ImageFormat::WebP | image::ImageFormat::Png | image::ImageFormat::Jpeg
    ) {
        return Err(unreadable());
    }
    let (width, height) = source_header_size(&bytes, format).ok_or_else(unreadable)?;
    if width > MAX_SOURCE_SIDE || height > MAX_SOURCE_SIDE {
        return Err(ApiError::new(
            Rc::SourceImageResolutionExceeded,
            format!(
                "{field} is {width}x{height}; at most {MAX_SOURCE_SIDE}x{MAX_SOURCE_SIDE} is accepted."
            ),
        ));
    }
    Ok(())
}

/// A header's size; JPEG, which this build does not decode, is read from its frame header.
fn source_header_size(bytes: &[u8], format: image::ImageFormat) -> Option<(u32, u32)> {
    match format {
        image::ImageFormat::Jpeg => jpeg_frame_size(bytes),
        _ => header_size(bytes, format).ok(),
    }
}

/// The size in a JPEG's first start-of-frame marker (SOF0–SOF15 but DHT, JPG and DAC).
fn jpeg_frame_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let mut at = 2;
    while at + 4 <= bytes.len() {
        if bytes[at] != 0xFF {
            return None;
        }
        let marker = bytes[at + 1];
        let length = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        let is_frame = (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_frame {
            let frame = bytes.get(at + 5..at + 9)?;
            let height = u32::from(u16::from_be_bytes([frame[0], frame[1]]));
            let width = u32::from(u16::from_be_bytes([frame[2], frame[3]]));
            return Some((width, height));
        }
        at += 2 + length;
    }
    None
}
