//! Serving HTTP connections within bounds, so that idle or slow sockets cannot exhaust the
//! coordinator (`axum::serve` sets no timeout and no cap).
//!
//! * **Headers in time.** A client must send a request's headers within
//!   `api.header_timeout_secs` of the connection opening, or of the last answer on a kept-alive
//!   connection (hyper starts its header timer whenever the connection waits for a request), so
//!   idle and byte-by-byte ("slowloris") sockets are closed.
//! * **Bodies in time.** A body must arrive within `api.body_timeout_secs`
//!   (`RequestBodyTimeoutLayer` in the router), else 408 with the AI Horde body.
//! * **A cap on connections.** Past `api.max_connections` open at once, a new connection gets
//!   an immediate 503 `TooManyConnections` (the AI Horde body, `Retry-After`) and is closed.
//! * **File descriptors.** At start the process raises its soft limit on open files to the hard
//!   limit ([`raise_open_file_limit`]) and logs the figures; the cap is kept below the limit.
//!
//! Connections speak HTTP/1.1. On shutdown, every connection finishes its request in hand.

use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// File descriptors kept free for the database, image files and logs.
const RESERVED_FILES: u64 = 128;

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    /// Headers beyond this size are refused by hyper (431); ours refuse smaller ones first.
    pub max_header_bytes: usize,
}

/// Raises this process's soft limit on open files to its hard limit; returns (soft, hard).
pub fn raise_open_file_limit() -> (u64, u64) {
    let raised = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    let hard = rlimit::Resource::NOFILE
        .get()
        .map(|(_, hard)| hard)
        .unwrap_or(raised);
    (raised, hard)
}

/// The connection cap that fits under `open_files` (the soft limit), at most `configured`.
pub fn fitting_cap(configured: usize, open_files: u64) -> usize {
    let room = open_files.saturating_sub(RESERVED_FILES).max(16);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then lets every
/// open connection finish what it is doing.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // hyper's HTTP/1 connection directly: hyper-util's protocol-detecting builder reads the
    // first bytes with no timeout, so a socket that never sends one would stay open.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192) * 2)
        .max_headers(MAX_HEADERS_ACCEPTED);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors or a connection reset before it was accepted:
                    // wait a moment rather than spin.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let service = router
            .clone()
            .map_request(move |mut request: axum::http::Request<_>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = watched.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Hyper's own cap on the number of headers (a 431 past it); the router refuses more than
/// [`crate::guard::MAX_HEADERS`] first, with the AI Horde body.
const MAX_HEADERS_ACCEPTED: usize = 200;

/// The answer to a connection over the cap: 503 with the AI Horde body, then the socket closes.
async fn refuse(mut stream: TcpStream) {
    let body = serde_json::to_string(&horde_api::ErrorBody::new(
        horde_api::Rc::TooManyConnections,
        "This coordinator has as many connections open as it takes; try again in a few seconds.",
    ))
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_files_for_the_database_and_images() {
        assert_eq!(fitting_cap(4096, 20_000), 4096);
        assert_eq!(fitting_cap(4096, 1024), 1024 - RESERVED_FILES as usize);
        assert_eq!(fitting_cap(4096, 10), 16);
    }
}
