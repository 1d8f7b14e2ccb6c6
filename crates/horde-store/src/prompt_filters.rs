//! Moderators' prompt filters.

use crate::{Result, Store};
use horde_core::prompt_filter::PromptFilter;
use sqlx::any::AnyRow;
use sqlx::Row;

fn filter_from_row(row: &AnyRow) -> Result<PromptFilter> {
    Ok(PromptFilter {
        id: row.try_get("id")?,
        regex: row.try_get("regex")?,
        filter_type: row.try_get("filter_type")?,
        description: row.try_get("description")?,
        replacement: row.try_get("replacement")?,
        user_id: row.try_get("user_id")?,
    })
}

impl Store {
    /// Every stored filter, oldest first.
    pub async fn prompt_filters(&self) -> Result<Vec<PromptFilter>> {
        let rows = sqlx::query("SELECT * FROM prompt_filters ORDER BY rowid")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(filter_from_row).collect()
    }

    /// Adds `filter`, or replaces the stored one with its id.
    pub async fn save_prompt_filter(&self, f: &PromptFilter) -> Result<()> {
        sqlx::query(
            "INSERT INTO prompt_filters (id, regex, filter_type, description, replacement, user_id) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT(id) DO UPDATE SET regex = excluded.regex, \
             filter_type = excluded.filter_type, description = excluded.description, \
             replacement = excluded.replacement, user_id = excluded.user_id",
        )
        .bind(&f.id)
        .bind(&f.regex)
        .bind(f.filter_type)
        .bind(&f.description)
        .bind(&f.replacement)
        .bind(f.user_id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Deletes a filter; returns whether it existed.
    pub async fn delete_prompt_filter(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM prompt_filters WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
