//! The few API calls and bodies the harness needs, kept as plain JSON over one shared HTTP
//! client, so the load generator spends as little CPU as it can beside the coordinator.

use crate::stats::Recorder;
use anyhow::{bail, Context};
use base64::Engine;
use serde_json::{json, Value};
use std::time::Instant;

/// Requests are 64×64 (the smallest size) so that workers can submit real, tiny WebP images.
pub const IMAGE_SIDE: u32 = 64;

#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    /// The coordinators; each call goes to the next one.
    urls: std::sync::Arc<Vec<String>>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Who takes part: a moderator, requesters allowed 500 waiting images each, and one owner
/// allowed as many workers as the run needs.
pub struct Population {
    pub requesters: Vec<String>,
    pub owner: String,
    /// What this population's names end with.
    pub run: String,
}

impl Api {
    /// Calls go to `urls` in turn.
    pub fn new(urls: &[String]) -> Api {
        assert!(!urls.is_empty(), "a coordinator to drive");
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()
            .expect("an HTTP client");
        Api {
            http,
            urls: std::sync::Arc::new(urls.to_vec()),
            next: Default::default(),
        }
    }

    fn path(&self, path: &str) -> String {
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}/api/v2/{path}", self.urls[turn % self.urls.len()])
    }

    async fn test_user(&self, name: &str, moderator: bool) -> anyhow::Result<(String, i64)> {
        let body = json!({"username": name, "moderator": moderator, "trusted": true, "kudos": 1e9});
        let answer: Value = self
            .http
            .post(self.path("dev/test-user"))
            .json(&body)
            .send()
            .await?
            .error_for_status()
            .context("creating a test user (is the coordinator started with --enable-test-users?)")?
            .json()
            .await?;
        let key = answer["api_key"].as_str().context("api_key")?.to_string();
        Ok((key, answer["user_id"].as_i64().context("user_id")?))
    }

    async fn modify_user(&self, moderator: &str, id: i64, change: Value) -> anyhow::Result<()> {
        let answer = self
            .http
            .put(self.path(&format!("users/{id}")))
            .header("apikey", moderator)
            .json(&change)
            .send()
            .await?;
        if !answer.status().is_success() {
            bail!("PUT /users/{id}: {}", answer.text().await?);
        }
        Ok(())
    }

    /// Creates the moderator, `requesters` requesters (concurrency 500 each) and the owner.
    pub async fn populate(&self, requesters: usize, workers: u32) -> anyhow::Result<Population> {
        // Names unique to this population, so several can share one coordinator (--url).
        static POPULATIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = format!(
            "{}-{}",
            std::process::id() % 10_000,
            POPULATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (moderator, _) = self.test_user(&format!("mod-{run}"), true).await?;
        let (owner, owner_id) = self.test_user(&format!("owner-{run}"), false).await?;
        self.modify_user(&moderator, owner_id, json!({"worker_invited": workers}))
            .await?;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..requesters {
            let (api, moderator, run) = (self.clone(), moderator.clone(), run.clone());
            tasks.spawn(async move {
                let (key, id) = api.test_user(&format!("u{i}-{run}"), false).await?;
                api.modify_user(&moderator, id, json!({"concurrency": 500}))
                    .await?;
                anyhow::Ok(key)
            });
        }
        let mut keys = vec![];
        while let Some(key) = tasks.join_next().await {
            keys.push(key??);
        }
        Ok(Population {
            requesters: keys,
            owner,
            run,
        })
    }

    /// Sends `request`, records its latency under `endpoint` (ok when the status is
    /// `expect`), and returns the answer's JSON when it was ok.
    pub async fn timed(
        &self,
        recorder: &mut Recorder,
        endpoint: &'static str,
        request: reqwest::RequestBuilder,
        expect: u16,
    ) -> Option<Value> {
        let started = Instant::now();
        let answer = request.send().await;
        let result = match answer {
            Ok(answer) if answer.status().as_u16() == expect => answer.json::<Value>().await.ok(),
            Ok(answer) => {
                let _ = answer.bytes().await;
                None
            }
            Err(_) => None,
        };
        recorder.record(endpoint, started.elapsed(), result.is_some());
        result
    }

    /// Like [`Api::timed`] but only reads the answer, without parsing it: for throughput loops,
    /// so the load generator (on the same cores) spends as little as it can.
    pub async fn timed_status(
        &self,
        recorder: &mut Recorder,
        endpoint: &'static str,
        request: reqwest::RequestBuilder,
        expect: u16,
    ) {
        let started = Instant::now();
        let ok = match request.send().await {
            Ok(answer) => {
                let status = answer.status().as_u16();
                answer.bytes().await.is_ok() && status == expect
            }
            Err(_) => false,
        };
        recorder.record(endpoint, started.elapsed(), ok);
    }

    pub fn heartbeat(&self) -> reqwest::RequestBuilder {
        self.http.get(self.path("status/heartbeat"))
    }

    pub fn generate(&self, key: &str, body: &Bodies) -> reqwest::RequestBuilder {
        self.generate_body(key, body.request.clone())
    }

    pub fn generate_body(&self, key: &str, body: bytes::Bytes) -> reqwest::RequestBuilder {
        self.http
            .post(self.path("generate/async"))
            .header("apikey", key)
            .header("content-type", "application/json")
            .body(body)
    }

    pub fn check(&self, id: &str) -> reqwest::RequestBuilder {
        self.http.get(self.path(&format!("generate/check/{id}")))
    }

    pub fn pop(&self, key: &str, worker: &str) -> reqwest::RequestBuilder {
        self.pop_with(key, pop_body(worker))
    }

    /// A pop with a body made beforehand by [`pop_body`].
    pub fn pop_with(&self, key: &str, body: bytes::Bytes) -> reqwest::RequestBuilder {
        self.http
            .post(self.path("generate/pop"))
            .header("apikey", key)
            .header("content-type", "application/json")
            .body(body)
    }

    /// The submission of a popped job with the real WebP of `bodies`.
    pub fn submit(&self, key: &str, job: &Value, bodies: &Bodies) -> reqwest::RequestBuilder {
        let seed = job["payload"]["seed"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok());
        let body = json!({
            "id": job["id"],
            "generation": bodies.image_base64,
            "state": "ok",
            "seed": seed,
        });
        self.http
            .post(self.path("generate/submit"))
            .header("apikey", key)
            .json(&body)
    }
}

