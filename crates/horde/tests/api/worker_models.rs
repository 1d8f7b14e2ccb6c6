//! Models by name (issue 30): the worker looks a name up in its coordinator's model reference,
//! downloads the files it lists from the model host, verifies them and serves them; a later
//! start finds them verified and downloads nothing; a budget of one loaded model serves two
//! models, loading and unloading as jobs alternate.
//!
//! The model host is a loopback HTTP server the test starts (standing in for Hugging Face and
//! GitHub, which cannot be reached here), serving tiny checkpoints of the real SD 1.5
//! architecture under the checksums a reference the coordinator loads gives for them. It
//! honours range requests, as those hosts do, and can cut a download off halfway.

use crate::helpers::*;
use crate::worker::{owner_key, wait_done, worker_config};
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use horde_worker::models::download::sha256_of;
use horde_worker::models::resident::Residency;
use horde_worker::{DiffusionBackend, Worker};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What `horde` printed: (success, stdout, stderr).
type Outcome = (bool, String, String);

/// The model host's state: where its files are, what it saw, and whether it cuts the next
/// download of a file off halfway.
#[derive(Clone, Default)]
struct Host {
    dir: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    ranges: Arc<Mutex<Vec<String>>>,
    cut_next: Arc<AtomicBool>,
}

async fn serve_file(
    State(host): State<Host>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    host.requests.lock().unwrap().push(name.clone());
    let Ok(bytes) = std::fs::read(host.dir.join(&name)) else {
        return Response::builder().status(404).body(Body::empty()).unwrap();
    };
    let start = headers
        .get("range")
        .and_then(|r| r.to_str().ok())
        .inspect(|r| host.ranges.lock().unwrap().push(r.to_string()))
        .and_then(|r| {
            r.strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(0)
        .min(bytes.len());
    let rest = bytes[start..].to_vec();
    let mut answer = Response::builder()
        .header("content-length", rest.len())
        .header("accept-ranges", "bytes");
    if start > 0 {
        answer = answer.status(StatusCode::PARTIAL_CONTENT).header(
            "content-range",
            format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()),
        );
    }
    if host.cut_next.swap(false, Ordering::SeqCst) {
        // Half the body, then the connection breaks.
        let half = rest[..rest.len() / 2].to_vec();
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
            Ok(half),
            Err(std::io::Error::other("the model host went away")),
        ];
        return answer
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .unwrap();
    }
    answer.body(Body::from(rest)).unwrap()
}

/// Starts the model host over `dir`; its base URL.
async fn start_host(host: &Host) -> String {
    let router = axum::Router::new()
        .route("/files/{name}", axum::routing::get(serve_file))
        .with_state(host.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// A reference entry in the AI Horde format for a file of the host.
fn entry(name: &str, file: &str, sha256: &str, host_url: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "baseline": "stable diffusion 1",
        "type": "ckpt",
        "inpainting": false,
        "nsfw": false,
        "config": {
            "files": [{"path": file, "sha256sum": sha256}, {"path": "v1-inference.yaml"}],
            "download": [{"file_name": file, "file_path": "", "file_url": format!("{host_url}/files/{file}")}]
        },
        "size_on_disk_bytes": 1
    })
}

