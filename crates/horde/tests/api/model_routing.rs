//! Issue 30, the coordinator's side: workers report what they run on (`hardware`) and the
//! models they hold in memory (`loaded_models`); a request is left for a waiting worker that
//! holds its model rather than one that must load it; a job whose model must be loaded first
//! gets the load's time on its deadline; workers read the model reference their coordinator
//! loaded (`GET /reference/image`, `/reference/text`).

use crate::authz::{check_rows, five_callers, row, Callers};
use crate::helpers::*;
use horde_api::image::{ImageRequest, PopRequest};
use horde_api::worker::WorkerHardware;
use horde_api::ANONYMOUS_API_KEY;
use serde_json::{json, Value};

/// Two models of the built-in reference.
const A: &str = "stable_diffusion";
const B: &str = "Deliberate";

fn hardware(load_secs: u32) -> WorkerHardware {
    WorkerHardware {
        device: "cuda:0".into(),
        cpu: "AMD EPYC 9454 48-Core Processor".into(),
        cpu_cores: 16,
        ram_bytes: 128 << 30,
        gpu: Some("NVIDIA H100 80GB HBM3".into()),
        vram_bytes: Some(80 << 30),
        engine: "horde-worker 0.1.0 (candle)".into(),
        dtype: "f16".into(),
        load_secs,
    }
}

/// A pop by `name` serving A and B, holding `loaded` in memory, whose loads take `load_secs`.
fn holding_pop(name: &str, loaded: &[&str], load_secs: u32) -> PopRequest {
    let mut pop = pop_request(name);
    pop.models = vec![A.into(), B.into()];
    pop.loaded_models = Some(loaded.iter().map(|m| m.to_string()).collect());
    pop.hardware = Some(hardware(load_secs));
    pop
}

fn request_for(model: &str) -> ImageRequest {
    let mut request = small_request("a lighthouse at dusk", 1, false);
    request.models = vec![model.into()];
    request
}

