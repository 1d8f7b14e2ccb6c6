//! A job's source image and mask: fetched from where the pop says they are, then read as the
//! coordinator reads them.
//!
//! A pop names each one either as a signed, expiring download URL (to a worker that popped with
//! `r2_source`: our coordinator's `/api/v2/sources/…`, or the public horde's R2 bucket) or as
//! base64 WebP. Downloads are bounded by [`MAX_SOURCE_BYTES`] (cut off, not held whole) and
//! [`DOWNLOAD_TIMEOUT`], and retried when the failure is transient. Decoding goes through
//! `horde_core::image_header`: the size is read from the header and checked before a pixel is
//! decoded, and the decoder may not allocate beyond it. A source that cannot be fetched or read
//! faults the job with the reason; it never reaches the engine.
//!
//! Fetching is async and decoding is CPU work, so they are two steps: [`SourceOrder::fetch`] on
//! the job loop, [`SourceBytes::decode`] on the blocking thread that runs the engine.

use crate::job::Unrunnable;
use crate::retry::with_retries;
use base64::Engine;
use horde_client::{Client, ClientError};
use horde_core::image_header::{decode_source_image, MAX_SOURCE_SIDE};
use horde_diffusion::{SourceImage, SourceProcessing};
use std::time::Duration;

/// The most bytes a source image or mask may be: a 3072² RGBA image stored without compression
/// (PNG's worst case) with room to spare.
pub const MAX_SOURCE_BYTES: usize = 4 * (MAX_SOURCE_SIDE as usize).pow(2) + (16 << 20);

/// How long one download of a source may take.
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);

const DOWNLOAD_ATTEMPTS: u32 = 3;
const DOWNLOAD_BACKOFF_CAP: Duration = Duration::from_secs(5);

/// What a popped job says about its source, before anything is fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceOrder {
    /// The source image: a download URL or base64.
    pub image: String,
    /// The mask (white = repaint): a download URL or base64.
    pub mask: Option<String>,
    pub processing: SourceProcessing,
    /// `denoising_strength`, 0 to 1.
    pub denoising_strength: f64,
}

/// A source's bytes, fetched but not decoded.
#[derive(Debug, Clone)]
pub struct SourceBytes {
    image: Vec<u8>,
    mask: Option<Vec<u8>>,
}

impl SourceOrder {
    /// Downloads or base64-decodes the image and the mask.
    pub async fn fetch(&self, client: &Client) -> Result<SourceBytes, Unrunnable> {
        let image = fetch_one(client, "source image", &self.image).await?;
        let mask = match &self.mask {
            Some(mask) => Some(fetch_one(client, "source mask", mask).await?),
            None => None,
        };
        Ok(SourceBytes { image, mask })
    }
}

impl SourceBytes {
    /// The engine's source: the image as RGBA (its transparency is the mask when there is no
    /// mask) and the mask as luminance.
    pub fn decode(&self, order: &SourceOrder) -> Result<SourceImage, Unrunnable> {
        let image = decode("source image", &self.image)?.to_rgba8();
        let mask = match &self.mask {
            Some(bytes) => Some(decode("source mask", bytes)?.to_luma8()),
            None => None,
        };
        Ok(SourceImage {
            image,
            mask,
            processing: order.processing,
            denoising_strength: order.denoising_strength,
        })
    }
}

/// Reads an image as the coordinator does (size from the header first); the reason names `what`.
pub fn decode(what: &str, bytes: &[u8]) -> Result<image::DynamicImage, Unrunnable> {
    decode_source_image(bytes).map_err(|e| Unrunnable(format!("the {what} is unusable: {e}")))
}

/// Whether a pop's source field is a download URL rather than base64.
fn is_url(reference: &str) -> bool {
    reference.starts_with("https://") || reference.starts_with("http://")
}

/// Downloads (bounded, retried) or base64-decodes one image reference; the reason names `what`.
pub async fn fetch_one(
    client: &Client,
    what: &str,
    reference: &str,
) -> Result<Vec<u8>, Unrunnable> {
    if is_url(reference) {
        return with_retries(DOWNLOAD_ATTEMPTS, DOWNLOAD_BACKOFF_CAP, || {
            client.download_at_most(reference, MAX_SOURCE_BYTES, DOWNLOAD_TIMEOUT)
        })
        .await
        .map_err(|e| {
            Unrunnable(format!(
                "the {what} could not be downloaded: {}",
                without_url(e)
            ))
        });
    }
    if reference.len() > MAX_SOURCE_BYTES / 3 * 4 + 4 {
        return Err(Unrunnable(format!(
            "the {what} is larger than {MAX_SOURCE_BYTES} bytes"
        )));
    }
    base64::engine::general_purpose::STANDARD
        .decode(reference.trim())
        .map_err(|e| {
            Unrunnable(format!(
                "the {what} is neither a download URL nor base64: {e}"
            ))
        })
}

