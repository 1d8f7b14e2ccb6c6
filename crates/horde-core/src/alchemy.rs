//! Interrogation ("alchemy") as a kind of work: forms run on one source image by alchemists.
//!
//! A request's forms are its jobs: each job is handed out under its form's name (`Job::model`),
//! so an alchemist gets the first form still wanted that it runs, and a faulted form goes back
//! to the queue as any job does. The public horde's rules (`horde/classes/stable/interrogation.py`):
//! a form named twice is kept once; a form costs 1 kudos, `interrogation` 3, a post-processor 3
//! a 512×512 tile of the image; the requester pays a form's kudos and 1 more, and 1 more again
//! with `slow_workers` (the public horde's `kudos_burn`); a form must be delivered within 3
//! minutes; an alchemist skips an image with more tiles than its `max_tiles`.

use crate::deadline::DeadlineBounds;
use crate::kind::{Capabilities, JobKind};
use crate::matching::SkipReason;
use crate::request::{JobState, LiveRequest};
use crate::Refusal;
use horde_api::interrogation::{is_known_form, makes_image, InterrogationRequest};
use horde_api::Rc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Seconds an alchemist has to deliver a form (the public horde's 3 minutes).
pub const FORM_DEADLINE_SECS: i64 = 180;
/// Kudos of a form other than `interrogation` and the post-processors.
pub const FORM_KUDOS: f64 = 1.0;
/// Kudos of an `interrogation` form.
pub const INTERROGATION_KUDOS: f64 = 3.0;
/// Kudos of a post-processor form, per 512×512 tile of the image.
pub const POST_PROCESSOR_KUDOS_PER_TILE: f64 = 3.0;
/// The side of a tile, in pixels.
pub const TILE_SIDE: u32 = 512;

/// Interrogation (`/interrogate/…`): the kind's name in the API is the public horde's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Alchemy;

/// A request as accepted: its forms (known, each once), the tiles of its image, and the image
/// as stored (a marker of the stored WebP, or the requester's URL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlchemyBody {
    #[serde(flatten)]
    pub request: InterrogationRequest,
    /// 512×512 tiles of the source image (1 when it is a URL: not fetched).
    pub image_tiles: u32,
    /// The source image's width and height, when it was sent inline (a URL is not fetched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<(u32, u32)>,
    /// The forms' names, in their order (what the queue files the request under).
    pub form_names: Vec<String>,
}

impl AlchemyBody {
    /// `request` (normalised) as accepted, its image `image_size` (`None`: a URL, counted as
    /// one tile).
    pub fn accept(request: InterrogationRequest, image_size: Option<(u32, u32)>) -> AlchemyBody {
        let form_names = request.forms.iter().map(|f| f.name.clone()).collect();
        AlchemyBody {
            request,
            image_tiles: image_size.map_or(1, |(w, h)| tiles(w, h)),
            image_size,
            form_names,
        }
    }

    /// The sizes a post-processor's image of this request may have: the source's, twice or
    /// four times it (the upscalers); any size when the source's is not known.
    pub fn result_sizes(&self) -> Option<Vec<(u32, u32)>> {
        let (w, h) = self.image_size?;
        Some(vec![(w, h), (2 * w, 2 * h), (4 * w, 4 * h)])
    }
}

/// The 512×512 tiles of a `width`×`height` image (at least 1).
pub fn tiles(width: u32, height: u32) -> u32 {
    (width.div_ceil(TILE_SIDE) * height.div_ceil(TILE_SIDE)).max(1)
}

/// The kudos of form `name` on an image of `image_tiles` tiles.
pub fn form_kudos(name: &str, image_tiles: u32) -> f64 {
    match name {
        "interrogation" => INTERROGATION_KUDOS,
        _ if makes_image(name) => POST_PROCESSOR_KUDOS_PER_TILE * f64::from(image_tiles),
        _ => FORM_KUDOS,
    }
}

/// What the requester pays for a delivered form of `kudos`: it, the horde's 1, and 1 more with
/// `slow_workers`.
pub fn requester_charge(kudos: f64, slow_workers: bool) -> f64 {
    kudos + 1.0 + if slow_workers { 1.0 } else { 0.0 }
}

/// Why an interrogation request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum AlchemyRefusal {
    UnknownForm(String),
}

impl Refusal for AlchemyRefusal {
    fn rc(&self) -> Rc {
        match self {
            AlchemyRefusal::UnknownForm(_) => Rc::BadRequest,
        }
    }

    fn message(&self) -> String {
        match self {
            AlchemyRefusal::UnknownForm(form) => format!(
                "Unknown form '{form}': this horde runs caption, interrogation, nsfw and the post-processors ({}).",
                horde_api::image::POST_PROCESSORS.join(", ")
            ),
        }
    }
}

