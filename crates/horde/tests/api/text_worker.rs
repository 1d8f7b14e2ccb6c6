//! The text worker against the real coordinator: `horde_worker::text::TextWorker` pops a text
//! request, generates it with the built-in engine on horde-text's tiny random llama GGUF and
//! submits it; the requester reads the worker's text back, stop sequence honoured, the worker
//! paid. A worker whose inference server is down submits its job as faulted and the request
//! goes back to the queue.

use crate::helpers::*;
use horde_api::text::TextRequest;
use horde_worker::text::engine::TextEngine;
use horde_worker::text::{Served, TextBackend, TextWorker};
use horde_worker::WorkerConfig;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The tiny GGUF served under this name (a horde with custom text models allowed).
const MODEL: &str = "koboldcpp/tiny-llama";

fn tiny_gguf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../horde-text/tests/fixtures/tiny-llama-q8_0.gguf")
}

fn worker_config(app: &TestApp, key: &str, name: &str) -> WorkerConfig {
    WorkerConfig {
        url: app.root.clone(),
        api_key: key.into(),
        name: name.into(),
        max_length: 64,
        ..WorkerConfig::default()
    }
}

fn engine_worker(app: &TestApp, key: &str) -> Arc<TextWorker> {
    let (engine, failures) = TextEngine::load(
        &BTreeMap::from([(MODEL.to_string(), tiny_gguf())]),
        &cpu().device,
    );
    assert!(failures.is_empty(), "{failures:?}");
    let backend = Arc::new(TextBackend::new(engine, None));
    TextWorker::new(worker_config(app, key, "tiny"), backend)
}

async fn owner_key(app: &TestApp) -> String {
    let request = horde_api::user::TestUserRequest {
        username: "text owner".into(),
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

fn greedy(prompt: &str, stop: Option<&str>) -> TextRequest {
    serde_json::from_value(json!({
        "prompt": prompt,
        "models": [MODEL],
        "params": {"max_length": 16, "max_context_length": 1024, "temperature": 0,
                   "stop_sequence": stop.map(|s| vec![s]).unwrap_or_default()},
    }))
    .unwrap()
}

#[tokio::test]
async fn the_built_in_engine_serves_a_text_request_end_to_end() {
    let app = spawn_app_with(|c| c.text.allow_custom = true).await;
    let (requester, _) = app.user("reader", 100.0).await;
    let key = owner_key(&app).await;
    let worker = engine_worker(&app, &key);
    assert_eq!(worker.serve_once().await.unwrap(), Served::Idle);

    let asked = requester
        .text_async(&greedy("Once upon a time", None))
        .await
        .unwrap();
    let id = asked.id.unwrap();
    let Served::Done {
        texts,
        reward: Some(reward),
        ..
    } = worker.serve_once().await.unwrap()
    else {
        panic!("the job was not served");
    };
    assert!(reward > 0.0);
    let full = texts[0].clone();
    let status = requester.text_status(&id).await.unwrap();
    assert!(status.check.done, "{status:?}");
    let generation = &status.generations[0];
    assert_eq!(
        generation.text, full,
        "the requester reads the worker's text"
    );
    assert_eq!(
        (generation.worker_name.as_str(), generation.model.as_str()),
        ("tiny-text", MODEL)
    );
    assert!((0..=i64::from(i32::MAX)).contains(&generation.seed));

    // The same greedy continuation, stopped where a few of its characters begin.
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "{full:?}");
    let stop: String = chars[4..7].iter().collect();
    let asked = requester
        .text_async(&greedy("Once upon a time", Some(&stop)))
        .await
        .unwrap();
    let Served::Done { .. } = worker.serve_once().await.unwrap() else {
        panic!("the second job was not served");
    };
    let status = requester.text_status(&asked.id.unwrap()).await.unwrap();
    assert_eq!(
        status.generations[0].text,
        full[..full.find(&stop).unwrap()]
    );

    let worker_row = requester.worker_by_name("tiny-text").await.unwrap();
    assert_eq!(worker_row.kind, "text");
    assert_eq!(worker_row.requests_fulfilled, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_worker_whose_server_is_down_faults_the_job_and_the_request_waits_again() {
    let app = spawn_app_with(|c| c.text.allow_custom = true).await;
    let (requester, _) = app.user("reader", 100.0).await;
    let key = owner_key(&app).await;
    // An inference server that is not there: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let bridge: horde_worker::text::bridge::TextBridgeConfig = serde_json::from_value(json!({
        "url": url, "api": "openai", "name": MODEL, "timeout_secs": 5,
    }))
    .unwrap();
    let bridge = horde_worker::text::bridge::Bridge::new(bridge);
    let (engine, _) = TextEngine::load(&BTreeMap::new(), &cpu().device);
    let backend = Arc::new(TextBackend::new(engine, Some(bridge)));
    let worker = TextWorker::new(worker_config(&app, &key, "down"), backend);

    let mut request = greedy("Once upon a time", None);
    request.validated_backends = false;
    let asked = requester.text_async(&request).await.unwrap();
    let Served::Faulted { reason, .. } = worker.serve_once().await.unwrap() else {
        panic!("the job was not faulted");
    };
    assert!(!reason.is_empty());
    let status = requester.text_status(&asked.id.unwrap()).await.unwrap();
    assert!(!status.check.done, "{status:?}");
    assert_eq!((status.check.restarted, status.check.waiting), (1, 1));
    app.stop().await;
}

/// The CPU, as the worker's settings name it (`.device`).
fn cpu() -> horde_diffusion::LoadOptions {
    horde_diffusion::LoadOptions::named("cpu", "f32").unwrap()
}
