//! The downloads themselves: at most `parallel` files at once, each fetched into its `.part`
//! (resumed with a range request), retried with backoff on transient failures, hashed, and only
//! then renamed to its final name. The planning (what to fetch, whether it fits) is the parent's.

use super::{
    expected_sha, part_path, record_verified, sha256_of, DownloadSettings, FileFailure, Job,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{Client, StatusCode, Url};
use std::collections::HashMap;
use std::io::{ErrorKind, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The longest wait between two tries, whatever the doubling says.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What every download task shares.
struct Shared {
    client: Client,
    settings: DownloadSettings,
    permits: Semaphore,
    bars: MultiProgress,
}

/// Runs the jobs, at most `parallel` at once; each file's result by file name.
pub(super) async fn run_jobs(
    jobs: Vec<Job>,
    settings: &DownloadSettings,
    client: Client,
) -> HashMap<String, Result<PathBuf, FileFailure>> {
    let target = if settings.show_progress && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let shared = Arc::new(Shared {
        client,
        settings: settings.clone(),
        permits: Semaphore::new(settings.parallel.max(1)),
        bars: MultiProgress::with_draw_target(target),
    });
    let mut tasks = JoinSet::new();
    for job in jobs {
        let shared = Arc::clone(&shared);
        tasks.spawn(async move {
            let result = download(&shared, &job).await;
            (job.order.file_name, result)
        });
    }
    let mut results = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((name, result)) => {
                results.insert(name, result);
            }
            Err(error) => tracing::error!(%error, "a download task failed"),
        }
    }
    results
}

/// Downloads one file to its final name, verified; one fresh try more when a resumed part
/// turns out wrong.
async fn download(shared: &Shared, job: &Job) -> Result<PathBuf, FileFailure> {
    let Ok(_permit) = shared.permits.acquire().await else {
        return Err(FileFailure::Io("the download pool was closed".into()));
    };
    let dest = shared.settings.dir.join(&job.order.file_name);
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| FileFailure::Io(format!("cannot create {}: {e}", parent.display())))?;
    }
    let bar = shared.bars.add(new_bar(&job.model, &job.order.file_name));
    let (model, file) = (job.model.as_str(), job.order.file_name.as_str());
    tracing::info!(model, file, url = %job.order.url, "download started");
    let resumed = tokio::fs::metadata(part_path(&dest))
        .await
        .is_ok_and(|m| m.len() > 0);
    let mut result = fetch_verified(shared, job, &dest, &bar).await;
    if resumed && matches!(result, Err(FileFailure::Checksum { .. })) {
        tracing::warn!(
            model,
            file,
            "the resumed file fails its checksum: downloading it afresh"
        );
        result = fetch_verified(shared, job, &dest, &bar).await;
    }
    bar.finish_and_clear();
    match &result {
        Ok(_) => tracing::info!(model, file, "download finished, verified"),
        Err(failure) => {
            tracing::warn!(model, file, reason = %failure.reason(model, file), "download failed")
        }
    }
    result
}

fn new_bar(model: &str, file: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar = ProgressBar::new(0).with_style(style);
    bar.set_message(format!("{model}: {file}"));
    bar
}

/// Fetches the file into its `.part` (with retries), hashes it, and only then gives it its
/// final name and its record. A mismatch deletes the part.
async fn fetch_verified(
    shared: &Shared,
    job: &Job,
    dest: &Path,
    bar: &ProgressBar,
) -> Result<PathBuf, FileFailure> {
    let part = part_path(dest);
    fetch_with_retries(shared, job, &part, bar).await?;
    let hashed = part.clone();
    let actual = tokio::task::spawn_blocking(move || sha256_of(&hashed))
        .await
        .map_err(|e| FileFailure::Io(e.to_string()))?
        .map_err(|e| FileFailure::Io(format!("cannot read {}: {e}", part.display())))?;
    let expected = expected_sha(&job.order);
    if actual != expected {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(FileFailure::Checksum { expected, actual });
    }
    tokio::fs::rename(&part, dest)
        .await
        .map_err(|e| FileFailure::Io(format!("cannot rename {}: {e}", part.display())))?;
    if let Err(error) = record_verified(dest, &expected) {
        tracing::warn!(file = %dest.display(), %error, "cannot write the verification record");
    }
    Ok(dest.to_path_buf())
}

/// How one try ended badly.
enum Attempt {
    /// Worth another try (connection errors, timeouts, 5xx, 408, 429, a short body).
    Transient(String),
    /// Not worth one (other 4xx answers).
    Final(String),
    DiskFull,
    Io(String),
}