/// The request's forms, checked (each known) and kept once each, in their order.
pub fn normalise(
    mut request: InterrogationRequest,
) -> Result<InterrogationRequest, AlchemyRefusal> {
    if let Some(unknown) = request.forms.iter().find(|f| !is_known_form(&f.name)) {
        return Err(AlchemyRefusal::UnknownForm(unknown.name.clone()));
    }
    let mut seen = std::collections::BTreeSet::new();
    request.forms.retain(|f| seen.insert(f.name.clone()));
    Ok(request)
}

/// What an alchemist declares in its pop, with what the coordinator knows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlchemistCaps {
    pub worker_id: Uuid,
    pub owner_id: i64,
    pub owner_trusted: bool,
    /// The forms it runs.
    pub forms: Vec<String>,
    pub max_tiles: u32,
    pub amount: u32,
    pub priority_user_ids: Vec<i64>,
    pub maintenance: bool,
    /// Measured speed in forms a second; `None` before its first form.
    pub speed_fps: Option<f64>,
}

impl Capabilities for AlchemistCaps {
    fn worker_id(&self) -> Uuid {
        self.worker_id
    }
    fn models(&self) -> &[String] {
        &self.forms
    }
    fn stands_in_for(&self) -> Vec<&str> {
        vec![]
    }
    fn priority_user_ids(&self) -> &[i64] {
        &self.priority_user_ids
    }
}

/// The forms of `request` still wanted: neither in flight nor delivered.
pub fn pending_forms(request: &LiveRequest<Alchemy>) -> impl Iterator<Item = &str> {
    request
        .body
        .request
        .forms
        .iter()
        .map(|f| f.name.as_str())
        .filter(|name| {
            !request
                .jobs
                .iter()
                .any(|j| j.model == *name && j.state != JobState::Faulted)
        })
}

/// The form `worker` runs next of `request`: the first pending one it runs.
pub fn chosen_form(request: &LiveRequest<Alchemy>, worker: &AlchemistCaps) -> Option<String> {
    pending_forms(request)
        .find(|form| worker.forms.iter().any(|f| f == form))
        .map(str::to_string)
}

/// Whether `worker` may take a form of `request`, or why not.
pub fn can_serve(request: &LiveRequest<Alchemy>, worker: &AlchemistCaps) -> Result<(), SkipReason> {
    if worker.maintenance && request.user_id != worker.owner_id {
        return Err(SkipReason::Maintenance);
    }
    if chosen_form(request, worker).is_none() {
        return Err(SkipReason::Models);
    }
    if request.body.request.trusted_workers && !worker.owner_trusted {
        return Err(SkipReason::Untrusted);
    }
    let slow = worker.speed_fps.is_some_and(|s| s < SLOW_FORMS_PER_SEC);
    if !request.body.request.slow_workers && slow {
        return Err(SkipReason::Performance);
    }
    if request.body.image_tiles > worker.max_tiles {
        return Err(SkipReason::MaxTiles);
    }
    Ok(())
}

/// An alchemist slower than this many forms a second is slow for `slow_workers: false`.
pub const SLOW_FORMS_PER_SEC: f64 = 0.1;

impl JobKind for Alchemy {
    type Body = AlchemyBody;
    type Caps = AlchemistCaps;

    const NAME: &'static str = "interrogation";

    /// The forms asked for, which alchemists "serve" as image workers serve models.
    fn models(body: &AlchemyBody) -> &[String] {
        &body.form_names
    }

    fn can_take(request: &LiveRequest<Alchemy>, worker: &AlchemistCaps) -> Result<(), SkipReason> {
        can_serve(request, worker)
    }

    fn chosen_model(request: &LiveRequest<Alchemy>, worker: &AlchemistCaps) -> Option<String> {
        chosen_form(request, worker)
    }

    /// One form a pop: each job is handed out under its own form's name.
    fn batch_size(_request: &LiveRequest<Alchemy>, _worker: &AlchemistCaps) -> u32 {
        1
    }

    fn next_seed(_request: &LiveRequest<Alchemy>, _rng: &mut impl rand::Rng) -> u64 {
        0
    }

    /// Forms: one a job.
    fn work(_body: &AlchemyBody, jobs: u32) -> f64 {
        f64::from(jobs)
    }

    /// The public horde's 3 minutes a form, whatever the alchemist's speed.
    fn deadline_secs(
        _body: &AlchemyBody,
        batch: u32,
        _speed: Option<f64>,
        bounds: DeadlineBounds,
    ) -> i64 {
        (FORM_DEADLINE_SECS * i64::from(batch.max(1))).max(bounds.floor_secs)
    }

    /// The dearest form's kudos (what upfront checks and queue priority see); each delivered
    /// form is charged its own (`form_kudos`).
    fn job_kudos(body: &AlchemyBody) -> f64 {
        body.request
            .forms
            .iter()
            .map(|f| form_kudos(&f.name, body.image_tiles))
            .fold(0.0, f64::max)
    }

    fn requester_charge(body: &AlchemyBody, job_kudos: f64) -> f64 {
        requester_charge(job_kudos, body.request.slow_workers)
    }
}

#[cfg(test)]
mod tests;
