//! Downloads the files of the models the reference lists into the worker's models directory.
//!
//! Why it is careful: model files are gigabytes fetched from hosts we do not control, on links
//! that drop, onto disks that fill up, and a worker that loads a wrong or truncated file either
//! crashes or serves garbage under the model's name. So:
//!
//! * **Nothing unverified is ever loaded.** A file is written to `NAME.part` and renamed to
//!   `NAME` only after its SHA-256 matches the reference's; a file the reference gives no
//!   checksum for is never downloaded. A mismatch deletes the file and skips the model.
//! * **Verified once.** After verification a sidecar `NAME.sha256` (JSON: the sum, the file's
//!   size and modification time) records it; a later start trusts a file whose sidecar matches
//!   its size and mtime, without hashing gigabytes again and without a request. A file present
//!   without a matching sidecar is hashed once: a match writes the sidecar, a mismatch deletes
//!   it and downloads it again.
//! * **Resumed.** A `.part` left by a cut connection (or a killed worker) is resumed with
//!   `Range: bytes=N-`; a server that ignores ranges (200) is downloaded from the start, a 416
//!   means the part is already whole (its hash decides). When a *resumed* file fails its
//!   checksum (the old part may be of another version of the file), it is downloaded once more
//!   from scratch; a fresh download that fails its checksum is final (no retry loop).
//! * **Within limits.** Transient failures (connection errors, timeouts, 5xx, 408, 429) are
//!   retried with doubling backoff, 4xx answers are not; at most `parallel` files download at
//!   once; before a model starts, the directory's bytes plus what the model still needs must fit
//!   the disk budget and the filesystem's free space, else the model is skipped with the reason.
//!
//! Each model ends [`ModelOutcome::Ready`] or [`ModelOutcome::Skipped`] with a message naming
//! the model (and the file, and the host where one is at fault): the worker serves what it can.
//! This module knows nothing of the reference's JSON (the caller turns it into [`ModelOrder`]s)
//! nor of loading models.

use reqwest::{Client, Url};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

mod fetch;

/// One file a model needs, as the reference lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOrder {
    /// The path relative to the models directory (the reference's `file_path` joined with its
    /// `file_name`). Absolute paths and `..` components are refused: a reference is remote input.
    pub file_name: String,
    /// Where to fetch it: `http://` or `https://` only.
    pub url: String,
    /// The expected SHA-256 (hex). `None`: refused, never downloaded (it could not be verified).
    pub sha256: Option<String>,
}

/// A model's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelOrder {
    /// The model's name, as the reference and the horde know it.
    pub model: String,
    /// The files it needs.
    pub files: Vec<FileOrder>,
    /// The reference's `size_on_disk_bytes`: what the model takes on disk in all.
    pub size_hint: Option<u64>,
}

/// How [`fetch_models`] downloads.
#[derive(Debug, Clone)]
pub struct DownloadSettings {
    /// The models directory.
    pub dir: PathBuf,
    /// The most files downloading at once, over all models.
    pub parallel: usize,
    /// Tries per file (transient failures only; a 4xx answer is final at once).
    pub attempts: u32,
    /// The delay before the first retry, doubling after each, capped at a minute.
    pub backoff: Duration,
    /// The most the models directory may hold in all (`None`: no budget).
    pub disk_budget_bytes: Option<u64>,
    /// Progress bars on stderr (hidden anyway when stderr is not a terminal).
    pub show_progress: bool,
}

impl Default for DownloadSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("models"),
            parallel: 2,
            attempts: 5,
            backoff: Duration::from_secs(2),
            disk_budget_bytes: None,
            show_progress: true,
        }
    }
}

/// What became of one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelOutcome {
    /// Every file is on disk and verified; the paths in the order's file order.
    Ready { files: Vec<PathBuf> },
    /// The model cannot be served; the reason names the model (and the file and host at fault).
    Skipped { reason: String },
}

/// The buffer of [`sha256_of`].
const HASH_BUFFER: usize = 1 << 20;

