//! The horde's administration (issue 29): its modes (`/status/modes`), news (`/status/news`)
//! and documents (`/documents/…`), the users list (`GET /users`), account deletion
//! (`DELETE /users/{id}`) and awards (`POST /kudos/award`).
//!
//! `modes` leaves the anonymous key out (see there). The users list takes horde-api's `UserSort` rather than its `UsersQuery` (which the server
//! only reads): the client sends the sort's public name, `kudos` or `age`.

use crate::{answer, Client, Result};
use horde_api::modes::{
    DocumentFormat, HordeDocument, HordeModes, HordeModesChange, KudosAwardRequest, KudosAwarded,
    Newspiece, SimpleResponse, UserSort,
};
use horde_api::user::UserDetails;
use horde_api::ANONYMOUS_API_KEY;
use reqwest::Method;

impl Client {
    /// Maintenance and invite-only mode; raid mode too with a moderator's key. The server
    /// refuses any other key it is sent (403 `NotModerator`, as the public horde), so the
    /// anonymous key is not sent: an anonymous client reads the public modes.
    pub async fn modes(&self) -> Result<HordeModes> {
        let url = format!("{}/api/v2/status/modes", self.root);
        let mut request = self
            .http
            .get(url)
            .header("Client-Agent", &self.client_agent);
        if self.api_key != ANONYMOUS_API_KEY {
            request = request.header("apikey", &self.api_key);
        }
        answer(request).await
    }

    /// Changes the modes (maintenance: administrators; the others: moderators); the answer
    /// lists the modes changed.
    pub async fn change_modes(&self, change: &HordeModesChange) -> Result<HordeModesChange> {
        self.call(Method::PUT, "/status/modes", Some(change)).await
    }

    /// The horde's news, newest first.
    pub async fn news(&self) -> Result<Vec<Newspiece>> {
        self.call(Method::GET, "/status/news", None::<&()>).await
    }

    /// The terms of service in `format` (only that format's field is set).
    pub async fn terms(&self, format: DocumentFormat) -> Result<HordeDocument> {
        self.document("terms", format).await
    }

    /// The privacy policy in `format`.
    pub async fn privacy(&self, format: DocumentFormat) -> Result<HordeDocument> {
        self.document("privacy", format).await
    }

    /// The sponsors in `format`.
    pub async fn sponsors(&self, format: DocumentFormat) -> Result<HordeDocument> {
        self.document("sponsors", format).await
    }

    /// Page `page` (from 1) of 25 users as anyone sees them, sorted by `sort`.
    pub async fn users(&self, sort: UserSort, page: i64) -> Result<Vec<UserDetails>> {
        let sort = match sort {
            UserSort::Kudos => "kudos",
            UserSort::Age => "age",
        };
        let query = [("sort", sort.to_string()), ("page", page.to_string())];
        self.get_with("/users", &query).await
    }

    /// Deletes user `id`'s account (the user themself or a moderator): unusable at once,
    /// wiped by a second call 30 days later or more.
    pub async fn delete_user(&self, id: i64) -> Result<SimpleResponse> {
        let path = format!("/users/{id}");
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// Awards `amount` kudos from the horde to the user `alias#id` (administrators only).
    pub async fn award_kudos(&self, username: &str, amount: i64) -> Result<KudosAwarded> {
        let body = KudosAwardRequest {
            username: username.to_string(),
            amount,
        };
        self.call(Method::POST, "/kudos/award", Some(&body)).await
    }

    async fn document(&self, name: &str, format: DocumentFormat) -> Result<HordeDocument> {
        let path = format!("/documents/{name}");
        self.get_with(&path, &[("format", format)]).await
    }
}
