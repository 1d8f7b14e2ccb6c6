//! Reading an image safely: its size from its header before any pixel is decoded, then a
//! decode that may not allocate more than that size needs. A decompression bomb (a few hundred
//! KB that claim 10 000 × 10 000 pixels) is refused from its header; one whose header lies is
//! stopped by the decoder's limits. The coordinator uses it for workers' results and requests'
//! source images, the worker for the source images it is given.

use image::{DynamicImage, ImageFormat, ImageResult};

/// The largest source image a request may carry, per side (the public horde's 3072 × 3072).
pub const MAX_SOURCE_SIDE: u32 = 3072;

/// Why a source image cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceImageError {
    /// Not a WebP, PNG or JPEG, or a header that cannot be read.
    Unreadable,
    /// Its header declares more than [`MAX_SOURCE_SIDE`] on a side.
    TooLarge { width: u32, height: u32 },
    /// The header was fine but the pixels do not decode (within the header's size).
    Undecodable(String),
}

impl std::fmt::Display for SourceImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceImageError::Unreadable => write!(f, "not a readable WebP, PNG or JPEG image"),
            SourceImageError::TooLarge { width, height } => write!(
                f,
                "{width}x{height}; at most {MAX_SOURCE_SIDE}x{MAX_SOURCE_SIDE} is accepted"
            ),
            SourceImageError::Undecodable(why) => write!(f, "the image does not decode: {why}"),
        }
    }
}

impl std::error::Error for SourceImageError {}

/// The width and height an image's header declares, without decoding its pixels; JPEG is read
/// from its frame header.
pub fn header_size(bytes: &[u8], format: ImageFormat) -> Option<(u32, u32)> {
    match format {
        ImageFormat::Jpeg => jpeg_frame_size(bytes),
        _ => image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
            .into_dimensions()
            .ok(),
    }
}

/// A source image's format and size from its header: a WebP, PNG or JPEG of at most
/// [`MAX_SOURCE_SIDE`] a side.
pub fn source_image_size(bytes: &[u8]) -> Result<(ImageFormat, (u32, u32)), SourceImageError> {
    let format = image::guess_format(bytes)
        .ok()
        .filter(|f| matches!(f, ImageFormat::WebP | ImageFormat::Png | ImageFormat::Jpeg))
        .ok_or(SourceImageError::Unreadable)?;
    let (width, height) = header_size(bytes, format).ok_or(SourceImageError::Unreadable)?;
    if width > MAX_SOURCE_SIDE || height > MAX_SOURCE_SIDE {
        return Err(SourceImageError::TooLarge { width, height });
    }
    Ok((format, (width, height)))
}

/// A source image decoded: sized from its header first ([`source_image_size`]), then decoded
/// within that size ([`decode_within`]).
pub fn decode_source_image(bytes: &[u8]) -> Result<DynamicImage, SourceImageError> {
    let (format, (width, height)) = source_image_size(bytes)?;
    decode_within(bytes, format, width, height)
        .map_err(|e| SourceImageError::Undecodable(e.to_string()))
}

/// Decodes an image whose header said `width` × `height`, allowing the decoder no larger an
/// image and no more memory than that size needs (the second wall behind the header check).
pub fn decode_within(
    bytes: &[u8],
    format: ImageFormat,
    width: u32,
    height: u32,
) -> ImageResult<DynamicImage> {
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
    Ok(decoded)
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

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, RgbImage};

    fn encoded(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// A PNG whose header claims `width` × `height` over a few bytes of data: a bomb's shape
    /// (the pixels would come from a tiny, highly compressed stream).
    fn png_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&[0; 3], 1, 1, image::ExtendedColorType::Rgb8)
            .unwrap();
        // IHDR's width and height sit at bytes 16..24; its CRC (over type and data, 12..29)
        // follows at 29..33.
        out[16..20].copy_from_slice(&width.to_be_bytes());
        out[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&out[12..29]);
        out[29..33].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// PNG's CRC-32 (IEEE), bit by bit.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn webp_png_and_jpeg_sources_decode_at_their_size() {
        for format in [ImageFormat::WebP, ImageFormat::Png, ImageFormat::Jpeg] {
            let decoded = decode_source_image(&encoded(format, 96, 64)).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (96, 64), "{format:?}");
        }
    }

    #[test]
    fn a_bomb_is_refused_from_its_header_and_a_liar_by_the_decoder() {
        assert_eq!(
            decode_source_image(&png_claiming(10_000, 10_000)),
            Err(SourceImageError::TooLarge {
                width: 10_000,
                height: 10_000
            })
        );
        let lying = decode_source_image(&png_claiming(3000, 3000));
        assert!(
            matches!(lying, Err(SourceImageError::Undecodable(_))),
            "{lying:?}"
        );
        assert_eq!(
            decode_source_image(b"GIF89a not ours"),
            Err(SourceImageError::Unreadable)
        );
    }

    #[test]
    fn a_jpeg_is_sized_from_its_frame_header() {
        let jpeg = encoded(ImageFormat::Jpeg, 120, 40);
        assert_eq!(header_size(&jpeg, ImageFormat::Jpeg), Some((120, 40)));
    }
}
