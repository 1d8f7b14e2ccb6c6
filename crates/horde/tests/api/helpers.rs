//! Starting a coordinator for a test, creating users and workers, and making real images.

use horde_api::image::{ImageRequest, PopRequest, PopResponse, SubmitRequest};
use horde_api::user::TestUserRequest;
use horde_client::Client;
use horde_server::config::ServerConfig;
use horde_server::state::SharedState;
use horde_server::Application;
use image::{ImageEncoder, RgbImage};
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// A coordinator serving on `127.0.0.1:<random port>` from a temporary data directory.
pub(crate) struct TestApp {
    pub root: String,
    pub state: SharedState,
    pub dir: TempDir,
    config: ServerConfig,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// A coordinator with the test-user endpoint on and rate limits off.
pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A coordinator with the test defaults, then `configure` applied.
pub(crate) async fn spawn_app_with(configure: impl FnOnce(&mut ServerConfig)) -> TestApp {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = test_config(dir.path());
    configure(&mut config);
    if let Some(url) = crate::backend::database_for(&config.data_dir) {
        config.database.url = url;
    }
    start(config, dir).await
}

/// The test defaults: a random loopback port, `dir` as the data directory, the test-user
/// endpoint on and rate limits off.
fn test_config(dir: &std::path::Path) -> ServerConfig {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    config.api.test_users = true;
    config.api.rate_limits = false;
    config
}

/// `n` coordinators sharing one new PostgreSQL database (each with its own data directory),
/// with the test defaults, then `configure` applied. Needs `HORDE_TEST_POSTGRES_URL`.
pub(crate) async fn spawn_cluster(n: usize, configure: impl Fn(&mut ServerConfig)) -> Vec<TestApp> {
    let first = tempfile::tempdir().expect("temporary directory");
    let url = crate::backend::database_for(first.path())
        .expect("several coordinators share a PostgreSQL database: set HORDE_TEST_POSTGRES_URL");
    let mut apps = Vec::with_capacity(n);
    let mut dirs = vec![first];
    dirs.extend((1..n).map(|_| tempfile::tempdir().expect("temporary directory")));
    for dir in dirs {
        let mut config = test_config(dir.path());
        configure(&mut config);
        config.database.url = url.clone();
        apps.push(start(config, dir).await);
    }
    apps
}

/// Serves `config` from `dir` (which holds the database and images).
async fn start(config: ServerConfig, dir: TempDir) -> TestApp {
    // RUST_LOG=… shows the coordinators' logs (with --nocapture).
    static LOGS: std::sync::Once = std::sync::Once::new();
    LOGS.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
    let app = Application::build(config.clone())
        .await
        .expect("coordinator starts");
    let root = format!("http://{}", app.local_addr());
    let state = app.state();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    TestApp {
        root,
        state,
        dir,
        config,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub(crate) fn client(&self, api_key: &str) -> Client {
        Client::new(&self.root, api_key)
    }

    pub(crate) fn anonymous(&self) -> Client {
        self.client(horde_api::ANONYMOUS_API_KEY)
    }

    /// A new user (not a moderator, trusted) with `kudos`, and a client acting as them.
    pub(crate) async fn user(&self, name: &str, kudos: f64) -> (Client, i64) {
        self.user_with(name, kudos, true).await
    }

    /// The text of the page at `path` (from `/`) of this coordinator, fetched as a browser.
    pub(crate) async fn page(&self, path: &str) -> String {
        let answer = http().get(format!("{}{path}", self.root)).send().await;
        answer.unwrap().text().await.unwrap()
    }

    /// The API key and id of a new moderator named `moderator`.
    pub(crate) async fn moderator(&self) -> (String, i64) {
        let request = TestUserRequest {
            username: "moderator".into(),
            oauth_id: None,
            moderator: true,
            trusted: true,
            kudos: 0.0,
        };
        let created = self.anonymous().create_test_user(&request).await;
        let created = created.expect("moderator created");
        (created.api_key, created.user_id)
    }

    /// A new user who is not trusted (so not exempt from escrow or upfront rules).
    pub(crate) async fn untrusted_user(&self, name: &str, kudos: f64) -> (Client, i64) {
        self.user_with(name, kudos, false).await
    }

    async fn user_with(&self, name: &str, kudos: f64, trusted: bool) -> (Client, i64) {
        let request = TestUserRequest {
            username: name.into(),
            oauth_id: None,
            moderator: false,
            trusted,
            kudos,
        };
        let created = self
            .anonymous()
            .create_test_user(&request)
            .await
            .expect("test user created");
        assert_eq!(created.api_key.len(), 22);
        (self.client(&created.api_key), created.user_id)
    }

    /// Stops the server and waits for it to close the database.
    pub(crate) async fn stop(mut self) {
        self.shut_down().await;
    }

    /// Stops the server cleanly and starts a new one on the same database and images (on
    /// another port).
    pub(crate) async fn restart(mut self) -> TestApp {
        self.shut_down().await;
        let config = self.config.clone();
        let dir = std::mem::replace(
            &mut self.dir,
            tempfile::tempdir().expect("temporary directory"),
        );
        start(config, dir).await
    }

    /// Stops the server cleanly and starts a new one on the same database, images and port, as
    /// an operator restarting it: clients find it again at the same address.
    pub(crate) async fn restart_in_place(mut self) -> TestApp {
        self.shut_down().await;
        let mut config = self.config.clone();
        config.listen = self.root.trim_start_matches("http://").parse().unwrap();
        let dir = std::mem::replace(
            &mut self.dir,
            tempfile::tempdir().expect("temporary directory"),
        );
        start(config, dir).await
    }

    async fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server ran");
        }
    }
}

