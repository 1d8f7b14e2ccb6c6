//! What real clients send and read (issue 20): each test sends what horde-sdk, Artbot or a
//! horde-worker-reGen sends, and checks the answer the public horde gives.

use crate::helpers::*;
use horde_api::image::ImageRequest;
use horde_client::Client;
use reqwest::Method;
use serde_json::{json, Value};

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn raw(client: &Client, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = client.request(method, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    json_of(request.send().await.unwrap()).await
}

/// The worker `name` popped once (so it is registered and online); its id.
async fn registered_worker(owner: &Client, name: &str) -> String {
    owner.pop(&pop_request(name)).await.unwrap();
    owner.worker_by_name(name).await.unwrap().id
}

#[tokio::test]
async fn worker_details_carry_the_team_as_an_object_horde_sdk_parses() {
    let app = spawn_app().await;
    let (owner, _) = app.user("owner", 0.0).await;
    let id = registered_worker(&owner, "teamless-worker").await;
    let anonymous = app.anonymous();
    for path in [
        "/workers".to_string(),
        format!("/workers/{id}"),
        "/workers/name/teamless-worker".to_string(),
    ] {
        let (status, body) = raw(&anonymous, Method::GET, &path, None).await;
        assert_eq!(status, 200, "{path}");
        let worker = if body.is_array() { &body[0] } else { &body };
        assert_eq!(worker["team"], json!({"id": null, "name": null}), "{path}");
    }
}

#[tokio::test]
async fn an_empty_or_all_type_lists_every_worker_and_a_name_takes_precedence() {
    let app = spawn_app().await;
    let (owner, _) = app.user("owner", 0.0).await;
    registered_worker(&owner, "listed-worker").await;
    let names = |body: Value| -> Vec<String> {
        body.as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_string())
            .collect()
    };
    let anonymous = app.anonymous();
    for query in ["?type=", "?type=all", "?type=image", ""] {
        let (status, body) = raw(&anonymous, Method::GET, &format!("/workers{query}"), None).await;
        assert_eq!(status, 200);
        assert_eq!(names(body), ["listed-worker"], "/workers{query}");
    }
    let (_, text_only) = raw(&anonymous, Method::GET, "/workers?type=text", None).await;
    assert!(names(text_only).is_empty());
    let (_, by_name) = raw(
        &anonymous,
        Method::GET,
        "/workers?type=text&name=LISTED-worker",
        None,
    )
    .await;
    assert_eq!(names(by_name), ["listed-worker"]);
}

#[tokio::test]
async fn every_cfg_scale_of_two_decimals_is_accepted_and_a_third_decimal_is_bad_cfg_decimals() {
    let app = spawn_app().await;
    let (user, _) = app.user("artist", 1000.0).await;
    for cfg in ["4.1", "5.1", "8.2", "0.07", "99.99", "100"] {
        let body: Value = serde_json::from_str(&format!(
            r#"{{"prompt": "a cat", "params": {{"cfg_scale": {cfg}, "steps": 10}}}}"#
        ))
        .unwrap();
        let (status, answer) = raw(&user, Method::POST, "/generate/async", Some(body)).await;
        assert_eq!(status, 202, "cfg_scale {cfg}: {answer}");
    }
    let body = json!({"prompt": "a cat", "params": {"cfg_scale": 4.123}});
    let (status, answer) = raw(&user, Method::POST, "/generate/async", Some(body)).await;
    assert_eq!(
        (status, answer["rc"].as_str()),
        (400, Some("BadCFGDecimals"))
    );
}

