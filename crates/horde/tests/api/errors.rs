//! Bad input of every kind: the right status, the AI Horde error body with its `rc`, and nothing
//! already stored changed.

use crate::helpers::*;
use horde_api::worker::ModifyWorker;
use horde_api::ErrorBody;
use horde_client::{Client, ClientError};
use reqwest::Method;
use serde_json::json;

/// What a bad request must not change: the requester's kudos, the queued request, the worker.
#[derive(Debug, PartialEq)]
struct Snapshot {
    kudos: f64,
    waiting: u32,
    processing: u32,
    finished: u32,
    queued_requests: u64,
    worker_name: String,
    worker_info: Option<String>,
    worker_maintenance: bool,
    worker_paused: Option<bool>,
}

async fn snapshot(client: &Client, request_id: &str, worker_id: &str) -> Snapshot {
    let check = client.check(request_id).await.unwrap();
    let worker = client.worker(worker_id).await.unwrap();
    Snapshot {
        kudos: client.find_user().await.unwrap().kudos,
        waiting: check.waiting,
        processing: check.processing,
        finished: check.finished,
        queued_requests: client.performance().await.unwrap().queued_requests,
        worker_name: worker.name,
        worker_info: worker.info,
        worker_maintenance: worker.maintenance_mode,
        worker_paused: worker.paused,
    }
}

/// Asserts a raw response is an AI Horde error with `status` and `rc`, and returns its body.
async fn expect_raw(response: reqwest::Response, status: u16, rc: &str) -> ErrorBody {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "error bodies are JSON, not {content_type:?}"
    );
    let body: ErrorBody = response.json().await.expect("an AI Horde error body");
    assert_eq!(body.rc.as_deref(), Some(rc), "{body:?}");
    assert!(!body.message.is_empty());
    body
}

fn expect_client(result: Result<impl std::fmt::Debug, ClientError>, status: u16, rc: &str) {
    let err = result.expect_err("the server must refuse this");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(status), "{err}");
    assert_eq!(err.rc(), Some(rc), "{err}");
}

