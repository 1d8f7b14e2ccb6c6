//! Batches of prompts (beyond the public horde; the wire types are `horde_api::batch`): a batch
//! is N ordinary image requests, one per prompt, sharing a batch id. Here are what is the
//! batch's own: accepting it whole or not at all, its status and cancel, and handing a worker
//! several members in one pop.
//!
//! * **Accept.** Every member passes the rules of `POST /generate/async`
//!   (`AppState::vet_request`), upfront kudos counting the earlier members, then the user's
//!   concurrency and daily quota count all members together; the members are stored in ONE
//!   transaction (`Store::insert_requests`), and queued only after it committed. A refused
//!   member refuses the batch and nothing is stored.
//! * **Pop.** A worker that sends `batch_prompts` with `amount` above 1 may get further waiting
//!   members of the batch it took one of (`Queue::add_companions`, over
//!   `JobKind::shares_pass`); each member's jobs are stored as that request's hand-out, and the
//!   answer carries each job's prompt and seed (`payload.prompts`, `payload.seeds`).
//! * **Status and cancel** read and cancel the members one by one, as `/generate/check` and
//!   `DELETE /generate/status` do: anyone with the batch's id may (the id is unguessable, as a
//!   request's is).

use crate::clock::now;
use crate::error::{ApiError, ApiResult};
use crate::extract::parse_json;
use crate::lifecycle::NewRequest;
use crate::live_requests::{Attempt, WriteTurn};
use crate::requests::Vetted;
use crate::state::AppState;
use horde_api::batch::{BatchMember, BatchRequest, BatchResponse, BatchStatus};
use horde_api::image::{ImageRequest, JobPayload, RequestWarning};
use horde_api::{ErrorBody, Rc};
use horde_core::accounts::User;
use horde_core::request::{Job, LiveRequest};
use horde_core::request_rules::{self, PreparedSource};
use horde_core::shared_key::SharedKey;
use horde_core::{post_processing, pricing, Assignment, Image};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The body of `POST /generate/batch` as the handler reads it (`extract::HordeJson`). Written
/// back, for `extract::parse_json`'s check that no field the server reads holds a NUL, it is
/// its `prompts` alone: the shared fields are read again as an `ImageRequest`
/// (`batch_shared_request`), whose own check refuses a NUL in a field the server reads and
/// ignores one in a field it ignores, as `/generate/async` does.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct BatchBody(pub BatchRequest);

impl Serialize for BatchBody {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Read<'a> {
            prompts: &'a [horde_api::batch::BatchPrompt],
        }
        Read {
            prompts: &self.0.prompts,
        }
        .serialize(serializer)
    }
}

/// What `POST /generate/batch` answers: accepted (202) or a dry run's price (200).
pub enum BatchAccepted {
    Queued(BatchResponse),
    DryRun(BatchResponse),
}

impl AppState {
    /// Accepts a batch of prompts from `user` (made with `shared_key` if it was one): all
    /// members or none (see the module documentation).
    pub async fn accept_batch(
        &self,
        user: &User,
        shared_key: Option<&SharedKey>,
        batch: BatchRequest,
    ) -> ApiResult<BatchAccepted> {
        let shared = self.batch_shared_request(&batch)?;
        // The shared source images, checked and normalised once; each member keeps its copy.
        let sources = self.prepare_sources(&shared).await?;
        let mut vetted = Vec::with_capacity(batch.prompts.len());
        let mut styles = Vec::with_capacity(batch.prompts.len());
        let mut pending = 0.0;
        for member in &batch.prompts {
            let mut body = shared.clone();
            body.prompt = member.full_prompt();
            if let Some(seed) = &member.seed {
                body.params.seed = Some(seed.clone());
            }
            // A style (or a collection, drawn again for each member) expands each member as
            // it would a request of its own.
            let (body, style) = self.apply_image_style(user, body).await?;
            styles.push(style);
            let accepted = self.vet_request(user, shared_key, body, pending).await?;
            pending +=
                pricing::projected_cost(&accepted.body, self.projected_family(&accepted.body));
            vetted.push(accepted);
        }
        if shared.dry_run {
            return Ok(BatchAccepted::DryRun(BatchResponse {
                id: None,
                ids: vec![],
                kudos: pending,
                message: None,
                warnings: vec![],
            }));
        }
        let images: u32 = vetted.iter().map(|v| v.body.params.n).sum();
        self.check_concurrency(user, images)?;
        let now = now();
        let mut all = vetted[0].body.clone();
        all.params.n = images;
        self.check_quota(user, &all, now).await?;
        let requests = self
            .admit_batch(user, shared_key, &vetted, &sources, now)
            .await?;
        let mut style_warnings = vec![];
        for (request, style) in requests.iter().zip(styles) {
            if let Some(warning) = self.record_style_use(user, style, request.id).await {
                if !style_warnings.contains(&warning) {
                    style_warnings.push(warning);
                }
            }
        }
        let hide_reasons = self.hides_reasons().await?;
        let mut answer = self.batch_answer(&vetted, requests, hide_reasons);
        answer.warnings.extend(style_warnings);
        Ok(BatchAccepted::Queued(answer))
    }

