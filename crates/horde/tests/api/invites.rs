//! Invite-only registration (issue 32, point 2): moderators create, list and delete invite
//! codes through `/api/v2/invites`; `/register` asks for one when `[registration] mode =
//! "invite"`, and each refusal (no code, a wrong, used-up, expired or deleted one) is a clear
//! page with nothing created and no use spent.

use crate::helpers::*;
use crate::register::{open_form, post, users};
use horde_core::invites::{hashed_text, Invite};
use horde_core::registration::RegistrationMode;
use serde_json::{json, Value};

async fn invite_only() -> TestApp {
    spawn_app_with(|c| c.registration.mode = RegistrationMode::Invite).await
}

/// Registers `name` with `code` (none: the field left out) through a fresh form.
async fn register_with(app: &TestApp, name: &str, code: Option<&str>) -> (u16, String) {
    let form = open_form(app).await;
    let mut fields = vec![("username", name), ("csrf_token", form.token.as_str())];
    if let Some(code) = code {
        fields.push(("invite_code", code));
    }
    let (status, _, page) = post(app, Some(&form.cookie), &fields, &[]).await;
    (status, page)
}

/// A new invite from the moderator with `key`: its answer.
async fn create(app: &TestApp, key: &str, body: Value) -> Value {
    let (status, answer) = call_as(app, key, "POST", "/api/v2/invites", Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

async fn listed(app: &TestApp, key: &str) -> Vec<Value> {
    let (status, answer) = call_as(app, key, "GET", "/api/v2/invites", None).await;
    assert_eq!(status, 200, "{answer}");
    answer.as_array().unwrap().clone()
}

#[tokio::test]
async fn an_invite_code_lets_its_accounts_in_and_then_stops() {
    let app = invite_only().await;
    let (moderator, _) = app.moderator().await;
    let page = app.page("/register").await;
    assert!(page.contains("name=\"invite_code\""), "{page}");
    let invite = create(&app, &moderator, json!({"uses": 2, "note": "for the club"})).await;
    let code = invite["code"].as_str().unwrap().to_string();
    assert_eq!(code.len(), 22);
    assert_eq!(
        (invite["uses"].as_u64(), invite["used"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(
        invite["created_by"].as_str().unwrap().split('#').next(),
        Some("moderator")
    );

    let before = users(&app).await;
    for (code, message) in [
        (None, "by invitation"),
        (Some("   "), "by invitation"),
        (Some("not-a-code"), "not valid"),
    ] {
        let (status, page) = register_with(&app, "guest", code).await;
        assert_eq!(status, 403, "{code:?}: {page}");
        assert!(page.contains(message), "{code:?}: {page}");
    }
    assert_eq!(users(&app).await, before, "a refusal created a user");
    assert_eq!(
        listed(&app, &moderator).await[0]["used"],
        0,
        "a refusal spent a use"
    );

    for name in ["first guest", "second guest"] {
        let (status, page) = register_with(&app, name, Some(&format!(" {code} "))).await;
        assert_eq!(status, 201, "{page}");
    }
    let (status, page) = register_with(&app, "third guest", Some(&code)).await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("already used"), "{page}");
    assert_eq!(users(&app).await, before + 2);

    // The list shows the uses and never the code; the code is stored only as its hash.
    let list = listed(&app, &moderator).await;
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0]["used"].as_u64(), list[0].get("code")),
        (Some(2), None)
    );
    assert_eq!(list[0]["note"], "for the club");
    let stored = crate::backend::stored_bytes(app.dir.path()).await;
    assert!(
        !stored.windows(code.len()).any(|w| w == code.as_bytes()),
        "the plain code is in the database"
    );
    app.stop().await;
}

#[tokio::test]
async fn expired_and_deleted_invites_are_refused_with_nothing_created() {
    let app = invite_only().await;
    let (moderator, moderator_id) = app.moderator().await;
    let now_ms = horde_server::clock::now_ms() as i64;
    let expired = Invite {
        id: "expired-invite".into(),
        code_hash: app.state.accounts.hash_key(&hashed_text("expired-code")),
        created_by: moderator_id,
        note: String::new(),
        max_uses: 5,
        uses: 0,
        created_ms: now_ms - 10_000,
        expires_ms: now_ms - 1,
    };
    let stale_before = now_ms - horde_core::invites::EXPIRED_KEPT_MS;
    let store = &app.state.store;
    assert!(store
        .insert_invite(&expired, stale_before, 10)
        .await
        .unwrap());
    // The number kept is bounded, expired invites included until they go stale.
    let one_more = Invite {
        id: "one more".into(),
        code_hash: "another hash".into(),
        ..expired.clone()
    };
    assert!(!store
        .insert_invite(&one_more, stale_before, 1)
        .await
        .unwrap());
    let doomed = create(&app, &moderator, json!({})).await;
    let (status, answer) = call_as(
        &app,
        &moderator,
        "DELETE",
        &format!("/api/v2/invites/{}", doomed["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!((status, &answer["message"]), (200, &json!("OK")));

    let before = users(&app).await;
    let deleted = doomed["code"].as_str().unwrap();
    for (code, message) in [("expired-code", "has expired"), (deleted, "not valid")] {
        let (status, page) = register_with(&app, "late guest", Some(code)).await;
        assert_eq!(status, 403, "{code}: {page}");
        assert!(page.contains(message), "{code}: {page}");
    }
    assert_eq!(users(&app).await, before);

    // A JSON client gets the AI Horde error body.
    let form = open_form(&app).await;
    let fields = [
        ("username", "late guest"),
        ("csrf_token", form.token.as_str()),
        ("invite_code", "expired-code"),
    ];
    let (status, _, body) = post(
        &app,
        Some(&form.cookie),
        &fields,
        &[("accept", "application/json")],
    )
    .await;
    assert_eq!(status, 403);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["rc"], "Forbidden");
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    assert_eq!(users(&app).await, before);
    app.stop().await;
}

#[tokio::test]
async fn invites_are_bounded_and_only_moderators_manage_them() {
    let app = invite_only().await;
    let (moderator, _) = app.moderator().await;
    let long_note = "n".repeat(101);
    for (body, field) in [
        (json!({"uses": 0}), "uses"),
        (json!({"uses": 1001}), "uses"),
        (json!({"hours": 0}), "hours"),
        (json!({"hours": 8761}), "hours"),
        (json!({"note": long_note}), "note"),
    ] {
        let (status, answer) = call_as(
            &app,
            &moderator,
            "POST",
            "/api/v2/invites",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["rc"], "ValidationError", "{answer}");
        assert!(answer["errors"].get(field).is_some(), "{body}: {answer}");
    }
    let biggest = create(
        &app,
        &moderator,
        json!({"uses": 1000, "hours": 8760, "note": "n".repeat(100)}),
    )
    .await;
    assert_eq!(biggest["uses"], 1000);
    assert_eq!(
        listed(&app, &moderator).await.len(),
        1,
        "refusals stored nothing"
    );
    let (status, answer) = call_as(
        &app,
        &moderator,
        "DELETE",
        "/api/v2/invites/no-such-invite",
        None,
    )
    .await;
    assert_eq!((status, &answer["rc"]), (404, &json!("ThingNotFound")));

    // In open mode the form has no invite field and needs no code.
    let open = spawn_app().await;
    let form = open_form(&open).await;
    let fields = [("username", "walk-in"), ("csrf_token", form.token.as_str())];
    let (status, _, page) = post(&open, Some(&form.cookie), &fields, &[]).await;
    assert_eq!(status, 201, "{page}");
    assert!(!page.contains("invite_code"));
    open.stop().await;
    app.stop().await;
}
