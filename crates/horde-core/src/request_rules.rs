//! The rules an image request must pass beyond its schema's bounds before it is queued, each
//! refusal with the public horde's `rc` and message, and the normalisation of an accepted
//! request (the server's defaults written in, so a worker sees exactly what ran).
//!
//! The schema's own bounds (`ImageRequest::validate`) are checked first by the server; what
//! depends on the live horde (models known, upfront kudos, quotas, concurrency) is checked
//! after, with what it needs to know.

use crate::accounts::User;
use crate::image_header::{self, SourceImageError, MAX_SOURCE_SIDE};
use crate::seed::parse_seed;
use crate::webhook::{self, WebhookPolicy, WebhookRefusal};
use crate::Refusal;
use base64::Engine;
use horde_api::image::{
    ImageRequest, SeedInput, SourceProcessing, MAX_EXTRA_SOURCE_IMAGES, POST_PROCESSORS, UPSCALERS,
};
use horde_api::Rc;

mod networks;
mod sources;
pub use networks::{check_networks, NetworkRefusal};
pub use sources::{
    is_marker, marker, prepare_source_image, prepare_sources, replace_with_markers, PreparedSource,
    SourceRole, MARKER_PREFIX,
};

/// A request names at most this many workers to run it (the public horde's cut).
pub const MAX_NAMED_WORKERS: usize = 5;

/// Why an image request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestRefusal {
    /// `cfg_scale` has more than two decimals.
    CfgScaleDecimals,
    /// The positive prompt is empty.
    EmptyPrompt,
    /// The prompt is longer than the horde accepts.
    PromptTooLong {
        chars: usize,
        max: usize,
    },
    TooManyExtraSourceImages,
    /// Extra source images without `source_processing` "remix".
    ExtraSourceImagesWithoutRemix,
    /// A source image, mask or extra image that is not a URL or a readable image.
    SourceImageUnreadable {
        field: &'static str,
    },
    /// A source image, mask or extra image larger than [`MAX_SOURCE_SIDE`] a side.
    SourceImageTooLarge {
        field: &'static str,
        width: u32,
        height: u32,
    },
    SourceMaskWithoutImage,
    /// A mask whose size is not its source image's (width, height each).
    SourceMaskSizeMismatch {
        image: (u32, u32),
        mask: (u32, u32),
    },
    /// Inpainting with neither a mask nor an alpha channel in the source image.
    InpaintingMissingMask,
    /// A webhook URL refused by [`webhook::check_url`] (not a URL, not `https://`, or a
    /// literal internal address).
    Webhook(WebhookRefusal),
    TooManyUpscalers,
    /// A post-processor named among the models.
    PostProcessorAsModel(String),
    /// `disable_batching` for more than one image, by an untrusted user.
    UnbatchedNeedsTrust,
    /// More than one extra source image, by an untrusted user.
    ExtraSourceImagesNeedTrust,
    /// A LoRA, textual-inversion or ControlNet rule ([`check_networks`]).
    Network(NetworkRefusal),
}

impl Refusal for RequestRefusal {
    fn rc(&self) -> Rc {
        match self {
            RequestRefusal::CfgScaleDecimals => Rc::BadCFGDecimals,
            RequestRefusal::EmptyPrompt => Rc::MissingPrompt,
            RequestRefusal::PromptTooLong { .. } => Rc::InvalidPromptSize,
            RequestRefusal::TooManyExtraSourceImages => Rc::TooManyExtraSourceImages,
            RequestRefusal::ExtraSourceImagesWithoutRemix => Rc::InvalidExtraSourceImages,
            RequestRefusal::SourceImageUnreadable { .. } => Rc::SourceImageUnreadable,
            RequestRefusal::SourceImageTooLarge { .. } => Rc::SourceImageResolutionExceeded,
            RequestRefusal::SourceMaskWithoutImage => Rc::SourceMaskUnnecessary,
            RequestRefusal::SourceMaskSizeMismatch { .. } => Rc::ValidationError,
            RequestRefusal::InpaintingMissingMask => Rc::InpaintingMissingMask,
            RequestRefusal::Webhook(refusal) => refusal.rc(),
            RequestRefusal::TooManyUpscalers => Rc::TooManyUpscalers,
            RequestRefusal::PostProcessorAsModel(_) => Rc::UnexpectedModelName,
            RequestRefusal::UnbatchedNeedsTrust => Rc::RequiresTrust,
            RequestRefusal::ExtraSourceImagesNeedTrust => Rc::MoreThanMinExtraSourceImage,
            RequestRefusal::Network(refusal) => refusal.rc(),
        }
    }

