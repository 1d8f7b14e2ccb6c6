//! The horde's modes, news and documents (issue 29, point 4), and the users list, account
//! deletion and awards (point 5).
//!
//! The modes are one database row, so every coordinator on a PostgreSQL database obeys the
//! same ones: each reads the row at most every [`MODES_CACHE_MS`] (a pop or a new request must
//! not wait on the database for them), and the coordinator that changes them knows at once.
//! So a change reaches every coordinator within that time, without an announcement of its own.
//!
//! News and documents are files the operator provides (`documents` in the configuration), read
//! when asked for so that an edit shows at once; whatever is not provided is the built-in
//! default in `defaults/`.

use crate::clock::{now, now_ms};
use crate::error::{refused, ApiError, ApiResult};
use crate::extract::ApiKey;
use crate::kinds::ServedKind;
use crate::state::AppState;
use horde_api::modes::{
    DocumentFormat, HordeDocument, HordeModes, HordeModesChange, KudosAwardRequest, KudosAwarded,
    Newspiece, SimpleResponse, UsersQuery, MAX_USERS_PAGE, USERS_PAGE_SIZE,
};
use horde_api::user::UserDetails;
use horde_api::Rc;
use horde_core::accounts::{Privilege, User};
use horde_core::alchemy::Alchemy;
use horde_core::modes::{self as rules, Deletion, Modes};
use horde_core::text::Text;
use horde_core::Image;
use horde_store::teams::WorkerDeletion;
use std::path::Path;
use std::sync::Mutex;
use uuid::Uuid;

/// How long a coordinator uses the modes it read.
pub const MODES_CACHE_MS: u64 = 2_000;

const DEFAULT_NEWS: &str = include_str!("defaults/news.json");

/// The modes as this coordinator last read them, and when (unix ms).
#[derive(Debug, Default)]
pub struct ModeCache {
    copy: Mutex<Option<(Modes, u64)>>,
}

impl ModeCache {
    fn fresh(&self, now_ms: u64) -> Option<Modes> {
        let copy = *self.copy.lock().unwrap_or_else(|e| e.into_inner());
        copy.filter(|(_, at)| now_ms.saturating_sub(*at) < MODES_CACHE_MS)
            .map(|(modes, _)| modes)
    }

    fn remember(&self, modes: Modes, now_ms: u64) {
        *self.copy.lock().unwrap_or_else(|e| e.into_inner()) = Some((modes, now_ms));
    }
}

/// A document of `/documents/…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    Terms,
    Privacy,
    Sponsors,
}

impl Document {
    fn name(self) -> &'static str {
        match self {
            Document::Terms => "terms",
            Document::Privacy => "privacy",
            Document::Sponsors => "sponsors",
        }
    }

    fn built_in(self, format: DocumentFormat) -> &'static str {
        use DocumentFormat::{Html, Markdown};
        match (self, format) {
            (Document::Terms, Html) => include_str!("defaults/terms.html"),
            (Document::Terms, Markdown) => include_str!("defaults/terms.md"),
            (Document::Privacy, Html) => include_str!("defaults/privacy.html"),
            (Document::Privacy, Markdown) => include_str!("defaults/privacy.md"),
            (Document::Sponsors, Html) => include_str!("defaults/sponsors.html"),
            (Document::Sponsors, Markdown) => include_str!("defaults/sponsors.md"),
        }
    }
}

impl AppState {
    /// The modes, read from the database at most every [`MODES_CACHE_MS`].
    pub async fn modes(&self) -> ApiResult<Modes> {
        let now = now_ms();
        if let Some(modes) = self.modes.fresh(now) {
            return Ok(modes);
        }
        let modes = self.store.modes().await?;
        self.modes.remember(modes, now);
        Ok(modes)
    }

    /// Whether a new request's answer keeps quiet about why it cannot run yet (the public
    /// horde's raid mode: no `NoAvailableWorker` message or warning).
    pub async fn hides_reasons(&self) -> ApiResult<bool> {
        Ok(self.modes().await?.raid)
    }

    /// `GET /status/modes`: raid mode only for a moderator's key; any other key sent is
    /// refused as on the public horde (unknown: 401, not a moderator: 403 `NotModerator`).
    pub async fn shown_modes(&self, key: &ApiKey) -> ApiResult<HordeModes> {
        let moderator = match key.0 {
            None => false,
            Some(_) => {
                let caller = self.authenticate(key).await?;
                if !caller.moderator {
                    return Err(refused(rules::AdminRefusal::NotModerator));
                }
                true
            }
        };
        Ok(self.modes().await?.shown(moderator))
    }

