//! Which post-processors a worker runs, and what becomes of a request whose post-processors no
//! online worker runs.
//!
//! The public horde grants post-processors by bridge name and version (`bridge_reference.py`,
//! see [`crate::bridge`]): a worker with `allow_post_processing` is taken to run every name its
//! software knows. Our worker runs only the checkpoints its owner configured, so it declares
//! them in its pop (`post_processors`, an extension) and gets only jobs it can finish; a
//! worker that declares nothing is judged by its bridge, as on the public horde.
//!
//! A request with `post_processing_fallback: true` (an extension) is generated without its
//! post-processors when they are what keeps every online worker from taking it. That is
//! decided once, when the request is accepted, so that its price, the jobs workers get and the
//! `PostProcessingUnavailable` warning of the 202, `check` and `status` all agree.

use horde_api::image::{ImageRequest, RequestWarning};

/// The warning code of a request generated without (some of) its post-processors.
pub const UNAVAILABLE_WARNING: &str = "PostProcessingUnavailable";

/// Whether a worker that declared `declared` (its pop's `post_processors`) runs every one of
/// `requested`; a worker that declared nothing is left to its bridge's grant.
pub fn declared_cover(requested: &[String], declared: Option<&[String]>) -> bool {
    declared.is_none_or(|names| requested.iter().all(|r| names.contains(r)))
}

/// Applies `post_processing_fallback` to an accepted request: when it asks for the fallback and
/// `blocking` (no online worker takes it with its post-processors, some would without them),
/// its post-processors move to `post_processing_skipped`, so it is priced and generated
/// without them. Returns whether they moved. Whatever a client sent as
/// `post_processing_skipped` is discarded first.
pub fn fall_back(body: &mut ImageRequest, blocking: bool) -> bool {
    body.post_processing_skipped.clear();
    if !body.post_processing_fallback || !blocking || body.params.post_processing.is_empty() {
        return false;
    }
    body.post_processing_skipped = std::mem::take(&mut body.params.post_processing);
    true
}

/// The `PostProcessingUnavailable` warning of a request generated without its post-processors.
pub fn unavailable_warning(body: &ImageRequest) -> Option<RequestWarning> {
    if body.post_processing_skipped.is_empty() {
        return None;
    }
    Some(RequestWarning {
        code: UNAVAILABLE_WARNING.into(),
        message: format!(
            "No online worker able to take this request runs {}; the images are generated \
             without them, as this request allows post-processing fallback.",
            body.post_processing_skipped.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(json: serde_json::Value) -> ImageRequest {
        serde_json::from_value(json).unwrap()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_declaration_must_cover_every_requested_post_processor() {
        let asked = names(&["GFPGAN", "RealESRGAN_x2plus"]);
        assert!(
            declared_cover(&asked, None),
            "no declaration: the bridge decides"
        );
        assert!(declared_cover(
            &asked,
            Some(&names(&["RealESRGAN_x2plus", "GFPGAN", "strip_background"]))
        ));
        assert!(!declared_cover(&asked, Some(&names(&["GFPGAN"]))));
        assert!(!declared_cover(&asked, Some(&[])));
        assert!(declared_cover(&[], Some(&[])));
    }

    #[test]
    fn the_fallback_moves_post_processors_aside_only_when_asked_and_blocking() {
        let asking = json!({"prompt": "a", "post_processing_fallback": true,
                            "params": {"post_processing": ["GFPGAN", "strip_background"]}});
        let mut body = request(asking.clone());
        assert!(!fall_back(&mut body, false), "not blocking: nothing moves");
        assert_eq!(body.params.post_processing.len(), 2);
        assert_eq!(unavailable_warning(&body), None);

        assert!(fall_back(&mut body, true));
        assert!(body.params.post_processing.is_empty());
        assert_eq!(
            body.post_processing_skipped,
            names(&["GFPGAN", "strip_background"])
        );
        let warning = unavailable_warning(&body).unwrap();
        assert_eq!(warning.code, "PostProcessingUnavailable");
        assert!(warning.message.contains("GFPGAN, strip_background"));

        let mut without_flag = request(json!({"prompt": "a",
            "params": {"post_processing": ["GFPGAN"]}}));
        assert!(
            !fall_back(&mut without_flag, true),
            "the default is to wait"
        );
        assert_eq!(without_flag.params.post_processing, names(&["GFPGAN"]));
    }

    #[test]
    fn a_client_cannot_claim_skipped_post_processors() {
        let mut body = request(json!({"prompt": "a",
            "post_processing_skipped": ["GFPGAN"]}));
        assert_eq!(
            body.post_processing_skipped,
            names(&["GFPGAN"]),
            "serde reads it back from storage"
        );
        fall_back(&mut body, true);
        assert!(body.post_processing_skipped.is_empty());
        assert_eq!(unavailable_warning(&body), None);
    }
}
