//! Teams, moderators' messages to workers, and deleting a worker.
//!
//! A worker's team and its active messages are kept on its registry entry, so that worker
//! details and every pop read them from memory (a pop reads nothing from the database): each
//! change here is stored first, then the registry's copy is read again from the store
//! ([`AppState::reload_teams_and_messages`], also run at start). A team's figures are summed from
//! its workers' entries when shown (`horde_core::teams::team_details`).

use crate::clock::now;
use crate::error::{refused, ApiError, ApiResult};
use crate::state::AppState;
use crate::workers::WorkerEntry;
use horde_api::teams::{
    DeletedTeam, DeletedWorker, ModifyTeam, TeamDetails, TeamInput, TeamPatch, WorkerMessageInput,
    WorkerMessageQuery, MESSAGES_PER_PAGE,
};
use horde_api::worker::TeamRef;
use horde_api::Rc;
use horde_core::accounts::User;
use horde_core::teams::{self as rules, Member, Team, WorkerMessage};
use horde_store::messages::MessageFilter;
use horde_store::teams::WorkerDeletion;
use horde_store::StoreError;
use std::collections::HashMap;
use uuid::Uuid;

const HOUR_SECS: i64 = 3600;

impl AppState {
    /// `POST /teams`: a new team created by `user` (trusted users only).
    pub async fn create_team(&self, user: &User, input: TeamInput) -> ApiResult<ModifyTeam> {
        input.validate().map_err(ApiError::validation)?;
        rules::check_create_team(user).map_err(refused)?;
        refuse_profane_team(Some(&input.name), input.info.as_deref())?;
        let team = Team {
            id: Uuid::new_v4(),
            name: input.name,
            info: input.info,
            owner_id: user.id,
            created: now(),
        };
        self.store
            .insert_team(&team)
            .await
            .map_err(|e| name_taken(e, &team.name))?;
        tracing::info!(team = %team.id, owner = user.id, "team created");
        Ok(ModifyTeam {
            id: Some(team.id.to_string()),
            name: Some(team.name),
            info: team.info,
        })
    }

    /// `GET /teams`: every team with its figures.
    pub async fn teams_details(&self) -> ApiResult<Vec<TeamDetails>> {
        let teams = self.store.teams().await?;
        let mut creators: HashMap<i64, String> = HashMap::new();
        let mut details = Vec::with_capacity(teams.len());
        for team in &teams {
            let creator = match creators.get(&team.owner_id) {
                Some(alias) => alias.clone(),
                None => self.creator_alias(team.owner_id).await?,
            };
            creators.insert(team.owner_id, creator.clone());
            details.push(self.team_with_figures(team, creator));
        }
        Ok(details)
    }

    /// `GET /teams/{id}`.
    pub async fn team_details(&self, id: &str) -> ApiResult<TeamDetails> {
        let team = self.stored_team(id).await?;
        let creator = self.creator_alias(team.owner_id).await?;
        Ok(self.team_with_figures(&team, creator))
    }

    /// `PATCH /teams/{id}`: its creator or a moderator.
    pub async fn modify_team(
        &self,
        user: &User,
        id: &str,
        patch: TeamPatch,
    ) -> ApiResult<ModifyTeam> {
        patch.validate().map_err(ApiError::validation)?;
        if patch.is_empty() {
            return Err(ApiError::new(
                Rc::NoTeamModSelected,
                "No team modification selected!",
            ));
        }
        let mut team = self.stored_team(id).await?;
        rules::check_change_team(user, &team).map_err(refused)?;
        refuse_profane_team(patch.name.as_deref(), patch.info.as_deref())?;
        if let Some(name) = &patch.name {
            team.name = name.clone();
        }
        if let Some(info) = &patch.info {
            team.info = Some(info.clone());
        }
        self.store
            .save_team(&team)
            .await
            .map_err(|e| name_taken(e, &team.name))?;
        self.reload_teams_and_messages().await?;
        Ok(ModifyTeam {
            id: None,
            name: patch.name,
            info: patch.info,
        })
    }

    /// `DELETE /teams/{id}`: its creator or a moderator; its workers are left in no team.
    pub async fn delete_team(&self, user: &User, id: &str) -> ApiResult<DeletedTeam> {
        let team = self.stored_team(id).await?;
        rules::check_change_team(user, &team).map_err(refused)?;
        self.store.delete_team(team.id).await?;
        self.reload_teams_and_messages().await?;
        tracing::info!(team = %team.id, by = user.id, "team deleted");
        Ok(DeletedTeam {
            deleted_id: team.id.to_string(),
            deleted_name: team.name,
        })
    }

    /// The team a `PUT /workers/{id}` body's `team` asks for, checked before anything is
    /// stored: `None` when the body has none, `Some(None)` for `""` (leave its team).
    pub(crate) async fn team_change(&self, asked: Option<&str>) -> ApiResult<Option<Option<Team>>> {
        match asked {
            None => Ok(None),
            Some("") => Ok(Some(None)),
            Some(id) => Ok(Some(Some(self.stored_team(id).await?))),
        }
    }