/// The pop of worker `worker`: one SD 1.5 model, 512² pixels, one job at a time.
pub fn pop_body(worker: &str) -> bytes::Bytes {
    let body = json!({
        "name": worker,
        "models": ["stable_diffusion"],
        "max_pixels": 262_144,
        "amount": 1,
        "threads": 1,
        "bridge_agent": "AI Horde Worker reGen:9.0.1:https://github.com/Haidra-Org/horde-worker-reGen",
    });
    bytes::Bytes::from(serde_json::to_vec(&body).expect("JSON"))
}

/// Images per request of the queues that pops are measured against: a request stays queued
/// until its last image is handed out, so the queue's length holds while pops are measured.
pub const QUEUED_N: usize = 10;

/// Bodies built once: the request every client sends (one image), the request that fills
/// measured queues (`QUEUED_N` images), and the image every worker submits.
pub struct Bodies {
    pub request: bytes::Bytes,
    pub queued_request: bytes::Bytes,
    pub image_base64: String,
}

impl Bodies {
    pub fn new() -> anyhow::Result<Bodies> {
        let request = json!({
            "prompt": "a lighthouse on a cliff at dusk ### blurry",
            "params": {"width": IMAGE_SIDE, "height": IMAGE_SIDE, "steps": 10, "n": 1},
            "models": ["stable_diffusion"],
            "r2": false,
        });
        let pixels = image::RgbImage::from_fn(IMAGE_SIDE, IMAGE_SIDE, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])
        });
        let webp = horde_worker::backend::encode_webp(&pixels.into())
            .map_err(|e| anyhow::anyhow!("encoding the bench image: {e}"))?;
        let mut queued = request.clone();
        queued["params"]["n"] = json!(QUEUED_N);
        Ok(Bodies {
            request: bytes::Bytes::from(serde_json::to_vec(&request)?),
            queued_request: bytes::Bytes::from(serde_json::to_vec(&queued)?),
            image_base64: base64::engine::general_purpose::STANDARD.encode(webp),
        })
    }
}
