//! The real worker, on a tiny checkpoint of the real SD 1.5 architecture, serving the real
//! coordinator; and `horde generate` and `horde model tiny` as a user runs them.

use crate::helpers::*;
use horde_api::user::TestUserRequest;
use horde_worker::{Backend, DiffusionBackend, Worker, WorkerConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The AI Horde name the tiny checkpoint is served under: it has SD 1.5's architecture, and
/// the coordinator accepts only models of its reference.
pub(crate) const MODEL: &str = "stable_diffusion";

pub(crate) fn tiny_checkpoint(dir: &Path) -> PathBuf {
    let path = dir.join("tiny-sd15.safetensors");
    horde_diffusion::tiny::write_tiny_checkpoint(horde_diffusion::tiny::TinyArch::Sd15, &path, 3)
        .unwrap();
    path
}

pub(crate) async fn owner_key(app: &TestApp) -> String {
    let request = TestUserRequest {
        username: "gpu-owner".into(),
        oauth_id: None,
        moderator: false,
        trusted: true,
        kudos: 0.0,
    };
    app.anonymous()
        .create_test_user(&request)
        .await
        .unwrap()
        .api_key
}

pub(crate) fn worker_config(url: &str, api_key: String, checkpoint: &Path) -> WorkerConfig {
    WorkerConfig {
        url: url.into(),
        api_key,
        name: "tiny-worker".into(),
        models: BTreeMap::from([(MODEL.to_string(), checkpoint.to_path_buf())]),
        max_pixels: Some(128 * 128),
        amount: Some(2),
        // The images are compared with the engine's own in f32.
        dtype: "f32".into(),
        poll_interval_secs: 0.1,
        ..Default::default()
    }
}

/// Starts a worker; returns the stop switch and its task.
pub(crate) fn start_worker(
    config: WorkerConfig,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<horde_worker::RunSummary>,
) {
    let options = horde_diffusion::LoadOptions::named(&config.device, &config.dtype).unwrap();
    let (backend, failures) = DiffusionBackend::load(&config.models, &options, |_, _| {});
    assert!(failures.is_empty(), "{failures:?}");
    let (post, failures) = horde_worker::postprocess::PostProcessors::load(
        &config.post_processors,
        config.face_detector.as_deref(),
        &options.device,
    );
    assert!(failures.is_empty(), "{failures:?}");
    let mut backend = backend
        .with_post_processors(post)
        .with_controlnets(config.controlnets.clone());
    if let Some(folder) = &config.library {
        backend = backend.with_library(horde_worker::library::Library::open(folder).unwrap());
    }
    let worker = Worker::new(config, Arc::new(backend));
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(async move { worker.run(stopped).await });
    (stop, task)
}

#[tokio::test]
async fn an_upscaled_image_comes_back_at_the_upscalers_size() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = tiny_checkpoint(dir.path());
    let (requester, _) = app.user("requester", 100.0).await;
    let mut config = worker_config(&app.root, owner_key(&app).await, &checkpoint);
    // spandrel's tiny random ×2 RealESRGAN (pixel-unshuffle), from the upscalers' fixtures.
    let upscaler = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../horde-postprocess/tests/fixtures/upscalers/realesrgan_x2plus.safetensors");
    config.post_processors = BTreeMap::from([("RealESRGAN_x2plus".to_string(), upscaler)]);
    let (stop, task) = start_worker(config);

    let mut request = tiny_request("a lighthouse", 2);
    request.params.post_processing = vec!["RealESRGAN_x2plus".into()];
    let upscaled = requester
        .generate_async(&request)
        .await
        .unwrap()
        .id
        .unwrap();
    let status = wait_done(&requester, &upscaled).await;
    let ((w, h), _, _) = halves_of(&base64_decode(&status.generations[0].img));
    assert_eq!((w, h), (128, 128), "64×64 at ×2");
    let worker = requester.worker_by_name("tiny-worker").await.unwrap();
    assert!(worker.post_processing, "offered once an upscaler is loaded");

    // An upscaler no online worker runs: the request waits, as on the public horde, and is
    // never handed to this worker (it declared the post-processors it has).
    let mut elsewhere = request.clone();
    elsewhere.params.post_processing = vec!["RealESRGAN_x4plus".into()];
    let waiting = requester.generate_async(&elsewhere).await.unwrap();
    assert!(
        waiting
            .warnings
            .iter()
            .any(|w| w.code == "NoAvailableWorker"),
        "{waiting:?}"
    );
    let waiting = waiting.id.unwrap();
    // With `post_processing_fallback`, the same request is generated without it and says so.
    elsewhere.post_processing_fallback = true;
    let accepted = requester.generate_async(&elsewhere).await.unwrap();
    let unavailable = |warnings: &[horde_api::image::RequestWarning]| {
        warnings.iter().any(|w| {
            w.code == "PostProcessingUnavailable" && w.message.contains("RealESRGAN_x4plus")
        })
    };
    assert!(unavailable(&accepted.warnings), "{accepted:?}");
    let fallen_back = accepted.id.unwrap();
    let status = wait_done(&requester, &fallen_back).await;
    assert!(unavailable(&status.check.warnings), "{status:?}");
    assert!(unavailable(
        &requester.check(&fallen_back).await.unwrap().warnings
    ));
    let ((w, h), _, _) = halves_of(&base64_decode(&status.generations[0].img));
    assert_eq!((w, h), (64, 64), "generated without the upscaler");

    let check = requester.check(&waiting).await.unwrap();
    assert!(
        !check.is_possible && !check.faulted && check.waiting == 1,
        "{check:?}"
    );
    stop.send(true).unwrap();
    let summary = task.await.unwrap();
    assert_eq!(
        summary.jobs_faulted, 0,
        "no job it cannot finish came to it"
    );
}

