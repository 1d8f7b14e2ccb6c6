//! The coordinators under test: `horde serve` child processes on fresh data directories (so the
//! harness knows their pids for RSS, and each scenario starts from an empty database) — one on
//! SQLite, or several sharing a new PostgreSQL database — or one already running at a URL.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Coordinator {
    pub url: String,
    child: Option<Child>,
    _data: Option<tempfile::TempDir>,
}

impl Coordinator {
    /// Starts `horde serve` from `binary` on a free loopback port and a new data directory,
    /// with test users on (the harness makes its users) and rate limits off (it is the load).
    pub async fn launch(binary: &Path, database: Option<&str>) -> anyhow::Result<Coordinator> {
        Coordinator::launch_with(binary, database, &[]).await
    }

    /// [`Coordinator::launch`] with settings `envs` (`HORDE_…` variables) on top.
    pub async fn launch_with(
        binary: &Path,
        database: Option<&str>,
        envs: &[(&str, &str)],
    ) -> anyhow::Result<Coordinator> {
        let data = tempfile::tempdir().context("a temporary data directory")?;
        let port = free_port()?;
        let log = std::fs::File::create(data.path().join("coordinator.log"))?;
        let mut command = Command::new(binary);
        command.arg("serve");
        if let Some(url) = database {
            command.arg("--database").arg(url);
        }
        let child = command
            .current_dir(data.path())
            .args(["--enable-test-users", "--no-rate-limits", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data.path())
            .env("RUST_LOG", "warn")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let coordinator = Coordinator {
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            _data: Some(data),
        };
        coordinator.wait_until_up().await?;
        Ok(coordinator)
    }

    /// A coordinator someone else runs (no RSS figures).
    pub fn at(url: &str) -> Coordinator {
        Coordinator {
            url: url.trim_end_matches('/').to_string(),
            child: None,
            _data: None,
        }
    }

    async fn wait_until_up(&self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let answer = client
                .get(format!("{}/api/v2/status/heartbeat", self.url))
                .send()
                .await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the coordinator at {} did not come up in 30 s", self.url)
    }

    /// The coordinator's resident memory in MB, when it is our child on Linux.
    pub fn rss_mb(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    /// The data directory of a launched coordinator.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self._data.as_ref().map(|d| d.path().to_path_buf())
    }
}

/// The coordinators one scenario drives: calls are spread over them in turn, as a load
/// balancer would.
pub struct Deployment {
    pub members: Vec<Coordinator>,
}

impl Deployment {
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|c| c.url.clone()).collect()
    }

    /// The resident memory of all the coordinators together, in MB.
    pub fn rss_mb(&self) -> Option<f64> {
        self.members.iter().map(Coordinator::rss_mb).sum()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
