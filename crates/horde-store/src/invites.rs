//! Invite codes, by the salted hash of the code (horde-core `invites`).

use crate::{Result, Store};
use horde_core::invites::Invite;
use sqlx::any::AnyRow;
use sqlx::Row;

fn invite_from_row(row: &AnyRow) -> Result<Invite> {
    let count = |name: &str| -> Result<u32> {
        let value: i64 = row.try_get(name)?;
        Ok(u32::try_from(value).unwrap_or(u32::MAX))
    };
    Ok(Invite {
        id: row.try_get("id")?,
        code_hash: row.try_get("code_hash")?,
        created_by: row.try_get("created_by")?,
        note: row.try_get("note")?,
        max_uses: count("max_uses")?,
        uses: count("uses")?,
        created_ms: row.try_get("created_ms")?,
        expires_ms: row.try_get("expires_ms")?,
    })
}

impl Store {
    /// Stores `invite` unless `max_kept` invites are kept already, once those that expired
    /// before `stale_before_ms` are removed; whether it was stored.
    pub async fn insert_invite(
        &self,
        invite: &Invite,
        stale_before_ms: i64,
        max_kept: usize,
    ) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM invites WHERE expires_ms <= $1")
            .bind(stale_before_ms)
            .execute(&mut *tx)
            .await?;
        let live: i64 = sqlx::query("SELECT COUNT(*) FROM invites")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if live as usize >= max_kept {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO invites (id, code_hash, created_by, note, max_uses, uses, created_ms, \
             expires_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&invite.id)
        .bind(&invite.code_hash)
        .bind(invite.created_by)
        .bind(&invite.note)
        .bind(i64::from(invite.max_uses))
        .bind(i64::from(invite.uses))
        .bind(invite.created_ms)
        .bind(invite.expires_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every invite kept, newest first (at most `limit`).
    pub async fn invites(&self, limit: usize) -> Result<Vec<Invite>> {
        let rows = sqlx::query("SELECT * FROM invites ORDER BY created_ms DESC, id LIMIT $1")
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(invite_from_row).collect()
    }

    pub async fn invite_by_code_hash(&self, code_hash: &str) -> Result<Option<Invite>> {
        let row = sqlx::query("SELECT * FROM invites WHERE code_hash = $1")
            .bind(code_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(invite_from_row).transpose()
    }

    /// Removes an invite; whether there was one.
    pub async fn delete_invite(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM invites WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Counts one account against invite `id` if it still may create one at `now_ms`: whether
    /// it did (one conditional update, so concurrent attempts never pass `max_uses`).
    pub async fn redeem_invite(&self, id: &str, now_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE invites SET uses = uses + 1 WHERE id = $1 AND uses < max_uses \
             AND expires_ms > $2",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives back a use counted by [`Store::redeem_invite`] whose account was not created.
    pub async fn unredeem_invite(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE invites SET uses = uses - 1 WHERE id = $1 AND uses > 0")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