/// A coordinator with rate limits on, a user `poller` (a client as them) and the id of one of
/// their requests, waiting.
pub(crate) async fn rate_limited_with_a_request() -> (TestApp, Client, String) {
    let app = spawn_app_with(|c| c.api.rate_limits = true).await;
    let (user, _) = app.user("poller", 1000.0).await;
    let id = user
        .generate_async(&small_request("a cat", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    with_a_minute_window_ahead(Duration::from_secs(20)).await;
    (app, user, id)
}

/// Waits, if need be, until the current minute has at least `needed` left. The coordinator's
/// rate-limit windows start on the minute, so a test counting hits against a per-minute limit
/// would see its counter start over if its requests straddled a minute's end.
pub(crate) async fn with_a_minute_window_ahead(needed: Duration) {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into_minute = Duration::from_millis((since_epoch.as_millis() % 60_000) as u64);
    let left = Duration::from_secs(60) - into_minute;
    if left < needed {
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
}

/// A plain reqwest client for raw-HTTP checks the typed client would not make.
pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// `method path` on `app` as the caller with `key`, with `body` as JSON when given: the status
/// and the JSON answer (`Null` when the answer is not JSON).
pub(crate) async fn call_as(
    app: &TestApp,
    key: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let request = http()
        .request(method.parse().unwrap(), format!("{}{path}", app.root))
        .header("apikey", key);
    answer_of(request, body).await
}

/// Sends `request` with `body` as JSON when given: the status and the JSON answer (`Null` when
/// the answer is not JSON).
pub(crate) async fn answer_of(
    request: reqwest::RequestBuilder,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let answer = request.send().await.expect("the coordinator answers");
    let status = answer.status().as_u16();
    (
        status,
        answer.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// A small request: 512×512 (the default size), 10 steps, `n` images, on any model.
pub(crate) fn small_request(prompt: &str, n: u32, r2: bool) -> ImageRequest {
    let mut request = ImageRequest::new(prompt);
    request.params.n = n;
    request.params.steps = Some(10);
    request.r2 = r2;
    request.models = vec!["stable_diffusion".into()];
    request
}

/// A worker's pop for one job of `stable_diffusion`.
pub(crate) fn pop_request(worker: &str) -> PopRequest {
    let mut pop = PopRequest::new(worker);
    pop.models = vec!["stable_diffusion".into()];
    pop.max_pixels = 512 * 512;
    pop.bridge_agent =
        "AI Horde Worker reGen:9.0.1:https://github.com/Haidra-Org/horde-worker-reGen".into();
    pop
}

/// A submission of an inline (base64) WebP for the job of `pop`.
pub(crate) fn submit_inline(pop: &PopResponse, webp: &[u8]) -> SubmitRequest {
    use base64::Engine;
    submit_with(
        pop,
        Some(base64::engine::general_purpose::STANDARD.encode(webp)),
    )
}

pub(crate) fn submit_with(pop: &PopResponse, generation: Option<String>) -> SubmitRequest {
    let seed = pop.payload["seed"].as_str().and_then(|s| s.parse().ok());
    SubmitRequest {
        id: pop.id.clone().expect("pop carries a job"),
        generation,
        state: Default::default(),
        seed,
        censored: false,
        gen_metadata: vec![],
    }
}

/// A lossless WebP: the top half `top`, the bottom half `bottom`, so a decode proves the bytes
/// made the round trip whole and the right way up.
pub(crate) fn webp(width: u32, height: u32, top: [u8; 3], bottom: [u8; 3]) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |_, y| {
        image::Rgb(if y < height / 2 { top } else { bottom })
    });
    encode_webp(&image)
}

/// A lossless WebP of noise, which compresses badly: for size-limit tests.
pub(crate) fn noisy_webp(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let image = RgbImage::from_fn(width, height, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let [a, b, c, _] = state.to_le_bytes();
        image::Rgb([a, b, c])
    });
    encode_webp(&image)
}

fn encode_webp(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("WebP encodes");
    out
}

/// Decodes a WebP and returns the colours at the centre of its top and bottom halves.
pub(crate) fn halves_of(webp: &[u8]) -> ((u32, u32), [u8; 3], [u8; 3]) {
    let image = image::load_from_memory_with_format(webp, image::ImageFormat::WebP)
        .expect("a decodable WebP")
        .to_rgb8();
    let (w, h) = image.dimensions();
    let top = image.get_pixel(w / 2, h / 4).0;
    let bottom = image.get_pixel(w / 2, 3 * h / 4).0;
    ((w, h), top, bottom)
}

pub(crate) fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("valid base64")
}

/// The `horde` binary running as a child process, for tests of the command line and of crashes.
pub(crate) struct ServerProcess {
    pub child: std::process::Child,
    pub root: String,
    /// Every line the server printed to stdout up to "listening".
    pub banner: Vec<String>,
}

impl ServerProcess {
    /// Runs `horde serve ARGS` with `envs` in `cwd` and waits for its "listening on" line.
    pub(crate) fn start(
        cwd: &std::path::Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> ServerProcess {
        use std::io::BufRead;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_horde"));
        command
            .arg("serve")
            .args(args)
            .current_dir(cwd)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        if let Some(url) = crate::backend::database_for(cwd) {
            command.env("HORDE_DATABASE__URL", url);
        }
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("horde binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        let root = loop {
            let line = match lines.next() {
                Some(Ok(line)) => line,
                _ => panic!("horde serve exited before listening; printed {banner:?}"),
            };
            banner.push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ServerProcess {
            child,
            root,
            banner,
        }
    }

    /// A trusted user with `kudos`, made through this server's test-user endpoint (it runs with
    /// `--enable-test-users`), and a client with their key.
    pub(crate) async fn trusted_user(&self, name: &str, kudos: f64) -> Client {
        let anonymous = Client::new(&self.root, horde_api::ANONYMOUS_API_KEY);
        let request = TestUserRequest {
            username: name.into(),
            oauth_id: None,
            moderator: false,
            trusted: true,
            kudos,
        };
        let created = anonymous.create_test_user(&request).await.unwrap();
        anonymous.with_api_key(created.api_key)
    }

    /// SIGKILL: no shutdown hook runs, nothing is flushed.
    pub(crate) fn kill_9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `horde` binary to completion; returns (success, stdout, stderr).
pub(crate) fn run_horde(cwd: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_horde"));
    if let Some(url) = crate::backend::database_for(cwd) {
        command.env("HORDE_DATABASE__URL", url);
    }
    let output = command
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("horde runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A TCP forwarder in front of a server, which the test can cut off: the network fault a worker
/// must survive (connections are refused while it is down). Not a stand-in for any of our
/// components — it only carries their bytes.
pub(crate) struct FlakyLink {
    pub url: String,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Bytes the client has sent through the link: they stop while a worker holds a job.
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FlakyLink {
    pub(crate) async fn start(target: std::net::SocketAddr) -> FlakyLink {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (flag, counter) = (down.clone(), sent.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if flag.load(SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (cut, counter) = (flag.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_server, mut to_server) = outbound.into_split();
                    let upstream = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buffer = vec![0u8; 16 * 1024];
                        while let Ok(read @ 1..) = from_client.read(&mut buffer).await {
                            counter.fetch_add(read as u64, SeqCst);
                            if to_server.write_all(&buffer[..read]).await.is_err() {
                                break;
                            }
                        }
                    };
                    // A link that goes down cuts the connections already open (kept alive by
                    // the client's pool) as well as refusing new ones.
                    tokio::select! {
                        _ = upstream => {}
                        _ = tokio::io::copy(&mut from_server, &mut to_client) => {}
                        _ = async {
                            while !cut.load(SeqCst) {
                                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            }
                        } => {}
                    }
                });
            }
        });
        FlakyLink { url, down, sent }
    }

    pub(crate) fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits until the client has sent nothing through the link for `quiet`: a worker that
    /// polls every 0.1 s and has gone quiet holds the job it popped (the coordinator counts a
    /// job as processing before its answer has crossed the link).
    pub(crate) async fn wait_quiet(&self, quiet: std::time::Duration) {
        use std::sync::atomic::Ordering::SeqCst;
        let mut last = self.sent.load(SeqCst);
        let started = std::time::Instant::now();
        let mut since = started;
        while since.elapsed() < quiet {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "the client never went quiet for {quiet:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            let now = self.sent.load(SeqCst);
            if now != last {
                (last, since) = (now, std::time::Instant::now());
            }
        }
    }
}

pub(crate) fn luma(p: &image::Rgb<u8>) -> f64 {
    0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2])
}

/// Mean absolute difference of luminance where `inside(x, y)`: lossy WebP keeps luminance at
/// full resolution (colour is subsampled), so this is what survives the trip.
pub(crate) fn luma_difference(
    a: &RgbImage,
    b: &RgbImage,
    inside: impl Fn(u32, u32) -> bool,
) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let (mut sum, mut count) = (0.0, 0usize);
    for (x, y, p) in a.enumerate_pixels() {
        if inside(x, y) {
            sum += (luma(p) - luma(b.get_pixel(x, y))).abs();
            count += 1;
        }
    }
    assert!(count > 0, "an empty region");
    sum / count as f64
}

