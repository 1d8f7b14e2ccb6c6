//! Webhook calls: a request's `webhook` URL is POSTed once per finished generation (the public
//! horde's body) and once when the whole request ends (done, faulted or cancelled; ours).
//!
//! * **Checked at acceptance** ([`AppState::check_webhook`]): the URL's form
//!   (`horde_core::webhook::check_url`), then every address its host resolves to
//!   (`check_resolved`): a URL into the operator's own network is refused unless the operator
//!   allows it. It is checked again before each call, and the call connects only to the
//!   addresses just checked, so a name that later resolves elsewhere (DNS rebinding) is caught.
//! * **Durable**: the calls announcing a change are written to the store's outbox in the
//!   transaction that stores the change (`lifecycle.rs` builds them with [`deliveries_for`]),
//!   so a crash loses none; [`run`], on every coordinator, claims due calls for a lease (each is
//!   made by one coordinator at a time), makes them, and deletes each once delivered or given
//!   up. A call that fails is tried again with exponential backoff and jitter until the
//!   configured time has passed since its first try.
//! * **Signed and identified**: `X-Horde-Signature: sha256=<HMAC-SHA256 of the body>` with the
//!   requester's webhook secret (`GET`/`POST /api/v2/users/{id}/webhook_secret`), the delivery's
//!   id in `X-Horde-Delivery` and `Idempotency-Key` (the same on every try), and the event in
//!   `X-Horde-Event`. Redirects are not followed.

use crate::clock::now;
use crate::error::{refused, ApiError, ApiResult};
use crate::kinds::ServedKind;
use crate::metrics::WebhookOutcome;
use crate::state::{AppState, SharedState};
use horde_api::webhook::{FinalState, RequestFinishedWebhook, WebhookBody};
use horde_api::Rc;
use horde_core::request::{Job, JobState, LiveRequest};
use horde_core::webhook::{self, WebhookRefusal, WebhookTarget};
use horde_core::Refusal;
use horde_store::WebhookDelivery;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::sync::Notify;

/// Calls claimed (and made concurrently) at a time.
const CLAIM_BATCH: u32 = 32;
/// How often due calls are looked for when nothing wakes the sender.
const POLL: Duration = Duration::from_secs(1);
/// The most of an answer's body kept as the last error.
const MAX_ERROR_CHARS: usize = 300;

/// The outbox's wake-up: rung when calls were stored, so they go out at once instead of at the
/// next poll.
#[derive(Default)]
pub struct Outbox {
    stored: Notify,
}

impl Outbox {
    /// `calls` were stored: wake the sender if there are any.
    pub fn stored(&self, calls: &[WebhookDelivery]) {
        if !calls.is_empty() {
            self.stored.notify_one();
        }
    }

    async fn wait(&self) {
        let _ = tokio::time::timeout(POLL, self.stored.notified()).await;
    }
}

impl AppState {
    /// Refuses a webhook URL this horde will not call: its form, or any address its host
    /// resolves to, per the operator's `[webhooks]` policy.
    pub async fn check_webhook(&self, url: &str) -> ApiResult<()> {
        let policy = self.config.webhooks.policy();
        let target = webhook::check_url(url, &policy).map_err(refused)?;
        let addrs = resolve(&target).await.map_err(refused)?;
        webhook::check_resolved(&target, &addrs, &policy).map_err(refused)
    }

    /// The secret that signs `user_id`'s webhook calls (made the first time it is asked for).
    pub async fn webhook_secret_of(&self, user_id: i64) -> ApiResult<String> {
        let made = webhook::new_webhook_secret(&mut rand::rng());
        Ok(self.store.webhook_secret(user_id, || made).await?)
    }

    /// A user's webhook secret, for the user themself.
    pub async fn read_webhook_secret(
        &self,
        caller: &horde_core::User,
        id: &str,
    ) -> ApiResult<String> {
        only_the_user(caller, id)?;
        self.webhook_secret_of(caller.id).await
    }

