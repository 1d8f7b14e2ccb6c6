//! Clients waiting for their requests (`GET /generate/check/{id}?wait=60`) held open while
//! workers pop, to show that waiting clients cost the coordinator memory, not CPU.
//!
//! Each waiter is one task on a plain TCP connection (no HTTP client machinery, so the load
//! generator sharing the cores spends next to nothing on them): it sends the check with
//! `Connection: close`, reads the answer to its end, and sends the next one, until told to
//! stop. The requests they wait on stay queued, so a wait ends only when its minute is up.

use anyhow::Context;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The waiters, running.
pub struct Waiters {
    stop: Arc<AtomicBool>,
    /// Checks answered 200 (a wait that ran its minute, or ended early).
    pub answered: Arc<AtomicU64>,
    /// Connections refused or answers other than 200.
    pub failed: Arc<AtomicU64>,
    tasks: tokio::task::JoinSet<()>,
}

/// Raises this process's soft limit on open files to its hard limit (each waiter holds one);
/// returns the new soft limit.
pub fn raise_open_file_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

impl Waiters {
    /// Opens `count` waiters on the coordinator at `url` (`http://host:port`), spread over
    /// the requests `ids`; returns once every one has sent its first check.
    pub async fn open(url: &str, ids: &[String], count: usize) -> anyhow::Result<Waiters> {
        anyhow::ensure!(!ids.is_empty(), "requests to wait on");
        let address = url
            .strip_prefix("http://")
            .context("an http:// coordinator")?
            .to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(tokio::sync::Semaphore::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..count {
            let request = format!(
                "GET /api/v2/generate/check/{}?wait=60 HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n",
                ids[n % ids.len()]
            );
            let (address, stop, answered, failed, sent) = (
                address.clone(),
                stop.clone(),
                answered.clone(),
                failed.clone(),
                sent.clone(),
            );
            tasks.spawn(async move {
                let mut first = true;
                while !stop.load(Ordering::Relaxed) {
                    let ok = wait_once(&address, request.as_bytes(), || {
                        if std::mem::take(&mut first) {
                            sent.add_permits(1);
                        }
                    })
                    .await;
                    let counter = if ok { &answered } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                if first {
                    sent.add_permits(1);
                }
            });
            // Connections opened in a burst overflow the listen backlog; a few at a time.
            if n % 256 == 255 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let all = u32::try_from(count).context("waiter count")?;
        tokio::time::timeout(Duration::from_secs(120), sent.acquire_many(all))
            .await
            .context("every waiter connected within 2 minutes")??
            .forget();
        // The coordinator registers each wait a moment after its request arrives.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Waiters {
            stop,
            answered,
            failed,
            tasks,
        })
    }

    /// Stops the waiters (their connections close now).
    pub async fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// One check with its wait, on a new connection: whether it was answered 200. `on_sent` runs
/// once the check is written.
async fn wait_once(address: &str, request: &[u8], on_sent: impl FnOnce()) -> bool {
    let Ok(mut stream) = TcpStream::connect(address).await else {
        return false;
    };
    if stream.write_all(request).await.is_err() {
        return false;
    }
    on_sent();
    let mut answer = Vec::with_capacity(1024);
    let read = tokio::time::timeout(Duration::from_secs(90), stream.read_to_end(&mut answer));
    matches!(read.await, Ok(Ok(_))) && answer.starts_with(b"HTTP/1.1 200")
}
