//! Shared keys, by the hash of the key.

use crate::{Result, Store};
use horde_core::shared_key::SharedKey;
use sqlx::any::AnyRow;
use sqlx::Row;

fn shared_key_from_row(row: &AnyRow) -> Result<SharedKey> {
    Ok(SharedKey {
        id_hash: row.try_get("id_hash")?,
        owner_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        kudos: row.try_get("kudos")?,
        expiry: row.try_get("expiry")?,
        utilized: row.try_get("utilized")?,
        max_image_pixels: row.try_get("max_image_pixels")?,
        max_image_steps: row.try_get("max_image_steps")?,
        max_text_tokens: row.try_get("max_text_tokens")?,
        created: row.try_get("created")?,
    })
}

impl Store {
    pub async fn insert_shared_key(&self, k: &SharedKey) -> Result<()> {
        sqlx::query(
            "INSERT INTO shared_keys (id_hash, user_id, name, kudos, expiry, utilized, \
             max_image_pixels, max_image_steps, max_text_tokens, created) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&k.id_hash)
        .bind(k.owner_id)
        .bind(&k.name)
        .bind(k.kudos)
        .bind(k.expiry)
        .bind(k.utilized)
        .bind(k.max_image_pixels)
        .bind(k.max_image_steps)
        .bind(k.max_text_tokens)
        .bind(k.created)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Stores the owner-editable fields of a key.
    pub async fn save_shared_key(&self, k: &SharedKey) -> Result<()> {
        sqlx::query(
            "UPDATE shared_keys SET name = $1, kudos = $2, expiry = $3, max_image_pixels = $4, \
             max_image_steps = $5, max_text_tokens = $6 WHERE id_hash = $7",
        )
        .bind(&k.name)
        .bind(k.kudos)
        .bind(k.expiry)
        .bind(k.max_image_pixels)
        .bind(k.max_image_steps)
        .bind(k.max_text_tokens)
        .bind(&k.id_hash)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn shared_key(&self, id_hash: &str) -> Result<Option<SharedKey>> {
        let row = sqlx::query("SELECT * FROM shared_keys WHERE id_hash = $1")
            .bind(id_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(shared_key_from_row).transpose()
    }

    /// `user_id`'s shared keys, oldest first (at most `limit`).
    pub async fn shared_keys_of(&self, user_id: i64, limit: usize) -> Result<Vec<SharedKey>> {
        let rows = sqlx::query(
            "SELECT * FROM shared_keys WHERE user_id = $1 ORDER BY created, id_hash LIMIT $2",
        )
        .bind(user_id)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(shared_key_from_row).collect()
    }

    pub async fn shared_key_count(&self, user_id: i64) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) FROM shared_keys WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }

    pub async fn delete_shared_key(&self, id_hash: &str) -> Result<()> {
        sqlx::query("DELETE FROM shared_keys WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

/// Takes a charge from a key's budget (unless unlimited; never below zero) and counts it as
/// used, inside the transaction that moves the kudos.
pub(crate) async fn charge_shared_key(
    conn: &mut sqlx::AnyConnection,
    id_hash: &str,
    charge: f64,
) -> Result<()> {
    sqlx::query(
        "UPDATE shared_keys SET kudos = CASE WHEN kudos < 0 THEN kudos WHEN kudos < $1 THEN 0 ELSE kudos - $1 END, \
         utilized = utilized + $2 WHERE id_hash = $3",
    )
    .bind(charge)
    .bind(charge)
    .bind(id_hash)
    .execute(conn)
    .await?;
    Ok(())
}
