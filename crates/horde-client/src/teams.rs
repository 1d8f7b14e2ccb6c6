//! Teams (`/teams…`), moderators' and owners' messages to workers (`/workers/messages…`) and
//! deleting a worker (`DELETE /workers/{id}`) (issue 29).
//!
//! A worker joins or leaves a team through `modify_worker` (`ModifyWorker::team`); the
//! messages to a worker reach it in its pops and in its details.

use crate::{segment, Client, Result};
use horde_api::operations::SimpleMessage;
use horde_api::teams::{
    DeletedTeam, DeletedWorker, ModifyTeam, TeamDetails, TeamInput, TeamPatch, WorkerMessage,
    WorkerMessageInput, WorkerMessageQuery,
};
use reqwest::Method;

impl Client {
    /// Every team, with its figures summed over its workers.
    pub async fn teams(&self) -> Result<Vec<TeamDetails>> {
        self.call(Method::GET, "/teams", None::<&()>).await
    }

    /// Creates a team (trusted users); the answer carries its id.
    pub async fn create_team(&self, team: &TeamInput) -> Result<ModifyTeam> {
        self.call(Method::POST, "/teams", Some(team)).await
    }

    /// One team by id.
    pub async fn team(&self, id: &str) -> Result<TeamDetails> {
        let path = format!("/teams/{}", segment(id));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Changes a team's name or info (its creator or a moderator).
    pub async fn modify_team(&self, id: &str, patch: &TeamPatch) -> Result<ModifyTeam> {
        let path = format!("/teams/{}", segment(id));
        self.call(Method::PATCH, &path, Some(patch)).await
    }

    /// Deletes a team (its creator or a moderator); its workers are left in no team.
    pub async fn delete_team(&self, id: &str) -> Result<DeletedTeam> {
        let path = format!("/teams/{}", segment(id));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// A page of messages, newest first: the caller's own, or anyone's for a moderator.
    pub async fn worker_messages(&self, query: &WorkerMessageQuery) -> Result<Vec<WorkerMessage>> {
        self.get_with("/workers/messages", query).await
    }

    /// Sends a message to a worker (a moderator to any, an owner to their own).
    pub async fn send_worker_message(&self, message: &WorkerMessageInput) -> Result<WorkerMessage> {
        self.call(Method::POST, "/workers/messages", Some(message))
            .await
    }

    /// One message by id.
    pub async fn worker_message(&self, id: &str) -> Result<WorkerMessage> {
        let path = format!("/workers/messages/{}", segment(id));
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Deletes a message (its author or a moderator).
    pub async fn delete_worker_message(&self, id: &str) -> Result<SimpleMessage> {
        let path = format!("/workers/messages/{}", segment(id));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// Deletes a worker (its owner or a moderator); 423 `Locked` while a stored job names it.
    pub async fn delete_worker(&self, id: &str) -> Result<DeletedWorker> {
        let path = format!("/workers/{}", segment(id));
        self.call(Method::DELETE, &path, None::<&()>).await
    }
}
