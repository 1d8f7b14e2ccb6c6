//! A typed async client of AI Horde API v2.
//!
//! One method per endpoint, taking and returning the wire types of `horde-api`, so the worker,
//! the `horde generate` command and the integration tests speak exactly the JSON the coordinator
//! parses. It works against our coordinator and against any AI Horde v2 server.
//!
//! Errors keep what the server said: a non-2xx answer with an AI Horde error body becomes
//! [`ClientError::Api`] with its status and `rc`, so callers can branch on the `rc` as the public
//! horde's clients do.
//!
//! The image, text, interrogation, user, worker and shared-key methods are here; the
//! administration areas added with issue 29 have a module each, as further `impl Client`
//! blocks: styles and collections (`styles`), teams, workers' messages and worker deletion
//! (`teams`), the horde's modes, news, documents, the users list, account deletion and awards
//! (`modes`), and moderators' IP operations with image ratings (`operations`).

mod modes;
mod operations;
mod reference;
mod styles;
mod teams;

use horde_api::batch::{BatchRequest, BatchResponse, BatchStatus};
use horde_api::image::{
    AsyncResponse, ImageRequest, PopRequest, PopResponse, RequestStatus, RequestStatusCheck,
    SubmitRequest, SubmitResponse,
};
use horde_api::interrogation::{
    InterrogationAsyncResponse, InterrogationPopRequest, InterrogationPopResponse,
    InterrogationRequest, InterrogationStatus, InterrogationSubmitRequest,
};
use horde_api::shared_key::{SharedKeyDetails, SharedKeyInput, SharedKeyPatch};
use horde_api::status::{ActiveModel, Heartbeat, HordePerformance};
use horde_api::text::{
    TextAsyncResponse, TextPopRequest, TextPopResponse, TextRequest, TextRequestStatus,
    TextSubmitRequest,
};
use horde_api::user::{
    KudosTransferRequest, KudosTransferred, LedgerEntry, ModifyUser, ModifyUserResponse, NewApiKey,
    TestUserRequest, TestUserResponse, UserDetails,
};
use horde_api::webhook::WebhookSecret;
use horde_api::worker::{ModifyWorker, ModifyWorkerResponse, WorkerDetails};
use horde_api::ErrorBody;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// What this client reports as its `Client-Agent` (name:version:contact, as AI Horde asks).
pub const CLIENT_AGENT: &str = concat!("horde-client:", env!("CARGO_PKG_VERSION"), ":unknown");

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an AI Horde error body.
    #[error("{status}: {} ({})", body.message, body.rc.as_deref().unwrap_or("no rc"))]
    Api { status: StatusCode, body: ErrorBody },
    /// The server answered something that is not the expected JSON.
    #[error("{status}: unexpected answer from the server: {detail}")]
    Unexpected { status: StatusCode, detail: String },
    /// The request never got an answer (connection refused, timeout, …).
    #[error("HTTP error: {0}")]
    Transport(#[from] reqwest::Error),
    /// A download was longer than the caller allows; it was cut off there.
    #[error("the download is larger than {limit} bytes")]
    TooLarge { limit: usize },
}

impl ClientError {
    /// The HTTP status of the answer, when there was one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            ClientError::Transport(e) => e.status(),
            ClientError::TooLarge { .. } => None,
        }
    }

    /// The AI Horde return code (`rc`) of an error answer.
    pub fn rc(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => body.rc.as_deref(),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A connection to one horde, acting as one API key.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    root: String,
    api_key: String,
    client_agent: String,
}

impl Client {
    /// `base_url` is the server's root (`http://127.0.0.1:7001`); a trailing `/api` or `/api/v2`
    /// is accepted too.
    pub fn new(base_url: &str, api_key: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .expect("a client with only timeouts set always builds");
        Client {
            http,
            root: root_of(base_url),
            api_key: api_key.into(),
            client_agent: CLIENT_AGENT.into(),
        }
    }

    /// The same connection pool acting as another key.
    pub fn with_api_key(&self, api_key: impl Into<String>) -> Self {
        Client {
            api_key: api_key.into(),
            ..self.clone()
        }
    }

    /// The same key and connection pool, talking to another server (another coordinator of the
    /// same horde, for instance).
    pub fn with_base_url(&self, base_url: &str) -> Self {
        Client {
            root: root_of(base_url),
            ..self.clone()
        }
    }