/// `GET path` as anyone: its JSON, which must be a 200.
async fn get_json(app: &TestApp, path: &str) -> Value {
    let (status, body) = call_as(app, ANONYMOUS_API_KEY, "GET", path, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The worker named `name` as `GET /workers/name/{name}` shows it.
async fn shown(app: &TestApp, name: &str) -> Value {
    get_json(
        app,
        &format!("/api/v2/workers/name/{}", name.replace(' ', "%20")),
    )
    .await
}

#[tokio::test]
async fn workers_show_the_hardware_and_loaded_models_they_report_and_keep_the_hardware() {
    let app = spawn_app().await;
    let (owner, _) = app.user("owner", 0.0).await;
    owner
        .pop(&holding_pop("gpu worker", &[A], 42))
        .await
        .unwrap();
    let by_name = shown(&app, "gpu worker").await;
    assert_eq!(
        by_name["hardware"],
        serde_json::to_value(hardware(42)).unwrap()
    );
    assert_eq!(by_name["loaded_models"], json!([A]));
    let id = by_name["id"].as_str().unwrap().to_string();
    let by_id = get_json(&app, &format!("/api/v2/workers/{id}")).await;
    let listed = get_json(&app, "/api/v2/workers").await;
    let in_list = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id)
        .unwrap()
        .clone();
    for details in [&by_id, &in_list] {
        assert_eq!(details["hardware"]["gpu"], "NVIDIA H100 80GB HBM3");
        assert_eq!(details["loaded_models"], json!([A]));
    }

    // The next pop's report replaces the last: a load and a new load time.
    owner
        .pop(&holding_pop("gpu worker", &[A, B], 7))
        .await
        .unwrap();
    let later = shown(&app, "gpu worker").await;
    assert_eq!(later["loaded_models"], json!([A, B]));
    assert_eq!(later["hardware"]["load_secs"], 7);

    // A worker that reports nothing (as every public-horde worker) shows nothing.
    owner.pop(&pop_request("plain worker")).await.unwrap();
    let plain = shown(&app, "plain worker").await;
    assert!(plain.get("hardware").is_none() && plain.get("loaded_models").is_none());

    // The hardware is stored with the worker; what it holds in memory is not (it reloads).
    let app = app.restart().await;
    let restarted = get_json(&app, &format!("/api/v2/workers/{id}")).await;
    assert_eq!(restarted["hardware"]["load_secs"], 7);
    assert_eq!(restarted["hardware"]["cpu_cores"], 16);
    assert!(restarted.get("loaded_models").is_none(), "{restarted}");
}

#[tokio::test]
async fn text_workers_and_alchemists_report_their_hardware_too() {
    let app = spawn_app().await;
    let (key, _) = app.moderator().await;
    let report = serde_json::to_value(hardware(5)).unwrap();
    let pops = [
        (
            "/api/v2/generate/text/pop",
            json!({"name": "text worker", "models": ["koboldcpp/Marx-3B-V3"], "max_length": 512,
                   "max_context_length": 4096, "hardware": report}),
        ),
        (
            "/api/v2/interrogate/pop",
            json!({"name": "alchemist", "forms": ["caption"], "hardware": report}),
        ),
    ];
    for (path, pop) in pops {
        let (status, body) = call_as(&app, &key, "POST", path, Some(pop)).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    for name in ["text worker", "alchemist"] {
        assert_eq!(shown(&app, name).await["hardware"], report, "{name}");
    }
    let mut too_long = report.clone();
    too_long["engine"] = json!("E".repeat(201));
    let pop = json!({"name": "alchemist", "forms": ["caption"], "hardware": too_long});
    let (status, body) = call_as(&app, &key, "POST", "/api/v2/interrogate/pop", Some(pop)).await;
    assert_eq!(
        (status, body["rc"].as_str()),
        (400, Some("ValidationError")),
        "{body}"
    );
    assert_eq!(shown(&app, "alchemist").await["hardware"], report);
}

#[tokio::test]
async fn a_pop_with_an_out_of_bounds_report_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let (owner, _) = app.user("owner", 0.0).await;
    owner
        .pop(&holding_pop("bounded worker", &[A], 42))
        .await
        .unwrap();
    let before = shown(&app, "bounded worker").await;

    let mut long_gpu = holding_pop("bounded worker", &[B], 9);
    long_gpu.hardware.as_mut().unwrap().gpu = Some("G".repeat(201));
    let mut many_loaded = holding_pop("bounded worker", &[B], 9);
    many_loaded.loaded_models = Some((0..301).map(|i| format!("model {i}")).collect());
    let mut long_load = holding_pop("bounded worker", &[B], 9);
    long_load.hardware.as_mut().unwrap().load_secs = horde_api::worker::MAX_LOAD_SECS + 1;
    for (pop, field) in [
        (long_gpu, "hardware.gpu"),
        (many_loaded, "loaded_models"),
        (long_load, "hardware.load_secs"),
    ] {
        let error = owner.pop(&pop).await.unwrap_err();
        let horde_client::ClientError::Api { status, body } = error else {
            panic!("{field}: not an AI Horde error body: {error}");
        };
        assert_eq!(status.as_u16(), 400, "{field}");
        assert_eq!(body.rc.as_deref(), Some("ValidationError"), "{field}");
        assert!(body.errors.unwrap().contains_key(field), "{field}");
    }
    let after = shown(&app, "bounded worker").await;
    assert_eq!(after["hardware"], before["hardware"]);
    assert_eq!(after["loaded_models"], json!([A]));
}

/// Both workers serve A and B; "holds A" has A in memory, "holds B" has B. Both popped once on
/// an empty queue (standing by), then a request for A is made.
async fn two_holders_and_a_request_for_a(
    app: &TestApp,
) -> (horde_client::Client, PopRequest, PopRequest) {
    let (requester, _) = app.user("requester", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let holds_a = holding_pop("holds A", &[A], 0);
    let holds_b = holding_pop("holds B", &[B], 0);
    for pop in [&holds_a, &holds_b] {
        assert!(owner.pop(pop).await.unwrap().id.is_none());
    }
    requester.generate_async(&request_for(A)).await.unwrap();
    (owner, holds_a, holds_b)
}

#[tokio::test]
async fn a_request_is_left_for_the_waiting_worker_that_holds_its_model() {
    let app = spawn_app().await;
    let (owner, holds_a, holds_b) = two_holders_and_a_request_for_a(&app).await;
    let would_load = owner.pop(&holds_b).await.unwrap();
    assert!(would_load.id.is_none(), "{would_load:?}");
    let holder = owner.pop(&holds_a).await.unwrap();
    assert!(holder.id.is_some(), "{holder:?}");
    assert_eq!(holder.model.as_deref(), Some(A));
}

#[tokio::test]
async fn with_routing_off_the_first_worker_to_ask_gets_the_request() {
    let app = spawn_app_with(|c| c.workers.reliability_hold_secs = 0).await;
    let (owner, _, holds_b) = two_holders_and_a_request_for_a(&app).await;
    let first = owner.pop(&holds_b).await.unwrap();
    assert!(first.id.is_some(), "{first:?}");
    assert_eq!(first.model.as_deref(), Some(A));
}

#[tokio::test]
async fn a_job_whose_model_must_be_loaded_gets_the_load_time_on_its_deadline() {
    let app = spawn_app_with(|c| {
        c.jobs.deadline_floor_secs = 1;
        c.jobs.deadline_ceiling_secs = 1;
        c.requests.idle_expiry_secs = 3600;
    })
    .await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let warm = requester
        .generate_async(&request_for(A))
        .await
        .unwrap()
        .id
        .unwrap();
    let job = owner.pop(&holding_pop("warm", &[A], 30)).await.unwrap();
    assert_eq!(job.model.as_deref(), Some(A));
    let cold = requester
        .generate_async(&request_for(B))
        .await
        .unwrap()
        .id
        .unwrap();
    let job = owner.pop(&holding_pop("cold", &[A], 30)).await.unwrap();
    assert_eq!(job.model.as_deref(), Some(B));

    // The ceiling is 1 s; the cold job has its worker's 30 s load on top.
    let now = horde_server::clock::now();
    assert_eq!(app.state.take_back_late_jobs(now + 5).await.unwrap(), 1);
    let restarted = |id: String| {
        let requester = &requester;
        async move { requester.check(&id).await.unwrap().restarted }
    };
    assert_eq!(
        restarted(warm.clone()).await,
        1,
        "the loaded model's job is late"
    );
    assert_eq!(
        restarted(cold.clone()).await,
        0,
        "the cold job is still within its load time"
    );
    assert_eq!(app.state.take_back_late_jobs(now + 40).await.unwrap(), 1);
    assert_eq!(
        restarted(cold).await,
        1,
        "and late once its load time is over too"
    );
}

/// A model reference of two models of the built-in one, with checksums of our own.
fn reference_file(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let builtin: Value = serde_json::from_str(horde_core::model_reference::BUILTIN_MODELS).unwrap();
    let mut models = serde_json::Map::new();
    for (model, sum) in [(A, "1a".repeat(32)), (B, "2b".repeat(32))] {
        let mut entry = builtin[model].clone();
        entry["config"]["files"] =
            json!([{"path": format!("{model}.safetensors"), "sha256sum": sum}]);
        models.insert(model.to_string(), entry);
    }
    let text = serde_json::to_string_pretty(&Value::Object(models)).unwrap();
    let path = dir.join("models.json");
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

#[tokio::test]
async fn workers_read_the_model_references_their_coordinator_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (path, text) = reference_file(dir.path());
    let app = spawn_app_with(|c| c.models.reference = path.display().to_string()).await;
    let answer = http()
        .get(format!("{}/api/v2/reference/image", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/json");
    assert_eq!(
        answer.text().await.unwrap(),
        text,
        "the file, byte for byte"
    );

    let client = app.anonymous();
    let image = client.image_model_reference().await.unwrap();
    let image: Value = serde_json::from_str(&image).unwrap();
    assert_eq!(image.as_object().unwrap().len(), 2);
    assert_eq!(image[B]["config"]["files"][0]["sha256sum"], "2b".repeat(32));
    assert!(image[A]["config"]["download"][0]["file_url"].is_string());
    let text_reference = client.text_model_reference().await.unwrap();
    assert_eq!(
        text_reference,
        horde_core::text::reference::BUILTIN_TEXT_MODELS,
        "no `[text] reference` set: the built-in copy"
    );
}

#[tokio::test]
async fn anyone_may_read_the_model_references() {
    let app = spawn_app().await;
    let Callers { keys, .. } = five_callers(&app).await;
    let rows = [
        row("GET", "/api/v2/reference/image".into(), None, [200; 5]),
        row("GET", "/api/v2/reference/text".into(), None, [200; 5]),
    ];
    check_rows(&app, &keys, &rows).await;
}
