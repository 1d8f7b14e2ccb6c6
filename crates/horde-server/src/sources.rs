//! Requests' source images on the coordinator: decoded and checked when the request is accepted
//! (`horde_core::request_rules::prepare_sources`, off the async threads), stored as WebP before
//! the request is committed (`images.rs`: files, or rows on PostgreSQL), and handed to the
//! worker that pops the request as a signed, expiring download URL (workers that pop with
//! `r2_source`) or as base64 WebP (others), as the public horde hands out its source bucket's
//! URLs or base64.
//!
//! Why out of the body: the body is stored in the request's row and held in memory by every
//! coordinator for as long as the request lives; a few MB of base64 there, times every waiting
//! request, would be most of a coordinator's memory. The body keeps a marker in its place
//! (`request_rules::marker`). Bodies stored before this (or a batch's members, which keep their
//! sources inline) carry the base64 itself, which is handed out as it is.

use crate::clock::now;
use crate::error::{ApiError, ApiResult};
use crate::lifecycle::NewRequest;
use crate::state::AppState;
use base64::Engine;
use horde_api::image::{ExtraSourceImage, ImageRequest};
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::keys::{sign_upload, verify_upload};
use horde_core::request::LiveRequest;
use horde_core::request_rules::{self, PreparedSource, SourceRole};
use horde_core::Image;
use uuid::Uuid;

/// The source fields of a pop's answer.
pub(crate) struct PopSources {
    pub source_image: Option<String>,
    pub source_mask: Option<String>,
    pub extra_source_images: Vec<ExtraSourceImage>,
}

/// What a download URL signs: its request and role, under a prefix no job id (the upload URLs'
/// signed text) can have.
fn signed_text(request_id: Uuid, role: SourceRole) -> String {
    format!("source:{request_id}:{}", role.name())
}

impl AppState {
    /// The request's base64 sources decoded, checked and encoded as WebP (nothing when it has
    /// none, or only URLs), with the public horde's refusals.
    pub(crate) async fn prepare_sources(
        &self,
        body: &ImageRequest,
    ) -> ApiResult<Vec<PreparedSource>> {
        let inline = |text: &str| !text.starts_with("http://") && !text.starts_with("https://");
        let any_inline = [&body.source_image, &body.source_mask]
            .into_iter()
            .flatten()
            .chain(body.extra_source_images.iter().map(|e| &e.image))
            .any(|text| inline(text));
        if !any_inline {
            return Ok(vec![]);
        }
        let body = body.clone();
        let prepared = tokio::task::spawn_blocking(move || request_rules::prepare_sources(&body))
            .await
            .map_err(ApiError::internal)?;
        Ok(prepared?)
    }

    /// Numbers and commits an image request, its `sources` stored first and replaced in its
    /// body by their markers. A failed commit leaves the stored sources to the orphan sweep
    /// (`ImageStore::sweep_orphan_sources`), which removes them only if no request was stored:
    /// so a request is never stored without its sources.
    pub(crate) async fn admit_with_sources(
        &self,
        user: &User,
        new: NewRequest<Image>,
        sources: &[PreparedSource],
        now: i64,
    ) -> ApiResult<LiveRequest> {
        if sources.is_empty() {
            return self.admit(user, new, now).await;
        }
        let mut request = self.numbered(user, new, now);
        self.images.put_sources(request.id, sources, now).await?;
        request_rules::replace_with_markers(&mut request.body, sources);
        self.live.commit_new(request).await
    }

    /// The source fields of the pop answer for `request`: each stored source as a download
    /// URL (`r2_source`) or base64 WebP; URLs the requester gave and inline base64 (bodies
    /// stored before sources were kept apart) as they are.
    pub(crate) async fn pop_sources(
        &self,
        request: &LiveRequest,
        r2_source: bool,
        now: i64,
    ) -> PopSources {
        let body = &request.body;
        let mut extra_source_images = Vec::with_capacity(body.extra_source_images.len());
        for (i, extra) in body.extra_source_images.iter().enumerate() {
            let image = self
                .pop_source(
                    request.id,
                    SourceRole::Extra(i),
                    &extra.image,
                    r2_source,
                    now,
                )
                .await;
            extra_source_images.push(ExtraSourceImage {
                image: image.unwrap_or_default(),
                strength: extra.strength,
            });
        }
        let source_image = match &body.source_image {
            Some(text) => {
                self.pop_source(request.id, SourceRole::SourceImage, text, r2_source, now)
                    .await
            }
            None => None,
        };
        let source_mask = match &body.source_mask {
            Some(text) => {
                self.pop_source(request.id, SourceRole::SourceMask, text, r2_source, now)
                    .await
            }
            None => None,
        };
        PopSources {
            source_image,
            source_mask,
            extra_source_images,
        }
    }

    /// One source field of a pop answer (`text` is the body's).
    async fn pop_source(
        &self,
        request_id: Uuid,
        role: SourceRole,
        text: &str,
        r2_source: bool,
        now: i64,
    ) -> Option<String> {
        if !request_rules::is_marker(text) {
            return Some(text.to_string());
        }
        if r2_source {
            return Some(self.source_url(request_id, role, now));
        }
        match self.images.read_source(request_id, role).await {
            Some(bytes) => Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            None => {
                tracing::error!(request = %request_id, role = %role.name(), "a stored source image is missing");
                None
            }
        }
    }

    /// A signed URL where a worker GETs a request's source, valid for
    /// `requests.upload_url_ttl_secs` (as the upload URLs handed out with it).
    pub(crate) fn source_url(&self, request_id: Uuid, role: SourceRole, now: i64) -> String {
        let expires = now + self.config.requests.upload_url_ttl_secs;
        let sig = sign_upload(&self.upload_secret, &signed_text(request_id, role), expires);
        format!(
            "{}/api/v2/sources/{request_id}/{}?expires={expires}&sig={sig}",
            self.public_url,
            role.name()
        )
    }

    /// The WebP a source URL names, once its signature and expiry are checked (403 otherwise,
    /// whatever the request and role: a forged URL learns nothing), 404 when it is gone.
    pub async fn source_download(
        &self,
        request_id: &str,
        role: &str,
        expires: i64,
        sig: &str,
    ) -> ApiResult<Vec<u8>> {
        let forged = || ApiError::new(Rc::Forbidden, "This source image URL is not valid.");
        let request_id = Uuid::parse_str(request_id).map_err(|_| forged())?;
        let role = SourceRole::parse(role).ok_or_else(forged)?;
        if !verify_upload(
            &self.upload_secret,
            &signed_text(request_id, role),
            expires,
            sig,
        ) {
            return Err(forged());
        }
        if expires < now() {
            return Err(ApiError::new(
                Rc::Forbidden,
                "This source image URL has expired; pop the job again for a new one.",
            ));
        }
        self.images
            .read_source(request_id, role)
            .await
            .ok_or_else(|| ApiError::new(Rc::ThingNotFound, "This source image is gone."))
    }
}