    /// Moves worker `id` into `team` (or out of any); what `PUT /workers/{id}` answers in
    /// `team`: the team's name, or `"None"` as on the public horde.
    pub(crate) async fn move_worker(&self, id: Uuid, team: Option<Team>) -> ApiResult<String> {
        self.store
            .set_worker_team(id, team.as_ref().map(|t| t.id))
            .await?;
        self.reload_teams_and_messages().await?;
        Ok(team.map_or_else(|| "None".to_string(), |t| t.name))
    }

    /// `DELETE /workers/{id}`: its owner or a moderator; refused with 423 while a stored job
    /// still names it (until that job's request is removed).
    pub async fn delete_worker(&self, user: &User, id: Uuid) -> ApiResult<DeletedWorker> {
        let entry = self.worker_entry(id)?;
        rules::check_change_worker(user, entry.worker.user_id).map_err(refused)?;
        match self.store.delete_worker(id).await? {
            WorkerDeletion::Referenced => {
                return Err(ApiError::new(
                    Rc::Locked,
                    "Could not delete the worker at this point as it's referenced by a job it \
                     completed. Please try again after its requests expire.",
                ))
            }
            WorkerDeletion::Unknown | WorkerDeletion::Deleted => {}
        }
        self.workers.change(|registry| registry.remove(id));
        self.workers.changed();
        tracing::info!(worker = %entry.worker.name, by = user.id, "worker deleted");
        Ok(DeletedWorker {
            deleted_id: id.to_string(),
            deleted_name: entry.worker.name,
        })
    }

    /// `POST /workers/messages`: a moderator to any worker, an owner to their own.
    pub async fn post_worker_message(
        &self,
        user: &User,
        input: WorkerMessageInput,
    ) -> ApiResult<horde_api::teams::WorkerMessage> {
        input.validate().map_err(ApiError::validation)?;
        let worker_id = input
            .worker_id
            .as_deref()
            .map(parse_worker_id)
            .transpose()?;
        let owner = worker_id
            .map(|id| self.worker_entry(id).map(|e| e.worker.user_id))
            .transpose()?;
        rules::check_post_message(user, owner).map_err(refused)?;
        let now = now();
        let message = WorkerMessage {
            id: Uuid::new_v4(),
            worker_id,
            user_id: user.id,
            message: input.message,
            origin: Some(rules::origin_of(user, input.origin.as_deref())),
            expiry: now + i64::from(input.expiry) * HOUR_SECS,
            created: now,
        };
        self.store.insert_worker_message(&message).await?;
        self.reload_teams_and_messages().await?;
        Ok(wire_message(&message))
    }

    /// `GET /workers/messages`: a page of the caller's messages (a moderator's: anyone's).
    pub async fn list_worker_messages(
        &self,
        user: &User,
        query: WorkerMessageQuery,
    ) -> ApiResult<Vec<horde_api::teams::WorkerMessage>> {
        query.validate().map_err(ApiError::validation)?;
        let active = match query.validity.unwrap_or_default() {
            horde_api::teams::Validity::Active => Some(true),
            horde_api::teams::Validity::Expired => Some(false),
            horde_api::teams::Validity::All => None,
        };
        let page = query.page.unwrap_or(1);
        let filter = MessageFilter {
            user_id: rules::listed_author(user, query.user_id),
            worker_id: query
                .worker_id
                .as_deref()
                .map(parse_worker_id)
                .transpose()?,
            active,
            now: now(),
            offset: (page - 1) * MESSAGES_PER_PAGE,
            limit: MESSAGES_PER_PAGE,
        };
        let messages = self.store.worker_messages(&filter).await?;
        Ok(messages.iter().map(wire_message).collect())
    }

    /// `GET /workers/messages/{id}`.
    pub async fn worker_message(&self, id: &str) -> ApiResult<horde_api::teams::WorkerMessage> {
        Ok(wire_message(&self.stored_worker_message(id).await?))
    }

    /// `DELETE /workers/messages/{id}`: its author or a moderator.
    pub async fn delete_worker_message(&self, user: &User, id: &str) -> ApiResult<()> {
        let message = self.stored_worker_message(id).await?;
        rules::check_delete_message(user, &message).map_err(refused)?;
        self.store.delete_worker_message(message.id).await?;
        self.reload_teams_and_messages().await?;
        Ok(())
    }

    /// The messages a pop by worker `name` shows: those to it that are still active.
    pub(crate) fn pop_messages(&self, name: &str) -> Vec<serde_json::Value> {
        let now = now();
        let messages = self.workers.read(|registry| {
            registry
                .by_name(name)
                .map_or_else(Vec::new, |entry| active_messages(entry, now))
        });
        messages
            .into_iter()
            .filter_map(|m| serde_json::to_value(m).ok())
            .collect()
    }

