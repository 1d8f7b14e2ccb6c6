//! Requests' source images kept beside the generated images, by the same rule: files under
//! `<images>/sources/{request}/{role}.webp` for one coordinator, rows of the database
//! (`source_images`) when coordinators share PostgreSQL.
//!
//! Written before the request is committed, so that no stored request lacks its sources; a
//! crash between the two leaves sources no request names, which [`ImageStore::sweep_orphan_sources`]
//! removes once they are older than [`ORPHAN_GRACE_SECS`]. The request's expiry removes the
//! rest ([`ImageStore::remove_sources`]).

use super::ImageStore;
use crate::error::ApiError;
use horde_core::request_rules::{PreparedSource, SourceRole};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use uuid::Uuid;

/// Sources this old whose request is not stored are orphans: an acceptance commits its
/// request within seconds of writing its sources.
pub const ORPHAN_GRACE_SECS: i64 = 600;

impl ImageStore {
    fn sources_dir(&self, request_id: Uuid) -> PathBuf {
        self.dir.join("sources").join(request_id.to_string())
    }

    /// Stores the sources of a request about to be committed (all of them, or an error).
    pub async fn put_sources(
        &self,
        request_id: Uuid,
        sources: &[PreparedSource],
        now: i64,
    ) -> Result<(), ApiError> {
        if let Some(store) = &self.database {
            let rows: Vec<(String, &[u8])> = sources
                .iter()
                .map(|s| (s.role.name(), s.webp.as_slice()))
                .collect();
            return Ok(store.put_sources(request_id, &rows, now).await?);
        }
        let dir = self.sources_dir(request_id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(ApiError::internal)?;
        for source in sources {
            // Written under a temporary name and renamed: a reader never sees half a file.
            let path = dir.join(format!("{}.webp", source.role.name()));
            let part = dir.join(format!("{}.webp.part", source.role.name()));
            tokio::fs::write(&part, &source.webp)
                .await
                .map_err(ApiError::internal)?;
            tokio::fs::rename(&part, &path)
                .await
                .map_err(ApiError::internal)?;
        }
        Ok(())
    }

    /// One stored source of a request, `None` when there is none.
    pub async fn read_source(&self, request_id: Uuid, role: SourceRole) -> Option<Vec<u8>> {
        match &self.database {
            Some(store) => match store.source(request_id, &role.name()).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::warn!(%error, request = %request_id, "could not read a source image");
                    None
                }
            },
            None => {
                let path = self
                    .sources_dir(request_id)
                    .join(format!("{}.webp", role.name()));
                tokio::fs::read(path).await.ok()
            }
        }
    }

    /// Removes every source of a request (none is a no-op).
    pub async fn remove_sources(&self, request_id: Uuid) {
        match &self.database {
            Some(store) => {
                if let Err(error) = store.delete_sources(request_id).await {
                    tracing::warn!(%error, request = %request_id, "could not remove source images");
                }
            }
            None => {
                let _ = tokio::fs::remove_dir_all(self.sources_dir(request_id)).await;
            }
        }
    }

    /// Removes orphaned sources (older than [`ORPHAN_GRACE_SECS`], no stored request), at most
    /// once per grace period; returns how many requests' sources went.
    pub async fn sweep_orphan_sources(&self, store: &horde_store::Store, now: i64) -> usize {
        let last = self.last_orphan_sweep.load(Ordering::Relaxed);
        if now - last < ORPHAN_GRACE_SECS {
            return 0;
        }
        self.last_orphan_sweep.store(now, Ordering::Relaxed);
        let before = now - ORPHAN_GRACE_SECS;
        if self.database.is_some() {
            return match store.delete_orphan_sources(before).await {
                Ok(n) => n as usize,
                Err(error) => {
                    tracing::warn!(%error, "could not sweep orphaned source images");
                    0
                }
            };
        }
        let mut removed = 0;
        for request_id in self.source_dirs_older_than(before).await {
            if matches!(store.request_exists(request_id).await, Ok(false)) {
                self.remove_sources(request_id).await;
                removed += 1;
            }
        }
        removed
    }

    /// The requests whose source directory was last changed before `before` (unix seconds).
    async fn source_dirs_older_than(&self, before: i64) -> Vec<Uuid> {
        let Ok(mut entries) = tokio::fs::read_dir(self.dir.join("sources")).await else {
            return vec![];
        };
        let mut old = vec![];
        while let Ok(Some(entry)) = entries.next_entry().await {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| Uuid::parse_str(n).ok())
            else {
                continue;
            };
            let modified = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64);
            if modified.is_some_and(|at| at < before) {
                old.push(id);
            }
        }
        old
    }
}
