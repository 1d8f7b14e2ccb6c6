//! A request's source images (`source_image`, `source_mask`, `extra_source_images`): decoded,
//! checked and normalised to WebP before the request is accepted, so that what is stored and
//! handed to workers is an image the coordinator has read whole, not whatever the client sent.
//!
//! Why here and not only at the worker: a mask of another size than its image, or an
//! inpainting request whose image has no transparency and no mask, can never run; refusing it
//! at acceptance (with the public horde's `rc`) costs the requester nothing, where a worker's
//! fault would cost them a wait. Why WebP: it is what the public horde uploads to its source
//! bucket and what workers expect; ours is lossless (exact, and no libwebp in the
//! coordinator), so a mask keeps its hard edges.
//!
//! Why markers: once stored (keyed by request id and [`SourceRole`]), a source leaves the
//! request's JSON body, which every coordinator keeps in memory; the body keeps a short
//! [`marker`] in its place (the content's hash, so two batch members share a pass only when
//! their sources are the same). A client cannot send a marker: it is neither a URL nor base64.
//! Sources given as http(s) URLs are not fetched (the coordinator makes no request a client
//! chooses) and go to workers as sent.

use super::RequestRefusal;
use crate::image_header::{self, SourceImageError};
use base64::Engine;
use horde_api::image::{ImageRequest, SourceProcessing};
use image::{DynamicImage, GenericImageView};
use sha2::{Digest, Sha256};

/// What a stored body holds in place of a source image: this prefix, the role, the content's
/// SHA-256 (`horde-source:source_image:ab12…`).
pub const MARKER_PREFIX: &str = "horde-source:";

/// Which of a request's sources a blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceRole {
    SourceImage,
    SourceMask,
    /// The extra source image at this index of `extra_source_images`.
    Extra(usize),
}

impl SourceRole {
    /// The name it is stored and downloaded under: `source_image`, `source_mask`, `extra_N`.
    pub fn name(self) -> String {
        match self {
            SourceRole::SourceImage => "source_image".into(),
            SourceRole::SourceMask => "source_mask".into(),
            SourceRole::Extra(i) => format!("extra_{i}"),
        }
    }

    /// The role a [`SourceRole::name`] names; `None` for anything else (`extra_` indexes are
    /// bounded by [`horde_api::image::MAX_EXTRA_SOURCE_IMAGES`]).
    pub fn parse(name: &str) -> Option<SourceRole> {
        match name {
            "source_image" => Some(SourceRole::SourceImage),
            "source_mask" => Some(SourceRole::SourceMask),
            _ => {
                let index: usize = name.strip_prefix("extra_")?.parse().ok()?;
                (index < horde_api::image::MAX_EXTRA_SOURCE_IMAGES
                    && name == format!("extra_{index}"))
                .then_some(SourceRole::Extra(index))
            }
        }
    }

    /// The field of the request it comes from, as refusals name it.
    fn field(self) -> &'static str {
        match self {
            SourceRole::SourceImage => "source_image",
            SourceRole::SourceMask => "source_mask",
            SourceRole::Extra(_) => "extra_source_images",
        }
    }
}

/// A source decoded, checked and encoded as lossless WebP, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedSource {
    pub role: SourceRole,
    pub webp: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// The text a stored body keeps in place of the source `prepared`.
pub fn marker(prepared: &PreparedSource) -> String {
    let digest = hex::encode(Sha256::digest(&prepared.webp));
    format!("{MARKER_PREFIX}{}:{digest}", prepared.role.name())
}

/// Whether `text` (a body's source field) is a [`marker`] of a stored source.
pub fn is_marker(text: &str) -> bool {
    text.starts_with(MARKER_PREFIX)
}

