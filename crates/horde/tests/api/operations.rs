//! Issue 29: the operations area of the public API, through the real server: IP and block
//! timeouts on every endpoint, worker address blocks, a blocked prompt's timeout, and ratings
//! into a worker's reputation.
//!
//! Each coordinator here trusts its loopback peer as a proxy, so `X-Forwarded-For` picks the
//! client's address (loopback clients themselves are never held: `operations.rs`).

use crate::authz::{check_rows, five_callers, row, Callers};
use crate::helpers::*;
use horde_core::ratings::{rated_reliability, RatingSummary, RATING_WEIGHT};
use serde_json::{json, Value};
use std::time::Duration;

const RED: [u8; 3] = [200, 20, 20];
const BLUE: [u8; 3] = [20, 20, 200];

/// The key of a new trusted user named `name` with 1000 kudos.
async fn user_key(app: &TestApp, name: &str) -> String {
    let request = horde_api::user::TestUserRequest {
        username: name.into(),
        oauth_id: None,
        moderator: false,
        trusted: true,
        kudos: 1000.0,
    };
    app.anonymous()
        .create_test_user(&request)
        .await
        .unwrap()
        .api_key
}

async fn behind_proxy() -> TestApp {
    spawn_app_with(|c| c.api.trusted_proxies = vec!["127.0.0.0/8".into()]).await
}

/// Calls `path` with `method` as the caller with `key` from address `from`: status and body.
async fn call(
    app: &TestApp,
    key: &str,
    from: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let request = http()
        .request(method.parse().unwrap(), format!("{}{path}", app.root))
        .header("apikey", key)
        .header("x-forwarded-for", from);
    answer_of(request, body).await
}

/// The status of a plain read, a request and a pop from `from`.
async fn three_endpoints(app: &TestApp, key: &str, from: &str) -> [u16; 3] {
    let request = serde_json::to_value(small_request("a lighthouse", 1, false)).unwrap();
    let pop = serde_json::to_value(pop_request(&format!("worker {from}"))).unwrap();
    [
        call(app, key, from, "GET", "/api/v2/status/performance", None)
            .await
            .0,
        call(
            app,
            key,
            from,
            "POST",
            "/api/v2/generate/async",
            Some(request),
        )
        .await
        .0,
        call(app, key, from, "POST", "/api/v2/generate/pop", Some(pop))
            .await
            .0,
    ]
}

fn assert_timed_out(status: u16, body: &Value) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["rc"], "TimeoutIP", "{body}");
}

