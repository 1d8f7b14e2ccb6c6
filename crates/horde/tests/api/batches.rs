//! Batches of prompts (`POST /api/v2/generate/batch`, beyond the public horde): accepted whole
//! or not at all, one request per prompt under one batch id, charged, rate-limited and quota'd
//! per member, handed to a worker that runs a prompt per image in one pop, followed and
//! cancelled as a whole, and kept across a restart.

use crate::helpers::*;
use horde_api::image::{PopRequest, PopResponse, SubmitRequest};
use horde_api::user::TestUserRequest;
use horde_client::Client;
use serde_json::{json, Value};

const RED: [u8; 3] = [220, 30, 30];
const BLUE: [u8; 3] = [30, 30, 220];

/// A registered, trusted user with `kudos`: their key and a client acting as them.
async fn user(app: &TestApp, name: &str, kudos: f64) -> (String, Client) {
    let request = TestUserRequest {
        username: name.into(),
        oauth_id: None,
        moderator: false,
        trusted: true,
        kudos,
    };
    let created = app.anonymous().create_test_user(&request).await.unwrap();
    (created.api_key.clone(), app.client(&created.api_key))
}

/// Three members: a cat with its own seed, a dog with a negative prompt, a fox.
fn three_prompts() -> Value {
    json!([
        {"prompt": "a cat", "seed": "11"},
        {"prompt": "a dog", "negative_prompt": "blurry"},
        {"prompt": "a fox"},
    ])
}

/// A batch body: `prompts` with small shared parameters.
fn batch_body(prompts: Value) -> Value {
    json!({
        "prompts": prompts,
        "params": {"steps": 10},
        "models": ["stable_diffusion"],
    })
}