    fn message(&self) -> String {
        match self {
            RequestRefusal::CfgScaleDecimals => {
                "cfg_scale must be rounded to 2 decimal places".into()
            }
            RequestRefusal::EmptyPrompt => "You cannot specify an empty prompt.".into(),
            RequestRefusal::PromptTooLong { chars, max } => {
                format!("The prompt is {chars} characters long; this horde accepts at most {max}.")
            }
            RequestRefusal::TooManyExtraSourceImages => format!(
                "You can send a maximum of {MAX_EXTRA_SOURCE_IMAGES} extra source images."
            ),
            RequestRefusal::ExtraSourceImagesWithoutRemix => {
                "extra_source_images are only used with source_processing \"remix\".".into()
            }
            RequestRefusal::SourceImageUnreadable { field } => format!(
                "{field} is neither an http(s) URL nor a base64 WebP, PNG or JPEG image."
            ),
            RequestRefusal::SourceImageTooLarge {
                field,
                width,
                height,
            } => format!(
                "{field} is {width}x{height}; at most {MAX_SOURCE_SIDE}x{MAX_SOURCE_SIDE} is accepted."
            ),
            RequestRefusal::SourceMaskWithoutImage => {
                "Cannot send a source mask without a source image.".into()
            }
            RequestRefusal::SourceMaskSizeMismatch { image, mask } => format!(
                "source_mask is {}x{} but source_image is {}x{}; a mask must be the size of its image.",
                mask.0, mask.1, image.0, image.1
            ),
            RequestRefusal::InpaintingMissingMask => {
                "Inpainting needs a source_mask, or a source_image with an alpha channel (its transparent pixels are painted).".into()
            }
            RequestRefusal::Webhook(refusal) => refusal.message(),
            RequestRefusal::TooManyUpscalers => {
                "Cannot use more than one upscaler at a time.".into()
            }
            RequestRefusal::PostProcessorAsModel(model) => {
                format!("'{model}' is a post-processor, not a model.")
            }
            RequestRefusal::UnbatchedNeedsTrust => {
                "Only trusted users may disable batching for more than one image.".into()
            }
            RequestRefusal::ExtraSourceImagesNeedTrust => {
                "Only trusted users may send more than one extra source image.".into()
            }
            RequestRefusal::Network(refusal) => refusal.message(),
        }
    }
}

/// The rules of one request by `requester`, in the order the public horde checks them;
/// `max_prompt_chars` is the operator's limit. Webhook URLs are held to the strictest
/// [`WebhookPolicy`] (the default); [`check_with_webhook_policy`] takes the operator's.
pub fn check(
    body: &ImageRequest,
    requester: &User,
    max_prompt_chars: usize,
) -> Result<(), RequestRefusal> {
    check_with_webhook_policy(body, requester, max_prompt_chars, &WebhookPolicy::default())
}

/// [`check`], with the operator's webhook policy. The webhook's URL is checked without DNS
/// here; the server resolves its host and calls [`webhook::check_resolved`] after.
pub fn check_with_webhook_policy(
    body: &ImageRequest,
    requester: &User,
    max_prompt_chars: usize,
    webhook_policy: &WebhookPolicy,
) -> Result<(), RequestRefusal> {
    check_shape(body, webhook_policy)?;
    if body.disable_batching && body.params.n > 1 && !requester.trusted {
        return Err(RequestRefusal::UnbatchedNeedsTrust);
    }
    if body.extra_source_images.len() > 1 && !requester.trusted {
        return Err(RequestRefusal::ExtraSourceImagesNeedTrust);
    }
    let chars = body.prompt.chars().count();
    if chars > max_prompt_chars {
        return Err(RequestRefusal::PromptTooLong {
            chars,
            max: max_prompt_chars,
        });
    }
    Ok(())
}

