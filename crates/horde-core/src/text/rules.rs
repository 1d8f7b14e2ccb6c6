//! The rules a text request must pass beyond its schema's bounds before it is queued, each
//! refusal with the public horde's `rc` (horde/validation.py's `validate_text_params` and the
//! text generate endpoint), and the upfront-kudos rule that is, in effect, what anonymous users
//! may ask for: the anonymous account never holds kudos, so a request too large to be free
//! (more tokens than the horde gives away at the moment, or fast workers only) is refused to
//! it, or shrunk with `allow_downgrade` (horde-api.md §5.4).
//!
//! The schema's bounds (`TextRequest::validate`) are checked first by the server; what depends
//! on the live horde (the softprompts workers offer, its load) is passed in.

use crate::accounts::User;
use crate::request_rules::MAX_NAMED_WORKERS;
use crate::text::pricing;
use crate::text::reference::TextModelReference;
use crate::webhook::{self, WebhookPolicy, WebhookRefusal};
use crate::Refusal;
use horde_api::text::{TextRequest, MAX_STOP_SEQUENCES, MAX_STOP_SEQUENCE_CHARS, SAMPLER_COUNT};
use horde_api::Rc;
use std::collections::BTreeSet;

/// A bound on the characters of one token: no tokenizer of the llama family makes tokens
/// longer than this of ordinary text, so a prompt of more than this many characters a token
/// of room certainly overflows the context it asks for (clients trim the prompt to
/// `max_context_length − max_length` tokens themselves; this only catches the ones that did
/// not).
pub const MAX_CHARS_PER_TOKEN: usize = 8;

/// The operator's limits on text requests (the lead's `[text]` section).
#[derive(Debug, Clone, PartialEq)]
pub struct TextLimits {
    /// The most tokens a request may ask to generate.
    pub max_length: u32,
    /// The largest context a request may ask for.
    pub max_context_length: u32,
    /// The longest prompt, in characters.
    pub max_prompt_chars: usize,
    /// Refuse models the text model reference does not know (the public horde queues them).
    pub known_models_only: bool,
}

impl Default for TextLimits {
    fn default() -> Self {
        TextLimits {
            max_length: horde_api::text::MAX_LENGTH,
            max_context_length: horde_api::text::MAX_CONTEXT_LENGTH,
            max_prompt_chars: horde_api::text::MAX_PROMPT_CHARS,
            known_models_only: true,
        }
    }
}

/// Why a text request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum TextRefusal {
    /// Text requests take no source images.
    ExtraSourceImages,
    EmptyPrompt,
    /// More tokens to generate than the context holds.
    TokenOverflow {
        max_length: u32,
        max_context_length: u32,
    },
    /// A prompt that cannot fit the context left beside the tokens to generate.
    PromptOverContext {
        chars: usize,
        room_tokens: u32,
    },
    /// A custom `sampler_order` that leaves out one of KoboldAI's seven samplers.
    MissingFullSamplerOrder,
    TooManyStopSequences {
        count: usize,
    },
    ExcessiveStopSequence {
        chars: usize,
    },
    /// `disable_batching` for more than one text, by an untrusted user.
    UnbatchedNeedsTrust,
    Webhook(WebhookRefusal),
    PromptTooLong {
        chars: usize,
        max: usize,
    },
    /// `max_length` or `max_context_length` over the operator's limit.
    OverHordeLimit {
        field: &'static str,
        value: u32,
        max: u32,
    },
    /// A model the text model reference does not know.
    UnknownModel(String),
    /// A softprompt no worker offers.
    UnknownSoftprompt(String),
    /// The request needs kudos upfront that the requester does not have.
    KudosUpfront {
        required: f64,
        free_tokens: u32,
    },
}

impl Refusal for TextRefusal {
    fn rc(&self) -> Rc {
        match self {
            TextRefusal::ExtraSourceImages => Rc::InvalidExtraSourceImages,
            TextRefusal::EmptyPrompt => Rc::MissingPrompt,
            TextRefusal::TokenOverflow { .. } | TextRefusal::PromptOverContext { .. } => {
                Rc::TokenOverflow
            }
            TextRefusal::MissingFullSamplerOrder => Rc::MissingFullSamplerOrder,
            TextRefusal::TooManyStopSequences { .. } => Rc::TooManyStopSequences,
            TextRefusal::ExcessiveStopSequence { .. } => Rc::ExcessiveStopSequence,
            TextRefusal::UnbatchedNeedsTrust => Rc::RequiresTrust,
            TextRefusal::Webhook(refusal) => refusal.rc(),
            TextRefusal::PromptTooLong { .. } => Rc::InvalidPromptSize,
            TextRefusal::OverHordeLimit { .. } | TextRefusal::UnknownSoftprompt(_) => {
                Rc::BadRequest
            }
            TextRefusal::UnknownModel(_) => Rc::UnsupportedModel,
            TextRefusal::KudosUpfront { .. } => Rc::KudosUpfront,
        }
    }

