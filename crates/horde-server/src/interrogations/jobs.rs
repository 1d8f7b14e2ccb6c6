//! Interrogation forms from the alchemist's side: pop and submit (see `interrogations/mod.rs`).

use crate::clock::now;
use crate::error::{ApiError, ApiResult};
use crate::lifecycle::{invalid_job, JobResult};
use crate::live_requests::{retry_on_conflict, Attempt, WriteTurn};
use crate::state::AppState;
use horde_api::image::{PopRequest, SubmitResponse, SubmitState};
use horde_api::interrogation::{
    is_known_form, makes_image, InterrogationPopForm, InterrogationPopRequest,
    InterrogationPopResponse, InterrogationSubmitRequest,
};
use horde_api::Rc;
use horde_core::accounts::{AlchemistFlags, KindFlags, User};
use horde_core::alchemy::Alchemy;
use horde_core::request::LiveRequest;
use horde_core::request_rules::{self, SourceRole};
use horde_core::{Assignment, PopOutcome};
use uuid::Uuid;

/// The fields an alchemist's pop shares with an image pop (its forms as its models), and what
/// it declares beyond them.
fn declaration_of(pop: &InterrogationPopRequest) -> (PopRequest, KindFlags) {
    let mut shared = PopRequest::new(pop.name.clone());
    shared.models = pop.forms.clone();
    shared.priority_usernames = pop.priority_usernames.clone();
    shared.amount = pop.amount;
    shared.threads = pop.threads;
    shared.bridge_agent = pop.bridge_agent.clone();
    shared.max_pixels = 0;
    shared.hardware = pop.hardware.clone();
    let kind = KindFlags {
        text: None,
        alchemy: Some(AlchemistFlags {
            max_tiles: pop.max_tiles,
        }),
    };
    (shared, kind)
}

impl AppState {
    /// `POST /interrogate/pop`: checks the alchemist in (registering it on its first pop) and
    /// hands it up to `amount` wanted forms it runs, each the first in the queue's order.
    pub async fn interrogation_pop(
        &self,
        user: &User,
        pop: InterrogationPopRequest,
    ) -> ApiResult<InterrogationPopResponse> {
        let name = pop.name.clone();
        let mut answer = self.interrogation_pop_for_forms(user, pop).await?;
        answer.messages = self.pop_messages(&name);
        Ok(answer)
    }

    /// [`AppState::interrogation_pop`] without the worker's messages.
    async fn interrogation_pop_for_forms(
        &self,
        user: &User,
        pop: InterrogationPopRequest,
    ) -> ApiResult<InterrogationPopResponse> {
        crate::workers::refuse_flagged_owner(user)?;
        pop.validate().map_err(ApiError::validation)?;
        let forms: Vec<String> = pop
            .forms
            .iter()
            .filter(|f| is_known_form(f))
            .cloned()
            .collect();
        if forms.is_empty() {
            return Err(ApiError::new(
                Rc::BadRequest,
                format!(
                    "None of the forms {} is one this horde runs.",
                    pop.forms.join(", ")
                ),
            ));
        }
        let amount = pop.amount.max(1);
        let (shared, kind) = declaration_of(&InterrogationPopRequest { forms, ..pop });
        let entry = self.check_in(user, &shared, &kind).await?;
        let empty = || InterrogationPopResponse {
            forms: vec![],
            skipped: Default::default(),
            messages: vec![],
        };
        if entry.worker.paused {
            return Ok(empty());
        }
        self.refuse_suspended(&entry)?;
        let now = now();
        let turn = self.live_alchemy.write_turn().await;
        let mut answer = empty();
        for _ in 0..amount {
            match self.pop_one_form(&entry, &turn, now).await? {
                Some(next) if !next.forms.is_empty() => answer.forms.extend(next.forms),
                Some(nothing) => {
                    if answer.forms.is_empty() {
                        crate::workers::refuse_in_maintenance(&entry)?;
                        answer.skipped = nothing.skipped;
                    }
                    break;
                }
                None => break,
            }
        }
        Ok(answer)
    }