/// The base64 sources of `body` (URLs are left alone), each decoded within
/// [`image_header::MAX_SOURCE_SIDE`] (its header is read first), with the rules only the pixels
/// can answer: a mask the size of its image, and an inpainting image without a mask that has an
/// alpha channel to paint into. Each comes back as lossless WebP. Runs after
/// [`super::check`], which refused malformed fields already; this decodes, so the server calls
/// it off its async threads.
pub fn prepare_sources(body: &ImageRequest) -> Result<Vec<PreparedSource>, RequestRefusal> {
    let image = decoded(SourceRole::SourceImage, body.source_image.as_deref())?;
    let mask = decoded(SourceRole::SourceMask, body.source_mask.as_deref())?;
    if let (Some(image), Some(mask)) = (&image, &mask) {
        if image.dimensions() != mask.dimensions() {
            return Err(RequestRefusal::SourceMaskSizeMismatch {
                image: image.dimensions(),
                mask: mask.dimensions(),
            });
        }
    }
    let url_mask = body.source_mask.as_deref().is_some_and(is_url);
    if body.source_processing == SourceProcessing::Inpainting && mask.is_none() && !url_mask {
        if let Some(image) = &image {
            if !image.color().has_alpha() {
                return Err(RequestRefusal::InpaintingMissingMask);
            }
        }
    }
    let mut prepared = Vec::new();
    for (role, decoded) in [
        (SourceRole::SourceImage, image),
        (SourceRole::SourceMask, mask),
    ] {
        if let Some(decoded) = decoded {
            prepared.push(encode(role, &decoded)?);
        }
    }
    for (i, extra) in body.extra_source_images.iter().enumerate() {
        let role = SourceRole::Extra(i);
        if let Some(decoded) = decoded(role, Some(&extra.image))? {
            prepared.push(encode(role, &decoded)?);
        }
    }
    Ok(prepared)
}

/// Puts the [`marker`] of each of `prepared` in its place in `body`.
pub fn replace_with_markers(body: &mut ImageRequest, prepared: &[PreparedSource]) {
    for source in prepared {
        let text = marker(source);
        match source.role {
            SourceRole::SourceImage => body.source_image = Some(text),
            SourceRole::SourceMask => body.source_mask = Some(text),
            SourceRole::Extra(i) => {
                if let Some(extra) = body.extra_source_images.get_mut(i) {
                    extra.image = text;
                }
            }
        }
    }
}

/// One base64 source image (an interrogation's) decoded, checked and encoded as WebP as
/// [`prepare_sources`] does; `None` for a URL, which is not fetched.
pub fn prepare_source_image(text: &str) -> Result<Option<PreparedSource>, RequestRefusal> {
    match decoded(SourceRole::SourceImage, Some(text))? {
        Some(image) => encode(SourceRole::SourceImage, &image).map(Some),
        None => Ok(None),
    }
}

fn is_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

/// A base64 source decoded (`None` for no source or a URL).
fn decoded(role: SourceRole, text: Option<&str>) -> Result<Option<DynamicImage>, RequestRefusal> {
    let Some(text) = text.filter(|t| !is_url(t)) else {
        return Ok(None);
    };
    let field = role.field();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| RequestRefusal::SourceImageUnreadable { field })?;
    match image_header::decode_source_image(&bytes) {
        Ok(image) => Ok(Some(image)),
        Err(SourceImageError::TooLarge { width, height }) => {
            Err(RequestRefusal::SourceImageTooLarge {
                field,
                width,
                height,
            })
        }
        Err(_) => Err(RequestRefusal::SourceImageUnreadable { field }),
    }
}

