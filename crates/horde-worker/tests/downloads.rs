//! The model downloader against a real HTTP file server on loopback: an axum server in the test
//! that serves the random files the test writes, honours `Range` (206 with `Content-Range`),
//! and can be told to misbehave (cut the connection halfway, ignore ranges, serve corrupt
//! bytes, answer 404, stream slowly). It counts the requests, the ranges it was asked for and
//! the downloads it served at once, so each test can say what went over the wire.

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use horde_worker::models::download::{
    fetch_models, is_verified, sha256_of, DownloadSettings, FileOrder, ModelOrder, ModelOutcome,
};
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bytes one body chunk carries.
const CHUNK: usize = 16 * 1024;

/// How the file server misbehaves (all off by default).
#[derive(Default)]
struct Faults {
    /// Cut the connection after half the body, on the next GET only.
    cut_next: AtomicBool,
    ignore_range: AtomicBool,
    corrupt: AtomicBool,
    not_found: AtomicBool,
    /// A pause before each body chunk (ms).
    chunk_delay_ms: AtomicU64,
}

#[derive(Default)]
struct Server {
    files: HashMap<String, Vec<u8>>,
    faults: Faults,
    gets: AtomicUsize,
    heads: AtomicUsize,
    /// The `Range` header of each GET, in order.
    ranges: Mutex<Vec<Option<String>>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Server {
    fn requests(&self) -> usize {
        self.gets.load(Ordering::SeqCst) + self.heads.load(Ordering::SeqCst)
    }

    fn ranges(&self) -> Vec<Option<String>> {
        self.ranges.lock().unwrap().clone()
    }
}

/// Counts a body being served until its last chunk is out (or the body is dropped).
struct InFlight {
    server: Arc<Server>,
    done: bool,
}

impl InFlight {
    fn start(server: Arc<Server>) -> Self {
        let now = server.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        server.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self {
            server,
            done: false,
        }
    }

