//! The text bridge's requests: the JSON each flavour sends for a horde job, and the KoboldCpp
//! flavour against a stand-in for KoboldCpp (an external C++ program, not on PyPI, so it cannot
//! run here): a small axum server in the test that records the body KoboldCpp would receive and
//! answers as KoboldCpp's `/api/v1/generate` does. The OpenAI flavour meets a real llama.cpp
//! server in `text_llama_server.rs`.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use horde_api::text::TextParams;
use horde_worker::text::bridge::{
    kobold_body, openai_body, read_answer, Bridge, BridgeApi, TextBridgeConfig, MAX_RESPONSE_BYTES,
};
use horde_worker::text::{params, NotTaken, TextJob};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

/// A job as KoboldAI Lite sends it through the horde (horde-sdk's body), with every sampler set.
fn lite_params() -> TextParams {
    serde_json::from_value(json!({
        "n": 1, "max_context_length": 1024, "max_length": 80, "rep_pen": 1.1,
        "rep_pen_range": 320, "rep_pen_slope": 0.7, "temperature": 0.7, "tfs": 0.95,
        "top_a": 0.1, "top_k": 100, "top_p": 0.92, "typical": 0.9, "min_p": 0.05,
        "sampler_order": [6, 0, 1, 3, 4, 2, 5], "stop_sequence": ["\nUser:", "\n###"],
        "dynatemp_range": 0.2, "dynatemp_exponent": 1.5, "smoothing_factor": 0.3,
        "use_default_badwordsids": true, "singleline": false
    }))
    .unwrap()
}

fn job(params: TextParams) -> TextJob {
    TextJob {
        id: "0c5d8e2a".into(),
        model: "koboldcpp/tiny".into(),
        prompt: "User: Hello\nAssistant:".into(),
        resolved: params::resolve(&params, 987_654),
        params,
    }
}

#[test]
fn the_openai_body_carries_every_sampler_under_llama_cpps_names() {
    let j = job(lite_params());
    let body = openai_body(&j.prompt, &j.resolved, Some("tiny"));
    assert_eq!(
        body,
        json!({
            "model": "tiny",
            "prompt": "User: Hello\nAssistant:",
            "max_tokens": 80,
            "temperature": 0.7,
            "top_p": 0.92,
            "top_k": 100,
            "min_p": 0.05,
            "typical_p": 0.9,
            "tfs_z": 0.95,
            "repeat_penalty": 1.1,
            "repetition_penalty": 1.1,
            "repeat_last_n": 320,
            "dynatemp_range": 0.2,
            "dynatemp_exponent": 1.5,
            "stop": ["\nUser:", "\n###"],
            "seed": 987_654,
            "ignore_eos": true,
            "n": 1,
            "stream": false
        })
    );
    // Without a configured model name the field is left out (llama.cpp's server serves its one).
    assert!(openai_body(&j.prompt, &j.resolved, None)
        .get("model")
        .is_none());
}

#[test]
fn the_openai_body_fills_absent_samplers_with_koboldcpps_defaults() {
    let bare: TextParams = serde_json::from_value(json!({})).unwrap();
    let j = job(bare);
    let body = openai_body(&j.prompt, &j.resolved, None);
    // llama.cpp's own defaults (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05) would
    // decide otherwise.
    assert_eq!(body["temperature"], json!(0.75));
    assert_eq!(body["top_k"], json!(100));
    assert_eq!(body["top_p"], json!(0.92));
    assert_eq!(body["min_p"], json!(0.0));
    assert_eq!(body["repeat_penalty"], json!(1.0));
    assert_eq!(body["max_tokens"], json!(80));
    assert_eq!(body["stop"], json!([]));
    assert_eq!(body["ignore_eos"], json!(false));
}

#[test]
fn the_kobold_body_is_the_horde_job_under_kobolds_own_names() {
    let j = job(lite_params());
    assert_eq!(
        kobold_body(&j.prompt, &j.resolved),
        json!({
            "prompt": "User: Hello\nAssistant:",
            "max_length": 80,
            "max_context_length": 1024,
            "temperature": 0.7,
            "top_k": 100,
            "top_a": 0.1,
            "top_p": 0.92,
            "min_p": 0.05,
            "typical": 0.9,
            "tfs": 0.95,
            "rep_pen": 1.1,
            "rep_pen_range": 320,
            "rep_pen_slope": 0.7,
            "sampler_order": [6, 0, 1, 3, 4, 2, 5],
            "dynatemp_range": 0.2,
            "dynatemp_exponent": 1.5,
            "smoothing_factor": 0.3,
            "stop_sequence": ["\nUser:", "\n###"],
            "use_default_badwordsids": true,
            "sampler_seed": 987_654,
            "trim_stop": true,
            "quiet": true
        })
    );
}

