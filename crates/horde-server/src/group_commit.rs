//! Group commit of accepted requests: every accepted request must be in the database before its
//! 202, and committing each alone costs one SQLite commit (and a round of thread hand-offs) per
//! request. Requests accepted at the same moment are instead queued to one writer task, which
//! stores all that are waiting in one transaction and then answers each.

use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use horde_core::{Image, LiveRequest};
use horde_store::{Store, StoredKind};
use tokio::sync::{mpsc, oneshot};

/// The most requests one transaction stores.
const MAX_BATCH: usize = 512;

struct Pending<K: StoredKind> {
    request: LiveRequest<K>,
    /// The request back once committed (it is not copied for the writer), or why not.
    stored: oneshot::Sender<Result<LiveRequest<K>, String>>,
}

/// The handle through which accepted requests of kind `K` are stored (one writer task a kind).
pub struct RequestWriter<K: StoredKind = Image> {
    sender: mpsc::Sender<Pending<K>>,
}

impl<K: StoredKind> RequestWriter<K> {
    /// Starts the writer task on the current runtime; each commit's time goes to `metrics`.
    pub fn start(store: Store, metrics: Metrics) -> RequestWriter<K> {
        let (sender, receiver) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_batches(store, metrics, receiver));
        RequestWriter { sender }
    }

    /// Stores `request`; returns it once it is committed.
    pub async fn store(&self, request: LiveRequest<K>) -> ApiResult<LiveRequest<K>> {
        let (stored, done) = oneshot::channel();
        self.sender
            .send(Pending { request, stored })
            .await
            .map_err(|_| ApiError::internal("the request writer has stopped"))?;
        done.await
            .map_err(|_| ApiError::internal("the request writer has stopped"))?
            .map_err(|e| ApiError::internal(format!("storing the request failed: {e}")))
    }
}

async fn write_batches<K: StoredKind>(
    store: Store,
    metrics: Metrics,
    mut receiver: mpsc::Receiver<Pending<K>>,
) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (requests, answers): (Vec<LiveRequest<K>>, Vec<_>) =
            batch.into_iter().map(|p| (p.request, p.stored)).unzip();
        let result = metrics
            .time_commit(store.insert_requests(&requests))
            .await
            .map_err(|e| e.to_string());
        if let Err(error) = &result {
            tracing::error!(%error, requests = requests.len(), "storing accepted requests failed");
        }
        for (request, answer) in requests.into_iter().zip(answers) {
            let _ = answer.send(result.clone().map(|()| request));
        }
    }
}