/// Lossy WebP at quality 95 moves the luminance of the tiny models' noisy images by about
/// this much on average; a wrong input to the engine moves it by tens.
pub(crate) const WEBP_LUMA_TOLERANCE: f64 = 4.0;

/// The prompt of the deterministic end-to-end generations, as the worker receives it.
const LIGHTHOUSE: &str = "a lighthouse ### fog";

/// A request for one image on `model`, deterministic (`k_euler` without Karras, cfg 7, a fixed
/// seed) and returned inline: the worker's image can be compared with the engine's.
pub(crate) fn deterministic_request(
    model: &str,
    (width, height): (u32, u32),
    steps: u32,
    seed: u64,
) -> ImageRequest {
    let mut request = small_request(LIGHTHOUSE, 1, false);
    request.models = vec![model.into()];
    let p = &mut request.params;
    (p.width, p.height, p.steps) = (width, height, Some(steps));
    p.sampler_name = serde_json::from_str("\"k_euler\"").unwrap();
    p.karras = false;
    p.cfg_scale = 7.0;
    p.seed = Some(horde_api::image::SeedInput::Text(seed.to_string()));
    request
}

/// The engine's job for a [`deterministic_request`] of the same size, steps and seed.
pub(crate) fn deterministic_generation(
    (width, height): (u32, u32),
    steps: u32,
    seed: u64,
) -> horde_diffusion::Generation {
    let (prompt, negative) = LIGHTHOUSE.split_once(" ### ").unwrap();
    horde_diffusion::Generation {
        prompt: prompt.into(),
        negative_prompt: negative.into(),
        width: width as usize,
        height: height as usize,
        steps: steps as usize,
        cfg_scale: 7.0,
        sampler: horde_diffusion::SamplerKind::Euler,
        karras: false,
        clip_skip: 1,
        tiling: false,
        seeds: vec![seed],
        prompts: vec![],
        embeddings: Vec::new(),
    }
}

