//! What the store writes differently for each kind of work.
//!
//! The request and job tables, the version checks, the ledger, refunds and reputations are the
//! same for every kind (`requests.rs`, `accepted.rs`, generic over [`StoredKind`]); a request's
//! row names its kind, and each kind's queue is loaded from its own rows. What a kind adds is how
//! its work counts: in the requester's daily quota, the requester's usage and the worker owner's
//! contribution, and the horde's statistics (images in megapixelsteps per model; texts in
//! tokens).

use crate::requests::SubmitEffects;
use crate::Result;
use horde_core::alchemy::Alchemy;
use horde_core::quota::day_of;
use horde_core::request::{Job, LiveRequest};
use horde_core::text::Text;
use horde_core::{Image, JobKind};
use sqlx::{Any, Transaction};
use std::collections::BTreeMap;
use std::future::Future;

/// A kind of work the store keeps (see the module documentation).
pub trait StoredKind: JobKind {
    /// Adds newly accepted `requests` to their requesters' usage of the day (the quotas).
    fn add_quota_usage(
        tx: &mut Transaction<'_, Any>,
        requests: &[LiveRequest<Self>],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Counts a delivered `job`: the requester's usage, the worker owner's contribution and the
    /// horde's statistics.
    fn record_delivered(
        tx: &mut Transaction<'_, Any>,
        job: &Job,
        effects: &SubmitEffects,
    ) -> impl Future<Output = Result<()>> + Send;
}

impl StoredKind for Image {
    async fn add_quota_usage(
        tx: &mut Transaction<'_, Any>,
        requests: &[LiveRequest<Image>],
    ) -> Result<()> {
        add_quota_usage_in(tx, requests, "images", "megapixelsteps").await
    }

    async fn record_delivered(
        tx: &mut Transaction<'_, Any>,
        job: &Job,
        e: &SubmitEffects,
    ) -> Result<()> {
        let columns = UsageColumns {
            used: "usage_megapixelsteps",
            requests: "usage_requests",
            contributed: "contributed_megapixelsteps",
            fulfilled: "fulfilments",
        };
        record_usage(tx, e, &columns).await?;
        crate::stats::record_image(tx, e.at, &job.model, e.work * 1e6).await
    }
}

/// Adds `requests` to their requesters' usage of the day in the `quota_usage` columns of their
/// kind: `jobs` (jobs requested) and `work` (their work), summed per user and day first and
/// upserted many rows to a statement.
async fn add_quota_usage_in<K: JobKind>(
    tx: &mut Transaction<'_, Any>,
    requests: &[LiveRequest<K>],
    jobs: &'static str,
    work: &'static str,
) -> Result<()> {
    let mut usage: BTreeMap<(i64, i64), (i64, f64)> = BTreeMap::new();
    for r in requests {
        let entry = usage.entry((r.user_id, day_of(r.created))).or_default();
        entry.0 += i64::from(r.jobs_total);
        entry.1 += r.work_requested();
    }
    let rows: Vec<_> = usage.into_iter().collect();
    for chunk in rows.chunks(crate::accepted::ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO quota_usage (user_id, day, {jobs}, {work}) VALUES {} \
             ON CONFLICT(user_id, day) DO UPDATE SET {jobs} = quota_usage.{jobs} + excluded.{jobs}, \
             {work} = quota_usage.{work} + excluded.{work}",
            crate::Placeholders::of(tx).rows(chunk.len(), 4)
        );
        let mut upsert = sqlx::query(&sql);
        for ((user, day), (count, amount)) in chunk {
            upsert = upsert.bind(*user).bind(*day).bind(*count).bind(*amount);
        }
        upsert.execute(&mut **tx).await?;
    }
    Ok(())
}

/// The `users` columns a kind's delivered work counts in.
struct UsageColumns {
    /// The requester's work used.
    used: &'static str,
    /// The requester's results delivered.
    requests: &'static str,
    /// The worker owner's work contributed.
    contributed: &'static str,
    /// The worker owner's results delivered.
    fulfilled: &'static str,
}

