//! Text jobs from the worker's side: pop and submit (see `texts/mod.rs`).

use crate::clock::now;
use crate::error::{ApiError, ApiResult};
use crate::lifecycle::{invalid_job, JobResult};
use crate::live_requests::{retry_on_conflict, Attempt, WriteTurn};
use crate::state::AppState;
use horde_api::image::{PopRequest, SubmitResponse, SubmitState};
use horde_api::text::{TextPopRequest, TextPopResponse, TextSubmitRequest};
use horde_api::Rc;
use horde_core::accounts::{KindFlags, TextWorkerFlags, User};
use horde_core::text::kind::{job_payload, TEXT_JOB_TTL_SECS};
use horde_core::text::Text;
use horde_core::{Assignment, PopOutcome};
use uuid::Uuid;

/// The fields a text pop shares with an image pop, as the worker registry keeps them (a text
/// worker serves no image features), and what it declares beyond them.
fn declaration_of(pop: &TextPopRequest) -> (PopRequest, TextWorkerFlags) {
    let mut shared = PopRequest::new(pop.name.clone());
    shared.models = pop.models.clone();
    shared.priority_usernames = pop.priority_usernames.clone();
    shared.nsfw = pop.nsfw;
    shared.blacklist = pop.blacklist.clone();
    shared.amount = pop.amount;
    shared.threads = pop.threads;
    shared.bridge_agent = pop.bridge_agent.clone();
    shared.require_upfront_kudos = pop.require_upfront_kudos;
    shared.extra_slow_worker = pop.extra_slow_worker;
    shared.max_pixels = 0;
    shared.hardware = pop.hardware.clone();
    let text = TextWorkerFlags {
        max_length: pop.max_length,
        max_context_length: pop.max_context_length,
        softprompts: pop.softprompts.clone(),
    };
    (shared, text)
}

impl AppState {
    /// `POST /generate/text/pop`: checks the text worker in (registering it on its first pop)
    /// and hands it a job of the text queue, if one fits it.
    pub async fn text_pop(&self, user: &User, pop: TextPopRequest) -> ApiResult<TextPopResponse> {
        let name = pop.name.clone();
        let mut answer = self.text_pop_for_a_job(user, pop).await?;
        answer.messages = self.pop_messages(&name);
        Ok(answer)
    }

    /// [`AppState::text_pop`] without the worker's messages.
    async fn text_pop_for_a_job(
        &self,
        user: &User,
        pop: TextPopRequest,
    ) -> ApiResult<TextPopResponse> {
        crate::workers::refuse_flagged_owner(user)?;
        pop.validate().map_err(ApiError::validation)?;
        let servable = self.servable_text_models(user, &pop.models)?;
        let (shared, text) = declaration_of(&TextPopRequest {
            models: servable,
            ..pop
        });
        let kind = KindFlags {
            text: Some(text),
            alchemy: None,
        };
        let entry = self.check_in(user, &shared, &kind).await?;
        if entry.worker.paused {
            return Ok(TextPopResponse::empty(Default::default()));
        }
        self.refuse_suspended(&entry)?;
        let now = now();
        let turn = self.live_text.write_turn().await;
        let (entry, turn) = (&entry, &turn);
        let answer = retry_on_conflict(|| async move {
            match self.pop_from_queue::<Text>(entry, now, false) {
                PopOutcome::Nothing(skipped) => {
                    crate::workers::refuse_in_maintenance(entry)?;
                    Ok(Attempt::Stored(TextPopResponse::empty(skipped)))
                }
                PopOutcome::Assigned(assignment) => self.hand_out_text(turn, assignment, now).await,
            }
        })
        .await?;
        Ok(answer.unwrap_or_else(|| TextPopResponse::empty(Default::default())))
    }

    /// The text models of a pop this horde lets the worker serve: those of the text model
    /// reference, or any with custom text models allowed or for a customizer. None servable is
    /// refused, naming them.
    fn servable_text_models(&self, owner: &User, offered: &[String]) -> ApiResult<Vec<String>> {
        if self.config.text.allow_custom || owner.customizer {
            return Ok(offered.to_vec());
        }
        let reference = self.text_reference();
        let servable: Vec<String> = offered
            .iter()
            .filter(|m| reference.is_known(m))
            .cloned()
            .collect();
        if servable.is_empty() {
            return Err(ApiError::new(
                Rc::UnsupportedModel,
                format!(
                    "This horde cannot accept text workers serving only models outside its text model reference ({}); serve models of the reference, or ask for the customizer role.",
                    offered.join(", ")
                ),
            ));
        }
        Ok(servable)
    }

    /// Stores the assignment and answers it: the request's parameters and prompt, one text a
    /// job.
    async fn hand_out_text(
        &self,
        turn: &WriteTurn<'_>,
        assignment: Assignment,
        now: i64,
    ) -> ApiResult<Attempt<TextPopResponse>> {
        let request = match self.store_hand_out::<Text>(turn, &assignment, now).await? {
            Attempt::Stored(request) => request,
            Attempt::Conflicted => return Ok(Attempt::Conflicted),
        };
        let ids: Vec<String> = assignment.jobs.iter().map(|j| j.id.to_string()).collect();
        Ok(Attempt::Stored(TextPopResponse {
            payload: job_payload(&request.body),
            id: ids.first().cloned(),
            ids,
            model: Some(assignment.model),
            softprompt: request.body.request.softprompt.clone(),
            skipped: Default::default(),
            ttl: Some(TEXT_JOB_TTL_SECS),
            messages: vec![],
        }))
    }

    /// `POST /generate/text/submit`: keeps the text and pays the worker for its tokens.
    pub async fn text_submit(
        &self,
        user: &User,
        submit: TextSubmitRequest,
    ) -> ApiResult<SubmitResponse> {
        submit.validate().map_err(ApiError::validation)?;
        let job_id = Uuid::parse_str(&submit.id).map_err(|_| invalid_job(&submit.id))?;
        let turn = self.live_text.write_turn().await;
        self.load_request_of_job_ordered::<Text>(&turn, job_id)
            .await?;
        self.job_for_submit::<Text>(user, job_id)?;
        let text = submit.generation.unwrap_or_default();
        let staged = match submit.state {
            SubmitState::Faulted => None,
            _ => Some(self.images.stage(job_id, text.as_bytes()).await?),
        };
        let result = JobResult {
            job_id,
            state: submit.state,
            seed: u64::try_from(submit.seed).ok(),
            gen_metadata: submit.gen_metadata,
            staged: staged.as_deref(),
            text: Some(&text),
        };
        let outcome = self
            .finish_job::<Text>(&turn, user, &result)
            .await
            .map(|reward| SubmitResponse { reward });
        if let Some(staged) = &staged {
            self.images.discard(staged).await;
        }
        outcome
    }
}