    /// The fields every member shares, read as `/generate/async` reads a body (the same 400
    /// `errors` map), after the batch's size is checked.
    fn batch_shared_request(&self, batch: &BatchRequest) -> ApiResult<ImageRequest> {
        let max = self.config.requests.max_batch_prompts;
        let count = batch.prompts.len();
        if count == 0 || count > max {
            let mut errors = BTreeMap::new();
            errors.insert(
                "prompts".to_string(),
                format!("A batch holds 1 to {max} prompts; this one has {count}."),
            );
            return Err(ApiError::validation(ErrorBody::validation(errors)));
        }
        check_member_prompts(batch, self.config.requests.max_prompt_chars)?;
        let mut shared = batch.shared.clone();
        // Each member's prompt is set from `prompts`; a shared one is not a batch's field.
        shared.insert("prompt".into(), serde_json::Value::String(String::new()));
        let bytes = serde_json::to_vec(&shared).map_err(ApiError::internal)?;
        parse_json::<ImageRequest>(&bytes)
    }

    /// Numbers the members, keeps their source images (`sources.rs`: written before the
    /// requests, so a crash leaves at most orphans the sweep removes), stores them in one
    /// transaction, then queues them.
    async fn admit_batch(
        &self,
        user: &User,
        shared_key: Option<&SharedKey>,
        vetted: &[Vetted],
        sources: &[PreparedSource],
        now: i64,
    ) -> ApiResult<Vec<LiveRequest>> {
        let batch_id = Uuid::now_v7();
        let mut requests: Vec<LiveRequest> = vetted
            .iter()
            .enumerate()
            .map(|(index, v)| {
                let new = NewRequest::<Image> {
                    jobs: v.body.params.n,
                    body: v.body.clone(),
                    base_seed: v.base_seed,
                    shared_key: shared_key.map(|k| k.id_hash.clone()),
                    batch_id: Some(batch_id),
                    batch_index: index as u32,
                };
                self.numbered(user, new, now)
            })
            .collect();
        if !sources.is_empty() {
            for request in &mut requests {
                self.images.put_sources(request.id, sources, now).await?;
                request_rules::replace_with_markers(&mut request.body, sources);
            }
        }
        self.metrics
            .time_commit(self.store.insert_requests(&requests))
            .await?;
        for request in &requests {
            self.live.insert(request.clone());
        }
        Ok(requests)
    }

    /// The 202 answer: the batch's id, the members' ids and kudos, and their warnings once each.
    fn batch_answer(
        &self,
        vetted: &[Vetted],
        requests: Vec<LiveRequest>,
        hide_reasons: bool,
    ) -> BatchResponse {
        let mut warnings: Vec<RequestWarning> = vec![];
        let mut add = |warning: RequestWarning| {
            if !warnings.contains(&warning) {
                warnings.push(warning);
            }
        };
        for v in vetted {
            v.downgraded.clone().into_iter().for_each(&mut add);
            post_processing::unavailable_warning(&v.body)
                .into_iter()
                .for_each(&mut add);
            if v.rewritten {
                add(RequestWarning {
                    code: "PromptRewritten".into(),
                    message: "A prompt matched this horde's prompt filters and was rewritten before it was queued.".into(),
                });
            }
        }
        let message = (!hide_reasons && !self.is_possible(&requests[0])).then(|| {
            "No available workers can fulfil this request. It will wait until one joins."
                .to_string()
        });
        if let Some(message) = &message {
            add(RequestWarning {
                code: "NoAvailableWorker".into(),
                message: message.clone(),
            });
        }
        BatchResponse {
            id: requests[0].batch_id.map(|id| id.to_string()),
            ids: requests.iter().map(|r| r.id.to_string()).collect(),
            kudos: pricing::reported_kudos(requests.iter().map(|r| r.job_kudos).sum()),
            message,
            warnings,
        }
    }