/// Downloads what is missing of each model, models in the given order; returns one outcome per
/// order, in order. Budgets are checked model by model before any download starts; the files
/// of all admitted models then download together, at most `settings.parallel` at once, a file
/// that two models share once.
pub async fn fetch_models(
    orders: &[ModelOrder],
    settings: &DownloadSettings,
) -> Vec<(String, ModelOutcome)> {
    let client = match build_client() {
        Ok(client) => client,
        Err(error) => return skip_all(orders, &format!("cannot start an HTTP client: {error}")),
    };
    if let Err(error) = std::fs::create_dir_all(&settings.dir) {
        let why = format!(
            "cannot create the models directory {}: {error}",
            settings.dir.display()
        );
        return skip_all(orders, &why);
    }
    let mut planner = Planner::new(settings, &client).await;
    let mut plans = Vec::with_capacity(orders.len());
    for order in orders {
        plans.push(planner.plan(order).await);
    }
    let results = fetch::run_jobs(planner.jobs, settings, client).await;
    orders
        .iter()
        .zip(plans)
        .map(|(order, plan)| {
            let outcome = match plan {
                Err(reason) => ModelOutcome::Skipped { reason },
                Ok(()) => collect(order, settings, &results),
            };
            if let ModelOutcome::Skipped { reason } = &outcome {
                tracing::warn!(model = %order.model, %reason, "model skipped");
            }
            (order.model.clone(), outcome)
        })
        .collect()
}

/// Whether `path` is known verified against `sha256`: its sidecar record names that sum and
/// matches the file's size and modification time. Reads metadata only, never the file.
pub fn is_verified(path: &Path, sha256: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(sidecar_path(path)) else {
        return false;
    };
    let Ok(record) = serde_json::from_str::<Record>(&text) else {
        return false;
    };
    record.sha256.eq_ignore_ascii_case(sha256) && Record::of(path, sha256).ok() == Some(record)
}

/// Records `path` as verified against `sha256`: writes its sidecar `NAME.sha256`.
pub fn record_verified(path: &Path, sha256: &str) -> std::io::Result<()> {
    let record = Record::of(path, sha256)?;
    let text = serde_json::to_string(&record).map_err(std::io::Error::other)?;
    std::fs::write(sidecar_path(path), text)
}

/// Hashes a file (streaming, 1 MiB buffer); the lowercase hex SHA-256.
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; HASH_BUFFER];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

/// The sidecar's content: the file is trusted while its size and mtime are unchanged.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    sha256: String,
    size: u64,
    modified_ns: u64,
}

impl Record {
    fn of(path: &Path, sha256: &str) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        let since = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(Self {
            sha256: sha256.to_ascii_lowercase(),
            size: meta.len(),
            modified_ns: u64::try_from(since.as_nanos()).unwrap_or(u64::MAX),
        })
    }
}

/// `NAME.sha256` beside `NAME`.
fn sidecar_path(path: &Path) -> PathBuf {
    with_suffix(path, ".sha256")
}

