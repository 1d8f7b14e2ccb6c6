//! Moderators' prompt filters: stored in the database, compiled into a `FilterSet` kept in
//! memory (rebuilt on every change), and applied to each image prompt before it is queued.

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use horde_api::filter::{
    FilterDetails, FilterPatch, FilterPromptSuspicion, FilterQuery, FilterRegex, NewFilter,
    PromptCheck,
};
use horde_api::image::ImageRequest;
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::prompt_filter::{self, FilterSet, PromptFilter, Verdict};
use std::sync::Arc;

impl AppState {
    /// The filters as now compiled.
    pub fn filter_set(&self) -> Arc<FilterSet> {
        self.catalogue.filters()
    }

    /// Compiles the stored filters again (at start and after every change).
    pub async fn reload_filters(&self) -> ApiResult<()> {
        let stored = self.store.prompt_filters().await?;
        self.catalogue.replace_filters(FilterSet::new(&stored));
        Ok(())
    }

    /// Screens an image request's prompt: unchanged, rewritten in place (with a warning), or
    /// refused with 400 `CorruptPrompt`.
    pub fn screen_prompt(&self, user: &User, body: &mut ImageRequest) -> ApiResult<bool> {
        let model_reference = self.model_reference();
        let nsfw_model = body
            .models
            .iter()
            .any(|m| model_reference.get(m).is_some_and(|info| info.nsfw));
        let rewrite_allowed = body.replacement_filter || user.education;
        match self
            .filter_set()
            .screen(&body.prompt, rewrite_allowed, nsfw_model)
        {
            Verdict::Clean => Ok(false),
            Verdict::Rewritten(prompt) => {
                body.prompt = prompt;
                Ok(true)
            }
            Verdict::Blocked(_) => {
                tracing::info!(user = user.id, "prompt refused by the prompt filters");
                // Its sender is timed out once the answer is made; moderators never are.
                if !user.moderator {
                    crate::operations::note_blocked_prompt();
                }
                Err(ApiError::new(
                    Rc::CorruptPrompt,
                    if nsfw_model {
                        "This prompt appears to violate our terms of service and cannot be used with NSFW models. Please contact us if you think this is an error."
                    } else {
                        "This prompt appears to violate our terms of service and will be reported. Please contact us if you think this is an error."
                    },
                ))
            }
        }
    }

    async fn filter_details(&self, f: &PromptFilter) -> ApiResult<FilterDetails> {
        let user = self
            .store
            .user_by_id(f.user_id)
            .await?
            .map_or_else(|| format!("#{}", f.user_id), |u| u.alias());
        Ok(FilterDetails {
            id: f.id.clone(),
            regex: f.regex.clone(),
            filter_type: f.filter_type,
            description: Some(f.description.clone()),
            replacement: Some(f.replacement.clone()),
            user,
        })
    }

    async fn stored_filter(&self, id: &str) -> ApiResult<PromptFilter> {
        self.store
            .prompt_filters()
            .await?
            .into_iter()
            .find(|f| f.id == id)
            .ok_or_else(|| {
                ApiError::new(
                    Rc::ThingNotFound,
                    format!("Filter with ID '{id}' not found."),
                )
            })
    }

    /// `GET /filters` (a moderator's).
    pub async fn list_filters(&self, query: &FilterQuery) -> ApiResult<Vec<FilterDetails>> {
        let mut out = vec![];
        for f in self.store.prompt_filters().await? {
            let type_matches = query.filter_type.is_none_or(|t| t == f.filter_type);
            let text_matches = query
                .contains
                .as_deref()
                .is_none_or(|c| f.description.to_lowercase().contains(&c.to_lowercase()));
            if type_matches && text_matches {
                out.push(self.filter_details(&f).await?);
            }
        }
        Ok(out)
    }

    /// `PUT /filters` by `moderator`.
    pub async fn add_filter(&self, moderator: &User, body: NewFilter) -> ApiResult<FilterDetails> {
        body.validate().map_err(ApiError::validation)?;
        check_regex(&body.regex)?;
        let filter = PromptFilter {
            id: uuid::Uuid::new_v4().to_string(),
            regex: body.regex,
            filter_type: body.filter_type,
            description: body.description.unwrap_or_default(),
            replacement: body.replacement.unwrap_or_default(),
            user_id: moderator.id,
        };
        self.store.save_prompt_filter(&filter).await?;
        self.reload_filters().await?;
        tracing::info!(filter = %filter.id, moderator = moderator.id, "prompt filter added");
        self.filter_details(&filter).await
    }

    /// `GET /filters/{id}` (a moderator's).
    pub async fn get_filter(&self, id: &str) -> ApiResult<FilterDetails> {
        let filter = self.stored_filter(id).await?;
        self.filter_details(&filter).await
    }

    /// `PATCH /filters/{id}` by `moderator`.
    pub async fn modify_filter(
        &self,
        moderator: &User,
        id: &str,
        change: FilterPatch,
    ) -> ApiResult<FilterDetails> {
        change.validate().map_err(ApiError::validation)?;
        if change.is_empty() {
            return Err(ApiError::new(
                Rc::NoFilterModSelected,
                "No filter modification selected!",
            ));
        }
        let mut filter = self.stored_filter(id).await?;
        if let Some(regex) = change.regex {
            check_regex(&regex)?;
            filter.regex = regex;
        }
        if let Some(t) = change.filter_type {
            filter.filter_type = t;
        }
        if let Some(d) = change.description {
            filter.description = d;
        }
        if let Some(r) = change.replacement {
            filter.replacement = r;
        }
        filter.user_id = moderator.id;
        self.store.save_prompt_filter(&filter).await?;
        self.reload_filters().await?;
        self.filter_details(&filter).await
    }

    /// `DELETE /filters/{id}` by `moderator`.
    pub async fn delete_filter(&self, moderator: &User, id: &str) -> ApiResult<()> {
        if !self.store.delete_prompt_filter(id).await? {
            return Err(ApiError::new(
                Rc::ThingNotFound,
                format!("Filter with ID '{id}' not found."),
            ));
        }
        self.reload_filters().await?;
        tracing::info!(filter = %id, moderator = moderator.id, "prompt filter deleted");
        Ok(())
    }

    /// `POST /filters` (a moderator's): how suspicious a prompt is.
    pub fn check_prompt(&self, body: PromptCheck) -> ApiResult<FilterPromptSuspicion> {
        body.validate().map_err(ApiError::validation)?;
        let (suspicion, matches) = self.filter_set().suspicion(&body.prompt, body.filter_type);
        Ok(FilterPromptSuspicion { suspicion, matches })
    }

    /// `GET /filters/regex` (a moderator's): each screening type's combined regex.
    pub fn filter_regexes(&self, query: &FilterQuery) -> Vec<FilterRegex> {
        self.filter_set()
            .combined_regexes()
            .into_iter()
            .filter(|(t, _)| query.filter_type.is_none_or(|q| q == *t))
            .map(|(filter_type, regex)| FilterRegex { filter_type, regex })
            .collect()
    }
}

fn check_regex(regex: &str) -> ApiResult<()> {
    prompt_filter::compile(regex)
        .map(drop)
        .map_err(|reason| ApiError::new(Rc::BadRequest, reason))
}
