//! Rate limits from the configuration, with the headers clients read, and daily quotas per tier.

use crate::helpers::*;
use horde_core::quota::Quota;
use horde_core::ratelimit::Limit;

#[tokio::test]
async fn configured_limits_answer_429_with_the_headers_clients_read() {
    let app = spawn_app_with(|c| {
        c.api.rate_limits = true;
        c.limits.transfer_per_key = vec![Limit::per_minute(2), Limit::per_hour(50)];
    })
    .await;
    let (alice, _) = app.user("alice", 1000.0).await;
    let (_, bob_id) = app.user("bob", 0.0).await;
    let body = serde_json::json!({"username": format!("bob#{bob_id}"), "amount": 1});
    let transfer = || {
        alice
            .request(reqwest::Method::POST, "/kudos/transfer")
            .json(&body)
            .send()
    };
    with_a_minute_window_ahead(std::time::Duration::from_secs(15)).await;
    let first = transfer().await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(header(&first, "x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(
        header(&first, "x-ratelimit-remaining").as_deref(),
        Some("1")
    );
    assert!(header(&first, "x-ratelimit-reset").is_some());
    assert_eq!(transfer().await.unwrap().status().as_u16(), 200);
    let refused = transfer().await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    let retry: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        header(&refused, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["rc"], "RateLimited");
    assert_eq!(body["message"], "2 per 1 minute");
}

#[tokio::test]
async fn daily_quotas_hold_per_tier_and_say_when_they_renew() {
    let app = spawn_app_with(|c| {
        c.quotas.registered = Quota {
            images_per_day: 3,
            megapixelsteps_per_day: 0.0,
            ..Quota::default()
        };
        c.quotas.anonymous = Quota {
            images_per_day: 0,
            megapixelsteps_per_day: 3.0,
            ..Quota::default()
        };
    })
    .await;
    let (registered, _) = app.untrusted_user("registered", 100.0).await;
    let (trusted, _) = app.user("trusted", 100.0).await;
    registered
        .generate_async(&small_request("two", 2, false))
        .await
        .unwrap();
    let over = registered
        .generate_async(&small_request("two more", 2, false))
        .await
        .unwrap_err();
    assert_eq!(over.rc(), Some("DailyQuotaExceeded"));
    assert_eq!(over.status().map(|s| s.as_u16()), Some(429));
    assert!(over.to_string().contains("00:00 UTC"), "{over}");
    registered
        .generate_async(&small_request("one fits", 1, false))
        .await
        .expect("the third image still fits");

    // Trusted users have no quota here; anonymous ones a megapixelstep budget
    // (512×512 × 10 steps is 2.6 megapixelsteps).
    trusted
        .generate_async(&small_request("many", 4, false))
        .await
        .unwrap();
    let anonymous = app.anonymous();
    anonymous
        .generate_async(&small_request("first", 1, false))
        .await
        .unwrap();
    let raw = http()
        .post(format!("{}/api/v2/generate/async", app.root))
        .header("apikey", horde_api::ANONYMOUS_API_KEY)
        .json(&small_request("second", 1, false))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 429);
    let retry: i64 = raw.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry));
}

/// The public horde's 30 a minute per address for changing teams and the modes: the limit
/// named on each answer, and the 31st change refused (team names vary, so only the limit
/// refuses it).
#[tokio::test]
async fn team_and_mode_changes_are_limited_to_thirty_a_minute() {
    let app = spawn_app_with(|c| c.api.rate_limits = true).await;
    let trusted = app
        .anonymous()
        .create_test_user(&horde_api::user::TestUserRequest {
            username: "team maker".into(),
            oauth_id: None,
            moderator: true,
            trusted: true,
            kudos: 0.0,
        })
        .await
        .unwrap()
        .api_key;
    let client = http();
    let post_team = |n: usize| {
        client
            .post(format!("{}/api/v2/teams", app.root))
            .header("apikey", &trusted)
            .json(&serde_json::json!({"name": format!("team number {n}"), "info": "a team"}))
            .send()
    };
    with_a_minute_window_ahead(std::time::Duration::from_secs(20)).await;
    let first = post_team(0).await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit"], "30");
    for n in 1..30 {
        assert_eq!(post_team(n).await.unwrap().status().as_u16(), 200, "{n}");
    }
    let refused = post_team(30).await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    let modes = client
        .put(format!("{}/api/v2/status/modes", app.root))
        .header("apikey", &trusted)
        .json(&serde_json::json!({"raid_mode": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        modes.headers()["x-ratelimit-limit"],
        "30",
        "its own counter"
    );
}