/// Writes the host's tiny checkpoints and a reference listing them (`stable_diffusion`, and
/// `Deliberate` whose listed checksum is not its file's); returns the reference's path.
fn host_files(host: &Host, url: &str) -> PathBuf {
    let good = host.dir.join("tiny-sd15.safetensors");
    horde_diffusion::tiny::write_tiny_checkpoint(horde_diffusion::tiny::TinyArch::Sd15, &good, 3)
        .unwrap();
    let other = host.dir.join("tiny-other.safetensors");
    horde_diffusion::tiny::write_tiny_checkpoint(horde_diffusion::tiny::TinyArch::Sd15, &other, 4)
        .unwrap();
    let sum = sha256_of(&good).unwrap();
    // Deliberate's entry lists the other file's checksum: its download does not match.
    let wrong = sum.clone();
    let mut unchecked = entry("Unchecked", "tiny-other.safetensors", "", url);
    unchecked["config"]["files"][0]
        .as_object_mut()
        .unwrap()
        .remove("sha256sum");
    let mut flux = entry(
        "Flux.1-Schnell fp8 (Compact)",
        "flux.safetensors",
        &sum,
        url,
    );
    flux["baseline"] = "flux_1".into();
    let reference = serde_json::json!({
        "stable_diffusion": entry("stable_diffusion", "tiny-sd15.safetensors", &sum, url),
        "Deliberate": entry("Deliberate", "tiny-other.safetensors", &wrong, url),
        "Unchecked": unchecked,
        "Flux.1-Schnell fp8 (Compact)": flux,
    });
    let path = host.dir.join("reference.json");
    std::fs::write(&path, reference.to_string()).unwrap();
    path
}

/// The model host with its files, and a coordinator whose model reference lists them: the
/// host's folder (kept while the test runs), the host, its URL and the coordinator.
async fn host_and_coordinator() -> (tempfile::TempDir, Host, String, TestApp) {
    let host_dir = tempfile::tempdir().unwrap();
    let host = Host {
        dir: host_dir.path().to_path_buf(),
        ..Host::default()
    };
    let host_url = start_host(&host).await;
    let reference = host_files(&host, &host_url);
    let app = spawn_app_with(|c| c.models.reference = reference.display().to_string()).await;
    (host_dir, host, host_url, app)
}

/// One 64×64 image of `model` in 2 steps, generated and waited for.
async fn one_tiny_image(
    requester: &horde_client::Client,
    model: &str,
) -> horde_api::image::RequestStatus {
    let mut request = small_request(&format!("a lighthouse by {model}"), 1, false);
    request.models = vec![model.into()];
    (request.params.width, request.params.height) = (64, 64);
    request.params.steps = Some(2);
    let id = requester
        .generate_async(&request)
        .await
        .unwrap()
        .id
        .unwrap();
    wait_done(requester, &id).await
}