    /// Each member's progress and the whole's.
    pub async fn batch_status(&self, id: &str) -> ApiResult<BatchStatus> {
        let batch_id = parse_batch_id(id)?;
        let members: Vec<LiveRequest> = self
            .live
            .read(|queue| queue.batch_members(batch_id).into_iter().cloned().collect());
        if members.is_empty() {
            return Err(batch_not_found(id));
        }
        Ok(status_of(batch_id, &members))
    }

    /// Cancels every member not done (as `DELETE /generate/status/{id}` cancels one); answers
    /// the batch's status after it.
    pub async fn cancel_batch(&self, id: &str) -> ApiResult<BatchStatus> {
        let batch_id = parse_batch_id(id)?;
        let members: Vec<Uuid> = self.live.read(|queue| {
            queue
                .batch_members(batch_id)
                .into_iter()
                .filter(|r| !r.is_done())
                .map(|r| r.id)
                .collect()
        });
        for member in members {
            self.cancel::<Image>(member).await?;
        }
        self.batch_status(id).await
    }

    /// Undoes in memory `companions` of a pop that were not stored (the first request's
    /// hand-out or an earlier companion's could not be): each is reloaded as stored.
    pub(crate) async fn resync_companions(
        &self,
        turn: &WriteTurn<'_>,
        companions: &[Assignment],
    ) -> ApiResult<()> {
        for companion in companions {
            self.resync_request_ordered::<Image>(turn, companion.request_id)
                .await?;
        }
        Ok(())
    }

    /// Stores the hand-out of each companion of a pop; answers those stored with their
    /// requests. One another coordinator changed first is left out (reloaded as stored).
    pub(crate) async fn store_companions(
        &self,
        turn: &WriteTurn<'_>,
        assignment: &Assignment,
        now: i64,
    ) -> ApiResult<Vec<(LiveRequest, Assignment)>> {
        let mut stored = Vec::with_capacity(assignment.companions.len());
        for (i, companion) in assignment.companions.iter().enumerate() {
            match self.store_hand_out::<Image>(turn, companion, now).await {
                Ok(Attempt::Stored(request)) => stored.push((request, companion.clone())),
                Ok(Attempt::Conflicted) => {}
                Err(error) => {
                    self.resync_companions(turn, &assignment.companions[i + 1..])
                        .await?;
                    return Err(error);
                }
            }
        }
        Ok(stored)
    }
}

/// Every job of a pop's pass: the first request's, then each stored companion's.
pub(crate) fn pass_jobs<'a>(
    assignment: &'a Assignment,
    companions: &'a [(LiveRequest, Assignment)],
) -> Vec<&'a Job> {
    assignment
        .jobs
        .iter()
        .chain(companions.iter().flat_map(|(_, c)| &c.jobs))
        .collect()
}

/// A pop with companions tells the worker each job's prompt and seed, in the order of `ids`;
/// a pop without is left in the public format.
pub(crate) fn add_member_prompts(
    payload: &mut JobPayload,
    first: &LiveRequest,
    assignment: &Assignment,
    companions: &[(LiveRequest, Assignment)],
) {
    if companions.is_empty() {
        return;
    }
    let mut prompts = vec![];
    let mut seeds = vec![];
    let members =
        std::iter::once((first, assignment)).chain(companions.iter().map(|(r, a)| (r, a)));
    for (request, a) in members {
        for job in &a.jobs {
            prompts.push(request.body.prompt.clone());
            seeds.push(job.seed.to_string());
        }
    }
    payload.prompts = Some(prompts);
    payload.seeds = Some(seeds);
}