    /// Replaces a user's webhook secret (the user themself): calls not yet made are signed
    /// with the new one.
    pub async fn rotate_webhook_secret(
        &self,
        caller: &horde_core::User,
        id: &str,
    ) -> ApiResult<String> {
        only_the_user(caller, id)?;
        let secret = webhook::new_webhook_secret(&mut rand::rng());
        self.store.set_webhook_secret(caller.id, &secret).await?;
        tracing::info!(user = caller.id, "webhook secret rotated");
        Ok(secret)
    }
}

fn only_the_user(caller: &horde_core::User, id: &str) -> ApiResult<()> {
    if id.parse::<i64>().ok() != Some(caller.id) {
        return Err(ApiError::new(
            Rc::NotOwner,
            "Only the user themself can read or rotate their webhook secret.",
        ));
    }
    Ok(())
}

/// The addresses `target`'s host resolves to (a literal address is its own).
async fn resolve(target: &WebhookTarget) -> Result<Vec<IpAddr>, WebhookRefusal> {
    if let Some(ip) = target.literal_ip {
        return Ok(vec![ip]);
    }
    let unresolvable = || WebhookRefusal::Unresolvable {
        host: target.host.clone(),
    };
    let found = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|_| unresolvable())?;
    let mut addrs: Vec<IpAddr> = found.map(|a| a.ip()).collect();
    addrs.dedup();
    Ok(addrs)
}

/// The webhook calls announcing that `job` of `before`'s request finished, as `after` now
/// stands: the generation (unless the job faulted), and the end of the request if this change
/// ended it. None when the request has no webhook.
pub(crate) async fn deliveries_for<K: ServedKind>(
    state: &AppState,
    before_done: bool,
    after: &LiveRequest<K>,
    job: Option<&Job>,
) -> Vec<WebhookDelivery> {
    let Some(url) = K::webhook(&after.body) else {
        return vec![];
    };
    let now = now();
    let mut calls = vec![];
    if let Some(job) = job.filter(|j| j.state.is_finished()) {
        let body = K::generation_webhook(state, after, job).await;
        calls.push(delivery(after.user_id, url, body, now));
    }
    if !before_done && after.is_done() {
        calls.push(delivery(after.user_id, url, request_finished(after), now));
    }
    calls
}

fn delivery(user_id: i64, url: &str, body: WebhookBody, now: i64) -> WebhookDelivery {
    let json = serde_json::to_string(&body).expect("webhook bodies serialise");
    WebhookDelivery::new(user_id, url, body.event(), json, now)
}

/// Our call at the end of a request.
fn request_finished<K: ServedKind>(request: &LiveRequest<K>) -> WebhookBody {
    let count =
        |pred: &dyn Fn(&Job) -> bool| request.jobs.iter().filter(|j| pred(j)).count() as u32;
    let state = if request.faulted {
        FinalState::Faulted
    } else if request.cancelled {
        FinalState::Cancelled
    } else {
        FinalState::Done
    };
    WebhookBody::RequestFinished(RequestFinishedWebhook {
        request: request.id.to_string(),
        state,
        requested: request.jobs_total,
        finished: count(&|j| j.state.is_finished()),
        censored: count(&|j| j.censored),
        faulted: count(&|j| j.state == JobState::Faulted),
        kudos: request.consumed_kudos,
    })
}