/// `NAME.part` beside `NAME`: the only name unverified bytes are ever written under.
fn part_path(path: &Path) -> PathBuf {
    with_suffix(path, ".part")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn build_client() -> reqwest::Result<Client> {
    Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .build()
}

fn skip_all(orders: &[ModelOrder], why: &str) -> Vec<(String, ModelOutcome)> {
    orders
        .iter()
        .map(|order| {
            let reason = format!("model {}: {why}", order.model);
            (order.model.clone(), ModelOutcome::Skipped { reason })
        })
        .collect()
}

/// A model's outcome once the downloads are done: Ready when all its files are, else the
/// first failure, told for this model.
fn collect(
    order: &ModelOrder,
    settings: &DownloadSettings,
    results: &HashMap<String, Result<PathBuf, FileFailure>>,
) -> ModelOutcome {
    let mut files = Vec::with_capacity(order.files.len());
    for file in &order.files {
        match results.get(&file.file_name) {
            Some(Err(failure)) => {
                let reason = failure.reason(&order.model, &file.file_name);
                return ModelOutcome::Skipped { reason };
            }
            Some(Ok(path)) => files.push(path.clone()),
            None => files.push(settings.dir.join(&file.file_name)),
        }
    }
    ModelOutcome::Ready { files }
}

/// Why a file could not be made ready; told per model by [`FileFailure::reason`].
#[derive(Debug, Clone)]
enum FileFailure {
    /// Given up on the host: its last error (or a final HTTP answer).
    Download {
        host: String,
        detail: String,
    },
    Checksum {
        expected: String,
        actual: String,
    },
    DiskFull,
    Io(String),
}

impl FileFailure {
    fn reason(&self, model: &str, file: &str) -> String {
        match self {
            Self::Download { host, detail } => {
                format!("cannot download {file} for model {model} from {host}: {detail}")
            }
            Self::Checksum { expected, actual } => format!(
                "checksum mismatch: {file} of model {model} has SHA-256 {actual}, the reference \
                 says {expected}; deleted, not loaded"
            ),
            Self::DiskFull => format!(
                "the disk is full: {file} of model {model} could not be written; its partial \
                 download was deleted"
            ),
            Self::Io(detail) => format!("cannot store {file} for model {model}: {detail}"),
        }
    }
}

/// One file to download (once, however many models share it).
struct Job {
    /// The first model that listed it: for the progress bar and the log.
    model: String,
    order: FileOrder,
}

/// Decides, model by model in order, what each still needs and whether it fits; gathers the
/// downloads of the admitted models.
struct Planner<'a> {
    settings: &'a DownloadSettings,
    client: &'a Client,
    /// What the models directory holds, plus what admitted models will still add.
    held: u64,
    /// The filesystem's free space less what admitted models will still add (`None`: unknown).
    free: Option<u64>,
    jobs: Vec<Job>,
    /// File name → the checksum it was admitted with (downloads and files found verified).
    seen: HashMap<String, String>,
}

impl<'a> Planner<'a> {
    async fn new(settings: &'a DownloadSettings, client: &'a Client) -> Self {
        let dir = settings.dir.clone();
        let held = tokio::task::spawn_blocking(move || dir_bytes(&dir))
            .await
            .unwrap_or(0);
        let free = fs4::available_space(&settings.dir).ok();
        Self {
            settings,
            client,
            held,
            free,
            jobs: Vec::new(),
            seen: HashMap::new(),
        }
    }

    /// Admits `order` (its missing files become jobs) or says why it is skipped.
    async fn plan(&mut self, order: &ModelOrder) -> Result<(), String> {
        for file in &order.files {
            check_file_order(&order.model, file)?;
        }
        let (mut missing, mut present, mut listed) = (Vec::new(), 0u64, HashSet::new());
        for file in &order.files {
            if !listed.insert(file.file_name.as_str()) {
                continue; // listed twice by this model: one download
            }
            let sha = expected_sha(file);
            if let Some(admitted) = self.seen.get(&file.file_name) {
                if *admitted != sha {
                    return Err(format!(
                        "model {}: {} is listed by another model with another checksum",
                        order.model, file.file_name
                    ));
                }
                continue;
            }
            match self.local_state(&order.model, file, &sha).await {
                Local::Verified(len) => present += len,
                Local::Missing(part) => {
                    present += part;
                    missing.push((file, part));
                }
            }
        }
        if missing.is_empty() {
            self.remember(&order.model, &order.files, &[]);
            return Ok(());
        }
        let need = self.still_needed(order, &missing, present).await;
        self.admit(&order.model, need)?;
        let files: Vec<&FileOrder> = missing.iter().map(|(file, _)| *file).collect();
        self.remember(&order.model, &order.files, &files);
        Ok(())
    }

    fn remember(&mut self, model: &str, all: &[FileOrder], downloads: &[&FileOrder]) {
        for file in all {
            let sha = expected_sha(file);
            self.seen.entry(file.file_name.clone()).or_insert(sha);
        }
        for file in downloads {
            let job = Job {
                model: model.to_string(),
                order: (*file).clone(),
            };
            self.jobs.push(job);
        }
    }