#[test]
fn each_flavour_names_the_parameters_it_cannot_take() {
    let log = NotTaken::default();
    let j = job(lite_params());
    assert_eq!(
        log.note("openai", BridgeApi::Openai.takes(), &j),
        ["top_a", "rep_pen_slope", "smoothing_factor"]
    );
    assert!(log.note("kobold", BridgeApi::Kobold.takes(), &j).is_empty());
    // A custom order is not something an OpenAI server can follow either.
    let mut p = lite_params();
    p.sampler_order = Some(vec![5, 6, 0, 1, 3, 4, 2]);
    p.smoothing_factor = None;
    assert_eq!(
        log.note("openai", BridgeApi::Openai.takes(), &job(p)),
        ["top_a", "rep_pen_slope", "sampler_order"]
    );
    // The built-in engine has no smoothing and no EOS ban.
    let engine = horde_worker::text::engine::TAKES;
    assert_eq!(
        log.note("engine", engine, &j),
        ["smoothing_factor", "use_default_badwordsids"]
    );
}

#[test]
fn answers_are_read_by_flavour_and_a_missing_text_names_the_field() {
    let openai = json!({"choices": [{"text": " world", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2}});
    assert_eq!(
        read_answer(BridgeApi::Openai, &openai).unwrap(),
        (" world".to_string(), Some(2))
    );
    let kobold = json!({"results": [{"text": " world", "finish_reason": "stop"}]});
    assert_eq!(
        read_answer(BridgeApi::Kobold, &kobold).unwrap(),
        (" world".to_string(), None)
    );
    let error = read_answer(BridgeApi::Kobold, &openai).unwrap_err();
    assert!(error.contains("results[0].text"), "{error}");
}

/// What the stand-in received, and what it answers.
#[derive(Clone, Default)]
struct StandIn {
    bodies: Arc<Mutex<Vec<Value>>>,
    answer: Arc<Mutex<Value>>,
}

async fn kobold_generate(State(s): State<StandIn>, Json(body): Json<Value>) -> Json<Value> {
    s.bodies.lock().unwrap().push(body);
    Json(s.answer.lock().unwrap().clone())
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

fn bridge(url: &str, api: BridgeApi, timeout_secs: u64) -> Bridge {
    Bridge::new(TextBridgeConfig {
        url: format!("{url}/"),
        api,
        name: "koboldcpp/tiny".into(),
        model: None,
        timeout_secs,
    })
}

#[tokio::test]
async fn the_kobold_flavour_posts_to_generate_and_cuts_the_stop() {
    let stand_in = StandIn::default();
    // KoboldCpp with `trim_stop` already cuts the stop; an older one returns it, and the worker
    // cuts it either way.
    *stand_in.answer.lock().unwrap() =
        json!({"results": [{"text": " Hi there!\nUser: and more", "finish_reason": "stop"}]});
    let router = Router::new()
        .route("/api/v1/generate", post(kobold_generate))
        .with_state(stand_in.clone());
    let url = serve(router).await;
    let bridge = bridge(&url, BridgeApi::Kobold, 10);
    assert_eq!(bridge.endpoint(), format!("{url}/api/v1/generate"));
    let j = job(lite_params());
    let output = bridge.run(&j).await.unwrap();
    assert_eq!(output.text, " Hi there!");
    let bodies = stand_in.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0], kobold_body(&j.prompt, &j.resolved));
}

#[tokio::test]
async fn an_oversized_or_failing_or_slow_server_faults_the_job_with_the_reason() {
    let huge = "x".repeat(MAX_RESPONSE_BYTES + 1);
    let router = Router::new()
        .route(
            "/v1/completions",
            post(move || {
                let huge = huge.clone();
                async move { Json(json!({"choices": [{"text": huge}]})) }
            }),
        )
        .route(
            "/api/v1/generate",
            post(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "model loading") }),
        );
    let url = serve(router).await;
    let j = job(lite_params());
    let error = bridge(&url, BridgeApi::Openai, 10)
        .run(&j)
        .await
        .unwrap_err();
    assert!(error.contains("larger than"), "{error}");
    let error = bridge(&url, BridgeApi::Kobold, 10)
        .run(&j)
        .await
        .unwrap_err();
    assert!(
        error.contains("503") && error.contains("model loading"),
        "{error}"
    );

    let slow = Router::new().route(
        "/v1/completions",
        post(|| async {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            Json(json!({"choices": [{"text": "late"}]}))
        }),
    );
    let url = serve(slow).await;
    let started = std::time::Instant::now();
    let error = bridge(&url, BridgeApi::Openai, 1)
        .run(&j)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "{error}"
    );
    assert!(
        error.contains(&url),
        "the reason names the backend: {error}"
    );
}