    fn finish(&mut self) {
        if !std::mem::replace(&mut self.done, true) {
            self.server.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Starts the file server on 127.0.0.1:0; its base URL (`http://127.0.0.1:PORT/files/`).
async fn serve_files(server: Server) -> (String, Arc<Server>) {
    let server = Arc::new(server);
    let app = Router::new()
        .route("/files/{*name}", get(serve))
        .with_state(Arc::clone(&server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}/files/"), server)
}

async fn serve(
    State(server): State<Arc<Server>>,
    method: Method,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let range = headers
        .get(header::RANGE)
        .map(|v| v.to_str().unwrap().to_string());
    if method == Method::HEAD {
        server.heads.fetch_add(1, Ordering::SeqCst);
    } else {
        server.gets.fetch_add(1, Ordering::SeqCst);
        server.ranges.lock().unwrap().push(range.clone());
    }
    let faults = &server.faults;
    let Some(bytes) = server
        .files
        .get(&name)
        .filter(|_| !faults.not_found.load(Ordering::SeqCst))
    else {
        return status_only(StatusCode::NOT_FOUND);
    };
    let mut bytes = bytes.clone();
    if faults.corrupt.load(Ordering::SeqCst) {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
    }
    let start = range
        .filter(|_| !faults.ignore_range.load(Ordering::SeqCst))
        .map(|r| {
            r.trim_start_matches("bytes=")
                .trim_end_matches('-')
                .parse::<usize>()
                .unwrap()
        });
    let total = bytes.len();
    if start.is_some_and(|s| s >= total) {
        return status_only(StatusCode::RANGE_NOT_SATISFIABLE);
    }
    let mut answer = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, total - start.unwrap_or(0));
    if let Some(start) = start {
        let content_range = format!("bytes {start}-{}/{total}", total - 1);
        answer = answer
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, content_range);
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        let cut = faults.cut_next.swap(false, Ordering::SeqCst);
        body(
            Arc::clone(&server),
            bytes.split_off(start.unwrap_or(0)),
            cut,
        )
    };
    answer.body(body).unwrap()
}

fn status_only(status: StatusCode) -> Response {
    Response::builder()
        .status(status)
        .body(Body::empty())
        .unwrap()
}

/// The body in chunks, slowed by the server's chunk delay; `cut`: half of it, then an error
/// (the connection drops mid-body).
fn body(server: Arc<Server>, bytes: Vec<u8>, cut: bool) -> Body {
    let delay = Duration::from_millis(server.faults.chunk_delay_ms.load(Ordering::SeqCst));
    let end = if cut { bytes.len() / 2 } else { bytes.len() };
    let state = (bytes, 0usize, InFlight::start(server));
    let stream = futures_util::stream::unfold(state, move |(bytes, at, mut flight)| async move {
        if at == end {
            flight.finish();
            return cut.then(|| {
                (
                    Err(std::io::Error::other("cut")),
                    (bytes, usize::MAX, flight),
                )
            });
        }
        if at == usize::MAX {
            return None;
        }
        tokio::time::sleep(delay).await;
        let next = (at + CHUNK).min(end);
        let chunk = Bytes::copy_from_slice(&bytes[at..next]);
        if next == end && !cut {
            flight.finish();
        }
        Some((Ok(chunk), (bytes, next, flight)))
    });
    Body::from_stream(stream)
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn settings(dir: &Path) -> DownloadSettings {
    DownloadSettings {
        dir: dir.to_path_buf(),
        parallel: 2,
        attempts: 3,
        backoff: Duration::from_millis(1),
        disk_budget_bytes: None,
        show_progress: false,
    }
}

fn file(base: &str, name: &str, bytes: &[u8]) -> FileOrder {
    FileOrder {
        file_name: name.to_string(),
        url: format!("{base}{name}"),
        sha256: Some(sha_hex(bytes)),
    }
}

fn model(name: &str, files: Vec<FileOrder>, size_hint: Option<u64>) -> ModelOrder {
    ModelOrder {
        model: name.to_string(),
        files,
        size_hint,
    }
}

/// One model of one file `a.bin` (300 KB of random bytes) on a fresh server.
async fn one_file(faults: impl FnOnce(&mut Faults)) -> (String, Arc<Server>, Vec<u8>) {
    let bytes = random_bytes(300_000, 1);
    let mut server = Server::default();
    server.files.insert("a.bin".into(), bytes.clone());
    faults(&mut server.faults);
    let (base, server) = serve_files(server).await;
    (base, server, bytes)
}

fn skipped(outcome: &(String, ModelOutcome)) -> &str {
    match &outcome.1 {
        ModelOutcome::Skipped { reason } => reason,
        ready => panic!("{} should be skipped: {ready:?}", outcome.0),
    }
}

fn assert_ready(outcome: &(String, ModelOutcome), dir: &Path, names: &[&str]) {
    let expected = names.iter().map(|n| dir.join(n)).collect();
    assert_eq!(
        outcome.1,
        ModelOutcome::Ready { files: expected },
        "model {}",
        outcome.0
    );
}

fn assert_nothing_left(dir: &Path, name: &str) {
    for leftover in [
        name.to_string(),
        format!("{name}.part"),
        format!("{name}.sha256"),
    ] {
        assert!(!dir.join(&leftover).exists(), "{leftover} left on disk");
    }
}

#[tokio::test]
async fn a_fresh_download_is_verified_recorded_and_not_requested_again() {
    let (base, server, bytes) = one_file(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let orders = [model(
        "Deliberate",
        vec![file(&base, "a.bin", &bytes)],
        None,
    )];
    let outcomes = fetch_models(&orders, &settings(dir.path())).await;
    assert_ready(&outcomes[0], dir.path(), &["a.bin"]);
    let path = dir.path().join("a.bin");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(is_verified(&path, &sha_hex(&bytes)));
    assert!(!dir.path().join("a.bin.part").exists());
    assert_eq!(server.gets.load(Ordering::SeqCst), 1);
    let before = server.requests();
    let again = fetch_models(&orders, &settings(dir.path())).await;
    assert_ready(&again[0], dir.path(), &["a.bin"]);
    assert_eq!(
        server.requests(),
        before,
        "a verified file was requested again"
    );
}

#[tokio::test]
async fn a_download_cut_halfway_resumes_from_the_part_and_verifies() {
    let (base, server, bytes) = one_file(|f| f.cut_next = AtomicBool::new(true)).await;
    let dir = tempfile::tempdir().unwrap();
    let orders = [model(
        "Deliberate",
        vec![file(&base, "a.bin", &bytes)],
        Some(300_000),
    )];
    let outcomes = fetch_models(&orders, &settings(dir.path())).await;
    assert_ready(&outcomes[0], dir.path(), &["a.bin"]);
    assert_eq!(std::fs::read(dir.path().join("a.bin")).unwrap(), bytes);
    let ranges = server.ranges();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    let resumed_at: usize = ranges[1]
        .as_deref()
        .expect("the retry asked for no range")
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    // What the client had received before the cut: up to half, and more than nothing.
    assert!(
        resumed_at > 0 && resumed_at <= bytes.len() / 2,
        "resumed at {resumed_at}"
    );
}

#[tokio::test]
async fn a_part_left_by_an_earlier_run_is_resumed_at_its_length() {
    let (base, server, bytes) = one_file(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.bin.part"), &bytes[..123_456]).unwrap();
    let orders = [model(
        "Deliberate",
        vec![file(&base, "a.bin", &bytes)],
        None,
    )];
    let outcomes = fetch_models(&orders, &settings(dir.path())).await;
    assert_ready(&outcomes[0], dir.path(), &["a.bin"]);
    assert_eq!(std::fs::read(dir.path().join("a.bin")).unwrap(), bytes);
    assert_eq!(server.ranges(), [Some("bytes=123456-".to_string())]);
}

#[tokio::test]
async fn a_server_that_ignores_ranges_is_downloaded_from_the_start() {
    let (base, server, bytes) = one_file(|f| f.ignore_range = AtomicBool::new(true)).await;
    let dir = tempfile::tempdir().unwrap();
    // A part of other bytes: appending the full body to it would fail the checksum.
    std::fs::write(dir.path().join("a.bin.part"), random_bytes(50_000, 9)).unwrap();
    let orders = [model(
        "Deliberate",
        vec![file(&base, "a.bin", &bytes)],
        None,
    )];
    let outcomes = fetch_models(&orders, &settings(dir.path())).await;
    assert_ready(&outcomes[0], dir.path(), &["a.bin"]);
    assert_eq!(std::fs::read(dir.path().join("a.bin")).unwrap(), bytes);
    // One GET: the 200 answer replaced the part (no second, fresh download was needed).
    assert_eq!(server.ranges(), [Some("bytes=50000-".to_string())]);
}

#[tokio::test]
async fn a_corrupt_file_is_deleted_and_its_model_skipped() {
    let (base, server, bytes) = one_file(|f| f.corrupt = AtomicBool::new(true)).await;
    let dir = tempfile::tempdir().unwrap();
    let orders = [model(
        "Deliberate",
        vec![file(&base, "a.bin", &bytes)],
        None,
    )];
    let outcomes = fetch_models(&orders, &settings(dir.path())).await;
    let reason = skipped(&outcomes[0]);
    for part in [
        "Deliberate",
        "a.bin",
        "checksum",
        &sha_hex(&bytes),
        "not loaded",
    ] {
        assert!(reason.contains(part), "{part:?} missing from: {reason}");
    }
    assert_nothing_left(dir.path(), "a.bin");
    assert_eq!(
        server.gets.load(Ordering::SeqCst),
        1,
        "a fresh corrupt download was retried"
    );
}

#[tokio::test]
async fn a_file_without_checksum_is_never_requested() {
    let (base, server, bytes) = one_file(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let unverifiable = FileOrder {
        sha256: None,
        ..file(&base, "a.bin", &bytes)
    };
    let orders = [model("Deliberate", vec![unverifiable], None)];
    let outcomes = fetch_models(&orders, &settings(dir.path())).await;
    let reason = skipped(&outcomes[0]);
    assert!(
        reason.contains("Deliberate") && reason.contains("a.bin") && reason.contains("no SHA-256"),
        "{reason}"
    );
    assert_eq!(server.requests(), 0);
    assert_nothing_left(dir.path(), "a.bin");
}

#[tokio::test]
async fn a_path_leaving_the_models_directory_is_refused() {
    let (base, server, bytes) = one_file(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let escaping = FileOrder {
        file_name: "../a.bin".into(),
        ..file(&base, "a.bin", &bytes)
    };
    let orders = [model("Deliberate", vec![escaping], None)];
    let outcomes = fetch_models(&orders, &settings(&models)).await;
    let reason = skipped(&outcomes[0]);
    assert!(
        reason.contains("Deliberate") && reason.contains("refused file path"),
        "{reason}"
    );
    assert_eq!(server.requests(), 0);
    assert!(!dir.path().join("a.bin").exists());
}

#[tokio::test]
async fn an_unreachable_host_is_tried_attempts_times_and_named() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}/files/");
    let dir = tempfile::tempdir().unwrap();
    let orders = [model(
        "Deliberate",
        vec![file(&base, "a.bin", b"x")],
        Some(1),
    )];
    let outcomes = fetch_models(&orders, &settings(dir.path())).await;
    let reason = skipped(&outcomes[0]);
    let expected = "cannot download a.bin for model Deliberate from 127.0.0.1: ";
    assert!(reason.starts_with(expected), "{reason}");
    assert!(reason.ends_with("(after 3 attempts)"), "{reason}");
    assert_nothing_left(dir.path(), "a.bin");
}

#[tokio::test]
async fn a_404_is_not_retried() {
    let (base, server, bytes) = one_file(|f| f.not_found = AtomicBool::new(true)).await;
    let dir = tempfile::tempdir().unwrap();
    let orders = [model(
        "Deliberate",
        vec![file(&base, "a.bin", &bytes)],
        Some(300_000),
    )];
    let outcomes = fetch_models(
        &orders,
        &DownloadSettings {
            attempts: 5,
            ..settings(dir.path())
        },
    )
    .await;
    let reason = skipped(&outcomes[0]);
    assert!(
        reason.contains("a.bin for model Deliberate from 127.0.0.1") && reason.contains("404"),
        "{reason}"
    );
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_model_over_the_disk_budget_is_skipped_and_the_earlier_one_served() {
    let (a, b) = (random_bytes(300_000, 2), random_bytes(300_000, 3));
    let mut server = Server::default();
    server.files.insert("a.bin".into(), a.clone());
    server.files.insert("b.bin".into(), b.clone());
    let (base, server) = serve_files(server).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("other.bin"), random_bytes(100_000, 4)).unwrap();
    let budget = DownloadSettings {
        disk_budget_bytes: Some(450_000),
        ..settings(dir.path())
    };
    let orders = [
        // Sized by the server's Content-Length (a HEAD), then by the reference's hint.
        model("A", vec![file(&base, "a.bin", &a)], None),
        model("B", vec![file(&base, "b.bin", &b)], Some(300_000)),
    ];
    let outcomes = fetch_models(&orders, &budget).await;
    assert_ready(&outcomes[0], dir.path(), &["a.bin"]);
    assert_eq!(
        skipped(&outcomes[1]),
        "model B needs 0.300 MB, the models directory holds 0.400 MB of its 0.450 MB budget"
    );
    assert_eq!(server.ranges().len(), 1, "b.bin was requested");
    assert!(!dir.path().join("b.bin").exists());
}

#[tokio::test]
async fn no_more_than_parallel_files_download_at_once() {
    let mut server = Server::default();
    let names = ["f0", "f1", "f2", "f3", "f4"];
    let mut files = Vec::new();
    for (seed, name) in names.iter().enumerate() {
        server
            .files
            .insert(name.to_string(), random_bytes(160_000, seed as u64 + 10));
    }
    server.faults.chunk_delay_ms = AtomicU64::new(3);
    let contents: Vec<Vec<u8>> = names.iter().map(|n| server.files[*n].clone()).collect();
    let (base, server) = serve_files(server).await;
    for (name, bytes) in names.iter().zip(&contents) {
        files.push(file(&base, name, bytes));
    }
    let dir = tempfile::tempdir().unwrap();
    let orders = [
        model("Five", files[..3].to_vec(), None),
        model("Two", files[3..].to_vec(), None),
    ];
    let outcomes = fetch_models(&orders, &settings(dir.path())).await;
    assert_ready(&outcomes[0], dir.path(), &names[..3]);
    assert_ready(&outcomes[1], dir.path(), &names[3..]);
    assert_eq!(server.gets.load(Ordering::SeqCst), 5);
    // Two at once, never three: the semaphore both allows and bounds the overlap.
    assert_eq!(server.max_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_file_two_models_share_is_downloaded_once() {
    let (base, server, bytes) = one_file(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let shared = file(&base, "a.bin", &bytes);
    let orders = [
        model("A", vec![shared.clone()], None),
        model("B", vec![shared], None),
    ];
    let outcomes = fetch_models(&orders, &settings(dir.path())).await;
    assert_ready(&outcomes[0], dir.path(), &["a.bin"]);
    assert_ready(&outcomes[1], dir.path(), &["a.bin"]);
    assert_eq!(server.gets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_file_found_without_record_is_hashed_once_and_a_wrong_one_replaced() {
    let (base, server, bytes) = one_file(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.bin");
    let orders = [model(
        "Deliberate",
        vec![file(&base, "a.bin", &bytes)],
        None,
    )];
    std::fs::write(&path, &bytes).unwrap();
    let outcomes = fetch_models(&orders, &settings(dir.path())).await;
    assert_ready(&outcomes[0], dir.path(), &["a.bin"]);
    assert_eq!(server.requests(), 0, "a good file on disk was downloaded");
    assert!(is_verified(&path, &sha_hex(&bytes)));
    std::fs::write(&path, random_bytes(300_000, 5)).unwrap();
    let outcomes = fetch_models(&orders, &settings(dir.path())).await;
    assert_ready(&outcomes[0], dir.path(), &["a.bin"]);
    assert_eq!(sha256_of(&path).unwrap(), sha_hex(&bytes));
    assert_eq!(server.gets.load(Ordering::SeqCst), 1);
}

/// A real ENOSPC: the part is a link to `/dev/full`, where every write fails "no space left".
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_full_disk_skips_the_model_and_deletes_the_part() {
    let (base, server, bytes) = one_file(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.path().join("a.bin.part")).unwrap();
    let orders = [model(
        "Deliberate",
        vec![file(&base, "a.bin", &bytes)],
        Some(300_000),
    )];
    let outcomes = fetch_models(&orders, &settings(dir.path())).await;
    let reason = skipped(&outcomes[0]);
    assert!(
        reason.starts_with("the disk is full: a.bin of model Deliberate"),
        "{reason}"
    );
    assert!(
        dir.path().join("a.bin.part").symlink_metadata().is_err(),
        "the part was kept"
    );
    assert_nothing_left(dir.path(), "a.bin");
    assert_eq!(
        server.gets.load(Ordering::SeqCst),
        1,
        "a full disk was retried"
    );
}

#[tokio::test]
async fn a_file_listed_twice_by_one_model_is_downloaded_once() {
    let (base, server, bytes) = one_file(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let twice = vec![file(&base, "a.bin", &bytes), file(&base, "a.bin", &bytes)];
    let outcomes = fetch_models(&[model("Deliberate", twice, None)], &settings(dir.path())).await;
    assert_ready(&outcomes[0], dir.path(), &["a.bin", "a.bin"]);
    assert_eq!(server.gets.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_resumed_file_that_fails_its_checksum_is_downloaded_once_afresh() {
    let (base, server, bytes) = one_file(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    // A part of other bytes (another version of the file, say): resuming it cannot verify.
    std::fs::write(dir.path().join("a.bin.part"), random_bytes(100_000, 7)).unwrap();
    let orders = [model(
        "Deliberate",
        vec![file(&base, "a.bin", &bytes)],
        None,
    )];
    let outcomes = fetch_models(&orders, &settings(dir.path())).await;
    assert_ready(&outcomes[0], dir.path(), &["a.bin"]);
    assert_eq!(std::fs::read(dir.path().join("a.bin")).unwrap(), bytes);
    assert_eq!(server.ranges(), [Some("bytes=100000-".to_string()), None]);
}
