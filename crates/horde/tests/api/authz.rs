//! The authorisation matrix: every endpoint called as anonymous, a plain user, another user, a
//! moderator and the owner of the resources it names (a worker, a shared key, a user record),
//! with the status each must get.

use crate::helpers::*;
use horde_api::user::TestUserRequest;
use serde_json::{json, Value};

/// Callers in the order each row is tried: the owner last, so that what only the owner may do
/// (and may do once) happens after everyone else was refused.
/// A model of the built-in text model reference.
const TEXT_MODEL: &str = "koboldcpp/Marx-3B-V3";

pub(crate) const CALLERS: [&str; 5] = ["anonymous", "user", "other", "moderator", "owner"];

pub(crate) struct Row {
    method: &'static str,
    path: String,
    body: Option<Value>,
    /// Expected status for each of `CALLERS`.
    expect: [u16; 5],
}

/// POSTs `body` to `path` as the caller with `key`; the answer's JSON.
pub(crate) async fn post_json(app: &TestApp, key: &str, path: &str, body: Value) -> Value {
    http()
        .post(format!("{}{path}", app.root))
        .header("apikey", key)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub(crate) fn row(
    method: &'static str,
    path: String,
    body: Option<Value>,
    expect: [u16; 5],
) -> Row {
    Row {
        method,
        path,
        body,
        expect,
    }
}

/// The five callers of [`CALLERS`]: their keys and user ids (anonymous is user 0 here).
pub(crate) struct Callers {
    pub(crate) keys: Vec<String>,
    pub(crate) ids: Vec<i64>,
}

/// Creates the callers of [`CALLERS`] on `app`: two plain users, a moderator and an owner,
/// each with 100 kudos.
pub(crate) async fn five_callers(app: &TestApp) -> Callers {
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
    Callers { keys, ids }
}

#[tokio::test]
async fn every_endpoint_answers_each_kind_of_caller_as_it_should() {
    let app = spawn_app().await;
    let Callers { keys, ids } = five_callers(&app).await;
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
    let batch = post_json(
        &app,
        &keys[1],
        "/api/v2/generate/batch",
        json!({"prompts": [{"prompt": "a"}, {"prompt": "b"}], "params": {"steps": 10}}),
    )
    .await;
    let batch = batch["id"].as_str().expect("a batch id").to_string();
    let job = owner.pop(&pop_request("owned worker")).await.unwrap();
    let job_id = job.id.clone().unwrap();
    let worker_id = owner.worker_by_name("owned worker").await.unwrap().id;
    // A text request by the user, popped by the owner's text worker.
    let text_request = post_json(
        &app,
        &keys[1],
        "/api/v2/generate/text/async",
        json!({"prompt": "owned", "params": {"n": 2}, "models": [TEXT_MODEL]}),
    )
    .await["id"]
        .as_str()
        .expect("a text request id")
        .to_string();
    let text_pop = json!({"name": "owned text worker", "models": [TEXT_MODEL],
                          "bridge_agent": "KoboldCppEmbedWorker:2:https://github.com/LostRuins/koboldcpp"});
    let text_job = post_json(
        &app,
        &keys[4],
        "/api/v2/generate/text/pop",
        text_pop.clone(),
    )
    .await;
    let text_job_id = text_job["id"].as_str().expect("a text job").to_string();
    // An interrogation by the user, a form of it popped by the owner's alchemist.
    let interrogation = post_json(
        &app,
        &keys[1],
        "/api/v2/interrogate/async",
        json!({"forms": [{"name": "caption"}, {"name": "nsfw"}], "source_image": "https://example.com/a.png"}),
    )
    .await["id"]
        .as_str()
        .expect("an interrogation id")
        .to_string();
    let alchemy_pop = json!({"name": "owned alchemist", "forms": ["caption", "nsfw"]});
    let form = post_json(
        &app,
        &keys[4],
        "/api/v2/interrogate/pop",
        alchemy_pop.clone(),
    )
    .await;
    let form_id = form["forms"][0]["id"].as_str().expect("a form").to_string();
    let shared = owner
        .create_shared_key(&serde_json::from_value(json!({"kudos": 10})).unwrap())
        .await
        .unwrap()
        .id;
    // A second key, named by its handle (what `sharedkey_ids` lists to its owner).
    owner
        .create_shared_key(&serde_json::from_value(json!({"name": "by handle"})).unwrap())
        .await
        .unwrap();
    let mut handle = String::new();
    for id in owner.find_user().await.unwrap().sharedkey_ids.unwrap() {
        if owner.shared_key(&id).await.unwrap().name == "by handle" {
            handle = id;
        }
    }
    assert_eq!(handle.len(), 64, "the second key's handle is listed");

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
    let invite = post_json(&app, &keys[3], "/api/v2/invites", json!({"note": "matrix"})).await;
    let invite = invite["id"].as_str().expect("an invite id").to_string();

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
        // Open by default (`[metrics] bearer_token` closes it: metrics.rs's tests).
        row("GET", "/metrics".into(), None, everyone),
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
        // The progress stream answers its headers (200, text/event-stream) to anyone with the
        // request's id, as status does; the test reads no further.
        row(
            "GET",
            format!("/api/v2/generate/stream/{request}"),
            None,
            everyone,
        ),
        // Batches of prompts: anyone may submit one; anyone with its id may follow or cancel
        // it, as a request.
        row(
            "POST",
            "/api/v2/generate/batch".into(),
            Some(json!({"prompts": [{"prompt": "matrix"}], "params": {"steps": 10}})),
            [202; 5],
        ),
        row(
            "GET",
            format!("/api/v2/generate/batch/{batch}"),
            None,
            everyone,
        ),
        row("GET", "/api/v2/workers".into(), None, everyone),
        row(
            "GET",
            format!("/api/v2/users/{owner_id}/ledger"),
            None,
            owner_and_moderator,
        ),
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
        // Text: anyone may ask (a small text is free), anyone with the id may follow or
        // cancel it; only the text worker's owner pops as it and submits its jobs.
        row(
            "POST",
            "/api/v2/generate/text/async".into(),
            Some(json!({"prompt": "matrix", "models": [TEXT_MODEL]})),
            [202; 5],
        ),
        row(
            "GET",
            format!("/api/v2/generate/text/status/{text_request}"),
            None,
            everyone,
        ),
        row(
            "POST",
            "/api/v2/generate/text/pop".into(),
            Some(text_pop.clone()),
            only_owner,
        ),
        row(
            "POST",
            "/api/v2/generate/text/submit".into(),
            Some(json!({"id": text_job_id, "generation": "a text", "state": "ok"})),
            only_owner,
        ),
        // Interrogations: anyone may ask; anyone with the id may follow or cancel it; only the
        // alchemist's owner pops as it and submits its forms.
        row(
            "POST",
            "/api/v2/interrogate/async".into(),
            Some(
                json!({"forms": [{"name": "caption"}], "source_image": "https://example.com/a.png"}),
            ),
            [202; 5],
        ),
        row(
            "GET",
            format!("/api/v2/interrogate/status/{interrogation}"),
            None,
            everyone,
        ),
        row(
            "POST",
            "/api/v2/interrogate/pop".into(),
            Some(alchemy_pop.clone()),
            only_owner,
        ),
        row(
            "POST",
            "/api/v2/interrogate/submit".into(),
            Some(json!({"id": form_id, "result": {"caption": "a cat"}})),
            only_owner,
        ),
        row("GET", "/api/v2/stats/text/totals".into(), None, everyone),
        row("GET", "/api/v2/stats/text/models".into(), None, everyone),
        row(
            "GET",
            "/api/v2/status/models?type=text".into(),
            None,
            everyone,
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
        // Moving a user between quota tiers: moderators only.
        row(
            "PUT",
            format!("/api/v2/users/{owner_id}"),
            Some(json!({"tier": "registered"})),
            only_moderator,
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
            format!("/api/v2/generate/batch/{batch}"),
            None,
            everyone,
        ),
        row(
            "DELETE",
            format!("/api/v2/generate/text/status/{text_request}"),
            None,
            everyone,
        ),
        row(
            "DELETE",
            format!("/api/v2/interrogate/status/{interrogation}"),
            None,
            everyone,
        ),
        row(
            "DELETE",
            format!("/api/v2/sharedkeys/{shared}"),
            None,
            only_owner,
        ),
        row(
            "GET",
            format!("/api/v2/sharedkeys/{handle}"),
            None,
            everyone,
        ),
        row(
            "PATCH",
            format!("/api/v2/sharedkeys/{handle}"),
            Some(json!({"kudos": 12})),
            only_owner,
        ),
        row(
            "DELETE",
            format!("/api/v2/sharedkeys/{handle}"),
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
        // No filter has the regex list's path as its id: a moderator gets 404.
        row(
            "PATCH",
            "/api/v2/filters/regex".into(),
            Some(json!({"regex": "x"})),
            [403, 403, 403, 404, 403],
        ),
        row(
            "DELETE",
            "/api/v2/filters/regex".into(),
            None,
            [403, 403, 403, 404, 403],
        ),
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
        // Invite codes for invite-only registration: moderators only.
        row(
            "POST",
            "/api/v2/invites".into(),
            Some(json!({"uses": 2, "hours": 1})),
            only_moderator,
        ),
        row("GET", "/api/v2/invites".into(), None, only_moderator),
        row(
            "DELETE",
            format!("/api/v2/invites/{invite}"),
            None,
            only_moderator,
        ),
        row(
            "PUT",
            format!("/api/v2/uploads/{job_id}?expires=9999999999&sig=forged"),
            None,
            [403; 5],
        ),
        // The signature is the only authorisation of a source image's URL.
        row(
            "GET",
            format!("/api/v2/sources/{request}/source_image?expires=9999999999&sig=forged"),
            None,
            [403; 5],
        ),
        row(
            "GET",
            format!("/api/v2/users/{owner_id}/webhook_secret"),
            None,
            only_owner,
        ),
        row(
            "POST",
            format!("/api/v2/users/{owner_id}/webhook_secret"),
            None,
            only_owner,
        ),
        row(
            "POST",
            format!("/api/v2/users/{owner_id}/reset_key"),
            None,
            only_owner,
        ),
    ];
    check_rows(&app, &keys, &rows).await;
}

/// Calls each row as each of [`CALLERS`] (keys in that order) and asserts every status, and
/// that every refusal carries the AI Horde error body; reports all mismatches at once.
pub(crate) async fn check_rows(app: &TestApp, keys: &[String], rows: &[Row]) {
    let http = http();
    let mut wrong = Vec::new();
    for row in rows {
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

/// A worker's owner alias is shown to its owner and moderators; whether it is paused only to
/// moderators (as on the public horde); everyone else sees neither.
#[tokio::test]
async fn owners_and_moderators_see_more_of_a_worker_than_others() {
    let app = spawn_app().await;
    let (owner, owner_id) = app.user("owner", 0.0).await;
    let (other, _) = app.user("other", 0.0).await;
    let (moderator_key, _) = app.moderator().await;
    let moderator = app.client(&moderator_key);
    owner.pop(&pop_request("seen worker")).await.unwrap();
    let id = owner.worker_by_name("seen worker").await.unwrap().id;
    let alias = format!("owner#{owner_id}");
    for (who, client, owner_shown, paused_shown) in [
        ("anonymous", app.anonymous(), None, None),
        ("another user", other, None, None),
        ("the owner", owner, Some(alias.clone()), None),
        (
            "a moderator",
            moderator.clone(),
            Some(alias.clone()),
            Some(false),
        ),
    ] {
        let one = client.worker(&id).await.unwrap();
        let by_name = client.worker_by_name("seen worker").await.unwrap();
        assert_eq!(
            (&one.owner, one.paused),
            (&owner_shown, paused_shown),
            "{who}"
        );
        assert_eq!(
            (&by_name.owner, by_name.paused),
            (&owner_shown, paused_shown),
            "{who}"
        );
        let listed = client.workers().await.unwrap();
        assert_eq!(
            (&listed[0].owner, listed[0].paused),
            (&owner_shown, paused_shown),
            "{who}"
        );
    }
}

/// `GET /users/{id}/ledger`: the account's kudos movements, newest first, paged with `before`.
#[tokio::test]
async fn a_ledger_lists_the_movements_of_kudos_newest_first() {
    let app = spawn_app().await;
    let (requester, requester_id) = app.user("requester", 100.0).await;
    let (owner, owner_id) = app.user("owner", 0.0).await;
    requester
        .generate_async(&small_request("ledgered", 1, false))
        .await
        .unwrap();
    let job = owner.pop(&pop_request("ledger worker")).await.unwrap();
    owner
        .submit(&submit_inline(&job, &webp(512, 512, [9; 3], [200; 3])))
        .await
        .unwrap();
    let rows = requester.ledger(requester_id, None, None).await.unwrap();
    // The starting grant first; then the image's price: what the worker earns and the part
    // the horde keeps, both spent on this request.
    let (grant, spends) = rows.split_last().unwrap();
    assert_eq!((grant.kind.as_str(), grant.amount), ("grant", 100.0));
    assert_eq!(spends.len(), 2, "{rows:?}");
    assert!(spends
        .iter()
        .all(|r| r.kind == "spend" && r.amount < 0.0 && r.request_id.is_some()));
    assert!(rows.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let balance = requester.find_user().await.unwrap().kudos;
    let sum: f64 = rows.iter().map(|r| r.amount).sum();
    assert!((sum - balance).abs() < 1e-6, "{sum} against {balance}");
    let older = requester
        .ledger(requester_id, Some(rows[0].id), Some(1))
        .await
        .unwrap();
    assert_eq!(older, rows[1..2]);
    let earned = owner.ledger(owner_id, None, None).await.unwrap();
    assert!(
        earned.iter().any(|r| r.kind == "earn" && r.amount > 0.0),
        "{earned:?}"
    );
}

/// What a ledger request can get wrong: another user's ledger, an unknown user, an id that is
/// not a number; and the page size is held to 1..=500.
#[tokio::test]
async fn a_ledger_refuses_clearly_and_bounds_its_page() {
    let app = spawn_app().await;
    let (user, user_id) = app.user("user", 100.0).await;
    let (other, _) = app.user("other", 100.0).await;
    let (moderator_key, _) = app.moderator().await;
    let moderator = app.client(&moderator_key);

    let refused = other.ledger(user_id, None, None).await.unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(403));
    assert_eq!(refused.rc(), Some("NotOwner"));
    let unknown = moderator.ledger(987_654, None, None).await.unwrap_err();
    assert_eq!(unknown.status().map(|s| s.as_u16()), Some(404));
    assert_eq!(unknown.rc(), Some("UserNotFound"));
    let answer = http()
        .get(format!("{}/api/v2/users/abc/ledger", app.root))
        .header("apikey", &moderator_key)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 404);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["rc"], "UserNotFound");
    assert!(
        body["message"].as_str().unwrap().contains("'abc'"),
        "{body}"
    );

    // The moderator sees the user's ledger; a page outside 1..=500 is refused, naming `limit`.
    assert_eq!(
        moderator.ledger(user_id, None, None).await.unwrap().len(),
        1
    );
    for limit in [0, 501] {
        let refused = user.ledger(user_id, None, Some(limit)).await.unwrap_err();
        assert_eq!(refused.rc(), Some("ValidationError"), "{refused}");
        let horde_client::ClientError::Api { body, .. } = &refused else {
            panic!("{refused}");
        };
        assert!(
            body.errors
                .as_ref()
                .is_some_and(|e| e.contains_key("limit")),
            "{refused}"
        );
    }
    assert_eq!(
        user.ledger(user_id, None, Some(500)).await.unwrap().len(),
        1
    );
}
