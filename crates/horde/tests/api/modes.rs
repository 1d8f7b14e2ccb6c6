//! Issue 29, points 4 and 5, through the real server: the horde's modes (who sets them, what
//! maintenance and invite-only refuse), news and documents (the operator's files and the
//! built-in defaults), the users list, the two-step account deletion and awards; with the
//! authorisation matrix of these endpoints.

use crate::authz::{check_rows, five_callers, row, Callers};
use crate::helpers::*;
use horde_api::user::TestUserRequest;
use serde_json::{json, Value};

const TEXT_MODEL: &str = "koboldcpp/Marx-3B-V3";
const MONTH_AND_A_DAY: i64 = 31 * 24 * 3600;

/// Calls `method path` with `key` (none: no `apikey` header) and `body`: the status and JSON.
async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http().request(method.parse().unwrap(), format!("{}{path}", app.root));
    if let Some(key) = key {
        request = request.header("apikey", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    let text = answer.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A new user `name` with `kudos`, moderator or not: their key and id.
async fn new_user(app: &TestApp, name: &str, kudos: f64, moderator: bool) -> (String, i64) {
    let created = app
        .anonymous()
        .create_test_user(&TestUserRequest {
            username: name.into(),
            oauth_id: None,
            moderator,
            trusted: true,
            kudos,
        })
        .await
        .unwrap();
    (created.api_key, created.user_id)
}

/// A coordinator whose first user (id 1) administers it; that user's key.
async fn app_with_admin() -> (TestApp, String) {
    let app = spawn_app_with(|c| c.api.admins = vec![1]).await;
    let (key, id) = new_user(&app, "admin", 0.0, false).await;
    assert_eq!(id, 1, "the administrator is the first user");
    (app, key)
}

fn rc(body: &Value) -> &str {
    body["rc"].as_str().unwrap_or("")
}

#[tokio::test]
async fn anyone_reads_the_modes_and_only_a_moderator_sees_raid_mode() {
    let app = spawn_app().await;
    let (user, _) = new_user(&app, "user", 0.0, false).await;
    let (moderator, _) = new_user(&app, "moderator", 0.0, true).await;
    let (status, modes) = call(&app, "GET", "/api/v2/status/modes", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        modes,
        json!({"maintenance_mode": false, "invite_only_mode": false})
    );
    let (status, modes) = call(&app, "GET", "/api/v2/status/modes", Some(&moderator), None).await;
    assert_eq!((status, &modes["raid_mode"]), (200, &json!(false)));
    let (status, body) = call(&app, "GET", "/api/v2/status/modes", Some(&user), None).await;
    assert_eq!((status, rc(&body)), (403, "NotModerator"));
    let (status, body) = call(
        &app,
        "GET",
        "/api/v2/status/modes",
        Some("unknown-key"),
        None,
    )
    .await;
    assert_eq!((status, rc(&body)), (401, "InvalidAPIKey"));
}

#[tokio::test]
async fn administrators_set_maintenance_and_moderators_the_other_modes() {
    let (app, admin) = app_with_admin().await;
    let (user, _) = new_user(&app, "user", 0.0, false).await;
    let (moderator, _) = new_user(&app, "moderator", 0.0, true).await;
    let put = |key: String, body: Value| {
        let app = &app;
        async move { call(app, "PUT", "/api/v2/status/modes", Some(&key), Some(body)).await }
    };
    let (status, body) = put(moderator.clone(), json!({"maintenance_mode": true})).await;
    assert_eq!((status, rc(&body)), (403, "NotAdmin"));
    let (status, body) = put(user.clone(), json!({"invite_only_mode": true})).await;
    assert_eq!((status, rc(&body)), (403, "NotModerator"));
    let (status, body) = put(admin.clone(), json!({})).await;
    assert_eq!((status, rc(&body)), (400, "NoHordeModSelected"));
    let (status, body) = put(admin.clone(), json!({"maintenance_mode": "yes"})).await;
    assert_eq!(status, 400, "{body}");
    // Nothing was stored by the refusals.
    let (_, modes) = call(&app, "GET", "/api/v2/status/modes", Some(&moderator), None).await;
    assert_eq!(
        modes,
        json!({"maintenance_mode": false, "invite_only_mode": false, "raid_mode": false})
    );
    let (status, body) = put(moderator.clone(), json!({"invite_only_mode": true})).await;
    assert_eq!((status, body), (200, json!({"invite_only_mode": true})));
    // An administrator counts as a moderator.
    let (status, body) = put(
        admin.clone(),
        json!({"raid_mode": true, "maintenance_mode": true}),
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"raid_mode": true, "maintenance_mode": true}))
    );
    let (_, modes) = call(&app, "GET", "/api/v2/status/modes", Some(&moderator), None).await;
    assert_eq!(
        modes,
        json!({"maintenance_mode": true, "invite_only_mode": true, "raid_mode": true})
    );
}

