//! Quota tiers (issue 32, point 3): a user sees their tier, today's use and its limits; a
//! moderator moves them between `registered`, `trusted` and the operator's `[quotas.tiers]`,
//! and the new tier's quota applies at once; over it, 429 says when the count starts again.

use crate::helpers::*;
use horde_core::quota::Quota;
use serde_json::json;

async fn tiered() -> TestApp {
    spawn_app_with(|c| {
        c.quotas.registered = Quota {
            images_per_day: 1,
            ..Quota::default()
        };
        c.quotas.tiers.insert(
            "gold".into(),
            Quota {
                images_per_day: 5,
                ..Quota::default()
            },
        );
    })
    .await
}

#[tokio::test]
async fn a_moderator_moves_a_user_into_a_tier_and_its_quota_applies_at_once() {
    let app = tiered().await;
    let (user, user_id, key) = untrusted(&app, "climber").await;
    let (moderator, _) = app.moderator().await;
    user.generate_async(&small_request("first", 1, false))
        .await
        .unwrap();

    // Over the registered tier's quota: 429, Retry-After, and when it renews in the message.
    let over = http()
        .post(format!("{}/api/v2/generate/async", app.root))
        .header("apikey", &key)
        .json(&small_request("second", 1, false))
        .send()
        .await
        .unwrap();
    assert_eq!(over.status().as_u16(), 429);
    let retry: u64 = over.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let body: serde_json::Value = over.json().await.unwrap();
    assert_eq!(body["rc"], "DailyQuotaExceeded");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("T00:00:00Z (00:00 UTC)"), "{message}");

    let mine = user
        .find_user()
        .await
        .unwrap()
        .daily_quota
        .expect("own quota");
    assert_eq!(
        (mine.tier.as_str(), mine.images_used, mine.images_per_day),
        ("registered", 1, 1)
    );
    assert!(mine.resets_at.ends_with("T00:00:00Z") && (1..=86_400).contains(&mine.resets_in));
    assert_eq!(
        mine.tiers, None,
        "only moderators see the tiers to choose from"
    );

    // The user cannot move themself; an unknown tier is refused naming the real ones.
    let (status, answer) = call_as(
        &app,
        &key,
        "PUT",
        &format!("/api/v2/users/{user_id}"),
        Some(json!({"tier": "gold"})),
    )
    .await;
    assert_eq!((status, &answer["rc"]), (403, &json!("NotModerator")));
    let path = format!("/api/v2/users/{user_id}");
    let (status, answer) = call_as(
        &app,
        &moderator,
        "PUT",
        &path,
        Some(json!({"tier": "platinum"})),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("registered, trusted, gold"),
        "{answer}"
    );
    let (status, answer) = call_as(&app, &moderator, "PUT", &path, Some(json!({"tier": ""}))).await;
    assert_eq!((status, &answer["rc"]), (400, &json!("ValidationError")));

    let (status, seen) = call_as(&app, &moderator, "GET", &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        seen["daily_quota"]["tiers"],
        json!(["registered", "trusted", "gold"])
    );
    assert_eq!(
        seen["daily_quota"]["tier"], "registered",
        "refusals changed nothing"
    );

    let (status, answer) = call_as(
        &app,
        &moderator,
        "PUT",
        &path,
        Some(json!({"tier": "gold"})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let mine = user.find_user().await.unwrap();
    let quota = mine.daily_quota.unwrap();
    assert_eq!((quota.tier.as_str(), quota.images_per_day), ("gold", 5));
    assert!(!mine.trusted);
    user.generate_async(&small_request("second, in gold", 2, false))
        .await
        .expect("the gold tier's quota applies at once");

    // Trusted, then back to registered: the roles follow.
    call_as(
        &app,
        &moderator,
        "PUT",
        &path,
        Some(json!({"tier": "trusted"})),
    )
    .await;
    let mine = user.find_user().await.unwrap();
    assert!(mine.trusted);
    assert_eq!(mine.daily_quota.unwrap().tier, "trusted");
    call_as(
        &app,
        &moderator,
        "PUT",
        &path,
        Some(json!({"tier": "registered"})),
    )
    .await;
    let mine = user.find_user().await.unwrap();
    assert!(!mine.trusted);
    assert_eq!(mine.daily_quota.unwrap().tier, "registered");
    app.stop().await;
}

#[tokio::test]
async fn nobody_but_the_user_and_moderators_sees_a_quota_and_anonymous_has_no_tier_to_change() {
    let app = tiered().await;
    let (_, user_id) = app.untrusted_user("private", 0.0).await;
    let (other, _) = app.user("other", 0.0).await;
    let (moderator, _) = app.moderator().await;
    let seen = other.user(user_id as u64).await.unwrap();
    assert_eq!(seen.daily_quota, None);
    let (status, answer) = call_as(
        &app,
        &moderator,
        "PUT",
        "/api/v2/users/0",
        Some(json!({"tier": "gold"})),
    )
    .await;
    // A valid request refused (the spec's tiers include "gold"): 403, not 400.
    assert_eq!(
        (status, &answer["rc"]),
        (403, &json!("Forbidden")),
        "{answer}"
    );
    assert!(
        answer["message"].as_str().unwrap().contains("anonymous"),
        "{answer}"
    );
    app.stop().await;
}

/// A new untrusted user with 100 kudos: its client, id and key.
async fn untrusted(app: &TestApp, name: &str) -> (horde_client::Client, i64, String) {
    let created = app
        .anonymous()
        .create_test_user(&horde_api::user::TestUserRequest {
            username: name.into(),
            oauth_id: None,
            moderator: false,
            trusted: false,
            kudos: 100.0,
        })
        .await
        .unwrap();
    (
        app.client(&created.api_key),
        created.user_id,
        created.api_key,
    )
}