/// The rules that hold whoever asks.
fn check_shape(body: &ImageRequest, webhook_policy: &WebhookPolicy) -> Result<(), RequestRefusal> {
    if !body.params.cfg_scale_has_two_decimals_at_most() {
        return Err(RequestRefusal::CfgScaleDecimals);
    }
    if body.prompt_parts().0.trim().is_empty() {
        return Err(RequestRefusal::EmptyPrompt);
    }
    if body.extra_source_images.len() > MAX_EXTRA_SOURCE_IMAGES {
        return Err(RequestRefusal::TooManyExtraSourceImages);
    }
    if !body.extra_source_images.is_empty() && body.source_processing != SourceProcessing::Remix {
        return Err(RequestRefusal::ExtraSourceImagesWithoutRemix);
    }
    for (field, image) in [
        ("source_image", &body.source_image),
        ("source_mask", &body.source_mask),
    ] {
        if let Some(image) = image {
            check_source_image(field, image)?;
        }
    }
    for extra in &body.extra_source_images {
        check_source_image("extra_source_images", &extra.image)?;
    }
    if body.source_mask.is_some() && body.source_image.is_none() {
        return Err(RequestRefusal::SourceMaskWithoutImage);
    }
    if let Some(hook) = &body.webhook {
        webhook::check_url(hook, webhook_policy).map_err(RequestRefusal::Webhook)?;
    }
    let upscalers = body
        .params
        .post_processing
        .iter()
        .filter(|p| UPSCALERS.contains(&p.as_str()))
        .count();
    if upscalers > 1 {
        return Err(RequestRefusal::TooManyUpscalers);
    }
    if let Some(model) = body
        .models
        .iter()
        .find(|m| POST_PROCESSORS.contains(&m.as_str()))
    {
        return Err(RequestRefusal::PostProcessorAsModel(model.clone()));
    }
    Ok(())
}

/// A request's source image or mask, checked from its header only: a base64 WebP, PNG or JPEG
/// of at most [`MAX_SOURCE_SIDE`] a side (`image_header`, which the worker also reads them
/// with). URLs pass. The pixels are decoded after, once every cheap rule has passed
/// ([`prepare_sources`]).
pub fn check_source_image(field: &'static str, text: &str) -> Result<(), RequestRefusal> {
    if text.starts_with("http://") || text.starts_with("https://") {
        return Ok(());
    }
    let unreadable = RequestRefusal::SourceImageUnreadable { field };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| unreadable.clone())?;
    match image_header::source_image_size(&bytes) {
        Ok(_) => Ok(()),
        Err(SourceImageError::TooLarge { width, height }) => {
            Err(RequestRefusal::SourceImageTooLarge {
                field,
                width,
                height,
            })
        }
        Err(_) => Err(unreadable),
    }
}