/// Counts a delivered job's work for its requester and its worker's owner (with the reward in
/// the owner's accumulated kudos).
async fn record_usage(
    tx: &mut Transaction<'_, Any>,
    e: &SubmitEffects,
    c: &UsageColumns,
) -> Result<()> {
    let (used, requests) = (c.used, c.requests);
    sqlx::query(&format!(
        "UPDATE users SET {used} = {used} + $1, {requests} = {requests} + 1 WHERE id = $2"
    ))
    .bind(e.work)
    .bind(e.requester_id)
    .execute(&mut **tx)
    .await?;
    let (contributed, fulfilled) = (c.contributed, c.fulfilled);
    sqlx::query(&format!(
        "UPDATE users SET kudos_accumulated = kudos_accumulated + $1, \
         {contributed} = {contributed} + $2, {fulfilled} = {fulfilled} + 1 WHERE id = $3"
    ))
    .bind(e.reward)
    .bind(e.work)
    .bind(e.worker_owner_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Texts count in the text columns: texts and tokens (`max_length`) requested, tokens and
/// texts delivered, contributed and in the text statistics.
impl StoredKind for Text {
    async fn add_quota_usage(
        tx: &mut Transaction<'_, Any>,
        requests: &[LiveRequest<Text>],
    ) -> Result<()> {
        add_quota_usage_in(tx, requests, "texts", "tokens").await
    }

    async fn record_delivered(
        tx: &mut Transaction<'_, Any>,
        job: &Job,
        e: &SubmitEffects,
    ) -> Result<()> {
        let columns = UsageColumns {
            used: "usage_tokens",
            requests: "text_requests",
            contributed: "contributed_tokens",
            fulfilled: "text_fulfilments",
        };
        record_usage(tx, e, &columns).await?;
        crate::stats::record_text(tx, e.at, &job.model, e.work).await
    }
}

/// Interrogation forms count in no daily quota (the quotas are of images and texts) and in the
/// users' interrogation records; the horde keeps no statistics of them (the public horde has
/// no `/stats` for alchemy).
impl StoredKind for Alchemy {
    async fn add_quota_usage(
        _tx: &mut Transaction<'_, Any>,
        _requests: &[LiveRequest<Alchemy>],
    ) -> Result<()> {
        Ok(())
    }

    async fn record_delivered(
        tx: &mut Transaction<'_, Any>,
        _job: &Job,
        e: &SubmitEffects,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE users SET interrogation_requests = interrogation_requests + 1 WHERE id = $1",
        )
        .bind(e.requester_id)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE users SET kudos_accumulated = kudos_accumulated + $1, \
             interrogation_fulfilments = interrogation_fulfilments + 1 WHERE id = $2",
        )
        .bind(e.reward)
        .bind(e.worker_owner_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, Location, NewUser, Store};

    fn image_request(user_id: i64, seq: u64) -> LiveRequest<Image> {
        let body = serde_json::from_value(serde_json::json!({"prompt": "a lighthouse"})).unwrap();
        LiveRequest {
            id: uuid::Uuid::now_v7(),
            user_id,
            body,
            base_seed: None,
            created: 1_000,
            seq,
            priority: 0,
            n_remaining: 1,
            jobs_total: 1,
            job_kudos: 10.0,
            consumed_kudos: 0.0,
            faulted: false,
            cancelled: false,
            can_pay_upfront: true,
            shared_key: None,
            expiry: 2_000,
            version: 0,
            batch_id: None,
            batch_index: 0,
            jobs: vec![],
        }
    }

    /// A request's row names its kind, and each kind's queue is loaded from its own rows only:
    /// a row of another kind (here one relabelled "text") is neither loaded at start nor
    /// reloaded by id into the image queue.
    #[tokio::test]
    async fn each_kind_loads_only_its_own_rows() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::SqliteFile(dir.path().join("horde.sqlite"));
        let store = Store::open(&location, Durability::Normal).await.unwrap();
        let user = store
            .create_user(&NewUser {
                username: "kinds".into(),
                oauth_id: "kinds".into(),
                api_key_hash: "hash".into(),
                moderator: false,
                trusted: false,
                kudos: 0.0,
                created: 1_000,
            })
            .await
            .unwrap();
        let (image, other) = (image_request(user.id, 1), image_request(user.id, 2));
        store
            .insert_requests(&[image.clone(), other.clone()])
            .await
            .unwrap();
        sqlx::query("UPDATE requests SET kind = 'text' WHERE id = $1")
            .bind(other.id.to_string())
            .execute(&store.pool)
            .await
            .unwrap();

        let loaded = store.load_requests::<Image>().await.unwrap();
        assert_eq!(loaded.iter().map(|r| r.id).collect::<Vec<_>>(), [image.id]);
        assert_eq!(loaded[0].body, image.body);
        assert!(store
            .load_request::<Image>(other.id)
            .await
            .unwrap()
            .is_none());
        let by_id = store
            .load_requests_by_id::<Image>(&[image.id, other.id])
            .await
            .unwrap();
        assert_eq!(by_id.len(), 1);
        store.close().await;
    }
}
