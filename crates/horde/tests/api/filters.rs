//! Prompt filters over HTTP: moderators manage them, matching prompts are rewritten or refused
//! before anything is queued, and over-long prompts are refused.

use crate::helpers::*;
use serde_json::{json, Value};

async fn call(
    app: &TestApp,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call_as(app, key, method, path, body).await
}

/// A type-10 filter (rewritten to "person") and a type-20 one: a prompt matching both is
/// blocked.
async fn add_filters(app: &TestApp, key: &str) -> (String, String) {
    let mut ids = vec![];
    for (regex, filter_type, replacement) in [(r"\bkid\b", 10, "person"), (r"\bexplicit\b", 20, "")]
    {
        let (status, filter) = call(
            app,
            key,
            "PUT",
            "/api/v2/filters",
            Some(json!({"regex": regex, "filter_type": filter_type, "replacement": replacement, "description": "test filter"})),
        )
        .await;
        assert_eq!(status, 200, "{filter}");
        assert!(
            filter["user"].as_str().unwrap().starts_with("moderator#"),
            "{filter}"
        );
        ids.push(filter["id"].as_str().unwrap().to_string());
    }
    (ids[0].clone(), ids[1].clone())
}

#[tokio::test]
async fn moderators_manage_filters_and_check_prompts_with_them() {
    let app = spawn_app().await;
    let key = app.moderator().await.0;
    let (kid, explicit) = add_filters(&app, &key).await;

    let (status, check) = call(
        &app,
        &key,
        "POST",
        "/api/v2/filters",
        Some(json!({"prompt": "an (explicit:1.3) k i d ### kid"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        check,
        json!({"suspicion": 2, "matches": ["kid", "explicit"]})
    );
    let (_, check) = call(
        &app,
        &key,
        "POST",
        "/api/v2/filters",
        Some(json!({"prompt": "an explicit kid", "filter_type": 20})),
    )
    .await;
    assert_eq!(check["suspicion"], 1, "only type 20 was asked for");

    let (_, listed) = call(&app, &key, "GET", "/api/v2/filters?filter_type=10", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], kid.as_str());
    let (_, listed) = call(&app, &key, "GET", "/api/v2/filters?contains=TEST", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let (_, regexes) = call(&app, &key, "GET", "/api/v2/filters/regex", None).await;
    assert_eq!(
        regexes,
        json!([{"filter_type": 10, "regex": r"(?:\bkid\b)"}, {"filter_type": 20, "regex": r"(?:\bexplicit\b)"}])
    );

    let refusals = [
        (
            "PUT",
            "/api/v2/filters".to_string(),
            json!({"regex": "(", "filter_type": 10}),
            "BadRequest",
        ),
        (
            "PUT",
            "/api/v2/filters".to_string(),
            json!({"regex": "x", "filter_type": 5}),
            "ValidationError",
        ),
        (
            "PATCH",
            format!("/api/v2/filters/{kid}"),
            json!({}),
            "NoFilterModSelected",
        ),
        (
            "PATCH",
            format!("/api/v2/filters/{kid}"),
            json!({"regex": "[z-a]"}),
            "BadRequest",
        ),
    ];
    for (method, path, body, rc) in refusals {
        let (status, answer) = call(&app, &key, method, &path, Some(body)).await;
        assert_eq!((status, answer["rc"].as_str()), (400, Some(rc)), "{answer}");
    }
    let (status, _) = call(&app, &key, "GET", "/api/v2/filters?filter_type=ten", None).await;
    assert_eq!(status, 400, "a malformed query is a validation error");
    // The regex list's path is no filter's id: changing or deleting it is a 404, as for any
    // unknown id, not the router's 405 (Schemathesis found it).
    for (method, body) in [("PATCH", Some(json!({"regex": "x"}))), ("DELETE", None)] {
        let (status, answer) = call(&app, &key, method, "/api/v2/filters/regex", body).await;
        assert_eq!(status, 404, "{method}: {answer}");
        assert!(answer["rc"].is_string(), "{answer}");
    }

    let (status, changed) = call(
        &app,
        &key,
        "PATCH",
        &format!("/api/v2/filters/{explicit}"),
        Some(json!({"regex": r"\bgraphic\b"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(changed["regex"], r"\bgraphic\b");
    let (_, check) = call(
        &app,
        &key,
        "POST",
        "/api/v2/filters",
        Some(json!({"prompt": "an explicit kid"})),
    )
    .await;
    assert_eq!(check["suspicion"], 1, "the changed regex is used at once");

    let (status, _) = call(
        &app,
        &key,
        "DELETE",
        &format!("/api/v2/filters/{kid}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, answer) = call(&app, &key, "GET", &format!("/api/v2/filters/{kid}"), None).await;
    assert_eq!(
        (status, answer["rc"].as_str()),
        (404, Some("ThingNotFound"))
    );

    // Filters are stored: they survive a restart.
    let app = app.restart().await;
    let (_, listed) = call(&app, &key, "GET", "/api/v2/filters", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let (_, check) = call(
        &app,
        &key,
        "POST",
        "/api/v2/filters",
        Some(json!({"prompt": "graphic"})),
    )
    .await;
    assert_eq!(check["suspicion"], 1);
    app.stop().await;
}

#[tokio::test]
async fn blocked_prompts_are_rewritten_or_refused_before_they_are_queued() {
    let app = spawn_app().await;
    let key = app.moderator().await.0;
    add_filters(&app, &key).await;
    let (user, _) = app.user("requester", 100.0).await;

    let clean = user
        .generate_async(&small_request("a kid flying a kite", 1, false))
        .await
        .unwrap();
    assert!(
        clean.warnings.iter().all(|w| w.code != "PromptRewritten"),
        "one group alone does not block: {:?}",
        clean.warnings
    );

    let mut blocked = small_request("an explicit k-i-d ### blurry", 1, false);
    blocked.replacement_filter = false;
    let error = user.generate_async(&blocked).await.expect_err("refused");
    assert_eq!(error.status().map(|s| s.as_u16()), Some(400), "{error}");
    assert_eq!(error.rc(), Some("CorruptPrompt"), "{error}");
    assert_eq!(app.state.live.len(), 1, "nothing more queued");

    blocked.replacement_filter = true;
    let accepted = user.generate_async(&blocked).await.unwrap();
    assert!(
        accepted
            .warnings
            .iter()
            .any(|w| w.code == "PromptRewritten"),
        "{:?}",
        accepted.warnings
    );
    let (owner, _) = app.user("owner", 0.0).await;
    let mut prompts = vec![];
    for _ in 0..2 {
        let job = owner.pop(&pop_request("filter worker")).await.unwrap();
        prompts.push(job.payload["prompt"].as_str().unwrap().to_string());
    }
    assert!(
        prompts.contains(&format!(
            "an explicit person###{},  blurry",
            horde_core::prompt_filter::FORCED_NEGATIVE
        )),
        "the worker gets the rewritten prompt: {prompts:?}"
    );
    assert!(prompts.contains(&"a kid flying a kite".to_string()));
    app.stop().await;
}

#[tokio::test]
async fn over_long_prompts_are_refused() {
    let app = spawn_app_with(|c| c.requests.max_prompt_chars = 100).await;
    let (user, _) = app.user("requester", 100.0).await;
    user.generate_async(&small_request(&"a".repeat(100), 1, false))
        .await
        .expect("at the limit");
    let error = user
        .generate_async(&small_request(&"ä".repeat(101), 1, false))
        .await
        .expect_err("over the limit");
    assert_eq!(error.status().map(|s| s.as_u16()), Some(400), "{error}");
    assert_eq!(error.rc(), Some("InvalidPromptSize"), "{error}");
    assert_eq!(
        app.state.live.len(),
        1,
        "only the request at the limit is queued"
    );
    app.stop().await;
}