    /// Reports `agent` (name:version:contact) instead of this crate's own.
    pub fn with_client_agent(mut self, agent: impl Into<String>) -> Self {
        self.client_agent = agent.into();
        self
    }

    /// The server root this client talks to.
    pub fn root(&self) -> &str {
        &self.root
    }

    pub async fn heartbeat(&self) -> Result<Heartbeat> {
        self.call(Method::GET, "/status/heartbeat", None::<&()>)
            .await
    }

    pub async fn generate_async(&self, request: &ImageRequest) -> Result<AsyncResponse> {
        self.call(Method::POST, "/generate/async", Some(request))
            .await
    }

    pub async fn check(&self, id: &str) -> Result<RequestStatusCheck> {
        self.call(Method::GET, &format!("/generate/check/{id}"), None::<&()>)
            .await
    }

    pub async fn status(&self, id: &str) -> Result<RequestStatus> {
        self.call(Method::GET, &format!("/generate/status/{id}"), None::<&()>)
            .await
    }

    /// Queues a batch of prompts sharing one request's parameters (our extension): one request
    /// per prompt under one batch id.
    pub async fn generate_batch(&self, batch: &BatchRequest) -> Result<BatchResponse> {
        self.call(Method::POST, "/generate/batch", Some(batch))
            .await
    }

    /// Each member's progress and the whole batch's.
    pub async fn batch_status(&self, id: &str) -> Result<BatchStatus> {
        self.call(Method::GET, &format!("/generate/batch/{id}"), None::<&()>)
            .await
    }

    /// Cancels every member of a batch not done yet.
    pub async fn cancel_batch(&self, id: &str) -> Result<BatchStatus> {
        self.call(
            Method::DELETE,
            &format!("/generate/batch/{id}"),
            None::<&()>,
        )
        .await
    }

    /// Cancels a request; the answer carries the images finished so far.
    pub async fn cancel(&self, id: &str) -> Result<RequestStatus> {
        self.call(
            Method::DELETE,
            &format!("/generate/status/{id}"),
            None::<&()>,
        )
        .await
    }

    pub async fn pop(&self, pop: &PopRequest) -> Result<PopResponse> {
        self.call(Method::POST, "/generate/pop", Some(pop)).await
    }

    pub async fn submit(&self, submit: &SubmitRequest) -> Result<SubmitResponse> {
        self.call(Method::POST, "/generate/submit", Some(submit))
            .await
    }