/// A checkpoint loaded as the tests' worker loads it (CPU, f32), to run its jobs here.
pub(crate) fn cpu_model(checkpoint: &std::path::Path) -> horde_diffusion::Model {
    let options = horde_diffusion::LoadOptions::named("cpu", "f32").unwrap();
    horde_diffusion::Model::load(checkpoint, &options, &mut |_| {}).unwrap()
}

/// An image as PNG in base64, as a request's `source_image` or `source_mask` carries it.
pub(crate) fn png_base64(image: impl Into<image::DynamicImage>) -> String {
    use base64::Engine;
    let mut out = std::io::Cursor::new(Vec::new());
    (image.into())
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(out.into_inner())
}

/// Sends `request` to be generated asynchronously: its id.
pub(crate) async fn submitted(requester: &Client, request: &ImageRequest) -> String {
    requester.generate_async(request).await.unwrap().id.unwrap()
}

/// Sends `request` and waits up to 30 s for it to fault: whether it did.
pub(crate) async fn faults(requester: &Client, request: &ImageRequest) -> bool {
    let id = submitted(requester, request).await;
    for _ in 0..300 {
        if requester.check(&id).await.unwrap().faulted {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A worker's stop signal and task, as `worker::start_worker` returns them.
pub(crate) type WorkerHandle = (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<horde_worker::RunSummary>,
);

/// Stops the worker and returns what it did.
pub(crate) async fn stop_worker((stop, task): WorkerHandle) -> horde_worker::RunSummary {
    stop.send(true).unwrap();
    task.await.unwrap()
}

/// Stops the worker, which ran `done` jobs and faulted none.
pub(crate) async fn stopped_after_jobs(worker: WorkerHandle, done: u64) {
    let summary = stop_worker(worker).await;
    let jobs = (summary.jobs_done, summary.jobs_faulted);
    assert_eq!(jobs, (done, 0), "{summary:?}");
}

/// Stops the worker, which ran `done` jobs and faulted at least one.
pub(crate) async fn stopped_having_faulted(worker: WorkerHandle, done: u64) {
    let summary = stop_worker(worker).await;
    assert_eq!(summary.jobs_done, done, "{summary:?}");
    assert!(summary.jobs_faulted >= 1, "{summary:?}");
}