#[tokio::test]
async fn every_kind_of_bad_input_is_refused_and_changes_nothing() {
    let app = spawn_app_with(|c| c.api.max_body_bytes = 256 * 1024).await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let (stranger, _) = app.user("stranger", 0.0).await;
    let id = requester
        .generate_async(&small_request("queued", 2, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let popped = owner.pop(&pop_request("the-worker")).await.unwrap();
    let worker_id = owner.worker_by_name("the-worker").await.unwrap().id;
    let before = snapshot(&requester, &id, &worker_id).await;
    assert_eq!((before.waiting, before.processing), (1, 1));

    // 400: schema and bounds.
    let post = |body: serde_json::Value| {
        requester
            .request(Method::POST, "/generate/async")
            .json(&body)
            .send()
    };
    let body = expect_raw(
        post(json!({"prompt": "x", "params": {"width": 100}}))
            .await
            .unwrap(),
        400,
        "ValidationError",
    )
    .await;
    assert!(body.errors.unwrap().contains_key("params.width"));
    let body = expect_raw(
        post(json!({"params": {"steps": 10}})).await.unwrap(),
        400,
        "ValidationError",
    )
    .await;
    assert!(!body.errors.unwrap().is_empty());
    expect_raw(
        post(json!({"prompt": "x", "params": {"sampler_name": "k_nonsense"}}))
            .await
            .unwrap(),
        400,
        "ValidationError",
    )
    .await;
    expect_raw(
        post(json!({"prompt": "x", "params": {"steps": 501}}))
            .await
            .unwrap(),
        400,
        "ValidationError",
    )
    .await;
    expect_raw(
        post(json!({"prompt": "x", "params": {"n": 21}}))
            .await
            .unwrap(),
        400,
        "ValidationError",
    )
    .await;
    expect_raw(
        post(json!({"prompt": "nul \u{0000} byte"})).await.unwrap(),
        400,
        "NulByteInPayload",
    )
    .await;
    let malformed = requester
        .request(Method::POST, "/generate/async")
        .header("content-type", "application/json")
        .body("{\"prompt\":")
        .send();
    expect_raw(malformed.await.unwrap(), 400, "ValidationError").await;
    // A submit of an undecodable image is refused and the job stays in flight.
    let mut garbage = submit_inline(&popped, b"not an image at all");
    expect_client(owner.submit(&garbage).await, 400, "ImageValidationFailed");
    garbage.generation = Some("%%% not base64 %%%".into());
    expect_client(owner.submit(&garbage).await, 400, "ImageValidationFailed");
    expect_client(
        owner
            .modify_worker(&worker_id, &ModifyWorker::default())
            .await,
        400,
        "NoWorkerModSelected",
    );

    // 401: unknown or missing key.
    let unknown = app.client("AAAAAAAAAAAAAAAAAAAAAA");
    expect_client(
        unknown.generate_async(&small_request("x", 1, false)).await,
        401,
        "InvalidAPIKey",
    );
    // find_user answers an unknown key as the public horde does: no such user.
    expect_client(unknown.find_user().await, 404, "UserNotFound");
    let no_key = http()
        .get(format!("{}/api/v2/find_user", app.root))
        .send()
        .await
        .unwrap();
    expect_raw(no_key, 401, "InvalidAPIKey").await;

    // 403: someone else's worker or job.
    let rename = ModifyWorker {
        info: Some("hijacked".into()),
        ..Default::default()
    };
    expect_client(
        stranger.modify_worker(&worker_id, &rename).await,
        403,
        "NotOwner",
    );
    let pause = ModifyWorker {
        paused: Some(true),
        ..Default::default()
    };
    expect_client(
        owner.modify_worker(&worker_id, &pause).await,
        403,
        "NotModerator",
    );
    expect_client(
        stranger
            .submit(&submit_inline(
                &popped,
                &webp(512, 512, [1, 2, 3], [4, 5, 6]),
            ))
            .await,
        403,
        "WrongCredentials",
    );
    expect_client(
        app.anonymous().pop(&pop_request("anon-worker")).await,
        403,
        "AnonForbiddenWorker",
    );

    // 404: unknown ids.
    expect_client(
        requester.check(&uuid::Uuid::new_v4().to_string()).await,
        404,
        "RequestNotFound",
    );
    expect_client(requester.check("not-a-uuid").await, 404, "RequestNotFound");
    expect_client(
        requester.cancel(&uuid::Uuid::new_v4().to_string()).await,
        404,
        "RequestNotFound",
    );
    expect_client(requester.user(987_654).await, 404, "UserNotFound");
    expect_client(
        requester.worker(&uuid::Uuid::new_v4().to_string()).await,
        404,
        "WorkerNotFound",
    );
    let mut unknown_job = submit_inline(&popped, &webp(64, 64, [0; 3], [0; 3]));
    unknown_job.id = uuid::Uuid::new_v4().to_string();
    expect_client(owner.submit(&unknown_job).await, 404, "InvalidJobID");

    // 413: a body over the configured limit.
    let huge = json!({"prompt": "x".repeat(300 * 1024)});
    expect_raw(post(huge).await.unwrap(), 413, "PayloadTooLarge").await;

    assert_eq!(
        snapshot(&requester, &id, &worker_id).await,
        before,
        "a refused request changed stored state"
    );

    // And the job that survived all of that still completes.
    owner
        .submit(&submit_inline(
            &popped,
            &webp(512, 512, [9, 9, 9], [9, 9, 9]),
        ))
        .await
        .unwrap();
    assert_eq!(requester.check(&id).await.unwrap().finished, 1);
    app.stop().await;
}

#[tokio::test]
async fn rate_limited_requests_answer_429_and_are_not_queued() {
    let app = spawn_app_with(|c| c.api.rate_limits = true).await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let mut accepted = 0;
    let mut limited = 0;
    // The public horde allows 2 requests per second per key: 6 in a burst (well under a
    // second apart, so within at most two one-second windows) cannot all pass.
    for _ in 0..6 {
        match requester
            .request(Method::POST, "/generate/async")
            .json(&small_request("burst", 1, false))
            .send()
            .await
            .unwrap()
        {
            r if r.status().as_u16() == 202 => accepted += 1,
            r => {
                assert!(
                    r.headers().contains_key("retry-after"),
                    "429 says when to retry"
                );
                expect_raw(r, 429, "RateLimited").await;
                limited += 1;
            }
        }
    }
    assert!(limited >= 2, "{accepted} accepted, {limited} limited");
    let queued = requester.performance().await.unwrap().queued_requests;
    assert_eq!(queued, accepted, "only accepted requests are queued");
    app.stop().await;
}
