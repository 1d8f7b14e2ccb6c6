//! The horde's modes (one row, `horde_modes`, shared by every coordinator on the database),
//! the users list, deleted accounts and awards (issue 29, points 4 and 5).
//!
//! Nothing is decided here: `horde_core::modes` has the rules, the server calls these once
//! they passed.

use crate::users::{user_from_row, USER_COLUMNS};
use crate::{flag, get_flag, Result, Store};
use horde_api::modes::UserSort;
use horde_core::accounts::User;
use horde_core::modes::Modes;
use sqlx::Row;

impl Store {
    /// The modes as stored now.
    pub async fn modes(&self) -> Result<Modes> {
        let row =
            sqlx::query("SELECT maintenance, invite_only, raid FROM horde_modes WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else {
            return Ok(Modes::default());
        };
        Ok(Modes {
            maintenance: get_flag(&row, "maintenance")?,
            invite_only: get_flag(&row, "invite_only")?,
            raid: get_flag(&row, "raid")?,
        })
    }

    /// Stores `modes`, as changed by user `by` at `now`.
    pub async fn save_modes(&self, modes: &Modes, by: i64, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE horde_modes SET maintenance = $1, invite_only = $2, raid = $3, \
             changed_at = $4, changed_by = $5 WHERE id = 1",
        )
        .bind(flag(modes.maintenance))
        .bind(flag(modes.invite_only))
        .bind(flag(modes.raid))
        .bind(now)
        .bind(by)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// `limit` users from `offset` in `sort`'s order (ties by id), deleted accounts left out.
    pub async fn users_page(&self, sort: UserSort, offset: i64, limit: i64) -> Result<Vec<User>> {
        let order = match sort {
            UserSort::Kudos => "kudos DESC, id",
            UserSort::Age => "created, id",
        };
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE deleted_at IS NULL \
             ORDER BY {order} LIMIT $1 OFFSET $2"
        );
        let rows = sqlx::query(&sql)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Marks user `id` deleted at `now` (the first `DELETE /users/{id}`).
    pub async fn mark_user_deleted(&self, id: i64, now: i64) -> Result<()> {
        sqlx::query("UPDATE users SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Wipes deleted user `id`'s personal data (name, OAuth identity, key, webhook secret,
    /// roles) and shared keys, in one transaction; the ledger rows stay, under the id alone.
    pub async fn wipe_user(&self, id: i64) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM shared_keys WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let gone = format!("deleted_{id}");
        sqlx::query(
            "UPDATE users SET username = 'deleted', oauth_id = $1, api_key_hash = $1, \
             webhook_secret = NULL, trusted = 0, flagged = 0, customizer = 0, vpn = 0, \
             service = 0, education = 0, public_workers = 0, worker_invited = 0 WHERE id = $2",
        )
        .bind(&gone)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether user `id`'s personal data was wiped.
    pub async fn user_wiped(&self, id: i64) -> Result<bool> {
        let row = sqlx::query("SELECT oauth_id FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<String, _>(0)? == format!("deleted_{id}"),
            None => false,
        })
    }
}