/// The three families in one request, each from a tiny random checkpoint `horde model tiny`
/// wrote: the face fixer (with its RetinaFace detector), then the ×2 upscaler, then background
/// removal, whose mask comes back as the WebP's alpha channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn face_fix_upscale_and_background_removal_come_back_twice_the_size_with_alpha() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = tiny_checkpoint(dir.path());
    let write = |arch: &str| {
        let path = dir.path().join(format!("{arch}.safetensors"));
        let (ok, stdout, stderr) = run_horde(
            dir.path(),
            &[
                "model",
                "tiny",
                "--arch",
                arch,
                "--out",
                path.to_str().unwrap(),
            ],
        );
        assert!(ok && stdout.contains("wrote"), "{stdout}{stderr}");
        path
    };
    let mut config = worker_config(&app.root, owner_key(&app).await, &checkpoint);
    config.face_detector = Some(write("retinaface"));
    config.post_processors = BTreeMap::from([
        ("GFPGAN".to_string(), write("gfpgan")),
        ("RealESRGAN_x2plus".to_string(), write("esrgan_x2")),
        ("strip_background".to_string(), write("u2netp")),
    ]);
    let (requester, _) = app.user("requester", 100.0).await;
    let (stop, task) = start_worker(config);

    let mut request = tiny_request("a portrait", 2);
    // Out of order on purpose: the worker runs them in the horde's.
    request.params.post_processing = vec![
        "strip_background".into(),
        "RealESRGAN_x2plus".into(),
        "GFPGAN".into(),
    ];
    request.params.facefixer_strength = Some(0.4);
    let id = requester
        .generate_async(&request)
        .await
        .unwrap()
        .id
        .unwrap();
    let status = wait_done(&requester, &id).await;
    stop.send(true).unwrap();
    let summary = task.await.unwrap();
    assert_eq!(summary.jobs_faulted, 0);

    let webp = base64_decode(&status.generations[0].img);
    let image = image::load_from_memory_with_format(&webp, image::ImageFormat::WebP).unwrap();
    assert_eq!((image.width(), image.height()), (128, 128), "64×64 at ×2");
    assert!(image.color().has_alpha(), "{:?}", image.color());
    // rembg's mask is stretched to the full range before it becomes the alpha channel.
    let alpha: Vec<u8> = image.to_rgba8().pixels().map(|p| p[3]).collect();
    let (low, high) = (alpha.iter().min().unwrap(), alpha.iter().max().unwrap());
    assert!(*low < 64 && *high > 192, "alpha spans {low}..{high}");
}