    /// Reads every worker's team and active messages from the store into the registry (at
    /// start and after each change made here).
    pub async fn reload_teams_and_messages(&self) -> Result<(), StoreError> {
        let teams = self.store.worker_teams().await?;
        let messages = self.store.active_worker_messages(now()).await?;
        self.workers.change(|registry| {
            for entry in registry.all_mut() {
                entry.team = None;
                entry.messages.clear();
            }
            for (worker, team) in teams {
                if let Some(entry) = registry.get_mut(worker) {
                    entry.team = Some(TeamRef {
                        id: Some(team.id.to_string()),
                        name: Some(team.name),
                    });
                }
            }
            for message in messages {
                let worker = message.worker_id.and_then(|w| registry.get_mut(w));
                if let Some(entry) = worker {
                    entry.messages.push(message);
                }
            }
        });
        Ok(())
    }

    /// `team` with its figures summed over the workers in it.
    fn team_with_figures(&self, team: &Team, creator: String) -> TeamDetails {
        let now = now();
        let window = self.config.workers.online_window_secs;
        let team_id = team.id.to_string();
        let members: Vec<Member> = self.workers.read(|registry| {
            let mut members: Vec<Member> = registry
                .all()
                .filter(|e| e.team.as_ref().and_then(|t| t.id.as_deref()) == Some(&team_id))
                .map(|e| member_of(e, now, window))
                .collect();
            members.sort_by(|a, b| a.name.cmp(&b.name));
            members
        });
        rules::team_details(team, creator, &members)
    }

    async fn stored_team(&self, id: &str) -> ApiResult<Team> {
        let not_found =
            || ApiError::new(Rc::TeamNotFound, format!("Team with ID '{id}' not found."));
        let uuid = Uuid::parse_str(id).map_err(|_| not_found())?;
        self.store.team(uuid).await?.ok_or_else(not_found)
    }

    async fn stored_worker_message(&self, id: &str) -> ApiResult<WorkerMessage> {
        let not_found = || {
            ApiError::new(
                Rc::ThingNotFound,
                format!("Message with ID '{id}' not found."),
            )
        };
        let uuid = Uuid::parse_str(id).map_err(|_| not_found())?;
        self.store.worker_message(uuid).await?.ok_or_else(not_found)
    }

    /// A user's alias, or `#id` alone for a user no longer stored.
    async fn creator_alias(&self, user_id: i64) -> ApiResult<String> {
        let user = self.store.user_by_id(user_id).await?;
        Ok(user.map_or_else(|| format!("#{user_id}"), |u| u.alias()))
    }
}

/// A worker entry as a team's figures count it.
fn member_of(entry: &WorkerEntry, now: i64, window: i64) -> Member {
    let w = &entry.worker;
    Member {
        id: w.id,
        name: w.name.clone(),
        online: w.is_online(now, window),
        alchemist: w.flags.alchemy.is_some(),
        fulfilments: w.reputation.completed,
        kudos: w.kudos_generated,
        megapixelsteps: w.reputation.megapixelsteps,
        uptime: w.uptime,
        speed: w.reputation.average_speed_mps(),
        models: w.flags.models.clone(),
    }
}

/// The messages to the worker of `entry` still active at `now`, as the wire shows them.
pub(crate) fn active_messages(
    entry: &WorkerEntry,
    now: i64,
) -> Vec<horde_api::teams::WorkerMessage> {
    entry
        .messages
        .iter()
        .filter(|m| m.is_active(now))
        .map(wire_message)
        .collect()
}

fn wire_message(m: &WorkerMessage) -> horde_api::teams::WorkerMessage {
    horde_api::teams::WorkerMessage {
        id: m.id.to_string(),
        worker_id: m.worker_id.map(|w| w.to_string()),
        user_id: m.user_id.to_string(),
        message: m.message.clone(),
        origin: m.origin.clone(),
        expiry: crate::shared_keys::rfc3339(m.expiry),
    }
}

fn parse_worker_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| {
        ApiError::new(
            Rc::WorkerNotFound,
            format!("Worker with ID '{id}' not found."),
        )
    })
}

/// A unique name taken (by another team) is the public horde's `TeamNameAlreadyExists`.
fn name_taken(error: StoreError, name: &str) -> ApiError {
    match error {
        StoreError::Duplicate(_) => ApiError::new(
            Rc::TeamNameAlreadyExists,
            format!("A team named '{name}' already exists."),
        ),
        other => other.into(),
    }
}

/// Refuses a profane team name or info, with the public horde's codes.
fn refuse_profane_team(name: Option<&str>, info: Option<&str>) -> ApiResult<()> {
    for (text, rc, what) in [
        (name, Rc::ProfaneTeamName, "team name"),
        (info, Rc::ProfaneTeamInfo, "team info"),
    ] {
        if text.is_some_and(horde_core::profanity::is_profane) {
            return Err(ApiError::new(
                rc,
                format!("As our API is public, we do not allow profanity in the {what}, please try again."),
            ));
        }
    }
    Ok(())
}