/// The batch's status from its members' counters.
fn status_of(batch_id: Uuid, members: &[LiveRequest]) -> BatchStatus {
    let mut status = BatchStatus {
        id: batch_id.to_string(),
        finished: 0,
        processing: 0,
        restarted: 0,
        waiting: 0,
        faulted: 0,
        done: true,
        kudos: 0.0,
        members: Vec::with_capacity(members.len()),
    };
    let mut consumed = 0.0;
    for member in members {
        let counts = member.counts();
        status.finished += counts.finished;
        status.processing += counts.processing;
        status.restarted += counts.restarted;
        status.waiting += counts.waiting;
        status.faulted += u32::from(counts.faulted);
        status.done &= counts.done;
        consumed += member.consumed_kudos;
        status.members.push(BatchMember {
            id: member.id.to_string(),
            index: member.batch_index,
            finished: counts.finished,
            processing: counts.processing,
            restarted: counts.restarted,
            waiting: counts.waiting,
            faulted: counts.faulted,
            done: counts.done,
            kudos: pricing::reported_kudos(member.consumed_kudos),
        });
    }
    status.kudos = pricing::reported_kudos(consumed);
    status
}

/// The longest prompt and negative prompt of a member, in characters: half the prompt limit
/// each (less `" ### "` for the negative), so a member's stored prompt never passes it.
pub(crate) fn member_prompt_limits(max_prompt_chars: usize) -> (usize, usize) {
    let half = max_prompt_chars / 2;
    (half, half.saturating_sub(5))
}

/// Each member's prompt and negative prompt within [`member_prompt_limits`] (400
/// `ValidationError` naming the member's field, as the spec's bounds say).
fn check_member_prompts(batch: &BatchRequest, max_prompt_chars: usize) -> ApiResult<()> {
    let (prompt_max, negative_max) = member_prompt_limits(max_prompt_chars);
    let mut errors = BTreeMap::new();
    for (i, member) in batch.prompts.iter().enumerate() {
        let fields = [
            ("prompt", Some(&member.prompt), prompt_max),
            (
                "negative_prompt",
                member.negative_prompt.as_ref(),
                negative_max,
            ),
        ];
        for (field, text, max) in fields {
            let chars = text.map_or(0, |t| t.chars().count());
            if chars > max {
                errors.insert(
                    format!("prompts.{i}.{field}"),
                    format!("At most {max} characters; this one has {chars}."),
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(ErrorBody::validation(errors)))
    }
}

fn parse_batch_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| batch_not_found(id))
}

fn batch_not_found(id: &str) -> ApiError {
    ApiError::new(
        Rc::RequestNotFound,
        format!("Batch with ID '{id}' not found."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use horde_api::batch::DEFAULT_MAX_BATCH_PROMPTS;

    #[test]
    fn a_members_prompt_and_negative_prompt_together_stay_within_the_limit() {
        for max in [10, 1001, 32_000] {
            let (prompt, negative) = member_prompt_limits(max);
            assert!(prompt + " ### ".len() + negative <= max, "{max}");
        }
    }

    /// The spec's batch body is `ImageRequest` without `prompt`, with `prompts` bounded as the
    /// server bounds them by default.
    #[test]
    fn the_spec_states_the_batch_body_and_its_bounds() {
        let spec = crate::openapi::document(1000, &[]);
        let schemas = &spec["components"]["schemas"];
        let batch = &schemas["BatchRequest"];
        assert!(batch["properties"].get("prompt").is_none());
        assert_eq!(
            batch["properties"]["params"],
            schemas["ImageRequest"]["properties"]["params"]
        );
        let prompts = &batch["properties"]["prompts"];
        assert_eq!(prompts["minItems"], 1);
        assert_eq!(prompts["maxItems"], DEFAULT_MAX_BATCH_PROMPTS);
        assert_eq!(
            crate::config::RequestsConfig::default().max_batch_prompts,
            DEFAULT_MAX_BATCH_PROMPTS
        );
        assert_eq!(batch["required"], serde_json::json!(["prompts"]));
        let member = &schemas["BatchPrompt"]["properties"];
        assert_eq!(member["prompt"]["maxLength"], 500);
        assert_eq!(member["negative_prompt"]["maxLength"], 495);
        for name in ["BatchResponse", "BatchStatus", "BatchMember"] {
            assert!(schemas[name].is_object(), "{name}");
        }
        let paths = &spec["paths"];
        assert!(paths["/api/v2/generate/batch"]["post"].is_object());
        let one = &paths["/api/v2/generate/batch/{id}"];
        assert!(one["get"].is_object() && one["delete"].is_object());
    }
}