    /// `PUT /status/modes`: the modes named in `change`, changed and stored; the answer lists
    /// those.
    pub async fn change_modes(
        &self,
        caller: &User,
        change: &HordeModesChange,
    ) -> ApiResult<HordeModesChange> {
        rules::check_mode_change(caller, self.is_admin(caller), change).map_err(refused)?;
        let modes = self.store.modes().await?.changed(change);
        self.store.save_modes(&modes, caller.id, now()).await?;
        self.modes.remember(modes, now_ms());
        tracing::warn!(by = caller.id, ?modes, "the horde's modes changed");
        if change.maintenance_mode == Some(true) {
            let aborted = self.abort_for_maintenance().await?;
            tracing::warn!(aborted, "maintenance: the waiting requests were cancelled");
        }
        Ok(change.clone())
    }

    /// Entering maintenance cancels every unfinished request of every kind, as the public
    /// horde's `abort_for_maintenance` does: nothing more is handed out, jobs in flight still
    /// finish and are paid. Returns how many were cancelled.
    async fn abort_for_maintenance(&self) -> ApiResult<usize> {
        Ok(self.abort_all::<Image>().await?
            + self.abort_all::<Text>().await?
            + self.abort_all::<Alchemy>().await?)
    }

    async fn abort_all<K: ServedKind>(&self) -> ApiResult<usize> {
        let ids: Vec<Uuid> = K::live(self).read(|queue| {
            queue
                .requests()
                .filter(|r| !r.is_done() && !r.cancelled)
                .map(|r| r.id)
                .collect()
        });
        let mut cancelled = 0;
        for id in ids {
            match self.cancel::<K>(id).await {
                Ok(()) => cancelled += 1,
                // Finished and removed meanwhile.
                Err(e) if e.status.is_client_error() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(cancelled)
    }

    /// Refuses a new request (of any kind) while the horde is in maintenance.
    pub async fn refuse_in_maintenance(&self) -> ApiResult<()> {
        rules::check_new_request(&self.modes().await?).map_err(refused)
    }

    /// Refuses a new worker of `owner` in invite-only mode unless they were invited to have
    /// more than they have.
    pub async fn check_invite_only(&self, owner: &User) -> ApiResult<()> {
        let modes = self.modes().await?;
        let workers = self
            .workers
            .read(|registry| registry.count_of_user(owner.id));
        rules::check_new_worker(&modes, owner, workers).map_err(refused)
    }

    /// `GET /status/news`: the operator's news (or the built-in), newest first.
    pub async fn news(&self) -> ApiResult<Vec<Newspiece>> {
        let file = &self.config.documents.news;
        let (text, source) = if file.as_os_str().is_empty() {
            (DEFAULT_NEWS.to_string(), "the built-in news".to_string())
        } else {
            let text = tokio::fs::read_to_string(file)
                .await
                .map_err(|e| ApiError::internal(format!("news file {}: {e}", file.display())))?;
            (text, format!("news file {}", file.display()))
        };
        let mut news: Vec<Newspiece> = serde_json::from_str(&text)
            .map_err(|e| ApiError::internal(format!("{source}: {e}")))?;
        news.sort_by(|a, b| b.date_published.cmp(&a.date_published));
        Ok(news)
    }

    /// `GET /documents/{name}`: the operator's file in `format`, or the built-in one.
    pub async fn document(
        &self,
        document: Document,
        format: DocumentFormat,
    ) -> ApiResult<HordeDocument> {
        let text = match operator_document(&self.config.documents.dir, document, format).await? {
            Some(text) => text,
            None => document.built_in(format).to_string(),
        };
        Ok(match format {
            DocumentFormat::Html => HordeDocument {
                html: Some(text),
                markdown: None,
            },
            DocumentFormat::Markdown => HordeDocument {
                html: None,
                markdown: Some(text),
            },
        })
    }

    /// `GET /users`: a page of 25 users, as anyone sees them.
    pub async fn users_list(&self, query: &UsersQuery) -> ApiResult<Vec<UserDetails>> {
        query.validate().map_err(ApiError::validation)?;
        let page = query.page();
        if page > MAX_USERS_PAGE {
            return Ok(vec![]);
        }
        let size = i64::from(USERS_PAGE_SIZE);
        let users = self
            .store
            .users_page(query.sort(), (page - 1) * size, size)
            .await?;
        let mut details = Vec::with_capacity(users.len());
        for user in &users {
            details.push(
                self.user_details_with_flows(user, Privilege::Public)
                    .await?,
            );
        }
        Ok(details)
    }

    /// `DELETE /users/{id}`: the first call marks the account deleted (unusable at once), a
    /// second one 30 days later wipes its personal data and shared keys.
    pub async fn delete_user(&self, caller: &User, id: &str) -> ApiResult<SimpleResponse> {
        let not_found =
            || ApiError::new(Rc::UserNotFound, format!("User with ID '{id}' not found."));
        let target_id: i64 = id.parse().map_err(|_| not_found())?;
        let target = self
            .store
            .user_by_id(target_id)
            .await?
            .ok_or_else(not_found)?;
        match rules::check_deletion(caller, &target, now()).map_err(refused)? {
            Deletion::MarkDeleted => self.store.mark_user_deleted(target.id, now()).await?,
            Deletion::Wipe => {
                self.store.wipe_user(target.id).await?;
                let kept = self.delete_workers_of(target.id).await?;
                tracing::info!(
                    user = target.id,
                    kept,
                    "wiped; workers still named by jobs kept"
                );
            }
        }
        self.accounts.forget_all();
        tracing::warn!(user = target.id, by = caller.id, "account deleted");
        Ok(SimpleResponse {
            message: "OK".into(),
        })
    }

    /// Deletes `user_id`'s workers, but those a stored job still names (they go with that
    /// job's request, and can no longer pop: their owner's key is gone). Returns how many were
    /// kept.
    async fn delete_workers_of(&self, user_id: i64) -> ApiResult<usize> {
        let ids: Vec<Uuid> = self.workers.read(|registry| {
            registry
                .ids_of_user(user_id)
                .iter()
                .filter_map(|id| id.parse().ok())
                .collect()
        });
        let mut kept = 0;
        for id in ids {
            match self.store.delete_worker(id).await? {
                WorkerDeletion::Referenced => kept += 1,
                WorkerDeletion::Deleted | WorkerDeletion::Unknown => {
                    self.workers.change(|registry| registry.remove(id));
                }
            }
        }
        self.workers.changed();
        Ok(kept)
    }

    /// `POST /kudos/award`: an administrator gives kudos from the horde to a user.
    pub async fn award_kudos_to(
        &self,
        caller: &User,
        request: &KudosAwardRequest,
    ) -> ApiResult<KudosAwarded> {
        request.validate().map_err(ApiError::validation)?;
        if !self.is_admin(caller) {
            return Err(refused(rules::AdminRefusal::NotAdmin));
        }
        let invalid_target = || {
            ApiError::new(
                Rc::KudosValidationError,
                format!("Invalid target username '{}'.", request.username),
            )
        };
        let target_id =
            horde_core::accounts::user_id_of_alias(&request.username).ok_or_else(invalid_target)?;
        let receiver = self
            .store
            .user_by_id(target_id)
            .await?
            .filter(|u| u.deleted_at.is_none())
            .ok_or_else(invalid_target)?;
        rules::check_award(true, &receiver).map_err(refused)?;
        let amount = request.amount as f64;
        self.store
            .administrator_award(receiver.id, amount, now())
            .await?;
        self.accounts.forget_all();
        tracing::info!(to = receiver.id, by = caller.id, amount, "kudos awarded");
        Ok(KudosAwarded { awarded: amount })
    }
}

/// The operator's `document` in `format` from `dir`: none when no directory is configured or
/// the file is not there.
async fn operator_document(
    dir: &Path,
    document: Document,
    format: DocumentFormat,
) -> ApiResult<Option<String>> {
    if dir.as_os_str().is_empty() {
        return Ok(None);
    }
    let extension = match format {
        DocumentFormat::Html => "html",
        DocumentFormat::Markdown => "md",
    };
    let file = dir.join(format!("{}.{extension}", document.name()));
    match tokio::fs::read_to_string(&file).await {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ApiError::internal(format!(
            "document {}: {e}",
            file.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_serves_a_copy_younger_than_its_lifetime_only() {
        let cache = ModeCache::default();
        assert_eq!(cache.fresh(1_000), None);
        let modes = Modes {
            maintenance: true,
            ..Modes::default()
        };
        cache.remember(modes, 1_000);
        assert_eq!(cache.fresh(1_000 + MODES_CACHE_MS - 1), Some(modes));
        assert_eq!(cache.fresh(1_000 + MODES_CACHE_MS), None);
    }

    #[test]
    fn the_built_in_news_and_documents_parse_and_differ_by_format() {
        let news: Vec<Newspiece> = serde_json::from_str(DEFAULT_NEWS).unwrap();
        assert!(!news.is_empty());
        for document in [Document::Terms, Document::Privacy, Document::Sponsors] {
            let html = document.built_in(DocumentFormat::Html);
            let markdown = document.built_in(DocumentFormat::Markdown);
            assert!(html.starts_with("<h1>"), "{document:?}");
            assert!(markdown.starts_with("# "), "{document:?}");
        }
    }
}