/// The accepted body with the server's defaults written in (steps; at most
/// [`MAX_NAMED_WORKERS`] workers named), and for an education account the public horde's
/// overrides (safe images from trusted workers, never shared); with the base seed the
/// request's seed text or number comes to.
pub fn normalise(mut body: ImageRequest, requester: &User) -> (ImageRequest, Option<u64>) {
    body.params.steps = Some(body.params.effective_steps());
    let base_seed = body.params.seed.as_ref().map(|s| match s {
        SeedInput::Text(t) => parse_seed(t),
        SeedInput::Number(n) => n % (1u64 << 32),
    });
    body.workers.truncate(MAX_NAMED_WORKERS);
    if requester.education {
        (
            body.nsfw,
            body.censor_nsfw,
            body.trusted_workers,
            body.shared,
        ) = (false, true, true, false);
    }
    (body, base_seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(trusted: bool) -> User {
        User {
            id: 7,
            trusted,
            ..User::default()
        }
    }

    fn request(prompt: &str) -> ImageRequest {
        ImageRequest::new(prompt)
    }

    #[test]
    fn each_rule_refuses_with_the_public_hordes_code() {
        let anyone = user(false);
        let refused = |body: &ImageRequest| check(body, &anyone, 100).unwrap_err().rc();
        let mut cfg = request("a cat");
        cfg.params.cfg_scale = 7.125;
        assert_eq!(refused(&cfg), Rc::BadCFGDecimals);
        assert_eq!(refused(&request("  ### ugly")), Rc::MissingPrompt);
        assert_eq!(refused(&request(&"x".repeat(101))), Rc::InvalidPromptSize);
        let mut hook = request("a cat");
        hook.webhook = Some("http://example.com".into());
        assert_eq!(refused(&hook), Rc::InvalidWebhook);
        let mut upscalers = request("a cat");
        upscalers.params.post_processing = vec![UPSCALERS[0].into(), UPSCALERS[1].into()];
        assert_eq!(refused(&upscalers), Rc::TooManyUpscalers);
        let mut model = request("a cat");
        model.models = vec![POST_PROCESSORS[0].into()];
        assert_eq!(refused(&model), Rc::UnexpectedModelName);
        let mut mask = request("a cat");
        mask.source_mask = Some("https://example.com/mask.png".into());
        assert_eq!(refused(&mask), Rc::SourceMaskUnnecessary);
        let mut garbage = request("a cat");
        garbage.source_image = Some("not base64 at all!".into());
        assert_eq!(refused(&garbage), Rc::SourceImageUnreadable);
        assert!(check(&request("a cat"), &anyone, 100).is_ok());
    }

    #[test]
    fn webhooks_are_checked_under_the_operators_policy() {
        let anyone = user(false);
        let mut body = request("a cat");
        body.webhook = Some("http://127.0.0.1:9000/hook".into());
        let refusal = check(&body, &anyone, 100).unwrap_err();
        assert_eq!(
            refusal,
            RequestRefusal::Webhook(WebhookRefusal::InsecureScheme)
        );
        assert_eq!(refusal.message(), WebhookRefusal::InsecureScheme.message());
        let http_only = WebhookPolicy {
            allow_http: true,
            ..WebhookPolicy::default()
        };
        let loopback = WebhookRefusal::InternalAddress {
            address: [127, 0, 0, 1].into(),
        };
        assert_eq!(
            check_with_webhook_policy(&body, &anyone, 100, &http_only),
            Err(RequestRefusal::Webhook(loopback))
        );
        let loopback_tests = WebhookPolicy {
            allow_http: true,
            allow_private_addresses: true,
        };
        assert!(check_with_webhook_policy(&body, &anyone, 100, &loopback_tests).is_ok());
        body.webhook = Some("https://hooks.example.com/horde".into());
        assert!(check(&body, &anyone, 100).is_ok());
    }

    #[test]
    fn unbatched_requests_of_several_images_need_trust() {
        let mut body = request("a cat");
        body.disable_batching = true;
        body.params.n = 2;
        let refusal = check(&body, &user(false), 100).unwrap_err();
        assert_eq!(refusal, RequestRefusal::UnbatchedNeedsTrust);
        assert_eq!(refusal.rc(), Rc::RequiresTrust);
        assert!(check(&body, &user(true), 100).is_ok());
    }

    #[test]
    fn normalising_writes_the_steps_and_cuts_the_named_workers() {
        let mut body = request("a cat");
        body.params.steps = None;
        body.workers = (0..8).map(|i| format!("w{i}")).collect();
        body.params.seed = Some(SeedInput::Text("42".into()));
        let (normal, seed) = normalise(body.clone(), &user(false));
        assert_eq!(normal.params.steps, Some(body.params.effective_steps()));
        assert_eq!(normal.workers.len(), MAX_NAMED_WORKERS);
        assert_eq!(seed, Some(42));
        let mut pupil = user(false);
        pupil.education = true;
        body.nsfw = true;
        let (safe, _) = normalise(body, &pupil);
        assert!(!safe.nsfw && safe.censor_nsfw && safe.trusted_workers && !safe.shared);
    }
}