/// One 64×64 image on the tiny model, in `steps` steps.
fn tiny_request(prompt: &str, steps: u32) -> horde_api::image::ImageRequest {
    let mut request = small_request(prompt, 1, false);
    request.models = vec![MODEL.into()];
    request.params.width = 64;
    request.params.height = 64;
    request.params.steps = Some(steps);
    request
}

pub(crate) async fn wait_done(
    client: &horde_client::Client,
    id: &str,
) -> horde_api::image::RequestStatus {
    for _ in 0..600 {
        if client.check(id).await.unwrap().done {
            return client.status(id).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("request {id} did not finish within a minute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_serves_n_images_of_the_requested_size() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = tiny_checkpoint(dir.path());
    let (requester, _) = app.user("requester", 100.0).await;
    let (stop, task) = start_worker(worker_config(&app.root, owner_key(&app).await, &checkpoint));

    let mut inline = small_request("a lighthouse ### fog", 2, false);
    inline.models = vec![MODEL.into()];
    inline.params.width = 64;
    inline.params.height = 128;
    inline.params.steps = Some(3);
    inline.params.sampler_name = serde_json::from_str("\"k_euler\"").unwrap();
    let inline_id = requester.generate_async(&inline).await.unwrap().id.unwrap();
    let mut r2 = inline.clone();
    r2.r2 = true;
    r2.params.n = 1;
    let r2_id = requester.generate_async(&r2).await.unwrap().id.unwrap();

    let status = wait_done(&requester, &inline_id).await;
    assert_eq!(status.generations.len(), 2);
    let mut seeds = Vec::new();
    for generation in &status.generations {
        let ((w, h), _, _) = halves_of(&base64_decode(&generation.img));
        assert_eq!((w, h), (64, 128), "the requested size");
        assert_eq!(generation.worker_name, "tiny-worker");
        assert_eq!(generation.model, MODEL);
        seeds.push(generation.seed.clone());
    }
    assert_ne!(seeds[0], seeds[1], "each image has its own seed");
    let r2_status = wait_done(&requester, &r2_id).await;
    let ((w, h), _, _) = halves_of(
        &requester
            .download(&r2_status.generations[0].img)
            .await
            .unwrap(),
    );
    assert_eq!((w, h), (64, 128));

    let worker = requester.worker_by_name("tiny-worker").await.unwrap();
    assert_eq!(
        worker.models,
        vec![MODEL.to_string()],
        "advertises the models it loaded"
    );
    assert_eq!(worker.max_pixels, 128 * 128);
    stop.send(true).unwrap();
    let summary = task.await.unwrap();
    assert!(summary.jobs_done >= 2 && summary.kudos > 0.0, "{summary:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_waits_out_a_coordinator_that_is_not_there_yet() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = tiny_checkpoint(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    // The coordinator needs the owner's key first: create it in a database the coordinator will
    // open later, so the worker can start polling before the coordinator exists.
    let data = tempfile::tempdir().unwrap();
    let (ok, key, err) = run_horde(
        data.path(),
        &[
            "user",
            "create",
            "gpu-owner",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let (stop, task) = start_worker(worker_config(&url, key.trim().to_string(), &checkpoint));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let data_dir = data.path().to_path_buf();
    let app = spawn_app_with(move |c| {
        c.listen = format!("127.0.0.1:{port}").parse().unwrap();
        c.data_dir = data_dir;
    })
    .await;
    let (requester, _) = app.user("requester", 100.0).await;
    let request = tiny_request("late start", 2);
    let id = requester
        .generate_async(&request)
        .await
        .unwrap()
        .id
        .unwrap();
    let status = wait_done(&requester, &id).await;
    assert_eq!(
        status.generations.len(),
        1,
        "the worker retried its pops until the coordinator came up"
    );
    stop.send(true).unwrap();
    task.await.unwrap();
    app.stop().await;
}

#[test]
fn a_bad_checkpoint_is_reported_and_the_other_models_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let good = tiny_checkpoint(dir.path());
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &std::fs::read(&good).unwrap()[..1000]).unwrap();
    let models = BTreeMap::from([
        ("good".to_string(), good),
        ("truncated".to_string(), truncated.clone()),
        (
            "missing".to_string(),
            dir.path().join("missing.safetensors"),
        ),
    ]);
    let (backend, failures) = DiffusionBackend::load(&models, &Default::default(), |_, _| {});
    assert_eq!(backend.models(), vec!["good".to_string()]);
    assert_eq!(failures.len(), 2);
    let truncated_failure = failures.iter().find(|f| f.model == "truncated").unwrap();
    assert!(truncated_failure
        .error
        .to_string()
        .contains(&truncated.display().to_string()));
}

/// `dtype = "bf16"`: the weights are held in half precision (our CPU kernels compute in f32)
/// and the worker still serves images of the requested size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_weights_in_bf16_serves_images() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = tiny_checkpoint(dir.path());
    let (requester, _) = app.user("requester", 100.0).await;
    let config = WorkerConfig {
        dtype: "bf16".into(),
        ..worker_config(&app.root, owner_key(&app).await, &checkpoint)
    };
    let (stop, task) = start_worker(config);
    let id = requester
        .generate_async(&tiny_request("a lighthouse in bf16", 2))
        .await
        .unwrap()
        .id
        .unwrap();
    let status = wait_done(&requester, &id).await;
    assert_eq!(status.generations.len(), 1);
    let ((w, h), _, _) = halves_of(&base64_decode(&status.generations[0].img));
    assert_eq!((w, h), (64, 64));
    stop.send(true).unwrap();
    assert_eq!(task.await.unwrap().jobs_faulted, 0);
    app.stop().await;
}

/// A device or dtype the build cannot use stops the worker at start, saying why (and, for CUDA
/// on a build without it, how to build one).
#[test]
fn a_device_this_build_lacks_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = tiny_checkpoint(dir.path());
    let model = format!("{MODEL}={}", checkpoint.display());
    let args = |extra: &[&'static str]| {
        let mut args = vec![
            "worker",
            "--api-key",
            "0000000000",
            "--name",
            "w",
            "--model",
            &model,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let run = |extra: &[&'static str]| {
        let args = args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_horde(dir.path(), &args)
    };
    let (ok, _, stderr) = run(&["--dtype", "f8"]);
    assert!(!ok && stderr.contains("unknown dtype \"f8\""), "{stderr}");
    let (ok, _, stderr) = run(&["--device", "tpu"]);
    assert!(
        !ok && stderr.contains("expected cpu, cuda or cuda:N"),
        "{stderr}"
    );
    if !cfg!(feature = "cuda") {
        let (ok, _, stderr) = run(&["--device", "cuda"]);
        assert!(!ok && stderr.contains("--features cuda"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn horde_generate_saves_the_images_a_worker_made() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    // `horde model tiny` writes the checkpoint, as a new user would.
    let checkpoint = dir.path().join("tiny.safetensors");
    let (ok, stdout, stderr) = run_horde(
        dir.path(),
        &[
            "model",
            "tiny",
            "--arch",
            "sd15",
            "--out",
            checkpoint.to_str().unwrap(),
        ],
    );
    assert!(ok && stdout.contains("wrote"), "{stdout}{stderr}");
    let (stop, task) = start_worker(worker_config(&app.root, owner_key(&app).await, &checkpoint));
    let (_, user_id) = app.user("cli-user", 100.0).await;
    let request = TestUserRequest {
        username: "cli-user".into(),
        oauth_id: Some(format!("test-{user_id}")),
        moderator: false,
        trusted: true,
        kudos: 100.0,
    };
    let key = app
        .anonymous()
        .create_test_user(&request)
        .await
        .unwrap()
        .api_key;

    let out = dir.path().join("images");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_horde"))
        .args([
            "generate",
            "a tiny test ### noise",
            "-n",
            "2",
            "--model",
            MODEL,
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "2",
        ])
        .args([
            "--sampler",
            "k_euler_a",
            "--out",
            out.to_str().unwrap(),
            "--url",
            &app.root,
            "--api-key",
            &key,
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let paths: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        paths.len(),
        2,
        "prints where each image was saved: {stdout}"
    );
    for path in paths {
        let ((w, h), _, _) = halves_of(&std::fs::read(path).unwrap());
        assert_eq!((w, h), (64, 64));
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_one_request_is_made_in_one_engine_pass_and_each_image_is_paid() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = tiny_checkpoint(dir.path());
    let (requester, _) = app.user("requester", 100.0).await;
    let mut batched = tiny_request("three lighthouses", 4);
    batched.params.n = 3;
    let batched_id = requester
        .generate_async(&batched)
        .await
        .unwrap()
        .id
        .unwrap();
    let mut config = worker_config(&app.root, owner_key(&app).await, &checkpoint);
    config.amount = Some(3);
    config.max_pixels = Some(256 * 256);
    let (stop, task) = start_worker(config);

    let status = wait_done(&requester, &batched_id).await;
    let seeds: std::collections::BTreeSet<&str> =
        status.generations.iter().map(|g| g.seed.as_str()).collect();
    assert_eq!(seeds.len(), 3, "three images, each with its own seed");
    stop.send(true).unwrap();
    let summary = task.await.unwrap();
    assert_eq!(
        (summary.jobs_done, summary.images_done),
        (1, 3),
        "one pop, one engine pass: {summary:?}"
    );

    // Each image of the batch earns what it would alone.
    let single = app.state.gen_kudos(
        &app.state.live.get(batched_id.parse().unwrap()).unwrap(),
        MODEL,
    );
    assert!(
        (summary.kudos - 3.0 * single).abs() < 0.02,
        "{summary:?}, {single} each"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_could_not_be_submitted_is_kept_and_resubmitted() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = tiny_checkpoint(dir.path());
    let (requester, _) = app.user("requester", 100.0).await;
    let link = FlakyLink::start(app.root.trim_start_matches("http://").parse().unwrap()).await;
    let mut config = worker_config(&link.url, owner_key(&app).await, &checkpoint);
    config.amount = Some(1);
    let (stop, task) = start_worker(config);

    // Long enough that the link can be cut while the image is being made.
    let request = tiny_request("outage", 150);
    let id = requester
        .generate_async(&request)
        .await
        .unwrap()
        .id
        .unwrap();
    for _ in 0..300 {
        if requester.check(&id).await.unwrap().processing == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Processing on the coordinator may be before the pop's answer reached the worker: cut
    // then, the job would be lost to the worker until the coordinator's timeout.
    link.wait_quiet(Duration::from_millis(300)).await;
    link.set_down(true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = requester.check(&id).await.unwrap();
    assert!(
        !during.done && during.processing == 1,
        "nothing could be submitted while the link was down: {during:?}"
    );
    link.set_down(false);
    let status = wait_done(&requester, &id).await;
    assert_eq!(
        status.generations.len(),
        1,
        "the kept image was resubmitted"
    );
    stop.send(true).unwrap();
    let summary = task.await.unwrap();
    assert_eq!(summary.jobs_done, 1);
    assert!(summary.kudos > 0.0, "{summary:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_popping_and_finishes_the_job_in_hand() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = tiny_checkpoint(dir.path());
    let (requester, _) = app.user("requester", 100.0).await;
    let key = owner_key(&app).await;
    let model = format!("{MODEL}={}", checkpoint.display());
    let worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_horde"))
        .args([
            "worker",
            "--url",
            &app.root,
            "--api-key",
            &key,
            "--name",
            "cli-worker",
            "--model",
            &model,
        ])
        .args(["--max-pixels", "16384", "--poll-interval-secs", "0.1"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    let request = tiny_request("slow enough to interrupt", 150);
    let id = requester
        .generate_async(&request)
        .await
        .unwrap()
        .id
        .unwrap();
    let mut popped = false;
    for _ in 0..600 {
        if requester.check(&id).await.unwrap().processing == 1 {
            popped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(popped, "the worker took the job");
    let pid = worker.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    // A request queued after Ctrl-C is not taken.
    let later = requester
        .generate_async(&request)
        .await
        .unwrap()
        .id
        .unwrap();

    let output = tokio::time::timeout(Duration::from_secs(60), worker.wait_with_output())
        .await
        .expect("the worker exits")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("stopped after 1 jobs"), "{stdout}");
    assert!(
        requester.check(&id).await.unwrap().done,
        "the job in hand was finished and submitted"
    );
    let waiting = requester.check(&later).await.unwrap();
    assert_eq!(
        (waiting.waiting, waiting.processing),
        (1, 0),
        "nothing new was popped after Ctrl-C"
    );
    app.stop().await;
}