    /// The next form for `entry`, stored as handed out; no form (with the skip counts) when
    /// the queue has none it may run.
    async fn pop_one_form(
        &self,
        entry: &crate::workers::WorkerEntry,
        turn: &WriteTurn<'_>,
        now: i64,
    ) -> ApiResult<Option<InterrogationPopResponse>> {
        retry_on_conflict(|| async move {
            match self.pop_from_queue::<Alchemy>(entry, now, false) {
                PopOutcome::Nothing(skipped) => Ok(Attempt::Stored(InterrogationPopResponse {
                    forms: vec![],
                    skipped,
                    messages: vec![],
                })),
                PopOutcome::Assigned(assignment) => self.hand_out_form(turn, assignment, now).await,
            }
        })
        .await
    }

    /// Stores the assignment and answers it: the form, its payload, where to download the
    /// image and, for a post-processor, where to upload the result.
    async fn hand_out_form(
        &self,
        turn: &WriteTurn<'_>,
        assignment: Assignment,
        now: i64,
    ) -> ApiResult<Attempt<InterrogationPopResponse>> {
        let request = match self
            .store_hand_out::<Alchemy>(turn, &assignment, now)
            .await?
        {
            Attempt::Stored(request) => request,
            Attempt::Conflicted => return Ok(Attempt::Conflicted),
        };
        let job = &assignment.jobs[0];
        let form = assignment.model.clone();
        let payload = request
            .body
            .request
            .forms
            .iter()
            .find(|f| f.name == form)
            .and_then(|f| f.payload.clone());
        Ok(Attempt::Stored(InterrogationPopResponse {
            forms: vec![InterrogationPopForm {
                id: job.id.to_string(),
                r2_upload: makes_image(&form).then(|| self.upload_url(job.id, now)),
                form,
                payload,
                source_image: self.form_source(&request, now),
            }],
            skipped: Default::default(),
            messages: vec![],
        }))
    }

    /// Where an alchemist gets the request's image: a signed URL of the stored copy, or the
    /// requester's URL.
    fn form_source(&self, request: &LiveRequest<Alchemy>, now: i64) -> String {
        let text = &request.body.request.source_image;
        if request_rules::is_marker(text) {
            return self.source_url(request.id, SourceRole::SourceImage, now);
        }
        text.clone()
    }

    /// `POST /interrogate/submit`: keeps the form's result and pays the alchemist.
    pub async fn interrogation_submit(
        &self,
        user: &User,
        submit: InterrogationSubmitRequest,
    ) -> ApiResult<SubmitResponse> {
        submit.validate().map_err(ApiError::validation)?;
        let job_id = Uuid::parse_str(&submit.id).map_err(|_| invalid_job(&submit.id))?;
        let turn = self.live_alchemy.write_turn().await;
        self.load_request_of_job_ordered::<Alchemy>(&turn, job_id)
            .await?;
        let (_, job) = self.job_for_submit::<Alchemy>(user, job_id)?;
        let staged = match submit.state {
            SubmitState::Faulted => None,
            // Its image was uploaded under the job's id; its result is that image's URL.
            _ if makes_image(&job.model) => {
                self.require_upload(job_id).await?;
                None
            }
            _ => {
                let bytes = result_bytes(submit.result)?;
                Some(self.images.stage(job_id, &bytes).await?)
            }
        };
        let result = JobResult {
            job_id,
            state: submit.state,
            seed: None,
            gen_metadata: submit.gen_metadata,
            staged: staged.as_deref(),
            text: None,
        };
        let outcome = self
            .finish_job::<Alchemy>(&turn, user, &result)
            .await
            .map(|reward| SubmitResponse { reward });
        if let Some(staged) = &staged {
            self.images.discard(staged).await;
        }
        outcome
    }

    /// Refuses a post-processor form submitted before its image was uploaded.
    async fn require_upload(&self, job_id: Uuid) -> ApiResult<()> {
        if self.images.exists(job_id).await? {
            return Ok(());
        }
        Err(ApiError::new(
            Rc::ImageValidationFailed,
            format!("No image was uploaded for form {job_id}: PUT the WebP to the pop's r2_upload URL before submitting."),
        ))
    }
}

/// A form's result as kept: an object, as JSON.
fn result_bytes(result: serde_json::Value) -> ApiResult<Vec<u8>> {
    if !result.is_object() {
        return Err(ApiError::new(
            Rc::BadRequest,
            "A form's result is an object, such as {\"caption\": \"…\"}.",
        ));
    }
    serde_json::to_vec(&result).map_err(ApiError::internal)
}
