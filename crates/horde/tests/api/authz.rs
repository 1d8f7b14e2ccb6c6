//! The authorisation matrix: every endpoint called as anonymous, a plain user, another user, a
//! moderator and the owner of the resources it names (a worker, a shared key, a user record),
//! with the status each must get.

use crate::helpers::*;
use horde_api::user::TestUserRequest;
use serde_json::{json, Value};

/// Callers in the order each row is tried: the owner last, so that what only the owner may do
/// (and may do once) happens after everyone else was refused.
const CALLERS: [&str; 5] = ["anonymous", "user", "other", "moderator", "owner"];

struct Row {
    method: &'static str,
    path: String,
    body: Option<Value>,
    /// Expected status for each of `CALLERS`.
    expect: [u16; 5],
}

fn row(method: &'static str, path: String, body: Option<Value>, expect: [u16; 5]) -> Row {
    Row {
        method,
        path,
        body,
        expect,
    }
}

#[tokio::test]
async fn every_endpoint_answers_each_kind_of_caller_as_it_should() {
    let app = spawn_app().await;
    let mut keys = vec![horde_api::ANONYMOUS_API_KEY.to_string()];
    let mut ids = vec![0i64];
    for (name, moderator) in [
        ("user", false),
        ("other", false),
        ("moderator", true),
        ("owner", false),
    ] {
        let created = app
            .anonymous()
            .create_test_user(&TestUserRequest {
                username: name.into(),
                oauth_id: None,
                moderator,
                trusted: false,
                kudos: 100.0,
            })
            .await
            .unwrap();
        keys.push(created.api_key);
        ids.push(created.user_id);
    }
    let owner = app.client(&keys[4]);
    let owner_id = ids[4];

    // The owner's resources: a worker holding a job, and a shared key; a request by the user.
    let request = app
        .client(&keys[1])
        .generate_async(&small_request("owned", 2, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let job = owner.pop(&pop_request("owned worker")).await.unwrap();
    let job_id = job.id.clone().unwrap();
    let worker_id = owner.worker_by_name("owned worker").await.unwrap().id;
    let shared = owner
        .create_shared_key(&serde_json::from_value(json!({"kudos": 10})).unwrap())
        .await
        .unwrap()
        .id;

    let filter: Value = http()
        .put(format!("{}/api/v2/filters", app.root))
        .header("apikey", &keys[3])
        .json(&json!({"regex": "\\bforbidden\\b", "filter_type": 20}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let filter = filter["id"].as_str().expect("a filter id").to_string();

    let everyone = [200; 5];
    let only_owner = [403, 403, 403, 403, 200];
    let owner_and_moderator = [403, 403, 403, 200, 200];
    let only_moderator = [403, 403, 403, 200, 403];
    let registered = [403, 200, 200, 200, 200];
    let small = json!({"prompt": "matrix", "params": {"steps": 10}});
    let rows = vec![
        row("GET", "/api/v2/status/heartbeat".into(), None, everyone),
        row("GET", "/api/v2/status/models".into(), None, everyone),
        row("GET", "/api/v2/status/performance".into(), None, everyone),
        row(
            "POST",
            "/api/v2/generate/async".into(),
            Some(small),
            [202; 5],
        ),
        row(
            "GET",
            format!("/api/v2/generate/check/{request}"),
            None,
            everyone,
        ),
        row(
            "GET",
            format!("/api/v2/generate/status/{request}"),
            None,
            everyone,
        ),
        row("GET", "/api/v2/workers".into(), None, everyone),
        row(
            "GET",
            format!("/api/v2/workers/{worker_id}"),
            None,
            everyone,
        ),
        row(
            "GET",
            "/api/v2/workers/name/owned worker".into(),
            None,
            everyone,
        ),
        row(
            "PUT",
            format!("/api/v2/workers/{worker_id}"),
            Some(json!({"info": "mine"})),
            owner_and_moderator,
        ),
        row(
            "PUT",
            format!("/api/v2/workers/{worker_id}"),
            Some(json!({"paused": false})),
            only_moderator,
        ),
        row(
            "PUT",
            format!("/api/v2/workers/{worker_id}"),
            Some(json!({"reset_suspicion": true})),
            only_moderator,
        ),
        row(
            "POST",
            "/api/v2/generate/pop".into(),
            Some(
                json!({"name": "owned worker", "models": ["stable_diffusion"], "max_pixels": 262144}),
            ),
            only_owner,
        ),
        row(
            "POST",
            "/api/v2/generate/submit".into(),
            Some(json!({"id": job_id, "state": "faulted"})),
            only_owner,
        ),
        row("GET", format!("/api/v2/users/{owner_id}"), None, everyone),
        row("GET", "/api/v2/find_user".into(), None, everyone),
        row(
            "PUT",
            format!("/api/v2/users/{owner_id}"),
            Some(json!({"trusted": true})),
            only_moderator,
        ),
        row(
            "PUT",
            format!("/api/v2/users/{owner_id}"),
            Some(json!({"public_workers": true})),
            owner_and_moderator,
        ),
        row(
            "PUT",
            format!("/api/v2/users/{owner_id}"),
            Some(json!({"kudos": 5})),
            [403; 5],
        ),
        row(
            "POST",
            "/api/v2/kudos/transfer".into(),
            Some(json!({"username": format!("owner#{owner_id}"), "amount": 1})),
            [400, 200, 200, 200, 400],
        ),
        row(
            "PUT",
            "/api/v2/sharedkeys".into(),
            Some(json!({"kudos": 5})),
            registered,
        ),
        row(
            "GET",
            format!("/api/v2/sharedkeys/{shared}"),
            None,
            everyone,
        ),
        row(
            "PATCH",
            format!("/api/v2/sharedkeys/{shared}"),
            Some(json!({"kudos": 11})),
            only_owner,
        ),
        row(
            "DELETE",
            format!("/api/v2/generate/status/{request}"),
            None,
            everyone,
        ),
        row(
            "DELETE",
            format!("/api/v2/sharedkeys/{shared}"),
            None,
            only_owner,
        ),
        row("GET", "/api/v2/filters".into(), None, only_moderator),
        row(
            "PUT",
            "/api/v2/filters".into(),
            Some(json!({"regex": "x", "filter_type": 11})),
            only_moderator,
        ),
        row(
            "POST",
            "/api/v2/filters".into(),
            Some(json!({"prompt": "a forbidden lighthouse"})),
            only_moderator,
        ),
        row("GET", "/api/v2/filters/regex".into(), None, only_moderator),
        row(
            "GET",
            format!("/api/v2/filters/{filter}"),
            None,
            only_moderator,
        ),
        row(
            "PATCH",
            format!("/api/v2/filters/{filter}"),
            Some(json!({"description": "matrix"})),
            only_moderator,
        ),
        row(
            "DELETE",
            format!("/api/v2/filters/{filter}"),
            None,
            only_moderator,
        ),
        row(
            "PUT",
            format!("/api/v2/uploads/{job_id}?expires=9999999999&sig=forged"),
            None,
            [403; 5],
        ),
        row(
            "POST",
            format!("/api/v2/users/{owner_id}/reset_key"),
            None,
            only_owner,
        ),
    ];

    let http = http();
    let mut wrong = Vec::new();
    for row in &rows {
        for (caller, (key, expected)) in CALLERS.iter().zip(keys.iter().zip(row.expect)) {
            let url = format!("{}{}", app.root, row.path);
            let mut call = http
                .request(row.method.parse().unwrap(), &url)
                .header("apikey", key);
            if let Some(body) = &row.body {
                call = call.json(body);
            }
            let answer = call.send().await.unwrap();
            let status = answer.status().as_u16();
            if status != expected {
                let body = answer.text().await.unwrap_or_default();
                wrong.push(format!(
                    "{} {} as {caller}: {status}, expected {expected}: {body}",
                    row.method, row.path
                ));
            } else if status >= 400 {
                let body: Value = answer.json().await.unwrap();
                assert!(
                    body["rc"].is_string() && body["message"].is_string(),
                    "{body}"
                );
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