/// Makes the due calls, forever (the caller aborts it on shutdown).
pub async fn run(state: SharedState) {
    // Alone on its database, this coordinator's only claims are its previous run's: calls a
    // crash interrupted go out now rather than when their lease ends.
    if !state.is_clustered() {
        if let Err(error) = state.store.release_webhook_claims().await {
            tracing::warn!(%error, "could not release the webhook calls of the last run");
        }
    }
    loop {
        // A claimed call is this coordinator's to make for a call's time and a little more;
        // then another may claim it (its claimer died during it). A claimer that is merely
        // slow may then see it made twice: under one delivery id, which receivers drop.
        let lease = state.config.webhooks.timeout_secs.max(1) as i64 + 15;
        match state
            .store
            .claim_due_webhooks(now(), lease, CLAIM_BATCH)
            .await
        {
            Ok(due) if !due.is_empty() => {
                let mut calls = tokio::task::JoinSet::new();
                for delivery in due {
                    let state = state.clone();
                    calls.spawn(async move { state.make_call(delivery).await });
                }
                while calls.join_next().await.is_some() {}
                continue;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not read the webhook outbox"),
        }
        state.webhooks.wait().await;
    }
}

/// How one try of a call went.
enum Tried {
    Delivered,
    /// Not to be tried again (a refused URL, a 4xx that says so).
    Refused(String),
    /// May succeed later.
    Failed(String),
}

impl AppState {
    /// Makes one try of `delivery` and records what came of it.
    async fn make_call(&self, delivery: WebhookDelivery) {
        let tried = self.try_call(&delivery).await;
        let attempts = delivery.attempts + 1;
        let outcome = match tried {
            Tried::Delivered => WebhookOutcome::Delivered,
            Tried::Refused(error) => {
                tracing::warn!(delivery = %delivery.id, %error, "webhook refused; not retried");
                WebhookOutcome::Failed
            }
            Tried::Failed(error) => {
                let next = self.config.webhooks.backoff().next_attempt_at(
                    attempts,
                    delivery.created,
                    now(),
                    &mut rand::rng(),
                );
                match next {
                    Some(at) => {
                        let stored = self
                            .store
                            .retry_webhook_at(delivery.id, attempts, at, &error)
                            .await;
                        if let Err(e) = stored {
                            tracing::warn!(error = %e, "could not reschedule a webhook call");
                        }
                        self.metrics.webhook_delivery(WebhookOutcome::Retried);
                        return;
                    }
                    None => {
                        tracing::warn!(delivery = %delivery.id, attempts, %error, "webhook given up");
                        WebhookOutcome::GaveUp
                    }
                }
            }
        };
        if let Err(error) = self.store.remove_webhook(delivery.id).await {
            tracing::warn!(%error, "could not remove a finished webhook call");
        }
        self.metrics.webhook_delivery(outcome);
    }

    /// One POST of `delivery`, to the addresses its URL resolves to now (checked again).
    async fn try_call(&self, delivery: &WebhookDelivery) -> Tried {
        let policy = self.config.webhooks.policy();
        let target = match webhook::check_url(&delivery.url, &policy) {
            Ok(target) => target,
            Err(refusal) => return Tried::Refused(refusal.message()),
        };
        let addrs = match resolve(&target).await {
            Ok(addrs) => addrs,
            Err(refusal) => return Tried::Failed(refusal.message()),
        };
        if let Err(refusal) = webhook::check_resolved(&target, &addrs, &policy) {
            return Tried::Refused(refusal.message());
        }
        let secret = match self.webhook_secret_of(delivery.user_id).await {
            Ok(secret) => secret,
            Err(error) => return Tried::Failed(format!("{:?}", error.body)),
        };
        let pinned: Vec<SocketAddr> = addrs
            .iter()
            .map(|ip| SocketAddr::new(*ip, target.port))
            .collect();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(
                self.config.webhooks.timeout_secs.max(1),
            ))
            .resolve_to_addrs(&target.host, &pinned)
            .build();
        let client = match client {
            Ok(client) => client,
            Err(error) => return Tried::Failed(error.to_string()),
        };
        let id = delivery.id.to_string();
        let sent = client
            .post(&target.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::USER_AGENT,
                concat!("horde/", env!("CARGO_PKG_VERSION")),
            )
            .header(
                webhook::SIGNATURE_HEADER,
                webhook::signature_header(&secret, delivery.body.as_bytes()),
            )
            .header(webhook::DELIVERY_ID_HEADER, &id)
            .header(webhook::IDEMPOTENCY_KEY_HEADER, &id)
            .header(webhook::EVENT_HEADER, &delivery.event)
            .body(delivery.body.clone())
            .send()
            .await;
        match sent {
            Err(error) => Tried::Failed(error.to_string()),
            Ok(answer) => {
                let status = answer.status().as_u16();
                if webhook::is_success(status) {
                    return Tried::Delivered;
                }
                let text: String = answer
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(MAX_ERROR_CHARS)
                    .collect();
                let error = format!("HTTP {status}: {text}");
                if webhook::is_permanent_failure(status) {
                    Tried::Refused(error)
                } else {
                    Tried::Failed(error)
                }
            }
        }
    }
}