    fn message(&self) -> String {
        match self {
            TextRefusal::ExtraSourceImages => {
                "This request type does not accept extra source images.".into()
            }
            TextRefusal::EmptyPrompt => "You cannot specify an empty prompt.".into(),
            TextRefusal::TokenOverflow { max_length, max_context_length } => format!(
                "You cannot request more tokens than your context length (max_length {max_length} > max_context_length {max_context_length})."
            ),
            TextRefusal::PromptOverContext { chars, room_tokens } => format!(
                "The prompt ({chars} characters) cannot fit the {room_tokens} tokens of context left beside max_length; trim it to fit max_context_length."
            ),
            TextRefusal::MissingFullSamplerOrder => {
                "When sending a custom sampler order, you need to specify all possible samplers in the order".into()
            }
            TextRefusal::TooManyStopSequences { count } => format!(
                "Too many stop sequences specified ({count}; max allowed is {MAX_STOP_SEQUENCES})."
            ),
            TextRefusal::ExcessiveStopSequence { chars } => format!(
                "Your total stop sequence length ({chars}) exceeds the allowed limit ({MAX_STOP_SEQUENCE_CHARS} chars)."
            ),
            TextRefusal::UnbatchedNeedsTrust => {
                "Only trusted users may disable batching for more than one text.".into()
            }
            TextRefusal::Webhook(refusal) => refusal.message(),
            TextRefusal::PromptTooLong { chars, max } => {
                format!("The prompt is {chars} characters long; this horde accepts at most {max}.")
            }
            TextRefusal::OverHordeLimit { field, value, max } => {
                format!("{field} is {value}; this horde accepts at most {max}.")
            }
            TextRefusal::UnknownModel(model) => {
                format!("'{model}' is not a text model this horde knows.")
            }
            TextRefusal::UnknownSoftprompt(softprompt) => {
                format!("No worker offers the softprompt '{softprompt}'.")
            }
            TextRefusal::KudosUpfront { required, free_tokens } => format!(
                "Due to heavy demand, for requests over {free_tokens} tokens, the client needs to already have the required kudos. This request requires {required} kudos to fulfil."
            ),
        }
    }
}

/// The rules of one text request by `requester`, in the public horde's order, then the
/// operator's limits and the models.
pub fn check(
    body: &TextRequest,
    requester: &User,
    limits: &TextLimits,
    reference: &TextModelReference,
    webhook_policy: &WebhookPolicy,
) -> Result<(), TextRefusal> {
    check_params(body)?;
    if body.disable_batching && body.params.n > 1 && !requester.trusted {
        return Err(TextRefusal::UnbatchedNeedsTrust);
    }
    if let Some(hook) = &body.webhook {
        webhook::check_url(hook, webhook_policy).map_err(TextRefusal::Webhook)?;
    }
    check_limits(body, limits)?;
    if limits.known_models_only {
        if let Some(model) = reference.unknown(&body.models).first() {
            return Err(TextRefusal::UnknownModel(model.to_string()));
        }
    }
    Ok(())
}

/// `validate_text_params`: the prompt, context, sampler order and stop sequences.
fn check_params(body: &TextRequest) -> Result<(), TextRefusal> {
    let p = &body.params;
    if !body.extra_source_images.is_empty() {
        return Err(TextRefusal::ExtraSourceImages);
    }
    if body.prompt.trim().is_empty() {
        return Err(TextRefusal::EmptyPrompt);
    }
    if p.max_context_length < p.max_length {
        return Err(TextRefusal::TokenOverflow {
            max_length: p.max_length,
            max_context_length: p.max_context_length,
        });
    }
    // An empty list is no custom order: the public horde's check (`if sampler_order and …`)
    // passes it.
    if let Some(order) = p.sampler_order.as_ref().filter(|o| !o.is_empty()) {
        if !(0..SAMPLER_COUNT as u32).all(|sampler| order.contains(&sampler)) {
            return Err(TextRefusal::MissingFullSamplerOrder);
        }
    }
    if let Some(stops) = &p.stop_sequence {
        let distinct: BTreeSet<&str> = stops.iter().map(String::as_str).collect();
        if distinct.len() > MAX_STOP_SEQUENCES {
            return Err(TextRefusal::TooManyStopSequences {
                count: distinct.len(),
            });
        }
        let chars = distinct.iter().map(|s| s.chars().count()).sum();
        if chars > MAX_STOP_SEQUENCE_CHARS {
            return Err(TextRefusal::ExcessiveStopSequence { chars });
        }
    }
    Ok(())
}