/// An error's description without the URL: a signed URL is a credential for the source, and the
/// reason of a fault reaches the requester and the logs.
fn without_url(error: ClientError) -> String {
    match error {
        ClientError::Transport(e) => ClientError::Transport(e.without_url()).to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, RgbaImage};
    use std::io::Cursor;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([x as u8, y as u8, 9, if x < width / 2 { 0 } else { 255 }])
        });
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        bytes
    }

    fn order(mask: Option<String>) -> SourceOrder {
        SourceOrder {
            image: String::new(),
            mask,
            processing: SourceProcessing::Inpainting,
            denoising_strength: 0.6,
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Why `order`'s base64 source, fetched, does not decode.
    async fn why_undecodable(order: &SourceOrder) -> Unrunnable {
        let client = Client::new("http://127.0.0.1:9", String::new());
        let bytes = order.fetch(&client).await.unwrap();
        bytes.decode(order).unwrap_err()
    }

    #[tokio::test]
    async fn base64_sources_decode_with_their_transparency_and_the_mask_as_luminance() {
        let client = Client::new("http://127.0.0.1:9", String::new());
        let mut order = order(Some(b64(&png(8, 4))));
        order.image = b64(&png(16, 8));
        let bytes = order.fetch(&client).await.unwrap();
        let source = bytes.decode(&order).unwrap();
        assert_eq!(source.image.dimensions(), (16, 8));
        assert_eq!(source.image.get_pixel(3, 2).0, [3, 2, 9, 0]);
        assert_eq!(source.image.get_pixel(12, 2).0[3], 255);
        let mask = source.mask.unwrap();
        assert_eq!(mask.dimensions(), (8, 4));
        assert_eq!(source.processing, SourceProcessing::Inpainting);
        assert_eq!(source.denoising_strength, 0.6);
    }

    #[tokio::test]
    async fn an_unreadable_source_faults_with_the_reason() {
        let client = Client::new("http://127.0.0.1:9", String::new());
        let mut order = order(None);
        order.image = "not base64 at all!".into();
        let reason = order.fetch(&client).await.unwrap_err();
        assert!(
            reason.0.contains("neither a download URL nor base64"),
            "{reason}"
        );
        order.image = b64(b"GIF89a and then some");
        let reason = why_undecodable(&order).await;
        assert!(
            reason
                .0
                .contains("source image is unusable: not a readable"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_source_larger_than_the_limit_is_refused_from_its_header() {
        // 4000 × 1 pixels: a few kilobytes, but wider than a source may be.
        let header = png(4000, 1);
        let mut order = order(None);
        order.image = b64(&header);
        let reason = why_undecodable(&order).await;
        assert!(reason.0.contains("4000x1; at most 3072x3072"), "{reason}");
    }

    /// A server on a real port that answers every connection with `head` and then `body_len`
    /// bytes; returns its URL.
    async fn serve_once(head: &'static str, body_len: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/source", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(head.as_bytes()).await;
                let chunk = vec![7u8; 1 << 20];
                let mut sent = 0;
                while sent < body_len {
                    let n = chunk.len().min(body_len - sent);
                    if socket.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
            }
        });
        url
    }

    #[tokio::test]
    async fn downloads_longer_than_the_limit_are_cut_off() {
        let client = Client::new("http://127.0.0.1:9", String::new());
        let mut order = order(None);
        // One that says how long it is, and one that does not.
        let declared = "HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n";
        let undeclared = "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n";
        for (head, len) in [(declared, 1024), (undeclared, MAX_SOURCE_BYTES + (1 << 20))] {
            order.image = serve_once(head, len).await;
            let reason = order.fetch(&client).await.unwrap_err();
            assert!(
                reason
                    .0
                    .contains(&format!("larger than {MAX_SOURCE_BYTES} bytes")),
                "{reason}"
            );
        }
        // Within the limit, the bytes come back.
        order.image = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 3000\r\n\r\n", 3000).await;
        assert_eq!(order.fetch(&client).await.unwrap().image, vec![7u8; 3000]);
    }

    #[tokio::test]
    async fn a_download_that_fails_names_no_url() {
        // Nothing listens on port 9 of this machine: the download fails at connect.
        let client = Client::new("http://127.0.0.1:9", String::new());
        let mut order = order(None);
        order.image =
            "http://127.0.0.1:9/api/v2/sources/r/source_image?expires=1&sig=secret".into();
        let reason = order.fetch(&client).await.unwrap_err();
        assert!(
            reason
                .0
                .starts_with("the source image could not be downloaded"),
            "{reason}"
        );
        assert!(!reason.0.contains("secret"), "{reason}");
    }
}