    /// Whether a file is already verified on disk (hashing it once when it has no record).
    async fn local_state(&mut self, model: &str, file: &FileOrder, sha: &str) -> Local {
        let path = self.settings.dir.join(&file.file_name);
        let (model, name, sha) = (model.to_string(), file.file_name.clone(), sha.to_string());
        let (local, deleted) =
            tokio::task::spawn_blocking(move || inspect(&path, &sha, &model, &name))
                .await
                .unwrap_or((Local::Missing(0), 0));
        self.held = self.held.saturating_sub(deleted);
        local
    }

    /// What the model will still add to the disk: the reference's size less what is there, or
    /// else the servers' Content-Length of each missing file less its part.
    async fn still_needed(
        &self,
        order: &ModelOrder,
        missing: &[(&FileOrder, u64)],
        present: u64,
    ) -> u64 {
        if let Some(hint) = order.size_hint {
            return hint.saturating_sub(present);
        }
        let mut need = 0u64;
        for (file, part) in missing {
            need += self
                .remote_len(file)
                .await
                .unwrap_or(0)
                .saturating_sub(*part);
        }
        need
    }

    async fn remote_len(&self, file: &FileOrder) -> Option<u64> {
        let answer = self.client.head(&file.url).send().await.ok()?;
        if !answer.status().is_success() {
            return None;
        }
        // The header itself: reqwest's `content_length()` is the (empty) body's length on a HEAD.
        let header = answer.headers().get(reqwest::header::CONTENT_LENGTH);
        let len = header.and_then(|v| v.to_str().ok()?.parse().ok());
        if len.is_none() {
            tracing::debug!(file = %file.file_name, "no Content-Length: not counted in the budget");
        }
        len
    }

    /// Reserves `need` bytes of the budget and the free space, or says why they are not there.
    fn admit(&mut self, model: &str, need: u64) -> Result<(), String> {
        if let Some(budget) = self.settings.disk_budget_bytes {
            if self.held.saturating_add(need) > budget {
                return Err(format!(
                    "model {model} needs {}, the models directory holds {} of its {} budget",
                    gb(need),
                    gb(self.held),
                    gb(budget)
                ));
            }
        }
        if let Some(free) = self.free {
            if need > free {
                return Err(format!(
                    "not enough free disk space for model {model}: it needs {}, {} is free on \
                     the disk of {}",
                    gb(need),
                    gb(free),
                    self.settings.dir.display()
                ));
            }
            self.free = Some(free - need);
        }
        self.held = self.held.saturating_add(need);
        Ok(())
    }
}

/// A file's state on disk before downloading.
enum Local {
    /// Present and verified: its length.
    Verified(u64),
    /// To download: the length of its `.part` (0 when none).
    Missing(u64),
}

/// Checks a file on disk against `sha` (blocking: may hash it). Returns its state and the bytes
/// deleted (a file that fails its checksum is deleted).
fn inspect(path: &Path, sha: &str, model: &str, name: &str) -> (Local, u64) {
    let part = std::fs::metadata(part_path(path))
        .map(|m| m.len())
        .unwrap_or(0);
    let Ok(meta) = std::fs::metadata(path) else {
        return (Local::Missing(part), 0);
    };
    if is_verified(path, sha) {
        return (Local::Verified(meta.len()), 0);
    }
    match sha256_of(path) {
        Ok(actual) if actual == sha => {
            if let Err(error) = record_verified(path, sha) {
                tracing::warn!(model, file = name, %error, "cannot write the verification record");
            }
            tracing::info!(model, file = name, "found on disk, verified");
            (Local::Verified(meta.len()), 0)
        }
        found => {
            let actual = found.unwrap_or_else(|error| format!("unreadable ({error})"));
            tracing::warn!(model, file = name, expected = sha, %actual,
                "file on disk fails its checksum: deleted, downloading it again");
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(sidecar_path(path));
            (Local::Missing(part), meta.len())
        }
    }
}