/// Lossless WebP of 8-bit RGB, or RGBA when the source has an alpha channel.
fn encode(role: SourceRole, image: &DynamicImage) -> Result<PreparedSource, RequestRefusal> {
    let (width, height) = image.dimensions();
    let mut webp = Vec::new();
    let encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut webp);
    let written = if image.color().has_alpha() {
        image.to_rgba8().write_with_encoder(encoder)
    } else {
        image.to_rgb8().write_with_encoder(encoder)
    };
    written.map_err(|_| RequestRefusal::SourceImageUnreadable {
        field: role.field(),
    })?;
    Ok(PreparedSource {
        role,
        webp,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Refusal;
    use horde_api::image::ExtraSourceImage;
    use horde_api::Rc;
    use image::{ImageFormat, RgbImage, RgbaImage};

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn rgb(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn rgba_png(width: u32, height: u32) -> Vec<u8> {
        let image = RgbaImage::from_fn(width, height, |x, _| image::Rgba([1, 2, 3, x as u8]));
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn with_sources(image: Option<Vec<u8>>, mask: Option<Vec<u8>>) -> ImageRequest {
        let mut body = ImageRequest::new("a cat");
        body.source_image = image.as_deref().map(b64);
        body.source_mask = mask.as_deref().map(b64);
        body
    }

    #[test]
    fn png_jpeg_and_webp_sources_become_lossless_webp_of_their_size() {
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            let body = with_sources(Some(rgb(format, 96, 64)), None);
            let prepared = prepare_sources(&body).unwrap();
            assert_eq!(prepared.len(), 1, "{format:?}");
            let source = &prepared[0];
            assert_eq!(source.role, SourceRole::SourceImage);
            assert_eq!(
                image::guess_format(&source.webp).unwrap(),
                ImageFormat::WebP
            );
            let back = image::load_from_memory(&source.webp).unwrap();
            assert_eq!(back.dimensions(), (96, 64));
        }
        // Lossless: a PNG comes back pixel for pixel.
        let png = rgb(ImageFormat::Png, 40, 30);
        let prepared = prepare_sources(&with_sources(Some(png.clone()), None)).unwrap();
        let back = image::load_from_memory(&prepared[0].webp)
            .unwrap()
            .to_rgb8();
        assert_eq!(back, image::load_from_memory(&png).unwrap().to_rgb8());
    }

    #[test]
    fn a_lossless_webp_made_by_pillow_is_read() {
        // Image.new("RGB", (64, 64), (200, 120, 40)) saved lossless: the source image
        // compat/schemathesis/hooks.py sends.
        let pillow = "UklGRiQAAABXRUJQVlA4TBcAAAAvP8APAAdQvCIXpf8BICH8f69F9D/1AwA=";
        let mut body = ImageRequest::new("a cat");
        body.source_image = Some(pillow.into());
        body.source_mask = Some(pillow.into());
        let prepared = prepare_sources(&body).unwrap();
        let back = image::load_from_memory(&prepared[0].webp)
            .unwrap()
            .to_rgb8();
        assert_eq!(back.dimensions(), (64, 64));
        assert_eq!(back.get_pixel(10, 50).0, [200, 120, 40]);
    }

    #[test]
    fn a_mask_of_another_size_is_refused_and_one_of_the_same_size_kept() {
        let body = with_sources(
            Some(rgb(ImageFormat::Png, 96, 64)),
            Some(rgb(ImageFormat::Png, 64, 64)),
        );
        let refusal = prepare_sources(&body).unwrap_err();
        assert_eq!(
            refusal,
            RequestRefusal::SourceMaskSizeMismatch {
                image: (96, 64),
                mask: (64, 64)
            }
        );
        assert_eq!(refusal.rc(), Rc::ValidationError);
        assert!(refusal.message().contains("64x64"), "{}", refusal.message());
        let body = with_sources(
            Some(rgb(ImageFormat::Png, 96, 64)),
            Some(rgb(ImageFormat::WebP, 96, 64)),
        );
        let roles: Vec<SourceRole> = prepare_sources(&body)
            .unwrap()
            .iter()
            .map(|p| p.role)
            .collect();
        assert_eq!(roles, [SourceRole::SourceImage, SourceRole::SourceMask]);
    }

    #[test]
    fn inpainting_without_a_mask_needs_an_alpha_channel() {
        let mut body = with_sources(Some(rgb(ImageFormat::Jpeg, 64, 64)), None);
        body.source_processing = SourceProcessing::Inpainting;
        let refusal = prepare_sources(&body).unwrap_err();
        assert_eq!(refusal, RequestRefusal::InpaintingMissingMask);
        assert_eq!(refusal.rc(), Rc::InpaintingMissingMask);
        body.source_image = Some(b64(&rgba_png(64, 64)));
        let prepared = prepare_sources(&body).unwrap();
        let back = image::load_from_memory(&prepared[0].webp).unwrap();
        assert!(back.color().has_alpha(), "the alpha channel is kept");
        // Outpainting and img2img need no alpha; a mask makes it unnecessary.
        body.source_image = Some(b64(&rgb(ImageFormat::Png, 64, 64)));
        body.source_processing = SourceProcessing::Outpainting;
        assert!(prepare_sources(&body).is_ok());
        body.source_processing = SourceProcessing::Inpainting;
        body.source_mask = Some(b64(&rgb(ImageFormat::Png, 64, 64)));
        assert!(prepare_sources(&body).is_ok());
    }

    #[test]
    fn unreadable_and_oversized_sources_are_refused_with_their_field() {
        let mut body = with_sources(Some(b"not an image".to_vec()), None);
        assert_eq!(
            prepare_sources(&body),
            Err(RequestRefusal::SourceImageUnreadable {
                field: "source_image"
            })
        );
        body.source_image = Some(b64(&rgb(ImageFormat::Png, 3073, 8)));
        let refusal = prepare_sources(&body).unwrap_err();
        assert_eq!(refusal.rc(), Rc::SourceImageResolutionExceeded);
        body.source_image = Some(b64(&rgb(ImageFormat::Png, 8, 8)));
        body.extra_source_images = vec![ExtraSourceImage {
            image: b64(b"GIF89a"),
            strength: 1.0,
        }];
        assert_eq!(
            prepare_sources(&body),
            Err(RequestRefusal::SourceImageUnreadable {
                field: "extra_source_images"
            })
        );
    }

    #[test]
    fn urls_pass_untouched_and_markers_replace_what_was_stored() {
        let mut body = with_sources(Some(rgb(ImageFormat::Png, 16, 16)), None);
        body.source_mask = Some("https://example.com/mask.png".into());
        body.source_processing = SourceProcessing::Inpainting;
        body.extra_source_images = vec![
            ExtraSourceImage {
                image: "https://example.com/a.png".into(),
                strength: 1.0,
            },
            ExtraSourceImage {
                image: b64(&rgb(ImageFormat::Jpeg, 8, 8)),
                strength: 0.5,
            },
        ];
        let prepared = prepare_sources(&body).unwrap();
        let roles: Vec<SourceRole> = prepared.iter().map(|p| p.role).collect();
        assert_eq!(roles, [SourceRole::SourceImage, SourceRole::Extra(1)]);
        replace_with_markers(&mut body, &prepared);
        let image_marker = body.source_image.clone().unwrap();
        assert!(is_marker(&image_marker) && image_marker.contains(":source_image:"));
        assert_eq!(
            body.source_mask.as_deref(),
            Some("https://example.com/mask.png")
        );
        assert_eq!(
            body.extra_source_images[0].image,
            "https://example.com/a.png"
        );
        assert!(is_marker(&body.extra_source_images[1].image));
        assert_eq!(body.extra_source_images[1].strength, 0.5);
        // A marker is not a source a client may send.
        assert!(super::super::check_source_image("source_image", &image_marker).is_err());
    }

    #[test]
    fn roles_round_trip_through_their_names_and_nothing_else_parses() {
        for role in [
            SourceRole::SourceImage,
            SourceRole::SourceMask,
            SourceRole::Extra(0),
            SourceRole::Extra(4),
        ] {
            assert_eq!(SourceRole::parse(&role.name()), Some(role));
        }
        for name in ["extra_5", "extra_01", "extra_", "extra_-1", "mask", "../x"] {
            assert_eq!(SourceRole::parse(name), None, "{name}");
        }
    }
}