/// Sends `body` to `POST /generate/batch` with `key`: the status and the JSON answer.
async fn post_batch(app: &TestApp, key: &str, body: &Value) -> (u16, Value) {
    let response = http()
        .post(format!("{}/api/v2/generate/batch", app.root))
        .header("apikey", key)
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// `GET` or `DELETE /generate/batch/{id}`: the status and the JSON answer.
async fn batch_call(app: &TestApp, method: reqwest::Method, id: &str) -> (u16, Value) {
    let response = http()
        .request(method, format!("{}/api/v2/generate/batch/{id}", app.root))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A pop for up to `amount` images, with or without the per-image prompts opt-in; room for
/// many 512×512 images.
fn pop_for(worker: &str, amount: u32, batch_prompts: bool) -> PopRequest {
    let mut pop = pop_request(worker);
    pop.amount = amount;
    pop.max_pixels = 2048 * 2048;
    pop.batch_prompts = batch_prompts;
    pop
}

/// The submission of the `index`-th job of `pop` with a real WebP and the job's seed.
fn submit_job(pop: &PopResponse, index: usize) -> SubmitRequest {
    use base64::Engine;
    let seeds = pop.payload["seeds"].as_array();
    let seed = seeds
        .map(|s| s[index].as_str().unwrap().parse().unwrap())
        .or_else(|| pop.payload["seed"].as_str().and_then(|s| s.parse().ok()));
    SubmitRequest {
        id: pop.ids[index].clone(),
        generation: Some(
            base64::engine::general_purpose::STANDARD.encode(webp(512, 512, RED, BLUE)),
        ),
        state: Default::default(),
        seed,
        censored: false,
        gen_metadata: vec![],
    }
}

fn ids_of(answer: &Value) -> Vec<String> {
    answer["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_batch_of_three_is_three_requests_popped_together_and_charged_for_three() {
    let app = spawn_app().await;
    let (key, requester) = user(&app, "requester", 100.0).await;
    let (_, owner) = user(&app, "owner", 0.0).await;

    let (status, accepted) = post_batch(&app, &key, &batch_body(three_prompts())).await;
    assert_eq!(status, 202, "{accepted}");
    let batch_id = accepted["id"].as_str().unwrap().to_string();
    let ids = ids_of(&accepted);
    assert_eq!(ids.len(), 3);
    assert!(ids
        .iter()
        .chain([&batch_id])
        .all(|id| uuid::Uuid::parse_str(id).is_ok()));
    assert!(!ids.contains(&batch_id) && ids[0] != ids[1] && ids[1] != ids[2]);
    assert!(accepted["kudos"].as_f64().unwrap() > 0.0);
    let after_fees = requester.find_user().await.unwrap().kudos;
    assert!(
        (after_fees - 97.0).abs() < 1e-9,
        "three activation fees: {after_fees}"
    );
    assert_eq!(requester.check(&ids[1]).await.unwrap().waiting, 1);

    let pop = owner.pop(&pop_for("batcher", 3, true)).await.unwrap();
    assert_eq!(pop.ids.len(), 3, "one pop takes all three members: {pop:?}");
    assert_eq!(pop.payload["n_iter"], 3);
    assert_eq!(
        pop.payload["prompts"],
        json!(["a cat", "a dog ### blurry", "a fox"])
    );
    let seeds = pop.payload["seeds"].as_array().unwrap();
    assert_eq!(seeds.len(), 3);
    assert_eq!(seeds[0], "11", "the member's own seed");
    assert_eq!(pop.payload["seed"], "11");
    assert_eq!(pop.r2_uploads.len(), 3);
    for id in &ids {
        let check = requester.check(id).await.unwrap();
        assert_eq!((check.waiting, check.processing), (0, 1), "{id}");
    }

    let mut rewards = 0.0;
    for index in 0..3 {
        rewards += owner.submit(&submit_job(&pop, index)).await.unwrap().reward;
    }
    assert!(rewards > 0.0);
    let (code, whole) = batch_call(&app, reqwest::Method::GET, &batch_id).await;
    assert_eq!(code, 200, "{whole}");
    assert_eq!(whole["id"], batch_id.as_str());
    assert_eq!(
        (whole["finished"].as_u64(), whole["done"].as_bool()),
        (Some(3), Some(true))
    );
    let members = whole["members"].as_array().unwrap();
    let listed: Vec<&str> = members.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    for (index, member) in members.iter().enumerate() {
        assert_eq!(member["index"], index);
        assert!(
            member["kudos"].as_f64().unwrap() > 1.0,
            "fee and charge: {member}"
        );
    }
    let charged = whole["kudos"].as_f64().unwrap();
    let left = requester.find_user().await.unwrap().kudos;
    // Reported kudos are rounded to whole ones, as on the public horde.
    assert!(
        (100.0 - charged - left).abs() <= 0.5,
        "charged {charged}, left {left}"
    );
    assert!(
        100.0 - left > 3.0 + rewards / 2.0,
        "three fees and three images: {left}"
    );
    let cat = requester.status(&ids[0]).await.unwrap();
    assert_eq!(cat.generations[0].seed, "11");
    app.stop().await;
}

#[tokio::test]
async fn without_the_opt_in_or_with_amount_1_a_pop_takes_one_member_in_the_public_format() {
    let app = spawn_app().await;
    let (key, _) = user(&app, "requester", 100.0).await;
    let (_, owner) = user(&app, "owner", 0.0).await;
    let (status, _) = post_batch(&app, &key, &batch_body(three_prompts())).await;
    assert_eq!(status, 202);

    let plain = owner.pop(&pop_for("plain", 3, false)).await.unwrap();
    assert_eq!(plain.ids.len(), 1);
    assert_eq!(plain.payload["prompt"], "a cat");
    assert!(plain.payload.get("prompts").is_none() && plain.payload.get("seeds").is_none());
    let single = owner.pop(&pop_for("single", 1, true)).await.unwrap();
    assert_eq!(single.ids.len(), 1);
    assert!(single.payload.get("prompts").is_none());
    let rest = owner.pop(&pop_for("rest", 3, true)).await.unwrap();
    assert_eq!(rest.ids.len(), 1, "only the fox was left");
    assert_eq!(rest.payload["prompt"], "a fox");
    app.stop().await;
}

#[tokio::test]
async fn a_batch_with_one_refused_member_is_refused_whole_and_nothing_is_stored() {
    let app = spawn_app_with(|c| c.requests.max_batch_prompts = 3).await;
    let (key, requester) = user(&app, "requester", 100.0).await;
    let prompts = json!([{"prompt": "a cat"}, {"prompt": "   "}, {"prompt": "a fox"}]);
    let (status, refused) = post_batch(&app, &key, &batch_body(prompts)).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["rc"], "MissingPrompt");

    let four = json!([{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}, {"prompt": "d"}]);
    for prompts in [json!([]), four] {
        let (status, refused) = post_batch(&app, &key, &batch_body(prompts)).await;
        assert_eq!(status, 400, "{refused}");
        assert_eq!(refused["rc"], "ValidationError");
        assert!(refused["errors"]["prompts"].is_string(), "{refused}");
    }
    let long = "x".repeat(16_001);
    let (status, refused) = post_batch(&app, &key, &batch_body(json!([{"prompt": long}]))).await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["errors"]["prompts.0.prompt"].is_string(),
        "{refused}"
    );

    let mut dry = batch_body(three_prompts());
    dry["dry_run"] = json!(true);
    let (status, priced) = post_batch(&app, &key, &dry).await;
    assert_eq!(status, 200, "{priced}");
    assert!(priced["kudos"].as_f64().unwrap() > 3.0, "{priced}");
    assert!(priced.get("id").is_none() && priced["ids"] == json!([]));

    assert_eq!(app.state.store.request_count().await.unwrap(), 0);
    assert_eq!(app.state.live.waiting_count(), 0);
    let kudos = requester.find_user().await.unwrap().kudos;
    assert_eq!(kudos, 100.0, "no activation fee was charged");
    app.stop().await;
}

#[tokio::test]
async fn members_count_in_the_daily_quota_and_the_rate_limits() {
    let app = spawn_app_with(|c| {
        c.quotas.trusted = horde_core::quota::Quota {
            images_per_day: 5,
            megapixelsteps_per_day: 0.0,
            ..Default::default()
        };
        c.api.rate_limits = true;
        c.limits.generate_per_ip = vec![];
        c.limits.generate_per_key = horde_core::ratelimit::Limit::per_minute(6);
    })
    .await;
    let (key, requester) = user(&app, "requester", 100.0).await;
    with_a_minute_window_ahead(std::time::Duration::from_secs(20)).await;
    let (status, _) = post_batch(&app, &key, &batch_body(three_prompts())).await;
    assert_eq!(status, 202);
    let (status, refused) = post_batch(&app, &key, &batch_body(three_prompts())).await;
    assert_eq!(
        (status, refused["rc"].as_str()),
        (429, Some("DailyQuotaExceeded"))
    );
    // 3 members and the refused batch's 3 are 6 requests of the per-key budget of 6 a minute.
    let refused = requester
        .generate_async(&small_request("one more", 1, false))
        .await
        .unwrap_err();
    assert!(
        format!("{refused:?}").contains("RateLimited"),
        "{refused:?}"
    );
    assert_eq!(app.state.store.request_count().await.unwrap(), 3);
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_batch_cancels_every_member_not_done() {
    let app = spawn_app().await;
    let (key, requester) = user(&app, "requester", 100.0).await;
    let (_, owner) = user(&app, "owner", 0.0).await;
    let (_, accepted) = post_batch(&app, &key, &batch_body(three_prompts())).await;
    let batch_id = accepted["id"].as_str().unwrap().to_string();
    let ids = ids_of(&accepted);
    let pop = owner.pop(&pop_for("plain", 1, false)).await.unwrap();
    assert_eq!(pop.ids.len(), 1);

    let (code, after) = batch_call(&app, reqwest::Method::DELETE, &batch_id).await;
    assert_eq!(code, 200, "{after}");
    assert_eq!(after["waiting"], 0);
    assert_eq!(after["processing"], 1, "the job in flight may still finish");
    let members = after["members"].as_array().unwrap();
    assert_eq!(
        members
            .iter()
            .map(|m| m["done"].as_bool().unwrap())
            .collect::<Vec<_>>(),
        vec![false, true, true]
    );
    let nothing = owner.pop(&pop_for("late", 3, true)).await.unwrap();
    assert!(nothing.ids.is_empty(), "nothing more is handed out");
    owner.submit(&submit_job(&pop, 0)).await.unwrap();
    let (_, whole) = batch_call(&app, reqwest::Method::GET, &batch_id).await;
    assert_eq!(
        (whole["done"].as_bool(), whole["finished"].as_u64()),
        (Some(true), Some(1))
    );
    assert_eq!(
        requester.status(&ids[0]).await.unwrap().generations.len(),
        1
    );
    let (code, missing) = batch_call(&app, reqwest::Method::GET, &ids[0]).await;
    assert_eq!(
        (code, missing["rc"].as_str()),
        (404, Some("RequestNotFound"))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_batch_survives_a_restart_and_is_still_popped_together() {
    let app = spawn_app().await;
    let (key, _) = user(&app, "requester", 100.0).await;
    let (_, accepted) = post_batch(&app, &key, &batch_body(three_prompts())).await;
    let batch_id = accepted["id"].as_str().unwrap().to_string();
    let ids = ids_of(&accepted);

    let app = app.restart().await;
    let (code, whole) = batch_call(&app, reqwest::Method::GET, &batch_id).await;
    assert_eq!(code, 200, "{whole}");
    let listed: Vec<&str> = whole["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(whole["waiting"], 3);
    let (_, owner) = user(&app, "owner", 0.0).await;
    let pop = owner.pop(&pop_for("batcher", 3, true)).await.unwrap();
    assert_eq!(pop.ids.len(), 3, "still one batch after the restart");
    app.stop().await;
}

/// The real worker (tiny SD 1.5 checkpoint) against the real coordinator: it pops with
/// `batch_prompts`, gets the three members in one pop, makes them in one engine pass with a
/// prompt and seed each, and submits each image under its member's job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_makes_three_members_in_one_pop_and_one_engine_pass() {
    use crate::worker::{start_worker, tiny_checkpoint, worker_config, MODEL};
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = tiny_checkpoint(dir.path());
    let (key, requester) = user(&app, "requester", 100.0).await;
    let body = json!({
        "prompts": [
            {"prompt": "a red lighthouse", "seed": "5"},
            {"prompt": "a green field", "negative_prompt": "fog", "seed": "6"},
            {"prompt": "a blue sea", "seed": "7"},
        ],
        "params": {"steps": 4, "width": 64, "height": 64},
        "models": [MODEL],
        "r2": false,
    });
    let (status, accepted) = post_batch(&app, &key, &body).await;
    assert_eq!(status, 202, "{accepted}");
    let batch_id = accepted["id"].as_str().unwrap().to_string();
    let (owner_key, _) = user(&app, "gpu-owner", 0.0).await;
    let mut config = worker_config(&app.root, owner_key, &checkpoint);
    (config.amount, config.max_pixels) = (Some(3), Some(256 * 256));
    let (stop, task) = start_worker(config);

    let mut done = false;
    for _ in 0..600 {
        let (_, whole) = batch_call(&app, reqwest::Method::GET, &batch_id).await;
        if whole["done"] == true {
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(done, "the batch did not finish within a minute");
    stop.send(true).unwrap();
    let summary = task.await.unwrap();
    assert_eq!(
        (summary.jobs_done, summary.images_done),
        (1, 3),
        "one pop, one engine pass: {summary:?}"
    );
    let mut images = vec![];
    for (id, seed) in ids_of(&accepted).iter().zip(["5", "6", "7"]) {
        let status = requester.status(id).await.unwrap();
        assert_eq!(status.generations.len(), 1);
        let generation = &status.generations[0];
        assert_eq!(generation.seed, seed, "each member made with its own seed");
        let image = base64_decode(&generation.img);
        assert_eq!(halves_of(&image).0, (64, 64));
        images.push(image);
    }
    assert!(images[0] != images[1] && images[1] != images[2]);
    app.stop().await;
}

/// Upfront kudos count every member: a user who could pay for one member's projected cost
/// upfront, but not two, has a batch of two refused whole, and a batch of one accepted.
#[tokio::test]
async fn upfront_kudos_count_the_members_together() {
    let app = spawn_app().await;
    let (rich, _) = user(&app, "rich", 1000.0).await;
    // 50 steps need their kudos upfront (more than 40).
    let member = |prompt: &str| json!({"prompt": prompt});
    let body = |prompts: Value, dry: bool| json!({"prompts": prompts, "params": {"steps": 50}, "models": ["stable_diffusion"], "dry_run": dry});
    let (status, priced) = post_batch(&app, &rich, &body(json!([member("a cat")]), true)).await;
    assert_eq!(status, 200, "{priced}");
    let one = priced["kudos"].as_f64().unwrap();
    // An account without an OAuth identity has a floor of 14.
    let request = TestUserRequest {
        username: "modest".into(),
        oauth_id: None,
        moderator: false,
        trusted: false,
        kudos: 14.0 + 1.5 * one,
    };
    let key = app
        .anonymous()
        .create_test_user(&request)
        .await
        .unwrap()
        .api_key;
    let two = json!([member("a cat"), member("a dog")]);
    let (status, refused) = post_batch(&app, &key, &body(two, false)).await;
    assert_eq!(
        (status, refused["rc"].as_str()),
        (403, Some("KudosUpfront")),
        "{refused}"
    );
    assert_eq!(app.state.store.request_count().await.unwrap(), 0);
    let (status, accepted) = post_batch(&app, &key, &body(json!([member("a cat")]), false)).await;
    assert_eq!(status, 202, "{accepted}");
    app.stop().await;
}