/// The reference's checksum in lowercase (empty when none: such orders are refused first).
fn expected_sha(file: &FileOrder) -> String {
    file.sha256
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Refuses a file the downloader must not fetch: an unsafe path, a URL that is not http(s),
/// a missing or malformed checksum. The message names the model and the file.
fn check_file_order(model: &str, file: &FileOrder) -> Result<(), String> {
    let name = &file.file_name;
    let safe = !name.is_empty()
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !safe {
        return Err(format!(
            "model {model}: refused file path {name:?} (must be relative, without `..`)"
        ));
    }
    let scheme_ok = Url::parse(&file.url).is_ok_and(|url| matches!(url.scheme(), "http" | "https"));
    if !scheme_ok {
        return Err(format!(
            "model {model}: refused URL {:?} for {name} (http or https only)",
            file.url
        ));
    }
    match file.sha256.as_deref() {
        None => Err(format!(
            "model {model}: the reference gives no SHA-256 for {name}; a file that cannot be \
             verified is never downloaded"
        )),
        Some(sha) if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Err(format!(
                "model {model}: the reference's SHA-256 for {name} is not 64 hex digits: {sha:?}"
            ))
        }
        Some(_) => Ok(()),
    }
}

/// The bytes under `dir`, recursively (unreadable entries count 0).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            Ok(_) => entry.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes as gigabytes for the messages (megabytes below 0.1 GB, so small files read sensibly).
fn gb(bytes: u64) -> String {
    let gb = bytes as f64 / 1e9;
    if gb >= 0.1 {
        format!("{gb:.2} GB")
    } else {
        format!("{:.3} MB", bytes as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(file_name: &str, url: &str, sha256: Option<&str>) -> FileOrder {
        FileOrder {
            file_name: file_name.into(),
            url: url.into(),
            sha256: sha256.map(str::to_string),
        }
    }

    const SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn remote_paths_that_leave_the_directory_are_refused() {
        for name in ["../evil.ckpt", "a/../../b", "/etc/passwd", "", "."] {
            let refused = check_file_order("M", &order(name, "https://h/x", Some(SHA)));
            assert!(
                refused.is_err_and(|why| why.contains("model M")),
                "{name:?} accepted"
            );
        }
        for name in ["model.ckpt", "sd/model.safetensors"] {
            assert_eq!(
                check_file_order("M", &order(name, "https://h/x", Some(SHA))),
                Ok(())
            );
        }
    }

    #[test]
    fn only_http_urls_and_hex_checksums_are_accepted() {
        let file = order("a", "file:///etc/passwd", Some(SHA));
        assert!(check_file_order("M", &file).is_err_and(|why| why.contains("http or https")));
        let file = order("a", "http://h/a", Some("abc"));
        assert!(check_file_order("M", &file).is_err_and(|why| why.contains("64 hex")));
        let file = order("a", "http://h/a", None);
        assert!(check_file_order("M", &file).is_err_and(|why| why.contains("no SHA-256")));
    }

    #[test]
    fn sha256_of_an_empty_file_is_the_known_sum_and_the_record_tracks_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"").unwrap();
        assert_eq!(sha256_of(&path).unwrap(), SHA);
        assert!(!is_verified(&path, SHA), "verified without a record");
        record_verified(&path, SHA).unwrap();
        assert!(dir.path().join("f.bin.sha256").exists());
        assert!(is_verified(&path, &SHA.to_ascii_uppercase()));
        assert!(
            !is_verified(&path, &SHA.replace('e', "f")),
            "another sum accepted"
        );
        std::fs::write(&path, b"changed").unwrap();
        assert!(
            !is_verified(&path, SHA),
            "a changed file still counts as verified"
        );
    }

    #[test]
    fn backoff_doubles_from_the_first_delay_up_to_the_cap() {
        let first = Duration::from_millis(100);
        assert_eq!(fetch::backoff(first, 0), first);
        assert_eq!(fetch::backoff(first, 3), Duration::from_millis(800));
        assert_eq!(fetch::backoff(first, 30), fetch::MAX_BACKOFF);
    }

    #[test]
    fn sizes_read_in_gigabytes_or_megabytes() {
        assert_eq!(gb(2_500_000_000), "2.50 GB");
        assert_eq!(gb(300_000), "0.300 MB");
    }
}