/// `horde worker` by model name, as README's worker section runs it; returns the child and the
/// lines it printed up to "serving" (stdout and stderr together).
fn start_worker_process(
    root: &str,
    key: &str,
    models_dir: &Path,
) -> (std::process::Child, Vec<String>) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_horde"))
        .args([
            "worker",
            "--url",
            root,
            "--api-key",
            key,
            "--name",
            "by-name",
        ])
        .args(["--model", "stable_diffusion", "--model", "Deliberate"])
        .arg("--models-dir")
        .arg(models_dir)
        .args([
            "--max-pixels",
            "16384",
            "--amount",
            "1",
            "--poll-interval-secs",
            "0.1",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("horde worker starts");
    let (sender, lines) = std::sync::mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let sender = sender.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
    }
    let mut printed = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(120)) {
        let serving = line.contains("worker by-name serving");
        printed.push(line);
        if serving {
            // Keep reading so the worker never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return (child, printed);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the worker did not start serving; it printed {printed:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_by_model_name_downloads_verifies_and_serves_then_starts_at_once() {
    let (_host_dir, host, _, app) = host_and_coordinator().await;
    let key = owner_key(&app).await;
    let (requester, _) = app.user("requester", 100.0).await;
    let models_dir = tempfile::tempdir().unwrap();

    // First start: the download of the checkpoint is cut off halfway and resumed.
    host.cut_next.store(true, Ordering::SeqCst);
    let (mut worker, printed) = start_worker_process(&app.root, &key, models_dir.path());
    let said = printed.join("\n");
    assert!(said.contains("serving stable_diffusion on"), "{said}");
    assert!(
        said.contains("model Deliberate not served") && said.contains("checksum"),
        "the corrupt file is refused, naming the model: {said}"
    );
    let ranges = host.ranges.lock().unwrap().clone();
    assert!(
        ranges
            .iter()
            .any(|r| r.starts_with("bytes=") && r != "bytes=0-"),
        "the cut download resumed with a range request: {ranges:?}"
    );
    let served = models_dir.path().join("tiny-sd15.safetensors");
    assert_eq!(
        sha256_of(&served).unwrap(),
        sha256_of(&host.dir.join("tiny-sd15.safetensors")).unwrap()
    );
    assert!(
        !models_dir.path().join("tiny-other.safetensors").exists(),
        "the corrupt file is deleted"
    );
    let status = one_tiny_image(&requester, "stable_diffusion").await;
    let ((w, h), _, _) = halves_of(&base64_decode(&status.generations[0].img));
    assert_eq!((w, h), (64, 64));
    worker.kill().unwrap();
    worker.wait().unwrap();

    // Second start: the verified file is found, not fetched again; only the refused one is.
    let before = host.requests.lock().unwrap().len();
    let (mut worker, printed) = start_worker_process(&app.root, &key, models_dir.path());
    let asked = host.requests.lock().unwrap()[before..].to_vec();
    assert!(
        !asked.is_empty() && asked.iter().all(|file| file == "tiny-other.safetensors"),
        "only Deliberate's file is fetched again: {asked:?} {printed:#?}"
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_one_loaded_model_serves_two_models_as_jobs_alternate() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let models: BTreeMap<String, PathBuf> = [("stable_diffusion", 3), ("Deliberate", 4)]
        .into_iter()
        .map(|(name, seed)| {
            let path = dir.path().join(format!("{name}.safetensors"));
            horde_diffusion::tiny::write_tiny_checkpoint(
                horde_diffusion::tiny::TinyArch::Sd15,
                &path,
                seed,
            )
            .unwrap();
            (name.to_string(), path)
        })
        .collect();
    let options = horde_diffusion::LoadOptions::default();
    let (size, _) = horde_diffusion::Model::inspect(&models["Deliberate"], &options)
        .map(|(_, bytes)| (bytes, ()))
        .unwrap();
    let budget = Some(size + size / 2);
    let (backend, failures) = DiffusionBackend::within_budget(&models, &options, budget, |_, _| {});
    assert!(failures.is_empty(), "{failures:?}");
    let backend = Arc::new(backend);
    let mut config = worker_config(&app.root, owner_key(&app).await, &models["Deliberate"]);
    config.models = models.clone();
    let worker = Worker::new(config, backend.clone());
    let pop = worker.pop_request();
    assert_eq!(pop.models, ["Deliberate", "stable_diffusion"]);
    assert_eq!(
        pop.loaded_models.as_deref(),
        Some(&["Deliberate".to_string()][..])
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { worker.run(stopped).await });

    let (requester, _) = app.user("requester", 100.0).await;
    for model in [
        "stable_diffusion",
        "Deliberate",
        "stable_diffusion",
        "Deliberate",
    ] {
        let status = one_tiny_image(&requester, model).await;
        assert_eq!(status.generations.len(), 1);
        assert_eq!(status.generations[0].model, model);
    }
    stop.send(true).unwrap();
    let summary = task.await.unwrap();
    assert_eq!((summary.jobs_done, summary.jobs_faulted), (4, 0));
    let load = |m: &str| Residency::Loaded(m.into());
    let unload = |m: &str| Residency::Unloaded(m.into());
    assert_eq!(
        backend.resident().history(),
        [
            load("Deliberate"),
            unload("Deliberate"),
            load("stable_diffusion"),
            unload("stable_diffusion"),
            load("Deliberate"),
            unload("Deliberate"),
            load("stable_diffusion"),
            unload("stable_diffusion"),
            load("Deliberate"),
        ]
    );
    app.stop().await;
}

/// `--check` says what a worker would serve and why without fetching anything; `horde worker
/// download` fetches without serving; names the reference cannot serve are refused with the
/// reason, naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_download_say_what_they_would_do_and_did() {
    let (_host_dir, host, host_url, app) = host_and_coordinator().await;
    let models_dir = tempfile::tempdir().unwrap();
    let dir = models_dir.path().to_str().unwrap().to_string();
    let root = app.root.clone();
    let run = move |args: &[&str]| {
        let mut all = vec!["worker", "--url", &root, "--models-dir", &dir];
        all.extend_from_slice(args);
        run_horde(Path::new("."), &all)
    };
    let named = [
        "--api-key",
        "0123456789abcdefghijkl",
        "--name",
        "w",
        "--model",
        "stable_diffusion",
        "--model",
        "Unchecked",
        "--model",
        "Flux.1-Schnell fp8 (Compact)",
        "--model",
        "stable diffusion",
    ];
    let check = |run: &dyn Fn(&[&str]) -> Outcome| {
        let mut args = named.to_vec();
        args.push("--check");
        let (ok, stdout, stderr) = run(&args);
        assert!(ok, "{stdout}{stderr}");
        stdout
    };
    let said = check(&run);
    for expected in [
        "model stable_diffusion: would download tiny-sd15.safetensors",
        "model Unchecked: NOT served",
        "gives no SHA-256 for tiny-other.safetensors",
        "baseline \"flux_1\" is not run by this engine",
        "model stable diffusion: NOT served",
        "did you mean \"stable_diffusion\"",
        "memory: max_pixels",
        "machine: ",
    ] {
        assert!(said.contains(expected), "{expected:?} in {said}");
    }
    assert!(
        host.requests.lock().unwrap().is_empty(),
        "--check fetches nothing"
    );

    let (ok, stdout, stderr) = run(&["download", "stable_diffusion"]);
    assert!(
        ok && stdout.contains("stable_diffusion: ready at"),
        "{stdout}{stderr}"
    );
    assert_eq!(*host.requests.lock().unwrap(), ["tiny-sd15.safetensors"]);
    let said = check(&run);
    assert!(
        said.contains("model stable_diffusion: serves it: downloaded and verified"),
        "{said}"
    );
    let (ok, stdout, stderr) = run(&["download", "Deliberate", "Nothing Like It"]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("Deliberate: ") && stderr.contains("checksum"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\"Nothing Like It\" is not in the model reference"),
        "{stderr}"
    );
    assert!(
        stderr.contains("2 of 2 models could not be downloaded"),
        "{stderr}"
    );

    // A text model by name, from a reference file of the owner's that lists its GGUF (the
    // public text reference lists none).
    let gguf = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../horde-text/tests/fixtures/tiny-llama-q8_0.gguf"
    );
    std::fs::copy(gguf, host.dir.join("tiny-llama.gguf")).unwrap();
    let mut text = entry("koboldcpp/tiny", "tiny-llama.gguf", "", &host_url);
    text["config"]["files"][0]["sha256sum"] =
        sha256_of(&host.dir.join("tiny-llama.gguf")).unwrap().into();
    let text_reference = host.dir.join("text.json");
    let listed = serde_json::json!({ "koboldcpp/tiny": text });
    std::fs::write(&text_reference, listed.to_string()).unwrap();
    let text_reference = text_reference.to_str().unwrap();
    let (ok, stdout, stderr) = run(&[
        "download",
        "koboldcpp/tiny",
        "--model-reference",
        text_reference,
    ]);
    assert!(
        ok && stdout.contains("koboldcpp/tiny: ready at"),
        "{stdout}{stderr}"
    );
    let (ok, stdout, stderr) = run(&[
        "--api-key",
        "0123456789abcdefghijkl",
        "--name",
        "w",
        "--text-model",
        "koboldcpp/other",
        "--model-reference",
        text_reference,
        "--check",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("text model koboldcpp/other: NOT served"),
        "{stdout}"
    );
    app.stop().await;
}
