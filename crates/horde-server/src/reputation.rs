//! Worker reputations kept in memory and in the store: a reputation changes in the registry
//! first (a result, a timeout, a cancel), is stored, and is taken back from the store when the
//! write lost to another coordinator sharing the database.

use crate::error::ApiResult;
use crate::live_requests::{changed_too_often, retry_on_conflict, Attempt, WriteTurn};
use crate::state::AppState;
use horde_core::Reputation;
use horde_store::StoreError;
use uuid::Uuid;

impl AppState {
    /// Puts a worker's stored reputation and kudos earned back in the registry, after a
    /// result counted in memory was not stored (another coordinator changed the job's request
    /// first, or the database refused the write): counted again on a retry, or shown to the
    /// owner though never paid, otherwise.
    pub(crate) async fn reload_reputation(&self, worker_id: Uuid) -> ApiResult<()> {
        if let Some(stored) = self.store.worker_by_id(worker_id).await? {
            self.workers.change(|registry| {
                if let Some(entry) = registry.get_mut(worker_id) {
                    entry.worker.reputation = stored.reputation;
                    entry.worker.kudos_generated = stored.kudos_generated;
                }
            });
        }
        Ok(())
    }

    /// Applies `change` to worker `id`'s reputation and stores it; when another coordinator
    /// wrote it first, reloads the stored one and applies the change to that. The caller
    /// holds a write turn. Returns the stored reputation (`None`: no such worker here).
    pub(crate) async fn change_reputation_ordered(
        &self,
        _turn: &WriteTurn<'_>,
        id: Uuid,
        change: impl Fn(&mut Reputation),
    ) -> ApiResult<Option<Reputation>> {
        let change = &change;
        let stored = retry_on_conflict(|| async move {
            let changed = self.workers.change(|registry| {
                let entry = registry.get_mut(id)?;
                change(&mut entry.worker.reputation);
                Some(entry.worker.reputation.clone())
            });
            let Some(snapshot) = changed else {
                return Ok(Attempt::Stored(None));
            };
            match self.store.save_reputation(id, &snapshot).await {
                Ok(()) => {
                    self.note_reputations_stored([(id, &snapshot)]);
                    Ok(Attempt::Stored(Some(snapshot)))
                }
                Err(StoreError::WorkerConflict(_)) => {
                    self.reload_reputation(id).await?;
                    Ok(Attempt::Conflicted)
                }
                Err(other) => Err(other.into()),
            }
        })
        .await?;
        stored.ok_or_else(|| changed_too_often("worker"))
    }

    /// Records in the registry that these reputations were stored (each as the version after
    /// the one it was read at).
    pub(crate) fn note_reputations_stored<'a>(
        &self,
        written: impl IntoIterator<Item = (Uuid, &'a Reputation)>,
    ) {
        self.workers.change(|registry| {
            for (id, reputation) in written {
                if let Some(entry) = registry.get_mut(id) {
                    let stored = reputation.version + 1;
                    entry.worker.reputation.version = entry.worker.reputation.version.max(stored);
                }
            }
        });
    }
}