#[tokio::test]
async fn find_user_with_an_unknown_key_is_404_user_not_found() {
    let app = spawn_app().await;
    let stranger = app.client("abcdefghijklmnopqrstuv");
    let (status, body) = raw(&stranger, Method::GET, "/find_user", None).await;
    assert_eq!((status, body["rc"].as_str()), (404, Some("UserNotFound")));
    assert!(
        !body["message"]
            .as_str()
            .unwrap()
            .contains("abcdefghijklmnopqrstuv"),
        "the key is not echoed: {body}"
    );
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_answer_with_the_ai_horde_error_body() {
    let app = spawn_app().await;
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    for path in [
        "/api/v2/no-such-thing",
        "/api/v2/generate/nothing/here",
        "/api/nothing",
        "/api/v3/generate/async",
    ] {
        for method in methods.clone() {
            let response = http()
                .request(method.clone(), format!("{}{path}", app.root))
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let (status, body) = json_of(response).await;
            assert_eq!(status, 404, "{method} {path}: {body}");
            assert!(
                body["message"].is_string() && body["rc"].is_string(),
                "{method} {path}: {body}"
            );
        }
    }
    for (method, path, allowed) in [
        (Method::POST, "/api/v2/status/heartbeat", "GET"),
        (Method::DELETE, "/api/v2/generate/async", "POST"),
        (Method::PATCH, "/api/v2/workers", "GET"),
    ] {
        let response = http()
            .request(method.clone(), format!("{}{path}", app.root))
            .send()
            .await
            .unwrap();
        let allow = response
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let (status, body) = json_of(response).await;
        assert_eq!(status, 405, "{method} {path}");
        assert!(allow.contains(allowed), "{method} {path}: Allow {allow:?}");
        assert_eq!(body["rc"], "MethodNotAllowed", "{method} {path}: {body}");
    }
}

#[tokio::test]
async fn a_moderator_sees_the_privileged_fields_of_a_user_with_public_key_names() {
    let app = spawn_app().await;
    let (moderator_key, _) = app.moderator().await;
    let moderator = app.client(&moderator_key);
    let (user, user_id) = app.user("watched", 100.0).await;
    let accepted = user
        .generate_async(&small_request("a cat", 1, false))
        .await
        .unwrap();
    let path = format!("/users/{user_id}");
    let (_, seen) = raw(&moderator, Method::GET, &path, None).await;
    for field in [
        "evaluating_kudos",
        "monthly_kudos",
        "suspicious",
        "sharedkey_ids",
        "contact",
        "admin_comment",
        "active_generations",
    ] {
        assert!(seen.get(field).is_some(), "{field} missing: {seen}");
    }
    assert_eq!(
        seen["active_generations"],
        json!({"image": [accepted.id.unwrap()]}),
        "only kinds with active requests, under the public names"
    );
    assert_eq!(seen["monthly_kudos"]["amount"], 0);
    let (_, public) = raw(&app.anonymous(), Method::GET, &path, None).await;
    for field in ["evaluating_kudos", "suspicious", "active_generations"] {
        assert!(public.get(field).is_none(), "{field} shown to anyone");
    }
    let (_, own) = raw(&user, Method::GET, &path, None).await;
    assert!(own.get("active_generations").is_some() && own.get("suspicious").is_none());
}

#[tokio::test]
async fn more_than_five_extra_source_images_is_too_many_extra_source_images() {
    let app = spawn_app().await;
    let (user, _) = app.user("remixer", 1000.0).await;
    let image = json!({"image": "aGVsbG8=", "strength": 1.0});
    let body = json!({"prompt": "a cat", "source_processing": "remix",
                      "extra_source_images": vec![image; 6]});
    let (status, answer) = raw(&user, Method::POST, "/generate/async", Some(body)).await;
    assert_eq!(
        (status, answer["rc"].as_str()),
        (400, Some("TooManyExtraSourceImages"))
    );
}

#[tokio::test]
async fn profane_worker_names_and_infos_are_refused() {
    let app = spawn_app().await;
    let (owner, _) = app.user("owner", 0.0).await;
    let (status, body) = json_of(
        owner
            .request(Method::POST, "/generate/pop")
            .json(&pop_request("fucking worker"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["rc"].as_str()),
        (400, Some("ProfaneWorkerName"))
    );
    let id = registered_worker(&owner, "clean-worker").await;
    let path = format!("/workers/{id}");
    let (status, body) = raw(
        &owner,
        Method::PUT,
        &path,
        Some(json!({"info": "this shit is fast"})),
    )
    .await;
    assert_eq!(
        (status, body["rc"].as_str()),
        (400, Some("ProfaneWorkerInfo"))
    );
    let (status, body) = raw(
        &owner,
        Method::PUT,
        &path,
        Some(json!({"name": "shitty worker"})),
    )
    .await;
    assert_eq!(
        (status, body["rc"].as_str()),
        (400, Some("ProfaneWorkerName"))
    );
    let (status, _) = raw(
        &owner,
        Method::PUT,
        &path,
        Some(json!({"info": "an RTX 4090 in Scunthorpe"})),
    )
    .await;
    assert_eq!(status, 200, "an innocent info is kept");
}

#[tokio::test]
async fn every_pop_carries_upload_urls_whatever_r2_the_request_had() {
    let app = spawn_app().await;
    let (user, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    user.generate_async(&small_request("a cat", 1, false))
        .await
        .unwrap();
    let (_, pop) = raw(
        &owner,
        Method::POST,
        "/generate/pop",
        Some(serde_json::to_value(pop_request("w1")).unwrap()),
    )
    .await;
    assert!(pop["id"].is_string(), "{pop}");
    assert!(pop["r2_upload"]
        .as_str()
        .unwrap()
        .contains("/api/v2/uploads/"));
    assert_eq!(pop["r2_uploads"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_first_empty_pop_counts_every_public_skip_reason_at_zero() {
    let app = spawn_app().await;
    let (owner, _) = app.user("owner", 0.0).await;
    let (status, pop) = raw(
        &owner,
        Method::POST,
        "/generate/pop",
        Some(serde_json::to_value(pop_request("idle")).unwrap()),
    )
    .await;
    assert_eq!(status, 200);
    let skipped = pop["skipped"].as_object().unwrap();
    for key in [
        "bridge_version",
        "untrusted",
        "performance",
        "controlnet",
        "post-processing",
        "lora",
        "nsfw",
        "unsafe_ip",
        "painting",
        "img2img",
        "worker_id",
        "models",
    ] {
        assert_eq!(skipped.get(key), Some(&json!(0)), "{key}: {pop}");
    }
}

#[tokio::test]
async fn cancelling_an_untouched_request_answers_done_false() {
    let app = spawn_app().await;
    let (user, _) = app.user("requester", 1000.0).await;
    let id = user
        .generate_async(&small_request("a cat", 2, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let (status, body) = raw(
        &app.anonymous(),
        Method::DELETE,
        &format!("/generate/status/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["done"], false, "{body}");
    assert_eq!(
        body["waiting"], 2,
        "the state before the cancel, as the public horde"
    );
    assert!(app.anonymous().check(&id).await.unwrap().done);
}

#[tokio::test]
async fn check_counts_kudos_as_the_public_horde_counts_them() {
    let app = spawn_app().await;
    let (user, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let request = small_request("a cat", 2, false);
    let id = user.generate_async(&request).await.unwrap().id.unwrap();
    for _ in 0..2 {
        let pop = owner.pop(&pop_request("w1")).await.unwrap();
        owner
            .submit(&submit_inline(
                &pop,
                &webp(512, 512, [9, 9, 9], [200, 9, 9]),
            ))
            .await
            .unwrap();
    }
    // The fee, then each image's charge added and rounded to cents, then rounded half to
    // even as Python's round().
    let job = horde_core::pricing::job_kudos(&request);
    let charge = horde_core::pricing::requester_charge(&request, job);
    let mut consumed = horde_core::pricing::ACTIVATION_FEE;
    for _ in 0..2 {
        consumed = ((consumed + charge) * 100.0).round() / 100.0;
    }
    let check = app.anonymous().check(&id).await.unwrap();
    assert!(check.done);
    assert_eq!(check.kudos, consumed.round_ties_even(), "{consumed}");
}

#[tokio::test]
async fn pop_ttl_is_the_public_formula() {
    let app = spawn_app().await;
    let (user, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let mut request: ImageRequest = small_request("a big cat", 1, false);
    (request.params.width, request.params.height) = (1024, 1024);
    request.params.steps = Some(50);
    user.generate_async(&request).await.unwrap();
    let mut pop = pop_request("big");
    pop.max_pixels = 1024 * 1024;
    let popped = owner.pop(&pop).await.unwrap();
    // 30 + steps × 2 × (w·h / 512²), at least 150.
    assert_eq!(popped.ttl, Some(30 + 50 * 2 * 4));
}

#[tokio::test]
async fn r2_without_an_upload_is_refused_with_what_the_worker_must_do() {
    let app = spawn_app().await;
    let (user, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    user.generate_async(&small_request("a cat", 1, true))
        .await
        .unwrap();
    let pop = owner.pop(&pop_request("w1")).await.unwrap();
    let submit = submit_with(&pop, Some("R2".into()));
    let (status, body) = raw(
        &owner,
        Method::POST,
        "/generate/submit",
        Some(serde_json::to_value(&submit).unwrap()),
    )
    .await;
    assert_eq!(
        (status, body["rc"].as_str()),
        (400, Some("ImageValidationFailed"))
    );
    let message = body["message"].as_str().unwrap();
    for needed in ["PUT", "r2_upload", "base64", &submit.id] {
        assert!(message.contains(needed), "{needed:?} not in {message:?}");
    }
}

#[tokio::test]
async fn a_429_carries_the_reset_as_flask_limiter_sends_it() {
    let (_app, user, id) = rate_limited_with_a_request().await;
    let path = format!("/generate/status/{id}");
    let mut last = None;
    for _ in 0..11 {
        last = Some(user.request(Method::GET, &path).send().await.unwrap());
    }
    let refused = last.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    let header = |name: &str| {
        refused
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(header("x-ratelimit-limit"), Some(10));
    assert_eq!(header("x-ratelimit-remaining"), Some(0));
    let reset = header("x-ratelimit-reset").expect("X-RateLimit-Reset on a 429");
    assert!((now..=now + 61).contains(&reset), "{reset} vs {now}");
    assert!(header("retry-after").is_some());
}
