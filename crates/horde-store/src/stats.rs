//! Finished work by model and period (`/stats/img/…`, `/stats/text/…`): one row per delivered
//! image or text, written in the transaction that records it.

use crate::{Result, Store};
use sqlx::Row;
use std::collections::BTreeMap;

/// The periods the public horde reports, as (name, seconds back from now); `None`: all time.
pub const PERIODS: [(&str, Option<i64>); 5] = [
    ("minute", Some(60)),
    ("hour", Some(3600)),
    ("day", Some(86_400)),
    ("month", Some(30 * 86_400)),
    ("total", None),
];

/// Images and pixelsteps in one period.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Totals {
    pub images: u64,
    pub pixelsteps: f64,
}

pub(crate) async fn record_image(
    conn: &mut sqlx::AnyConnection,
    at: i64,
    model: &str,
    pixelsteps: f64,
) -> Result<()> {
    sqlx::query("INSERT INTO image_stats (finished_at, model, pixelsteps) VALUES ($1, $2, $3)")
        .bind(at)
        .bind(model)
        .bind(pixelsteps)
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn record_text(
    conn: &mut sqlx::AnyConnection,
    at: i64,
    model: &str,
    tokens: f64,
) -> Result<()> {
    sqlx::query("INSERT INTO text_stats (finished_at, model, tokens) VALUES ($1, $2, $3)")
        .bind(at)
        .bind(model)
        .bind(tokens)
        .execute(conn)
        .await?;
    Ok(())
}

fn since(now: i64, back: Option<i64>) -> i64 {
    back.map_or(i64::MIN, |secs| now - secs)
}

/// Texts and tokens in one period.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TextTotals {
    pub requests: u64,
    pub tokens: f64,
}

impl Store {
    /// Texts and tokens delivered in each of [`PERIODS`] before `now`.
    pub async fn text_totals(&self, now: i64) -> Result<Vec<(&'static str, TextTotals)>> {
        let rows = self.rows_and_sums("text_stats", "tokens", now).await?;
        Ok(rows
            .into_iter()
            .map(|(period, requests, tokens)| (period, TextTotals { requests, tokens }))
            .collect())
    }

    /// Texts delivered per model in the last day, month and in total.
    pub async fn text_counts_by_model(
        &self,
        now: i64,
    ) -> Result<Vec<(&'static str, BTreeMap<String, u64>)>> {
        self.counts_by_model("text_stats", now).await
    }

    /// Images and pixelsteps finished in each of [`PERIODS`] before `now`.
    pub async fn image_totals(&self, now: i64) -> Result<Vec<(&'static str, Totals)>> {
        let rows = self.rows_and_sums("image_stats", "pixelsteps", now).await?;
        Ok(rows
            .into_iter()
            .map(|(period, images, pixelsteps)| (period, Totals { images, pixelsteps }))
            .collect())
    }

    /// The rows of `table` (a statistics table of this module) and the sum of its `column`
    /// in each of [`PERIODS`] before `now`.
    async fn rows_and_sums(
        &self,
        table: &'static str,
        column: &'static str,
        now: i64,
    ) -> Result<Vec<(&'static str, u64, f64)>> {
        let sql = format!(
            "SELECT COUNT(*), CAST(COALESCE(SUM({column}), 0) AS DOUBLE PRECISION) FROM {table} \
             WHERE finished_at > $1"
        );
        let mut out = Vec::with_capacity(PERIODS.len());
        for (name, back) in PERIODS {
            let row = sqlx::query(&sql)
                .bind(since(now, back))
                .fetch_one(&self.pool)
                .await?;
            let count: i64 = row.try_get(0)?;
            out.push((name, count as u64, row.try_get(1)?));
        }
        Ok(out)
    }

    /// Images finished per model in the last day, month and in total.
    pub async fn image_counts_by_model(
        &self,
        now: i64,
    ) -> Result<Vec<(&'static str, BTreeMap<String, u64>)>> {
        self.counts_by_model("image_stats", now).await
    }

    /// Rows of `table` (a statistics table of this module) per model in the last day, month
    /// and in total.
    async fn counts_by_model(
        &self,
        table: &'static str,
        now: i64,
    ) -> Result<Vec<(&'static str, BTreeMap<String, u64>)>> {
        let sql =
            format!("SELECT model, COUNT(*) FROM {table} WHERE finished_at > $1 GROUP BY model");
        let mut out = vec![];
        for (name, back) in PERIODS.into_iter().skip(2) {
            let rows = sqlx::query(&sql)
                .bind(since(now, back))
                .fetch_all(&self.pool)
                .await?;
            let mut counts = BTreeMap::new();
            for row in rows {
                let count: i64 = row.try_get(1)?;
                counts.insert(row.try_get::<String, _>(0)?, count as u64);
            }
            out.push((name, counts));
        }
        Ok(out)
    }
}

impl Store {
    /// Images and pixelsteps finished in each of the `minutes` minutes before `now`, oldest
    /// first (the dashboard's throughput chart). The last minute ends at `now`.
    pub async fn images_per_minute(&self, now: i64, minutes: usize) -> Result<Vec<Totals>> {
        let start = now - 60 * minutes as i64;
        let rows = sqlx::query(
            "SELECT (finished_at - $1 - 1) / 60, COUNT(*), \
             CAST(COALESCE(SUM(pixelsteps), 0) AS DOUBLE PRECISION) FROM image_stats \
             WHERE finished_at > $2 AND finished_at <= $3 GROUP BY 1",
        )
        .bind(start)
        .bind(start)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut series = vec![Totals::default(); minutes];
        for row in rows {
            let minute: i64 = row.try_get(0)?;
            let images: i64 = row.try_get(1)?;
            if let Some(slot) = usize::try_from(minute).ok().and_then(|m| series.get_mut(m)) {
                *slot = Totals {
                    images: images as u64,
                    pixelsteps: row.try_get(2)?,
                };
            }
        }
        Ok(series)
    }
}
