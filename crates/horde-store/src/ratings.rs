//! Image ratings (`POST /generate/rate/{id}`): a request is rated once, each image's rating is
//! kept with the worker that made it and the requester, and a worker's ratings are read back
//! one mean per requester (horde-core `ratings` turns them into its reputation's signal).

use crate::{Result, Store};
use sqlx::Row;

/// One rated image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRating {
    pub image_id: String,
    pub worker_id: String,
    pub rating: u8,
    pub artifacts: Option<u8>,
}

/// A rating of one request, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRating {
    pub request_id: String,
    pub requester_id: i64,
    pub best_image: Option<String>,
    pub images: Vec<ImageRating>,
    /// Unix seconds.
    pub rated_at: i64,
}

impl Store {
    /// Stores a request's rating in one transaction; `false` (and nothing stored) when the
    /// request was rated before.
    pub async fn save_rating(&self, rating: &RequestRating) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let first = sqlx::query(
            "INSERT INTO rated_requests (request_id, requester_id, best_image, rated_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(&rating.request_id)
        .bind(rating.requester_id)
        .bind(rating.best_image.as_deref())
        .bind(rating.rated_at)
        .execute(&mut *tx)
        .await?;
        if first.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for image in &rating.images {
            sqlx::query(
                "INSERT INTO image_ratings (image_id, request_id, worker_id, requester_id, \
                 rating, artifacts, rated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&image.image_id)
            .bind(&rating.request_id)
            .bind(&image.worker_id)
            .bind(rating.requester_id)
            .bind(i64::from(image.rating))
            .bind(image.artifacts.map(i64::from))
            .bind(rating.rated_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Worker `worker_id`'s ratings, one mean per requester who rated it.
    pub async fn rater_means(&self, worker_id: &str) -> Result<Vec<f64>> {
        let rows = sqlx::query(
            "SELECT CAST(SUM(rating) AS BIGINT), COUNT(*) FROM image_ratings \
             WHERE worker_id = $1 GROUP BY requester_id ORDER BY requester_id",
        )
        .bind(worker_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let sum: i64 = r.try_get(0)?;
                let count: i64 = r.try_get(1)?;
                Ok(sum as f64 / count.max(1) as f64)
            })
            .collect()
    }

    /// How many images of request `request_id` were rated (0: not rated, or rated `best` only).
    pub async fn rated_images(&self, request_id: &str) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) FROM image_ratings WHERE request_id = $1")
            .bind(request_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }
}