#[tokio::test]
async fn maintenance_refuses_new_requests_of_every_kind_and_lets_running_jobs_finish() {
    let (app, admin) = app_with_admin().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (worker, _) = app.user("worker owner", 0.0).await;
    let id = requester
        .generate_async(&small_request("before maintenance", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let job = worker.pop(&pop_request("maintained worker")).await.unwrap();
    assert!(job.id.is_some(), "the job is handed out before maintenance");
    let waiting = requester
        .generate_async(&small_request("waiting", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let (status, _) = call(
        &app,
        "PUT",
        "/api/v2/status/modes",
        Some(&admin),
        Some(json!({"maintenance_mode": true})),
    )
    .await;
    assert_eq!(status, 200);

    let image = requester
        .generate_async(&small_request("during maintenance", 1, false))
        .await
        .unwrap_err();
    assert!(image.to_string().contains("MaintenanceMode"), "{image}");
    let key = admin.as_str();
    let text = json!({"prompt": "during", "models": [TEXT_MODEL]});
    let (status, body) = call(
        &app,
        "POST",
        "/api/v2/generate/text/async",
        Some(key),
        Some(text),
    )
    .await;
    assert_eq!((status, rc(&body)), (400, "MaintenanceMode"));
    let forms =
        json!({"forms": [{"name": "caption"}], "source_image": "https://example.com/a.png"});
    let (status, body) = call(
        &app,
        "POST",
        "/api/v2/interrogate/async",
        Some(key),
        Some(forms),
    )
    .await;
    assert_eq!((status, rc(&body)), (400, "MaintenanceMode"));
    let batch = json!({"prompts": [{"prompt": "a"}], "params": {"steps": 10}});
    let (status, body) = call(
        &app,
        "POST",
        "/api/v2/generate/batch",
        Some(key),
        Some(batch),
    )
    .await;
    assert_eq!((status, rc(&body)), (400, "MaintenanceMode"));

    // The waiting request was aborted: nothing is handed out any more.
    assert!(requester.check(&waiting).await.unwrap().done);
    let nothing = worker.pop(&pop_request("maintained worker")).await.unwrap();
    assert!(nothing.id.is_none(), "{nothing:?}");
    // The job handed out before still finishes, and its request is done.
    let reward = worker
        .submit(&submit_inline(&job, &webp(512, 512, [9; 3], [9; 3])))
        .await
        .unwrap();
    assert!(reward.reward > 0.0);
    assert!(requester.check(&id).await.unwrap().done);

    let (status, _) = call(
        &app,
        "PUT",
        "/api/v2/status/modes",
        Some(&admin),
        Some(json!({"maintenance_mode": false})),
    )
    .await;
    assert_eq!(status, 200);
    requester
        .generate_async(&small_request("after maintenance", 1, false))
        .await
        .expect("accepted again after maintenance");
}

/// Two coordinators on one database (the same SQLite file here, or the same PostgreSQL
/// database when `HORDE_TEST_POSTGRES_URL` is set): maintenance set on one holds on the other
/// once its copy of the modes is older than `MODES_CACHE_MS`.
#[tokio::test]
async fn a_mode_set_on_one_coordinator_holds_on_another_sharing_its_database() {
    let (a, admin) = app_with_admin().await;
    let shared = a.dir.path().to_path_buf();
    let b = spawn_app_with(move |c| c.data_dir = shared).await;
    let (requester, _) = new_user(&a, "requester", 1000.0, false).await;
    let on_b = b.client(&requester);
    on_b.generate_async(&small_request("before", 1, false))
        .await
        .expect("b accepts before maintenance (and caches the modes)");
    let (status, _) = call(
        &a,
        "PUT",
        "/api/v2/status/modes",
        Some(&admin),
        Some(json!({"maintenance_mode": true})),
    )
    .await;
    assert_eq!(status, 200);
    let set = std::time::Instant::now();
    let limit = std::time::Duration::from_millis(horde_server::modes::MODES_CACHE_MS + 1_000);
    // Dry runs: checked as requests are, never queued (so no concurrency cap is reached).
    let mut dry_run = small_request("during", 1, false);
    dry_run.dry_run = true;
    loop {
        match on_b.generate_async(&dry_run).await {
            Err(e) if e.to_string().contains("MaintenanceMode") => break,
            other => assert!(set.elapsed() < limit, "b still accepts: {other:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, modes) = call(&b, "GET", "/api/v2/status/modes", None, None).await;
    assert_eq!(modes["maintenance_mode"], true);
}

#[tokio::test]
async fn invite_only_refuses_new_workers_of_users_without_an_invitation() {
    let app = spawn_app().await;
    let (moderator_key, _) = app.moderator().await;
    let (owner, owner_id) = app.user("owner", 0.0).await;
    owner
        .pop(&pop_request("registered before"))
        .await
        .expect("a worker joins before invite-only mode");
    let (status, _) = call(
        &app,
        "PUT",
        "/api/v2/status/modes",
        Some(&moderator_key),
        Some(json!({"invite_only_mode": true})),
    )
    .await;
    assert_eq!(status, 200);

    let refused = owner.pop(&pop_request("new worker")).await.unwrap_err();
    assert!(
        refused.to_string().contains("WorkerInviteOnly"),
        "{refused}"
    );
    assert!(refused.to_string().starts_with("403"), "{refused}");
    owner
        .pop(&pop_request("registered before"))
        .await
        .expect("a known worker still pops");
    // Invited to have two workers: one more may join, then no more.
    let invite = serde_json::from_value(json!({"worker_invited": 2})).unwrap();
    app.client(&moderator_key)
        .modify_user(owner_id, &invite)
        .await
        .unwrap();
    owner
        .pop(&pop_request("new worker"))
        .await
        .expect("an invited user's worker joins");
    let third = owner.pop(&pop_request("third worker")).await.unwrap_err();
    assert!(third.to_string().contains("WorkerInviteOnly"), "{third}");
}

#[tokio::test]
async fn news_are_the_operators_file_newest_first_or_the_built_in() {
    let built_in = spawn_app().await;
    let (status, news) = call(&built_in, "GET", "/api/v2/status/news", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(news[0]["title"], "Welcome");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("news.json");
    let pieces = json!([
        {"date_published": "2026-03-01", "newspiece": "older", "importance": "Workers",
         "tags": ["a"], "title": "Older", "more_info_urls": []},
        {"date_published": "2026-11-20", "newspiece": "newer"},
    ]);
    std::fs::write(&file, pieces.to_string()).unwrap();
    let app = spawn_app_with(|c| c.documents.news = file.clone()).await;
    let (status, news) = call(&app, "GET", "/api/v2/status/news", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(news.as_array().unwrap().len(), 2);
    assert_eq!(news[0]["newspiece"], "newer");
    assert_eq!(news[0]["importance"], "Information");
    assert_eq!(news[1]["importance"], "Workers");
    // An edit shows at once.
    std::fs::write(&file, "[]").unwrap();
    let (_, news) = call(&app, "GET", "/api/v2/status/news", None, None).await;
    assert_eq!(news, json!([]));
}

#[tokio::test]
async fn documents_are_the_operators_files_in_each_format_or_the_built_in() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("terms.md"), "# Our terms\n").unwrap();
    std::fs::write(dir.path().join("privacy.html"), "<p>ours</p>").unwrap();
    let app = spawn_app_with(|c| c.documents.dir = dir.path().to_path_buf()).await;
    let get = |path: &'static str| {
        let app = &app;
        async move { call(app, "GET", path, None, None).await }
    };
    let (status, terms) = get("/api/v2/documents/terms?format=markdown").await;
    assert_eq!((status, terms), (200, json!({"markdown": "# Our terms\n"})));
    let (_, terms) = get("/api/v2/documents/terms").await;
    assert!(terms["html"]
        .as_str()
        .unwrap()
        .starts_with("<h1>Terms of Service"));
    assert!(terms.get("markdown").is_none());
    let (_, privacy) = get("/api/v2/documents/privacy?format=html").await;
    assert_eq!(privacy, json!({"html": "<p>ours</p>"}));
    let (_, privacy) = get("/api/v2/documents/privacy?format=markdown").await;
    assert!(privacy["markdown"]
        .as_str()
        .unwrap()
        .starts_with("# Privacy Policy"));
    let (_, sponsors) = get("/api/v2/documents/sponsors?format=markdown").await;
    assert!(sponsors["markdown"]
        .as_str()
        .unwrap()
        .starts_with("# Sponsors"));
    let (status, body) = get("/api/v2/documents/terms?format=pdf").await;
    assert_eq!((status, rc(&body)), (400, "ValidationError"));
}

/// The names of `page`'s users that this test made (the anonymous user is listed too).
fn names(page: &Value) -> Vec<String> {
    page.as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_string())
        .filter(|n| n.starts_with("u-"))
        .collect()
}

#[tokio::test]
async fn the_users_list_is_paged_and_sorted_by_kudos_or_age() {
    let app = spawn_app().await;
    let mut made = vec![];
    for (name, kudos) in [("u-a", 50.0), ("u-b", 300.0), ("u-c", 10.0)] {
        made.push(new_user(&app, name, kudos, false).await.1);
    }
    let alias = |i: usize, name: &str| format!("{name}#{}", made[i]);
    let (status, page) = call(&app, "GET", "/api/v2/users", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        names(&page),
        [alias(1, "u-b"), alias(0, "u-a"), alias(2, "u-c")]
    );
    let (_, page) = call(&app, "GET", "/api/v2/users?sort=age", None, None).await;
    assert_eq!(
        names(&page),
        [alias(0, "u-a"), alias(1, "u-b"), alias(2, "u-c")]
    );
    let (_, page) = call(&app, "GET", "/api/v2/users?sort=name&page=-3", None, None).await;
    assert_eq!(
        names(&page)[0],
        alias(1, "u-b"),
        "unknown sorts are by kudos"
    );
    let (_, page) = call(&app, "GET", "/api/v2/users?page=2", None, None).await;
    assert_eq!(page, json!([]));
    // 25 a page: with 27 more users, the second page holds the last 6 of 31 (anonymous too).
    for i in 0..27 {
        new_user(&app, &format!("p-{i}"), 0.0, false).await;
    }
    let (_, first) = call(&app, "GET", "/api/v2/users?sort=age", None, None).await;
    let (_, second) = call(&app, "GET", "/api/v2/users?sort=age&page=2", None, None).await;
    assert_eq!(first.as_array().unwrap().len(), 25);
    assert_eq!(second.as_array().unwrap().len(), 6);
    let (_, past) = call(&app, "GET", "/api/v2/users?page=10001", None, None).await;
    assert_eq!(past, json!([]));
    let long = format!("/api/v2/users?sort={}", "k".repeat(101));
    let (status, body) = call(&app, "GET", &long, None, None).await;
    assert_eq!((status, rc(&body)), (400, "ValidationError"));
    let (status, _) = call(&app, "GET", "/api/v2/users?page=two", None, None).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn an_account_is_deleted_at_once_and_wiped_by_a_second_deletion_a_month_later() {
    let app = spawn_app().await;
    let (moderator, moderator_id) = app.moderator().await;
    let (me, my_id) = new_user(&app, "u-leaving", 100.0, false).await;
    let (other, other_id) = new_user(&app, "u-other", 100.0, false).await;
    let path = format!("/api/v2/users/{my_id}");
    let (status, body) = call(&app, "DELETE", &path, Some(&other), None).await;
    assert_eq!((status, rc(&body)), (403, "NotModerator"));
    let mod_path = format!("/api/v2/users/{moderator_id}");
    let (status, body) = call(&app, "DELETE", &mod_path, Some(&moderator), None).await;
    assert_eq!((status, rc(&body)), (403, "Forbidden"));
    let (status, body) = call(
        &app,
        "DELETE",
        "/api/v2/users/999999",
        Some(&moderator),
        None,
    )
    .await;
    assert_eq!((status, rc(&body)), (404, "UserNotFound"));

    let lent = app
        .client(&me)
        .create_shared_key(&serde_json::from_value(json!({"kudos": 100})).unwrap())
        .await
        .unwrap();
    let (status, body) = call(&app, "DELETE", &path, Some(&me), None).await;
    assert_eq!((status, body), (200, json!({"message": "OK"})));
    let (status, body) = call(&app, "GET", "/api/v2/find_user", Some(&me), None).await;
    assert_eq!((status, rc(&body)), (403, "DeletedUser"));
    // Nor does its shared key lend it any more.
    let refused = app
        .client(&lent.id)
        .generate_async(&small_request("lent", 1, false))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("DeletedUser"), "{refused}");
    let (_, details) = call(&app, "GET", &path, None, None).await;
    assert_eq!(details["deleted"], true);
    let (_, page) = call(&app, "GET", "/api/v2/users", None, None).await;
    assert_eq!(names(&page), [format!("u-other#{other_id}")]);
    // A second deletion before the month is out is refused, and wipes nothing.
    let (status, body) = call(&app, "DELETE", &path, Some(&moderator), None).await;
    assert_eq!((status, rc(&body)), (403, "Forbidden"));
    assert!(!app.state.store.user_wiped(my_id).await.unwrap());

    // Deleted a month and a day ago (as if by a first call then): the second call wipes it.
    let (old, old_id) = new_user(&app, "u-old", 100.0, false).await;
    let shared = app
        .client(&old)
        .create_shared_key(&serde_json::from_value(json!({"kudos": 10})).unwrap())
        .await
        .unwrap();
    let idle = app
        .client(&old)
        .pop(&pop_request("old worker"))
        .await
        .unwrap();
    assert!(idle.id.is_none());
    let worker_id = app
        .client(&old)
        .worker_by_name("old worker")
        .await
        .unwrap()
        .id;
    let then = horde_server::clock::now() - MONTH_AND_A_DAY;
    app.state
        .store
        .mark_user_deleted(old_id, then)
        .await
        .unwrap();
    let old_path = format!("/api/v2/users/{old_id}");
    let (status, _) = call(&app, "DELETE", &old_path, Some(&moderator), None).await;
    assert_eq!(status, 200);
    assert!(app.state.store.user_wiped(old_id).await.unwrap());
    let (_, details) = call(&app, "GET", &old_path, None, None).await;
    assert_eq!(details["username"], format!("deleted#{old_id}"));
    let (status, _) = call(
        &app,
        "GET",
        &format!("/api/v2/sharedkeys/{}", shared.id),
        None,
        None,
    )
    .await;
    assert_eq!(status, 404, "its shared keys are gone");
    let (status, _) = call(
        &app,
        "GET",
        &format!("/api/v2/workers/{worker_id}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 404, "its workers are gone");
}

#[tokio::test]
async fn only_administrators_award_kudos() {
    let (app, admin) = app_with_admin().await;
    let (moderator, _) = new_user(&app, "moderator", 0.0, true).await;
    let (user, user_id) = new_user(&app, "u-receiver", 10.0, false).await;
    let target = format!("u-receiver#{user_id}");
    let award = |key: String, body: Value| {
        let app = &app;
        async move { call(app, "POST", "/api/v2/kudos/award", Some(&key), Some(body)).await }
    };
    let kudos = || async { app.client(&user).find_user().await.unwrap().kudos };
    let (status, body) = award(moderator.clone(), json!({"username": target, "amount": 5})).await;
    assert_eq!((status, rc(&body)), (403, "NotAdmin"));
    let (status, body) = award(admin.clone(), json!({"username": target, "amount": 0})).await;
    assert_eq!((status, rc(&body)), (400, "ValidationError"));
    let (status, body) = award(
        admin.clone(),
        json!({"username": "nobody#999", "amount": 5}),
    )
    .await;
    assert_eq!((status, rc(&body)), (400, "KudosValidationError"));
    let (status, body) = award(admin.clone(), json!({"username": "Anonymous#0"})).await;
    assert_eq!((status, rc(&body)), (400, "KudosValidationError"));
    assert_eq!(kudos().await, 10.0, "nothing moved on refusal");
    let (status, body) = award(admin.clone(), json!({"username": target, "amount": 250})).await;
    assert_eq!((status, body), (200, json!({"awarded": 250.0})));
    assert_eq!(kudos().await, 260.0);
    let (status, body) = award(admin.clone(), json!({"username": target})).await;
    assert_eq!((status, body), (200, json!({"awarded": 100.0})));
    assert_eq!(kudos().await, 360.0);
    let details = app.client(&user).find_user().await.unwrap().kudos_details;
    assert_eq!(
        (details.awarded, details.admin),
        (350.0, 10.0),
        "awards show as awarded, the starting grant as admin"
    );
}

#[tokio::test]
async fn the_modes_and_users_endpoints_answer_each_kind_of_caller_as_they_should() {
    // The owner (the fourth user made) administers this horde.
    let app = spawn_app_with(|c| c.api.admins = vec![4]).await;
    let Callers { keys, ids } = five_callers(&app).await;
    assert_eq!(ids[4], 4);
    let (moderator_id, owner_id) = (ids[3], ids[4]);
    let award = json!({"username": format!("user#{}", ids[1]), "amount": 5});
    let rows = [
        row(
            "GET",
            "/api/v2/status/modes".into(),
            None,
            [403, 403, 403, 200, 403],
        ),
        row(
            "PUT",
            "/api/v2/status/modes".into(),
            Some(json!({"raid_mode": false})),
            [403, 403, 403, 200, 200],
        ),
        row(
            "PUT",
            "/api/v2/status/modes".into(),
            Some(json!({"maintenance_mode": false})),
            [403, 403, 403, 403, 200],
        ),
        row("GET", "/api/v2/status/news".into(), None, [200; 5]),
        row("GET", "/api/v2/documents/terms".into(), None, [200; 5]),
        row(
            "GET",
            "/api/v2/documents/privacy?format=markdown".into(),
            None,
            [200; 5],
        ),
        row("GET", "/api/v2/documents/sponsors".into(), None, [200; 5]),
        row("GET", "/api/v2/users?sort=age".into(), None, [200; 5]),
        row(
            "POST",
            "/api/v2/kudos/award".into(),
            Some(award),
            [403, 403, 403, 403, 200],
        ),
        row(
            "DELETE",
            format!("/api/v2/users/{moderator_id}"),
            None,
            [403, 403, 403, 403, 403],
        ),
        // The moderator deletes the owner's account: the owner's own call then finds it deleted.
        row(
            "DELETE",
            format!("/api/v2/users/{owner_id}"),
            None,
            [403, 403, 403, 200, 403],
        ),
    ];
    check_rows(&app, &keys, &rows).await;
}

/// Raid mode keeps quiet about why a request cannot run yet (the public horde's): no
/// `NoAvailableWorker` message or warning on an image, text or batch request no worker can
/// take, where outside raid mode each carries one.
#[tokio::test]
async fn raid_mode_hides_why_a_request_cannot_run_yet() {
    let app = spawn_app().await;
    let (user, _) = new_user(&app, "user", 100.0, false).await;
    let (moderator, _) = new_user(&app, "moderator", 0.0, true).await;
    let requests = [
        ("/api/v2/generate/async", json!({"prompt": "a lighthouse"})),
        (
            "/api/v2/generate/text/async",
            json!({"prompt": "Once", "models": ["koboldcpp/Marx-3B-V3"]}),
        ),
        (
            "/api/v2/generate/batch",
            json!({"prompts": [{"prompt": "a"}, {"prompt": "b"}]}),
        ),
    ];
    let warned = |answer: &Value| {
        answer["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["code"] == "NoAvailableWorker"))
    };
    for raid in [false, true] {
        let (status, _) = call(
            &app,
            "PUT",
            "/api/v2/status/modes",
            Some(&moderator),
            Some(json!({"raid_mode": raid})),
        )
        .await;
        assert_eq!(status, 200);
        tokio::time::sleep(std::time::Duration::from_millis(
            horde_server::modes::MODES_CACHE_MS + 100,
        ))
        .await;
        for (path, body) in &requests {
            let (status, answer) = call(&app, "POST", path, Some(&user), Some(body.clone())).await;
            assert_eq!(status, 202, "{path}: {answer}");
            assert_eq!(warned(&answer), !raid, "{path}, raid {raid}: {answer}");
            assert_eq!(
                answer.get("message").is_some_and(|m| !m.is_null()),
                !raid,
                "{path}"
            );
        }
    }
}