    /// PUTs an image to an upload URL from a pop (`r2_upload`), as the reGen worker does.
    pub async fn upload(&self, url: &str, webp: Vec<u8>) -> Result<()> {
        let response = self
            .http
            .put(url)
            .header("content-type", "image/webp")
            .body(webp)
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(error_from(status, &body))
        }
    }

    /// Downloads an image from a `status` download URL.
    pub async fn download(&self, url: &str) -> Result<Vec<u8>> {
        let response = self.http.get(url).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status.is_success() {
            Ok(body.to_vec())
        } else {
            Err(error_from(status, &body))
        }
    }

    /// Downloads at most `max_bytes` from `url` within `timeout` (a source image from a pop):
    /// an answer that declares or sends more is cut off with [`ClientError::TooLarge`] before
    /// it is held whole.
    pub async fn download_at_most(
        &self,
        url: &str,
        max_bytes: usize,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>> {
        let too_large = ClientError::TooLarge { limit: max_bytes };
        let mut response = self.http.get(url).timeout(timeout).send().await?;
        let status = response.status();
        if response
            .content_length()
            .is_some_and(|length| length > max_bytes as u64)
        {
            return Err(too_large);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > max_bytes {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            Ok(body)
        } else {
            Err(error_from(status, &body))
        }
    }

    pub async fn find_user(&self) -> Result<UserDetails> {
        self.call(Method::GET, "/find_user", None::<&()>).await
    }

    pub async fn user(&self, id: u64) -> Result<UserDetails> {
        self.call(Method::GET, &format!("/users/{id}"), None::<&()>)
            .await
    }

    /// The newest `limit` rows (50 when `None`) of user `id`'s kudos ledger below the row
    /// `before`, newest first: for the user themself and moderators.
    pub async fn ledger(
        &self,
        id: i64,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<LedgerEntry>> {
        let mut path = format!("/users/{id}/ledger?limit={}", limit.unwrap_or(50));
        if let Some(before) = before {
            path.push_str(&format!("&before={before}"));
        }
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Sends `amount` kudos to the user `alias#id`.
    pub async fn transfer_kudos(&self, username: &str, amount: f64) -> Result<KudosTransferred> {
        let body = KudosTransferRequest {
            username: username.to_string(),
            amount,
        };
        self.call(Method::POST, "/kudos/transfer", Some(&body))
            .await
    }

    /// Creates a user through the test-only bootstrap endpoint (enabled by the operator).
    pub async fn create_test_user(&self, request: &TestUserRequest) -> Result<TestUserResponse> {
        self.call(Method::POST, "/dev/test-user", Some(request))
            .await
    }

    pub async fn workers(&self) -> Result<Vec<WorkerDetails>> {
        self.call(Method::GET, "/workers", None::<&()>).await
    }

    pub async fn worker(&self, id: &str) -> Result<WorkerDetails> {
        self.call(Method::GET, &format!("/workers/{id}"), None::<&()>)
            .await
    }

    pub async fn worker_by_name(&self, name: &str) -> Result<WorkerDetails> {
        let path = format!("/workers/name/{}", segment(name));
        self.call(Method::GET, &path, None::<&()>).await
    }

    pub async fn modify_worker(
        &self,
        id: &str,
        change: &ModifyWorker,
    ) -> Result<ModifyWorkerResponse> {
        self.call(Method::PUT, &format!("/workers/{id}"), Some(change))
            .await
    }

    /// `PUT /users/{id}`.
    pub async fn modify_user(&self, id: i64, change: &ModifyUser) -> Result<ModifyUserResponse> {
        self.call(Method::PUT, &format!("/users/{id}"), Some(change))
            .await
    }

    /// The secret that signs the caller's (user `id`'s) webhook calls.
    pub async fn webhook_secret(&self, id: i64) -> Result<WebhookSecret> {
        self.call(
            Method::GET,
            &format!("/users/{id}/webhook_secret"),
            None::<&()>,
        )
        .await
    }

    /// A new webhook secret for the caller (user `id`); calls not made yet are signed with it.
    pub async fn rotate_webhook_secret(&self, id: i64) -> Result<WebhookSecret> {
        self.call(
            Method::POST,
            &format!("/users/{id}/webhook_secret"),
            None::<&()>,
        )
        .await
    }

    /// A new API key for the caller (user `id`); the client's own key stops working.
    pub async fn reset_api_key(&self, id: i64) -> Result<NewApiKey> {
        self.call(Method::POST, &format!("/users/{id}/reset_key"), None::<&()>)
            .await
    }

    pub async fn create_shared_key(&self, input: &SharedKeyInput) -> Result<SharedKeyDetails> {
        self.call(Method::PUT, "/sharedkeys", Some(input)).await
    }

    pub async fn shared_key(&self, id: &str) -> Result<SharedKeyDetails> {
        self.call(Method::GET, &format!("/sharedkeys/{id}"), None::<&()>)
            .await
    }

    pub async fn modify_shared_key(
        &self,
        id: &str,
        patch: &SharedKeyPatch,
    ) -> Result<SharedKeyDetails> {
        self.call(Method::PATCH, &format!("/sharedkeys/{id}"), Some(patch))
            .await
    }

    pub async fn delete_shared_key(&self, id: &str) -> Result<serde_json::Value> {
        self.call(Method::DELETE, &format!("/sharedkeys/{id}"), None::<&()>)
            .await
    }

    pub async fn models(&self) -> Result<Vec<ActiveModel>> {
        self.call(Method::GET, "/status/models", None::<&()>).await
    }

    pub async fn performance(&self) -> Result<HordePerformance> {
        self.call(Method::GET, "/status/performance", None::<&()>)
            .await
    }

    /// Queues a text generation (`POST /generate/text/async`).
    pub async fn text_async(&self, request: &TextRequest) -> Result<TextAsyncResponse> {
        self.call(Method::POST, "/generate/text/async", Some(request))
            .await
    }

    /// A text request's status with its finished texts.
    pub async fn text_status(&self, id: &str) -> Result<TextRequestStatus> {
        let path = format!("/generate/text/status/{id}");
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Cancels a text request; the answer carries the texts finished so far.
    pub async fn text_cancel(&self, id: &str) -> Result<TextRequestStatus> {
        let path = format!("/generate/text/status/{id}");
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// A text worker's pop (`POST /generate/text/pop`).
    pub async fn text_pop(&self, pop: &TextPopRequest) -> Result<TextPopResponse> {
        self.call(Method::POST, "/generate/text/pop", Some(pop))
            .await
    }

    /// A text worker's result (`POST /generate/text/submit`); the answer is its `{reward}`.
    pub async fn text_submit(&self, submit: &TextSubmitRequest) -> Result<SubmitResponse> {
        self.call(Method::POST, "/generate/text/submit", Some(submit))
            .await
    }

    /// Queues an interrogation (`POST /interrogate/async`): forms run on one image.
    pub async fn interrogate_async(
        &self,
        request: &InterrogationRequest,
    ) -> Result<InterrogationAsyncResponse> {
        self.call(Method::POST, "/interrogate/async", Some(request))
            .await
    }

    /// An interrogation's forms with their states and results.
    pub async fn interrogate_status(&self, id: &str) -> Result<InterrogationStatus> {
        let path = format!("/interrogate/status/{id}");
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Cancels an interrogation; the answer carries the forms finished so far.
    pub async fn interrogate_cancel(&self, id: &str) -> Result<InterrogationStatus> {
        let path = format!("/interrogate/status/{}", segment(id));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// An alchemist's pop (`POST /interrogate/pop`).
    pub async fn interrogate_pop(
        &self,
        pop: &InterrogationPopRequest,
    ) -> Result<InterrogationPopResponse> {
        self.call(Method::POST, "/interrogate/pop", Some(pop)).await
    }

    /// An alchemist's result (`POST /interrogate/submit`); the answer is its `{reward}`.
    pub async fn interrogate_submit(
        &self,
        submit: &InterrogationSubmitRequest,
    ) -> Result<SubmitResponse> {
        self.call(Method::POST, "/interrogate/submit", Some(submit))
            .await
    }

    /// A request to `path` under `/api/v2` with this client's key and agent, for endpoints this
    /// crate does not wrap yet.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/api/v2{path}", self.root))
            .header("apikey", &self.api_key)
            .header("Client-Agent", &self.client_agent)
    }

    /// Sends `body` (as JSON, when there is one) to `path` and reads the answer as a `T`.
    pub(crate) async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        answer(request).await
    }

    /// `GET path?query` (the query's `None` fields left out), read as a `T`.
    pub(crate) async fn get_with<Q: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<T> {
        answer(self.request(Method::GET, path).query(query)).await
    }
}

/// Sends `request` and reads a 2xx answer as a `T`; any other answer is an error that keeps
/// what the server said.
pub(crate) async fn answer<T: DeserializeOwned>(request: RequestBuilder) -> Result<T> {
    let response = request.send().await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    if !status.is_success() {
        return Err(error_from(status, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
        status,
        detail: format!(
            "{e}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
        ),
    })
}

/// `text` as one path segment: every byte but RFC 3986's unreserved ones percent-encoded, so a
/// name such as `alias#1::style::noir` or one with `/`, `?` or spaces reaches the server whole.
pub(crate) fn segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn root_of(base_url: &str) -> String {
    let trimmed = base_url.trim_end_matches('/');
    let trimmed = trimmed
        .strip_suffix("/api/v2")
        .or_else(|| trimmed.strip_suffix("/api"))
        .unwrap_or(trimmed);
    trimmed.to_string()
}

fn error_from(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => ClientError::Api { status, body },
        Err(_) => ClientError::Unexpected {
            status,
            detail: String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_forms_share_one_root() {
        for url in [
            "http://h:1",
            "http://h:1/",
            "http://h:1/api",
            "http://h:1/api/",
            "http://h:1/api/v2/",
        ] {
            assert_eq!(root_of(url), "http://h:1", "{url}");
        }
    }

    #[test]
    fn error_bodies_keep_their_rc() {
        let err = error_from(
            StatusCode::NOT_FOUND,
            br#"{"message":"no such request","rc":"RequestNotFound"}"#,
        );
        assert_eq!(err.rc(), Some("RequestNotFound"));
        assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
        let err = error_from(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert!(matches!(err, ClientError::Unexpected { .. }));
        assert_eq!(err.rc(), None);
    }

    #[test]
    fn a_segment_keeps_unreserved_bytes_and_encodes_the_rest() {
        assert_eq!(segment("Ab-1._~"), "Ab-1._~");
        assert_eq!(segment("me#7::style::a b"), "me%237%3A%3Astyle%3A%3Aa%20b");
        assert_eq!(segment("a/b?c%"), "a%2Fb%3Fc%25");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
