//! The text worker's pop/run/submit cycle (`TextWorker::serve_once`) on the built-in engine with
//! the tiny random llama GGUF of horde-text's fixtures, against a stand-in for the public AI
//! Horde's text endpoints (an external service that cannot run here: a small axum server in the
//! test that hands out the pops it is given, including jobs our own coordinator never hands
//! out, and records what the worker sends). Against our real coordinator the cycle runs in
//! `crates/horde/tests/api/text_worker.rs`.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use horde_api::image::SubmitState;
use horde_api::text::{TextPopRequest, TextPopResponse, TextSubmitRequest};
use horde_worker::text::engine::TextEngine;
use horde_worker::text::{Served, TextBackend, TextWorker};
use horde_worker::WorkerConfig;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

const MODEL: &str = "koboldcpp/tiny-llama";

#[derive(Clone, Default)]
struct Horde {
    pops: Arc<Mutex<VecDeque<TextPopResponse>>>,
    popped: Arc<Mutex<Vec<TextPopRequest>>>,
    submitted: Arc<Mutex<Vec<TextSubmitRequest>>>,
}

async fn pop(State(h): State<Horde>, Json(body): Json<TextPopRequest>) -> Json<TextPopResponse> {
    h.popped.lock().unwrap().push(body);
    let next = h.pops.lock().unwrap().pop_front();
    Json(next.unwrap_or_else(|| TextPopResponse::empty(Default::default())))
}

async fn submit(State(h): State<Horde>, Json(body): Json<TextSubmitRequest>) -> Json<Value> {
    h.submitted.lock().unwrap().push(body);
    Json(json!({"reward": 1.5}))
}

fn job(id: &str, params: Value) -> TextPopResponse {
    let mut pop = TextPopResponse::empty(Default::default());
    pop.payload = serde_json::from_value(json!({"prompt": "Once upon a time"})).unwrap();
    pop.payload.params = serde_json::from_value(params).unwrap();
    pop.id = Some(id.into());
    pop.ids = vec![id.into()];
    pop.model = Some(MODEL.into());
    pop
}

async fn worker() -> (Arc<TextWorker>, Horde) {
    let horde = Horde::default();
    let router = Router::new()
        .route("/api/v2/generate/text/pop", post(pop))
        .route("/api/v2/generate/text/submit", post(submit))
        .with_state(horde.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let gguf = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../horde-text/tests/fixtures/tiny-llama-q8_0.gguf");
    let (engine, failures) = TextEngine::load(
        &BTreeMap::from([(MODEL.to_string(), gguf)]),
        &candle_core::Device::Cpu,
    );
    assert!(failures.is_empty(), "{failures:?}");
    let config = WorkerConfig {
        url,
        api_key: "0123456789abcdefghijkl".into(),
        name: "w".into(),
        max_length: 100,
        ..WorkerConfig::default()
    };
    let backend = Arc::new(TextBackend::new(engine, None));
    (TextWorker::new(config, backend), horde)
}

#[tokio::test]
async fn a_text_job_is_generated_submitted_and_its_stop_cut() {
    let (worker, horde) = worker().await;
    assert_eq!(worker.serve_once().await.unwrap(), Served::Idle);
    let pop = horde.popped.lock().unwrap()[0].clone();
    assert_eq!(pop.name, "w-text", "a text worker of its own");
    assert_eq!(pop.models, [MODEL]);
    assert_eq!((pop.max_length, pop.max_context_length), (100, 2048));
    assert!(pop.softprompts.is_empty() && pop.amount == 1 && pop.threads == 1);
    assert!(
        pop.bridge_agent.starts_with("horde-worker:"),
        "{}",
        pop.bridge_agent
    );
    pop.validate().unwrap();

    // Greedy, 16 tokens; then the same job stopping a few characters in.
    let greedy = json!({"max_length": 16, "temperature": 0});
    horde.pops.lock().unwrap().push_back(job("job-1", greedy));
    let Served::Done { ids, texts, reward } = worker.serve_once().await.unwrap() else {
        panic!("the job was not done");
    };
    assert_eq!((ids, reward), (vec!["job-1".to_string()], Some(1.5)));
    let full = texts[0].clone();
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "{full:?}");
    let stop: String = chars[4..7].iter().collect();
    let stopped = json!({"max_length": 16, "temperature": 0, "stop_sequence": [stop]});
    horde.pops.lock().unwrap().push_back(job("job-2", stopped));
    let Served::Done { texts, .. } = worker.serve_once().await.unwrap() else {
        panic!("the job was not done");
    };
    assert_eq!(texts[0], full[..full.find(&stop).unwrap()]);

    let submitted = horde.submitted.lock().unwrap();
    assert_eq!(submitted.len(), 2);
    assert_eq!(submitted[0].id, "job-1");
    assert_eq!(submitted[0].state, SubmitState::Ok);
    assert_eq!(submitted[0].generation.as_deref(), Some(full.as_str()));
    assert!((0..=i64::from(i32::MAX)).contains(&submitted[0].seed));
    assert_eq!(submitted[1].generation.as_deref(), Some(texts[0].as_str()));
    submitted[0].validate().unwrap();
    assert_eq!(worker.pending_count(), 0);
}

#[tokio::test]
async fn a_job_the_worker_cannot_run_is_submitted_as_faulted_with_the_reason() {
    let (worker, horde) = worker().await;
    let mut softprompt = job("job-sp", json!({}));
    softprompt.softprompt = Some("fantasy".into());
    let mut unknown = job("job-model", json!({}));
    unknown.model = Some("koboldcpp/elsewhere".into());
    let bad_order = job("job-order", json!({"sampler_order": [6, 0, 1, 3, 4, 2, 7]}));
    horde
        .pops
        .lock()
        .unwrap()
        .extend([softprompt, unknown, bad_order]);
    for (id, reason) in [
        ("job-sp", "softprompt fantasy"),
        ("job-model", "model koboldcpp/elsewhere is not served here"),
        ("job-order", "sampler_order: 7 is not a sampler"),
    ] {
        let Served::Faulted { ids, reason: got } = worker.serve_once().await.unwrap() else {
            panic!("{id} was not faulted");
        };
        assert_eq!(ids, [id]);
        assert!(got.contains(reason), "{got}");
        let submitted = horde.submitted.lock().unwrap();
        let last = submitted.last().unwrap();
        assert_eq!((last.id.as_str(), last.state), (id, SubmitState::Faulted));
        assert!(last.generation.is_none());
        let note = &last.gen_metadata[0];
        assert_eq!(
            (note.kind.as_str(), note.value.as_str()),
            ("information", "see_ref")
        );
        assert!(note.r#ref.as_deref().unwrap().contains(reason));
    }
}