/// The operator's limits, and whether the prompt can fit the context it asks for.
fn check_limits(body: &TextRequest, limits: &TextLimits) -> Result<(), TextRefusal> {
    let p = &body.params;
    let chars = body.prompt.chars().count();
    if chars > limits.max_prompt_chars {
        return Err(TextRefusal::PromptTooLong {
            chars,
            max: limits.max_prompt_chars,
        });
    }
    for (field, value, max) in [
        ("max_length", p.max_length, limits.max_length),
        (
            "max_context_length",
            p.max_context_length,
            limits.max_context_length,
        ),
    ] {
        if value > max {
            return Err(TextRefusal::OverHordeLimit { field, value, max });
        }
    }
    let room_tokens = p.max_context_length.saturating_sub(p.max_length);
    if chars > MAX_CHARS_PER_TOKEN * room_tokens as usize {
        return Err(TextRefusal::PromptOverContext { chars, room_tokens });
    }
    Ok(())
}

/// Whether some worker offers the request's softprompt, matched as the public horde matches
/// it (a worker's softprompt whose name contains the requested one; none or an empty one is
/// always served). `offered` are the softprompts of the online text workers.
pub fn check_softprompt<'a>(
    body: &TextRequest,
    offered: impl IntoIterator<Item = &'a str>,
) -> Result<(), TextRefusal> {
    match body.softprompt.as_deref() {
        None | Some("") => Ok(()),
        Some(wanted) if offered.into_iter().any(|sp| sp.contains(wanted)) => Ok(()),
        Some(wanted) => Err(TextRefusal::UnknownSoftprompt(wanted.to_string())),
    }
}

/// The request as it is queued: at most [`MAX_NAMED_WORKERS`] workers kept (the public horde
/// drops the others silently).
pub fn normalise(body: &mut TextRequest) {
    body.workers.truncate(MAX_NAMED_WORKERS);
}

/// What the horde's text side has to offer right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextCapacity {
    /// Threads of the online text workers.
    pub text_threads: u64,
    /// Text requests waiting in the queue.
    pub queued_text_requests: usize,
}

/// The most tokens a request may ask for without upfront kudos:
/// `512 + 5 × threads − round(0.9 × queued)`, between 256 and 512.
pub fn free_tokens(capacity: &TextCapacity) -> u32 {
    let raw = 512.0 + 5.0 * capacity.text_threads as f64
        - (0.9 * capacity.queued_text_requests as f64).round();
    raw.clamp(256.0, 512.0) as u32
}

/// Whether `body` needs upfront kudos: fast workers only, or more tokens than
/// [`free_tokens`].
pub fn needs_upfront(body: &TextRequest, capacity: &TextCapacity) -> bool {
    !body.slow_workers || body.params.max_length > free_tokens(capacity)
}

/// The kudos a requester must hold for `body` when it needs them upfront: 20 a text when it
/// names no model, else `round(max_length × highest multiplier / 21, 2)` a text (the highest,
/// so a small model named beside a big one does not lower it).
pub fn upfront_kudos(body: &TextRequest, reference: &TextModelReference) -> f64 {
    let n = f64::from(body.params.n);
    if body.models.is_empty() {
        return 20.0 * n;
    }
    let multiplier = reference.highest_multiplier(&body.models);
    let per_text = (f64::from(body.params.max_length) * multiplier / 21.0 * 100.0).round() / 100.0;
    per_text * n
}

/// The upfront rule for a requester holding `available_kudos`: nothing to do, or with
/// `allow_downgrade` the request shrunk to [`free_tokens`] tokens and any worker's speed, or
/// [`TextRefusal::KudosUpfront`]. The anonymous account, which holds none, is always in the
/// last two cases for a request that needs upfront kudos.
pub fn apply_upfront(
    body: &mut TextRequest,
    available_kudos: f64,
    capacity: &TextCapacity,
    reference: &TextModelReference,
) -> Result<(), TextRefusal> {
    if !needs_upfront(body, capacity) {
        return Ok(());
    }
    let required = upfront_kudos(body, reference);
    if required <= available_kudos {
        return Ok(());
    }
    let free = free_tokens(capacity);
    if body.allow_downgrade {
        body.params.max_length = body.params.max_length.min(free);
        body.slow_workers = true;
        return Ok(());
    }
    Err(TextRefusal::KudosUpfront {
        required,
        free_tokens: free,
    })
}

/// The kudos basis of one job of `body` whose models are priced by `reference`.
pub fn job_kudos(body: &TextRequest, reference: &TextModelReference) -> f64 {
    let multiplier = pricing::request_multiplier(&body.models, |m| reference.multiplier(m));
    pricing::job_kudos(
        body.params.max_length,
        body.params.max_context_length,
        multiplier,
    )
}

#[cfg(test)]
mod tests;