/// The timeouts `GET /operations/ipaddr` lists: address → seconds left.
async fn listed(app: &TestApp, moderator: &str) -> Vec<(String, u64)> {
    let (status, list) = call(
        app,
        moderator,
        "192.0.2.200",
        "GET",
        "/api/v2/operations/ipaddr",
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["ipaddr"].as_str().unwrap().to_string(),
                t["seconds"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_timed_out_address_and_block_are_refused_on_every_endpoint_until_lifted() {
    let app = behind_proxy().await;
    let (moderator, _) = app.moderator().await;
    let key = user_key(&app, "requester").await;
    assert_eq!(
        three_endpoints(&app, &key, "198.51.100.7").await,
        [200, 202, 200]
    );

    for (ipaddr, hours) in [("198.51.100.7", 1), ("203.0.113.77/24", 2)] {
        let body = json!({"ipaddr": ipaddr, "hours": hours});
        let (status, answer) = call(
            &app,
            &moderator,
            "192.0.2.200",
            "POST",
            "/api/v2/operations/ipaddr",
            Some(body),
        )
        .await;
        assert_eq!(
            (status, answer["message"].as_str()),
            (200, Some("OK")),
            "{answer}"
        );
    }
    for from in ["198.51.100.7", "203.0.113.1", "203.0.113.254"] {
        for (method, path) in [
            ("GET", "/api/v2/status/performance"),
            ("GET", "/api/v2/workers"),
            ("POST", "/api/v2/generate/pop"),
        ] {
            let (status, body) = call(&app, &key, from, method, path, Some(json!({}))).await;
            assert_timed_out(status, &body);
        }
    }
    let (status, body) = call(&app, &key, "198.51.100.7", "GET", "/api/v2/users/1", None).await;
    assert_timed_out(status, &body);
    assert!(
        body["message"].as_str().unwrap().contains("more seconds"),
        "{body}"
    );
    assert_eq!(
        three_endpoints(&app, &key, "198.51.100.8").await,
        [200, 202, 200],
        "a neighbour passes"
    );
    assert_eq!(
        three_endpoints(&app, &key, "203.0.114.1").await,
        [200, 202, 200],
        "outside the block passes"
    );
    let heartbeat = call(
        &app,
        &key,
        "198.51.100.7",
        "GET",
        "/api/v2/status/heartbeat",
        None,
    )
    .await;
    assert_eq!(heartbeat.0, 200, "the heartbeat answers everyone");

    let mut timeouts = listed(&app, &moderator).await;
    timeouts.sort();
    assert_eq!(timeouts.len(), 2, "{timeouts:?}");
    assert_eq!(timeouts[0].0, "198.51.100.7");
    assert!((3595..=3600).contains(&timeouts[0].1), "{timeouts:?}");
    assert_eq!(timeouts[1].0, "203.0.113.0/24");
    assert!((7195..=7200).contains(&timeouts[1].1), "{timeouts:?}");
    let (status, holding) = call(
        &app,
        &moderator,
        "192.0.2.200",
        "GET",
        "/api/v2/operations/ipaddr/203.0.113.9",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(holding.as_array().unwrap().len(), 1, "{holding}");
    assert_eq!(holding[0]["ipaddr"], "203.0.113.0/24");
    let (_, free) = call(
        &app,
        &moderator,
        "192.0.2.200",
        "GET",
        "/api/v2/operations/ipaddr/192.0.2.9",
        None,
    )
    .await;
    assert_eq!(free, json!([]));

    for ipaddr in ["198.51.100.7", "203.0.113.0/24"] {
        let (status, _) = call(
            &app,
            &moderator,
            "192.0.2.200",
            "DELETE",
            "/api/v2/operations/ipaddr",
            Some(json!({"ipaddr": ipaddr})),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        three_endpoints(&app, &key, "198.51.100.7").await,
        [200, 202, 200],
        "lifted"
    );
    assert_eq!(
        three_endpoints(&app, &key, "203.0.113.1").await,
        [200, 202, 200],
        "lifted"
    );
    assert!(listed(&app, &moderator).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_timeout_ends_when_it_expires() {
    let app = behind_proxy().await;
    let now_ms = horde_server::clock::now_ms() as i64;
    app.state
        .store
        .put_ip_timeout("198.51.100.20", now_ms + 1_500, false)
        .await
        .unwrap();
    let (status, body) = call(
        &app,
        "",
        "198.51.100.20",
        "GET",
        "/api/v2/status/performance",
        None,
    )
    .await;
    assert_timed_out(status, &body);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("for 2 more seconds"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let (status, _) = call(
        &app,
        "",
        "198.51.100.20",
        "GET",
        "/api/v2/status/performance",
        None,
    )
    .await;
    assert_eq!(status, 200, "expired");
    app.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_stored() {
    let app = behind_proxy().await;
    let (moderator, _) = app.moderator().await;
    let path = "/api/v2/operations/ipaddr";
    for (body, rc) in [
        (json!({"ipaddr": "198.51.100.7", "hours": 0}), None),
        (json!({"ipaddr": "198.51.100.7", "hours": 721}), None),
        (json!({"ipaddr": "1.2.3", "hours": 1}), None),
        (
            json!({"ipaddr": "not-an-address", "hours": 1}),
            Some("BadRequest"),
        ),
        (
            json!({"ipaddr": "10.0.0.0/7", "hours": 1}),
            Some("BadRequest"),
        ),
        (json!({"ipaddr": "198.51.100.7"}), None),
        (json!({"hours": 3}), None),
    ] {
        let (status, answer) = call(
            &app,
            &moderator,
            "192.0.2.200",
            "POST",
            path,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert!(answer["message"].is_string(), "{answer}");
        if let Some(rc) = rc {
            assert_eq!(answer["rc"], rc, "{answer}");
        }
    }
    let (status, _) = call(
        &app,
        &moderator,
        "192.0.2.200",
        "GET",
        "/api/v2/operations/ipaddr/nonsense",
        None,
    )
    .await;
    assert_eq!(status, 400);
    let worker = "/api/v2/operations/block_worker_ipaddr/00000000-0000-4000-8000-000000000000";
    let (status, answer) = call(
        &app,
        &moderator,
        "192.0.2.200",
        "PUT",
        worker,
        Some(json!({"days": 1})),
    )
    .await;
    assert_eq!(
        (status, answer["rc"].as_str()),
        (404, Some("WorkerNotFound")),
        "{answer}"
    );
    for days in [0, 31] {
        let (status, _) = call(
            &app,
            &moderator,
            "192.0.2.200",
            "PUT",
            worker,
            Some(json!({"days": days})),
        )
        .await;
        assert_eq!(status, 400);
    }
    assert!(listed(&app, &moderator).await.is_empty(), "nothing stored");
    assert_eq!(
        three_endpoints(&app, &moderator, "198.51.100.7").await[0],
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn blocking_a_worker_blocks_its_address_subnet_and_its_pops() {
    let app = behind_proxy().await;
    let (moderator, _) = app.moderator().await;
    let key = user_key(&app, "owner").await;
    let owner = app.client(&key);
    let pop = serde_json::to_value(pop_request("blocked worker")).unwrap();
    let (status, _) = call(
        &app,
        &key,
        "2001:db8:5:6::1",
        "POST",
        "/api/v2/generate/pop",
        Some(pop.clone()),
    )
    .await;
    assert_eq!(status, 200);
    let worker = owner.worker_by_name("blocked worker").await.unwrap().id;
    let path = format!("/api/v2/operations/block_worker_ipaddr/{worker}");
    let (status, _) = call(
        &app,
        &moderator,
        "192.0.2.200",
        "PUT",
        &path,
        Some(json!({"days": 2})),
    )
    .await;
    assert_eq!(status, 200);

    let (status, body) = call(
        &app,
        &key,
        "2001:db8:5:6::99",
        "POST",
        "/api/v2/generate/pop",
        Some(pop.clone()),
    )
    .await;
    assert_timed_out(status, &body);
    let (status, body) = call(
        &app,
        &key,
        "2001:db8:5:6:ffff::1",
        "GET",
        "/api/v2/workers",
        None,
    )
    .await;
    assert_timed_out(status, &body);
    let (status, _) = call(
        &app,
        &key,
        "2001:db8:5:7::1",
        "POST",
        "/api/v2/generate/pop",
        Some(pop.clone()),
    )
    .await;
    assert_eq!(status, 200, "the next /64 is free");
    let timeouts = listed(&app, &moderator).await;
    assert_eq!(timeouts.len(), 1, "{timeouts:?}");
    assert_eq!(timeouts[0].0, "2001:db8:5:6::/64");
    assert!(
        (2 * 86_400 - 5..=2 * 86_400).contains(&timeouts[0].1),
        "{timeouts:?}"
    );

    // The worker now pops from 2001:db8:5:7::1, so its own route would lift that subnet's
    // timeout: the old one is lifted by address.
    let (status, _) = call(
        &app,
        &moderator,
        "192.0.2.200",
        "DELETE",
        "/api/v2/operations/ipaddr",
        Some(json!({"ipaddr": "2001:db8:5:6::1"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &app,
        &key,
        "2001:db8:5:6::99",
        "POST",
        "/api/v2/generate/pop",
        Some(pop.clone()),
    )
    .await;
    assert_eq!(status, 200);
    // Blocked again where it pops now, then unblocked by the worker's own route.
    call(
        &app,
        &moderator,
        "192.0.2.200",
        "PUT",
        &path,
        Some(json!({"days": 1})),
    )
    .await;
    let (status, _) = call(
        &app,
        &key,
        "2001:db8:5:6::5",
        "POST",
        "/api/v2/generate/pop",
        Some(pop.clone()),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(&app, &moderator, "192.0.2.200", "DELETE", &path, None).await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &app,
        &key,
        "2001:db8:5:6::5",
        "POST",
        "/api/v2/generate/pop",
        Some(pop),
    )
    .await;
    assert_eq!(status, 200);
    assert!(listed(&app, &moderator).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_prompt_the_filters_block_times_its_sender_out() {
    let app = behind_proxy().await;
    let (moderator, _) = app.moderator().await;
    for (regex, filter_type) in [(r"\bkid\b", 10), (r"\bexplicit\b", 20)] {
        let body = json!({"regex": regex, "filter_type": filter_type, "replacement": "person"});
        let (status, _) = call(
            &app,
            &moderator,
            "192.0.2.200",
            "PUT",
            "/api/v2/filters",
            Some(body),
        )
        .await;
        assert_eq!(status, 200);
    }
    let key = user_key(&app, "requester").await;
    let mut blocked = serde_json::to_value(small_request("an explicit kid", 1, false)).unwrap();
    blocked["replacement_filter"] = json!(false);
    let (status, body) = call(
        &app,
        &key,
        "198.51.100.30",
        "POST",
        "/api/v2/generate/async",
        Some(blocked.clone()),
    )
    .await;
    assert_eq!(
        (status, body["rc"].as_str()),
        (400, Some("CorruptPrompt")),
        "{body}"
    );
    let (status, body) = call(
        &app,
        &key,
        "198.51.100.30",
        "GET",
        "/api/v2/status/performance",
        None,
    )
    .await;
    assert_timed_out(status, &body);
    let timeouts = listed(&app, &moderator).await;
    assert_eq!(timeouts.len(), 1);
    assert_eq!(timeouts[0].0, "198.51.100.30");
    assert!(
        (175..=180).contains(&timeouts[0].1),
        "3 minutes: {timeouts:?}"
    );

    // A second offence from the same address, once lifted, times it out for 9 minutes.
    app.state
        .store
        .put_ip_timeout("198.51.100.30", 0, false)
        .await
        .unwrap();
    call(
        &app,
        &moderator,
        "192.0.2.200",
        "POST",
        "/api/v2/operations/ipaddr",
        Some(json!({"ipaddr": "192.0.2.1", "hours": 1})),
    )
    .await;
    let (status, _) = call(
        &app,
        &key,
        "198.51.100.30",
        "POST",
        "/api/v2/generate/async",
        Some(blocked.clone()),
    )
    .await;
    assert_eq!(status, 400);
    let timeouts = listed(&app, &moderator).await;
    let offender = timeouts
        .iter()
        .find(|t| t.0 == "198.51.100.30")
        .expect("timed out again");
    assert!((535..=540).contains(&offender.1), "9 minutes: {timeouts:?}");

    // A moderator's blocked prompt times nobody out; a rewritten one neither.
    let (status, _) = call(
        &app,
        &moderator,
        "198.51.100.31",
        "POST",
        "/api/v2/generate/async",
        Some(blocked.clone()),
    )
    .await;
    assert_eq!(status, 400);
    blocked["replacement_filter"] = json!(true);
    let (status, _) = call(
        &app,
        &key,
        "198.51.100.32",
        "POST",
        "/api/v2/generate/async",
        Some(blocked),
    )
    .await;
    assert_eq!(status, 202);
    for from in ["198.51.100.31", "198.51.100.32"] {
        let (status, _) = call(&app, &key, from, "GET", "/api/v2/status/performance", None).await;
        assert_eq!(status, 200, "{from} is not timed out");
    }
    app.stop().await;
}

/// A finished request of `n` images by `requester`, all made by the worker `worker`.
async fn finished(
    app: &TestApp,
    requester: &horde_client::Client,
    owner: &horde_client::Client,
    worker: &str,
    n: u32,
    shared: bool,
) -> (String, Vec<String>) {
    let mut request = small_request("a lighthouse at dusk", n, false);
    request.shared = shared;
    let id = requester
        .generate_async(&request)
        .await
        .unwrap()
        .id
        .unwrap();
    for _ in 0..n {
        let job = owner.pop(&pop_request(worker)).await.unwrap();
        owner
            .submit(&submit_inline(&job, &webp(512, 512, RED, BLUE)))
            .await
            .unwrap();
    }
    let status = requester.status(&id).await.unwrap();
    assert!(status.check.done, "{status:?}");
    let _ = app;
    (
        id,
        status.generations.iter().map(|g| g.id.clone()).collect(),
    )
}

async fn rate(app: &TestApp, id: &str, body: Value) -> (u16, Value) {
    call(
        app,
        "",
        "198.51.100.90",
        "POST",
        &format!("/api/v2/generate/rate/{id}"),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn ratings_of_shared_finished_requests_move_the_workers_reliability_once_per_requester() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;

    // Not finished yet.
    let mut pending = small_request("waiting", 1, false);
    pending.shared = true;
    let waiting = requester
        .generate_async(&pending)
        .await
        .unwrap()
        .id
        .unwrap();
    let (status, body) = rate(
        &app,
        &waiting,
        json!({"best": "6038971e-f0b0-4fdd-a3bb-148f561f815e"}),
    )
    .await;
    assert_eq!(
        (status, body["rc"].as_str()),
        (400, Some("AestheticsNotCompleted")),
        "{body}"
    );
    let job = owner.pop(&pop_request("rated")).await.unwrap();
    owner
        .submit(&submit_inline(&job, &webp(512, 512, RED, BLUE)))
        .await
        .unwrap();

    let (private, private_images) = finished(&app, &requester, &owner, "rated", 1, false).await;
    let (status, body) = rate(
        &app,
        &private,
        json!({"ratings": [{"id": private_images[0], "rating": 9}]}),
    )
    .await;
    assert_eq!(
        (status, body["rc"].as_str()),
        (400, Some("AestheticsNotPublic")),
        "{body}"
    );

    let (id, images) = finished(&app, &requester, &owner, "rated", 2, true).await;
    let worker_id = owner.worker_by_name("rated").await.unwrap().id;
    let before = requester
        .worker(&worker_id)
        .await
        .unwrap()
        .reputation
        .unwrap();
    assert_eq!((before.rated_by, before.rating), (0, None));

    // Bad input: refused, and nothing stored (the same request is rated afterwards).
    let unknown = "6038971e-f0b0-4fdd-a3bb-148f561f815e";
    for (body, rc) in [
        (json!({"ratings": [{"id": images[0], "rating": 0}]}), None),
        (json!({"ratings": [{"id": images[0], "rating": 11}]}), None),
        (
            json!({"ratings": [{"id": images[0], "rating": 5, "artifacts": 6}]}),
            None,
        ),
        (json!({"ratings": [{"id": "short", "rating": 5}]}), None),
        (
            json!({"ratings": [{"id": unknown, "rating": 5}]}),
            Some("ProcGenNotFound"),
        ),
        (
            json!({"ratings": [{"id": images[0], "rating": 5}, {"id": images[0], "rating": 6}]}),
            Some("AestheticsDuplicate"),
        ),
        (json!({}), Some("AestheticsMissing")),
    ] {
        let (status, answer) = rate(&app, &id, body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        if let Some(rc) = rc {
            assert_eq!(answer["rc"], rc, "{answer}");
        }
    }
    let (status, _) = rate(
        &app,
        "00000000-0000-4000-8000-000000000000",
        json!({"best": unknown}),
    )
    .await;
    assert_eq!(status, 404);

    let ratings = json!({"ratings": [{"id": images[0], "rating": 10, "artifacts": 0}, {"id": images[1], "rating": 8}]});
    let (status, answer) = rate(&app, &id, ratings.clone()).await;
    assert_eq!(
        (status, answer["reward"].as_f64()),
        (200, Some(0.0)),
        "{answer}"
    );
    let (status, answer) = rate(&app, &id, ratings).await;
    assert_eq!(
        (status, answer["rc"].as_str()),
        (400, Some("AestheticsAlreadyExist")),
        "{answer}"
    );

    // One requester, one voice: mean 9 over their two ratings.
    let after = requester
        .worker(&worker_id)
        .await
        .unwrap()
        .reputation
        .unwrap();
    assert_eq!((after.rated_by, after.rating), (1, Some(9.0)));
    let completion = (after.jobs_completed as f64 + 4.0) / (after.jobs_completed as f64 + 5.0);
    let expected = rated_reliability(
        completion,
        &RatingSummary {
            raters: 1,
            points: 9.0,
        },
    );
    assert!(
        (after.reliability - expected).abs() < 1e-9,
        "{} vs {expected}",
        after.reliability
    );
    let lift = expected - completion;
    assert!((lift - RATING_WEIGHT * (3.5 / 4.5) / 6.0 * (1.0 - completion)).abs() < 1e-12);
    assert!(after.reliability > completion, "good ratings lift it");

    // The dashboard's workers table shows it beside the reliability.
    let page = http().get(format!("{}/", app.root)).send().await.unwrap();
    let page = page.text().await.unwrap();
    assert!(page.contains("★ 9.0 (1)"), "the dashboard shows the rating");

    // The same requester again (another request, rated 1): still one voice.
    let (again, again_images) = finished(&app, &requester, &owner, "rated", 1, true).await;
    let (status, _) = rate(
        &app,
        &again,
        json!({"ratings": [{"id": again_images[0], "rating": 1}]}),
    )
    .await;
    assert_eq!(status, 200);
    let after = requester
        .worker(&worker_id)
        .await
        .unwrap()
        .reputation
        .unwrap();
    assert_eq!(after.rated_by, 1, "one voice per requester");
    assert!(
        (after.rating.unwrap() - 19.0 / 3.0).abs() < 1e-9,
        "{:?}",
        after.rating
    );

    // Another requester is another voice.
    let (second, _) = app.user("second", 1000.0).await;
    let (other, other_images) = finished(&app, &second, &owner, "rated", 1, true).await;
    let (status, _) = rate(
        &app,
        &other,
        json!({"ratings": [{"id": other_images[0], "rating": 2}]}),
    )
    .await;
    assert_eq!(status, 200);
    let after = requester
        .worker(&worker_id)
        .await
        .unwrap()
        .reputation
        .unwrap();
    assert_eq!(after.rated_by, 2);
    let completion = (after.jobs_completed as f64 + 4.0) / (after.jobs_completed as f64 + 5.0);
    let expected = rated_reliability(
        completion,
        &RatingSummary {
            raters: 2,
            points: 19.0 / 3.0 + 2.0,
        },
    );
    assert!((after.reliability - expected).abs() < 1e-9);
    assert!(after.reliability < completion, "the ratings now lean bad");

    // The rating is stored with the reputation: a restart keeps it.
    let app = app.restart().await;
    let reloaded = app
        .anonymous()
        .worker(&worker_id)
        .await
        .unwrap()
        .reputation
        .unwrap();
    assert_eq!(reloaded.rated_by, 2);
    assert!((reloaded.reliability - expected).abs() < 1e-9);
    app.stop().await;
}

#[tokio::test]
async fn only_moderators_operate_and_anyone_with_the_id_rates() {
    let app = spawn_app().await;
    let Callers { keys, .. } = five_callers(&app).await;
    let owner = app.client(&keys[4]);
    let (id, images) = finished(&app, &app.client(&keys[1]), &owner, "owned worker", 1, true).await;
    let worker = owner.worker_by_name("owned worker").await.unwrap().id;
    let ip = json!({"ipaddr": "192.0.2.10", "hours": 1});
    let moderator_only = [403, 403, 403, 200, 403];
    let rows = vec![
        row(
            "POST",
            "/api/v2/operations/ipaddr".into(),
            Some(ip.clone()),
            moderator_only,
        ),
        row(
            "GET",
            "/api/v2/operations/ipaddr".into(),
            None,
            moderator_only,
        ),
        row(
            "GET",
            "/api/v2/operations/ipaddr/192.0.2.10".into(),
            None,
            moderator_only,
        ),
        row(
            "DELETE",
            "/api/v2/operations/ipaddr".into(),
            Some(ip),
            moderator_only,
        ),
        row(
            "PUT",
            format!("/api/v2/operations/block_worker_ipaddr/{worker}"),
            Some(json!({"days": 1})),
            moderator_only,
        ),
        row(
            "DELETE",
            format!("/api/v2/operations/block_worker_ipaddr/{worker}"),
            None,
            moderator_only,
        ),
        // No key needed; rated once, so the first caller rates and the rest are refused.
        row(
            "POST",
            format!("/api/v2/generate/rate/{id}"),
            Some(json!({"ratings": [{"id": images[0], "rating": 7}]})),
            [200, 400, 400, 400, 400],
        ),
    ];
    check_rows(&app, &keys, &rows).await;
    let (status, body) = call(
        &app,
        "not-a-key-at-all",
        "127.0.0.1",
        "GET",
        "/api/v2/operations/ipaddr",
        None,
    )
    .await;
    assert_eq!((status, body["rc"].as_str()), (401, Some("InvalidAPIKey")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: .ci/run runs it with HORDE_TEST_POSTGRES_URL"]
async fn two_coordinators_on_one_database_hold_the_same_timeouts() {
    let apps = spawn_cluster(2, |c| c.api.trusted_proxies = vec!["127.0.0.0/8".into()]).await;
    let (moderator, _) = apps[0].moderator().await;
    let performance = "/api/v2/status/performance";
    assert_eq!(
        call(&apps[1], "", "198.51.100.40", "GET", performance, None)
            .await
            .0,
        200
    );
    let body = json!({"ipaddr": "198.51.100.0/26", "hours": 1});
    let (status, _) = call(
        &apps[0],
        &moderator,
        "192.0.2.200",
        "POST",
        "/api/v2/operations/ipaddr",
        Some(body),
    )
    .await;
    assert_eq!(status, 200);
    // The other coordinator's copy is at most `CACHE_MS` old.
    tokio::time::sleep(Duration::from_millis(
        horde_server::operations::CACHE_MS as u64 + 100,
    ))
    .await;
    let (status, body) = call(&apps[1], "", "198.51.100.40", "GET", performance, None).await;
    assert_timed_out(status, &body);
    assert_eq!(listed(&apps[1], &moderator).await.len(), 1);
    let (status, _) = call(
        &apps[1],
        &moderator,
        "192.0.2.200",
        "DELETE",
        "/api/v2/operations/ipaddr",
        Some(json!({"ipaddr": "198.51.100.0/26"})),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(
        horde_server::operations::CACHE_MS as u64 + 100,
    ))
    .await;
    assert_eq!(
        call(&apps[0], "", "198.51.100.41", "GET", performance, None)
            .await
            .0,
        200
    );
    for app in apps {
        app.stop().await;
    }
}
