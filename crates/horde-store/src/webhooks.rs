//! The webhook outbox and the users' webhook secrets.
//!
//! A delivery is written in the same transaction as the change it announces (a finished
//! generation, a finished, faulted or cancelled request: `requests.rs`), so a crash between the
//! change and the call loses nothing; the sender (`horde-server`'s `webhooks.rs`) claims due
//! deliveries, calls, and deletes each once delivered or given up. A claim lasts a lease: with
//! several coordinators each due delivery is claimed by one of them, and one whose claimer died
//! is claimed again when the lease ends. The delivery's id is its idempotency id, the same on
//! every attempt.

use crate::{parse_uuid, Result, Store};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

/// One webhook call to make (or being made).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    /// The idempotency id, sent with every attempt.
    pub id: Uuid,
    /// Whose secret signs it: the requester's.
    pub user_id: i64,
    pub url: String,
    /// `generation` or `request_finished`.
    pub event: String,
    /// The JSON body, as it is sent and signed.
    pub body: String,
    /// Unix seconds it was written.
    pub created: i64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix seconds of the next attempt.
    pub next_attempt: i64,
}

impl WebhookDelivery {
    /// A delivery of `body` to `url` for `user_id`, due at once.
    pub fn new(user_id: i64, url: &str, event: &str, body: String, now: i64) -> WebhookDelivery {
        WebhookDelivery {
            id: Uuid::new_v4(),
            user_id,
            url: url.to_string(),
            event: event.to_string(),
            body,
            created: now,
            attempts: 0,
            next_attempt: now,
        }
    }
}

/// Writes `deliveries` in the caller's transaction.
pub(crate) async fn enqueue(
    tx: &mut Transaction<'_, Any>,
    deliveries: &[WebhookDelivery],
) -> Result<()> {
    for d in deliveries {
        sqlx::query(
            "INSERT INTO webhook_outbox (id, user_id, url, event, body, created, attempts, next_attempt) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(d.id.to_string())
        .bind(d.user_id)
        .bind(&d.url)
        .bind(&d.event)
        .bind(&d.body)
        .bind(d.created)
        .bind(i64::from(d.attempts))
        .bind(d.next_attempt)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn delivery_from_row(row: &AnyRow) -> Result<WebhookDelivery> {
    Ok(WebhookDelivery {
        id: parse_uuid(row.try_get("id")?)?,
        user_id: row.try_get("user_id")?,
        url: row.try_get("url")?,
        event: row.try_get("event")?,
        body: row.try_get("body")?,
        created: row.try_get("created")?,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        next_attempt: row.try_get("next_attempt")?,
    })
}

impl Store {
    /// Claims up to `limit` deliveries due at `now` that no coordinator holds, for
    /// `lease_secs`. The condition on `claimed_until` is checked again on each row as it is
    /// updated, so two coordinators claiming at once never both get a row.
    pub async fn claim_due_webhooks(
        &self,
        now: i64,
        lease_secs: i64,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>> {
        let rows = sqlx::query(
            "UPDATE webhook_outbox SET claimed_until = $1 \
             WHERE claimed_until <= $2 AND next_attempt <= $2 AND id IN ( \
               SELECT id FROM webhook_outbox WHERE claimed_until <= $2 AND next_attempt <= $2 \
               ORDER BY next_attempt LIMIT $3) \
             RETURNING id, user_id, url, event, body, created, attempts, next_attempt",
        )
        .bind(now + lease_secs)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    /// Ends every claim: for a coordinator that is alone on its database (SQLite), at start,
    /// when the claims left are those of its own previous run, cut short.
    pub async fn release_webhook_claims(&self) -> Result<()> {
        sqlx::query("UPDATE webhook_outbox SET claimed_until = 0 WHERE claimed_until > 0")
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Removes a delivery: made, or given up.
    pub async fn remove_webhook(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM webhook_outbox WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Records a failed attempt and when to try again (the claim ends).
    pub async fn retry_webhook_at(
        &self,
        id: Uuid,
        attempts: u32,
        next_attempt: i64,
        error: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_outbox SET attempts = $1, next_attempt = $2, claimed_until = 0, \
             last_error = $3 WHERE id = $4",
        )
        .bind(i64::from(attempts))
        .bind(next_attempt)
        .bind(error)
        .bind(id.to_string())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Deliveries not made yet.
    pub async fn pending_webhooks(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM webhook_outbox")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }

    /// The secret that signs `user_id`'s webhook calls, made with `make` the first time it is
    /// needed (two callers at once get the same one).
    pub async fn webhook_secret(
        &self,
        user_id: i64,
        make: impl FnOnce() -> String,
    ) -> Result<String> {
        sqlx::query(
            "UPDATE users SET webhook_secret = $1 WHERE id = $2 AND webhook_secret IS NULL",
        )
        .bind(make())
        .bind(user_id)
        .execute(&self.writer)
        .await?;
        let row = sqlx::query("SELECT webhook_secret FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(&self.writer)
            .await?;
        Ok(row.try_get("webhook_secret")?)
    }

    /// Replaces `user_id`'s webhook secret; deliveries still waiting are signed with the new
    /// one.
    pub async fn set_webhook_secret(&self, user_id: i64, secret: &str) -> Result<()> {
        sqlx::query("UPDATE users SET webhook_secret = $1 WHERE id = $2")
            .bind(secret)
            .bind(user_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