/// Tries the download up to `attempts` times, with doubling backoff between transient failures.
async fn fetch_with_retries(
    shared: &Shared,
    job: &Job,
    part: &Path,
    bar: &ProgressBar,
) -> Result<(), FileFailure> {
    let attempts = shared.settings.attempts.max(1);
    let host = Url::parse(&job.order.url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_string))
        .unwrap_or_default();
    let mut attempt = 0;
    loop {
        let failed = match fetch_once(&shared.client, &job.order.url, part, bar).await {
            Ok(()) => return Ok(()),
            Err(failed) => failed,
        };
        attempt += 1;
        match failed {
            Attempt::Transient(detail) if attempt < attempts => {
                let delay = backoff(shared.settings.backoff, attempt - 1);
                tracing::warn!(model = %job.model, file = %job.order.file_name, %detail,
                    retry_in = ?delay, "download interrupted; retrying");
                tokio::time::sleep(delay).await;
            }
            Attempt::Transient(detail) => {
                let tries = if attempt == 1 { "attempt" } else { "attempts" };
                let detail = format!("{detail} (after {attempt} {tries})");
                return Err(FileFailure::Download { host, detail });
            }
            Attempt::Final(detail) => return Err(FileFailure::Download { host, detail }),
            Attempt::DiskFull => {
                let _ = tokio::fs::remove_file(part).await;
                return Err(FileFailure::DiskFull);
            }
            Attempt::Io(detail) => return Err(FileFailure::Io(detail)),
        }
    }
}

/// The wait before retry `n` (0-based): `first` doubling, at most a minute (or `first`).
pub(super) fn backoff(first: Duration, n: u32) -> Duration {
    first
        .saturating_mul(1 << n.min(16))
        .min(MAX_BACKOFF.max(first))
}

/// One GET: resumes the part when there is one, appends (206) or starts over (200).
async fn fetch_once(
    client: &Client,
    url: &str,
    part: &Path,
    bar: &ProgressBar,
) -> Result<(), Attempt> {
    let have = tokio::fs::metadata(part)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let mut request = client.get(url);
    if have > 0 {
        request = request.header(RANGE, format!("bytes={have}-"));
    }
    let mut answer = request
        .send()
        .await
        .map_err(|e| Attempt::Transient(chain(&e)))?;
    let append = match answer.status() {
        StatusCode::PARTIAL_CONTENT if range_start(&answer) == Some(have) => true,
        StatusCode::PARTIAL_CONTENT => {
            return Err(restart(part, "the server answered another range than asked").await);
        }
        StatusCode::OK => {
            if have > 0 {
                tracing::info!(url, "the server ignores ranges: downloading from the start");
            }
            false
        }
        StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => return Ok(()),
        status => return Err(status_failure(status)),
    };
    let start = if append { have } else { 0 };
    bar.set_length(answer.content_length().map_or(0, |len| len + start));
    bar.set_position(start);
    let mut file = open_part(part, append).await?;
    let streamed = stream_body(&mut answer, &mut file, part, bar).await;
    let flushed = file.flush().await.map_err(|e| write_failure(part, e));
    let written = streamed?;
    flushed?;
    match answer.content_length() {
        Some(len) if written < len => Err(Attempt::Transient(format!(
            "the body ended after {written} of {len} bytes"
        ))),
        _ => Ok(()),
    }
}

/// Deletes the part (its bytes cannot be trusted to line up) and asks for another try.
async fn restart(part: &Path, why: &str) -> Attempt {
    let _ = tokio::fs::remove_file(part).await;
    Attempt::Transient(why.to_string())
}

fn status_failure(status: StatusCode) -> Attempt {
    let detail = format!("HTTP {status}");
    let transient = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    if transient {
        Attempt::Transient(detail)
    } else {
        Attempt::Final(detail)
    }
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` answer.
fn range_start(answer: &reqwest::Response) -> Option<u64> {
    let value = answer.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

async fn open_part(part: &Path, append: bool) -> Result<tokio::fs::File, Attempt> {
    let mut options = tokio::fs::OpenOptions::new();
    if append {
        options.append(true);
    } else {
        options.write(true).create(true).truncate(true);
    }
    options.open(part).await.map_err(|e| write_failure(part, e))
}

/// Copies the body into the part; the bytes written (kept on disk whatever happens).
async fn stream_body(
    answer: &mut reqwest::Response,
    file: &mut tokio::fs::File,
    part: &Path,
    bar: &ProgressBar,
) -> Result<u64, Attempt> {
    let mut written = 0u64;
    loop {
        let chunk = answer
            .chunk()
            .await
            .map_err(|e| Attempt::Transient(chain(&e)))?;
        let Some(chunk) = chunk else {
            return Ok(written);
        };
        file.write_all(&chunk)
            .await
            .map_err(|e| write_failure(part, e))?;
        written += chunk.len() as u64;
        bar.inc(chunk.len() as u64);
    }
}

fn write_failure(part: &Path, error: std::io::Error) -> Attempt {
    if error.kind() == ErrorKind::StorageFull {
        Attempt::DiskFull
    } else {
        Attempt::Io(format!("cannot write {}: {error}", part.display()))
    }
}

/// An error with its causes (reqwest's own message alone hides the reason).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_throttling_are_retried_other_refusals_are_final() {
        for code in [500, 502, 503, 504, 408, 429] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(status_failure(status), Attempt::Transient(_)),
                "{code} final"
            );
        }
        for code in [400, 401, 403, 404, 410] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(status_failure(status), Attempt::Final(d) if d.contains(&code.to_string())),
                "{code} retried"
            );
        }
    }

    /// An error whose message leaves its cause out, as reqwest's does.
    #[derive(Debug)]
    struct Sending(std::io::Error);

    impl std::fmt::Display for Sending {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error sending request")
        }
    }

    impl std::error::Error for Sending {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn an_error_is_told_with_its_causes() {
        let refused = std::io::Error::new(ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            chain(&Sending(refused)),
            "error sending request: connection refused"
        );
    }
}
