//! Text generation end to end (`/generate/text/…`): a request priced by the text model
//! reference, popped by a text worker, submitted, paid and counted, through the same lifecycle
//! as images; the public horde's refusals; and the two kinds kept apart (an image worker never
//! gets a text job, a worker's name is of one kind).

use crate::helpers::*;
use horde_core::text::pricing;
use serde_json::{json, Value};

/// A 3B model of the built-in text model reference (`parameters`: 3 000 000 000).
const MODEL: &str = "koboldcpp/Marx-3B-V3";

/// Calls the coordinator at `root` with `key`, answering the status and the JSON body.
struct Caller<'a> {
    root: &'a str,
    key: String,
}

impl Caller<'_> {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = http()
            .request(method, format!("{}{path}", self.root))
            .header("apikey", &self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.expect("the coordinator answers");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

/// A new trusted user with `kudos`, calling `app`.
async fn caller<'a>(app: &'a TestApp, name: &str, kudos: f64) -> Caller<'a> {
    let request = horde_api::user::TestUserRequest {
        username: name.into(),
        oauth_id: None,
        moderator: false,
        trusted: true,
        kudos,
    };
    let created = app.anonymous().create_test_user(&request).await.unwrap();
    Caller {
        root: &app.root,
        key: created.api_key,
    }
}

fn text_pop(name: &str) -> Value {
    json!({"name": name, "models": [MODEL], "max_length": 512, "max_context_length": 4096,
           "bridge_agent": "KoboldCppEmbedWorker:2:https://github.com/LostRuins/koboldcpp"})
}

#[tokio::test]
async fn a_text_request_is_priced_popped_submitted_paid_and_counted() {
    let app = spawn_app().await;
    let requester = caller(&app, "reader", 100.0).await;
    let owner = caller(&app, "kobold owner", 0.0).await;
    let prompt = "Once upon a time, in a lighthouse by the sea,";
    let (status, accepted) = requester
        .post(
            "/api/v2/generate/text/async",
            json!({"prompt": prompt, "models": [MODEL],
                   "params": {"max_length": 120, "max_context_length": 2048, "temperature": 0.7,
                              "stop_sequence": ["\n\n"]}}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    // 120 tokens × 3 (3B) × 3.4 (2048 of context) / 100 = 12.24 kudos, reported whole.
    let job_kudos = pricing::job_kudos(120, 2048, 3.0);
    assert_eq!(job_kudos, 12.24);
    assert_eq!(accepted["kudos"], json!(12.0));
    assert_eq!(accepted["warnings"][0]["code"], "NoAvailableWorker");
    let id = accepted["id"].as_str().unwrap().to_string();

    let (status, before) = requester
        .get(&format!("/api/v2/generate/text/status/{id}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (before["waiting"].as_u64(), before["done"].as_bool()),
        (Some(1), Some(false))
    );
    assert_eq!(before["is_possible"], false);
    assert_eq!(before["generations"], json!([]));

    let (status, job) = owner
        .post("/api/v2/generate/text/pop", text_pop("kobold"))
        .await;
    assert_eq!(status, 200, "{job}");
    let job_id = job["id"].as_str().expect("a job").to_string();
    assert_eq!(job["model"], MODEL);
    assert_eq!(job["payload"]["prompt"], prompt);
    assert_eq!(job["payload"]["max_length"], 120);
    assert_eq!(job["payload"]["temperature"], 0.7);
    assert_eq!(job["payload"]["stop_sequence"], json!(["\n\n"]));
    assert_eq!(job["payload"]["n"], 1);
    assert_eq!(job["ttl"], 150);

    let text = " there lived a keeper who counted the waves every night until dawn came.";
    let (status, paid) = owner
        .post(
            "/api/v2/generate/text/submit",
            json!({"id": job_id, "generation": text, "state": "ok", "seed": 42}),
        )
        .await;
    assert_eq!(status, 200, "{paid}");
    // Paid for the tokens it delivered (a quarter of its characters, 20 at least) over 125,
    // by the model it ran, a validated backend.
    let terms = pricing::RewardTerms {
        known_multiplier: Some(3.0),
        max_context_length: 2048,
        trusted: true,
        validated_backend: true,
    };
    assert_eq!(paid["reward"], json!(pricing::worker_reward(text, &terms)));
    assert!(paid["reward"].as_f64().unwrap() > 0.0);

    let (_, done) = requester
        .get(&format!("/api/v2/generate/text/status/{id}"))
        .await;
    assert_eq!(done["done"], true, "{done}");
    let generation = &done["generations"][0];
    assert_eq!(generation["text"], text);
    assert_eq!(generation["state"], "ok");
    assert_eq!(generation["worker_name"], "kobold");
    assert_eq!(generation["model"], MODEL);
    assert_eq!(generation["seed"], 42);
    // The requester paid the job's kudos and the horde's fee of 1 a text (and the request's
    // activation fee of 1).
    assert_eq!(done["kudos"], json!((job_kudos + 2.0f64).round()));

    let (_, totals) = requester.get("/api/v2/stats/text/totals").await;
    assert_eq!(
        totals["total"],
        json!({"requests": 1, "tokens": 120}),
        "{totals}"
    );
    let (_, by_model) = requester.get("/api/v2/stats/text/models").await;
    assert_eq!(by_model["total"][MODEL], 1, "{by_model}");

    let (_, workers) = requester.get("/api/v2/workers?type=text").await;
    let listed = &workers[0];
    assert_eq!(
        (listed["name"].as_str(), listed["type"].as_str()),
        (Some("kobold"), Some("text"))
    );
    assert_eq!(
        (
            listed["max_length"].as_u64(),
            listed["max_context_length"].as_u64()
        ),
        (Some(512), Some(4096))
    );
    assert!(listed["performance"]
        .as_str()
        .unwrap()
        .ends_with("tokens per second"));
    let (_, image_workers) = requester.get("/api/v2/workers?type=image").await;
    assert_eq!(image_workers, json!([]));
    let (_, models) = requester.get("/api/v2/status/models?type=text").await;
    assert_eq!(models[0]["name"], MODEL, "{models}");
    assert_eq!(
        (models[0]["type"].as_str(), models[0]["count"].as_u64()),
        (Some("text"), Some(1))
    );
    let (_, image_models) = requester.get("/api/v2/status/models").await;
    assert_eq!(image_models, json!([]), "text models are not image models");

    let (_, me) = requester.get("/api/v2/find_user").await;
    assert_eq!(me["records"]["usage"]["tokens"], 120, "{me}");
    assert_eq!(me["records"]["request"]["text"], 1);
    let (_, worker_owner) = owner.get("/api/v2/find_user").await;
    assert_eq!(worker_owner["records"]["contribution"]["tokens"], 120);
    assert_eq!(worker_owner["records"]["fulfillment"]["text"], 1);
    app.stop().await;
}

#[tokio::test]
async fn the_public_horde_refusals_come_with_its_rc() {
    let app = spawn_app().await;
    let requester = caller(&app, "reader", 100.0).await;
    let cases = [
        (
            json!({"prompt": "hi", "models": [MODEL], "params": {"max_length": 600, "max_context_length": 512}}),
            "TokenOverflow",
        ),
        (
            json!({"prompt": "x".repeat(8 * 2000), "models": [MODEL], "params": {"max_length": 100, "max_context_length": 2048}}),
            "TokenOverflow",
        ),
        (
            json!({"prompt": "hi", "models": ["no/such-model"]}),
            "UnsupportedModel",
        ),
        (
            json!({"prompt": "hi", "models": [MODEL], "softprompt": "none-offers-it"}),
            "BadRequest",
        ),
        (
            json!({"prompt": "hi", "models": [MODEL], "params": {"sampler_order": [0, 1]}}),
            "MissingFullSamplerOrder",
        ),
        (json!({"prompt": "  ", "models": [MODEL]}), "MissingPrompt"),
    ];
    for (body, rc) in cases {
        let (status, refused) = requester
            .post("/api/v2/generate/text/async", body.clone())
            .await;
        assert_eq!(
            (status, refused["rc"].as_str()),
            (400, Some(rc)),
            "{body}: {refused}"
        );
        assert!(refused["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Over the operator's limit: a smaller horde's `[text] max_length`.
    let small = spawn_app_with(|c| c.text.max_length = 256).await;
    let reader = caller(&small, "reader", 100.0).await;
    let (status, refused) = reader
        .post(
            "/api/v2/generate/text/async",
            json!({"prompt": "hi", "models": [MODEL], "params": {"max_length": 300}}),
        )
        .await;
    assert_eq!((status, refused["rc"].as_str()), (400, Some("BadRequest")));
    assert!(
        refused["message"].as_str().unwrap().contains("max_length"),
        "{refused}"
    );
    // Anonymous users get what is free: more tokens than the horde gives away need kudos.
    let anonymous = Caller {
        root: &app.root,
        key: horde_api::ANONYMOUS_API_KEY.into(),
    };
    let (status, refused) = anonymous
        .post(
            "/api/v2/generate/text/async",
            json!({"prompt": "hi", "models": [MODEL], "params": {"max_length": 1024, "max_context_length": 4096}}),
        )
        .await;
    assert_eq!(
        (status, refused["rc"].as_str()),
        (403, Some("KudosUpfront")),
        "{refused}"
    );
    let (status, _) = anonymous
        .post(
            "/api/v2/generate/text/async",
            json!({"prompt": "hi", "models": [MODEL]}),
        )
        .await;
    assert_eq!(status, 202, "80 tokens are free");
    small.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_worker_beyond_its_lengths_skips_and_an_image_worker_never_gets_a_text_job() {
    let app = spawn_app().await;
    let requester = caller(&app, "reader", 1000.0).await;
    let owner = caller(&app, "owner", 0.0).await;
    let (status, _) = requester
        .post(
            "/api/v2/generate/text/async",
            json!({"prompt": "a long story", "models": [MODEL], "params": {"max_length": 400, "max_context_length": 4096}}),
        )
        .await;
    assert_eq!(status, 202);
    let mut short = text_pop("short");
    short["max_length"] = json!(200);
    let (_, skipped) = owner.post("/api/v2/generate/text/pop", short).await;
    assert_eq!(skipped["id"], Value::Null);
    assert_eq!(skipped["skipped"]["max_length"], 1, "{skipped}");
    let mut narrow = text_pop("narrow");
    narrow["max_context_length"] = json!(2048);
    let (_, skipped) = owner.post("/api/v2/generate/text/pop", narrow).await;
    assert_eq!(skipped["skipped"]["max_context_length"], 1, "{skipped}");

    // An image worker offering the same model name: the image queue has no text jobs.
    let image_pop =
        json!({"name": "pictures", "models": ["stable_diffusion"], "max_pixels": 262144});
    let (status, nothing) = owner.post("/api/v2/generate/pop", image_pop).await;
    assert_eq!(status, 200);
    assert_eq!(nothing["id"], Value::Null, "{nothing}");
    // A name is of one kind: the text worker's name cannot pop images, nor the image
    // worker's texts.
    let (status, conflict) = owner
        .post(
            "/api/v2/generate/pop",
            json!({"name": "short", "models": ["stable_diffusion"]}),
        )
        .await;
    assert_eq!(
        (status, conflict["rc"].as_str()),
        (400, Some("PolymorphicNameConflict"))
    );
    let (status, conflict) = owner
        .post("/api/v2/generate/text/pop", text_pop("pictures"))
        .await;
    assert_eq!(
        (status, conflict["rc"].as_str()),
        (400, Some("PolymorphicNameConflict"))
    );

    let (_, job) = owner
        .post("/api/v2/generate/text/pop", text_pop("wide"))
        .await;
    assert!(
        job["id"].is_string(),
        "a worker within both lengths takes it: {job}"
    );
    app.stop().await;
}

#[tokio::test]
async fn text_requests_are_durable_cancellable_and_faults_pay_nothing() {
    let app = spawn_app().await;
    let requester = caller(&app, "reader", 1000.0).await;
    let (_, accepted) = requester
        .post(
            "/api/v2/generate/text/async",
            json!({"prompt": "first", "models": [MODEL], "params": {"n": 2}}),
        )
        .await;
    let id = accepted["id"].as_str().unwrap().to_string();
    let key = requester.key.clone();
    let app = app.restart().await;
    let requester = Caller {
        root: &app.root,
        key,
    };
    let owner = caller(&app, "owner", 0.0).await;
    let (status, kept) = requester
        .get(&format!("/api/v2/generate/text/status/{id}"))
        .await;
    assert_eq!((status, kept["waiting"].as_u64()), (200, Some(2)), "{kept}");

    let (_, job) = owner
        .post("/api/v2/generate/text/pop", text_pop("kobold"))
        .await;
    let job_id = job["id"].as_str().unwrap().to_string();
    let (status, faulted) = owner
        .post(
            "/api/v2/generate/text/submit",
            json!({"id": job_id, "state": "faulted"}),
        )
        .await;
    assert_eq!((status, faulted["reward"].as_f64()), (200, Some(0.0)));
    let (status, again) = owner
        .post(
            "/api/v2/generate/text/submit",
            json!({"id": job_id, "generation": "late", "state": "ok"}),
        )
        .await;
    assert_eq!(
        (status, again["rc"].as_str()),
        (400, Some("AbortedGen")),
        "{again}"
    );

    let (status, cancelled) = requester
        .delete(&format!("/api/v2/generate/text/status/{id}"))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    let (_, after) = requester
        .get(&format!("/api/v2/generate/text/status/{id}"))
        .await;
    assert_eq!(after["done"], true, "{after}");
    let (_, nothing) = owner
        .post("/api/v2/generate/text/pop", text_pop("kobold"))
        .await;
    assert_eq!(
        nothing["id"],
        Value::Null,
        "nothing is handed out after a cancel"
    );
    let (status, missing) = requester
        .get("/api/v2/generate/text/status/00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(
        (status, missing["rc"].as_str()),
        (404, Some("RequestNotFound"))
    );
    app.stop().await;
}

#[tokio::test]
async fn late_text_jobs_go_back_and_finished_texts_are_swept() {
    let app = spawn_app_with(|c| {
        c.jobs.deadline_floor_secs = 1;
        c.jobs.deadline_ceiling_secs = 1;
        c.requests.idle_expiry_secs = 3600;
        c.requests.retention_secs = 60;
    })
    .await;
    let requester = caller(&app, "reader", 100.0).await;
    let owner = caller(&app, "owner", 0.0).await;
    let (_, accepted) = requester
        .post(
            "/api/v2/generate/text/async",
            json!({"prompt": "late", "models": [MODEL]}),
        )
        .await;
    let id = accepted["id"].as_str().unwrap().to_string();
    let (_, slow) = owner
        .post("/api/v2/generate/text/pop", text_pop("slow"))
        .await;
    let now = horde_server::clock::now();
    assert_eq!(horde_server::sweeper::step(&app.state, now).await, 0);
    horde_server::sweeper::step(&app.state, now + 5).await;
    let (_, status) = requester
        .get(&format!("/api/v2/generate/text/status/{id}"))
        .await;
    assert_eq!(
        (status["restarted"].as_u64(), status["waiting"].as_u64()),
        (Some(1), Some(1)),
        "{status}"
    );
    let (status_code, late) = owner
        .post(
            "/api/v2/generate/text/submit",
            json!({"id": slow["id"], "generation": "too late", "state": "ok"}),
        )
        .await;
    assert_eq!(
        (status_code, late["rc"].as_str()),
        (400, Some("AbortedGen"))
    );

    let (_, again) = owner
        .post("/api/v2/generate/text/pop", text_pop("fast"))
        .await;
    let (code, _) = owner
        .post(
            "/api/v2/generate/text/submit",
            json!({"id": again["id"], "generation": " in time", "state": "ok"}),
        )
        .await;
    assert_eq!(code, 200);
    let (_, done) = requester
        .get(&format!("/api/v2/generate/text/status/{id}"))
        .await;
    assert_eq!(done["generations"][0]["text"], " in time");
    horde_server::sweeper::step(&app.state, horde_server::clock::now() + 120).await;
    let (code, gone) = requester
        .get(&format!("/api/v2/generate/text/status/{id}"))
        .await;
    assert_eq!((code, gone["rc"].as_str()), (404, Some("RequestNotFound")));
    app.stop().await;
}

#[tokio::test]
async fn text_requests_count_in_the_daily_quota_and_a_shared_keys_tokens() {
    let app = spawn_app_with(|c| {
        c.quotas.trusted = horde_core::quota::Quota {
            texts_per_day: 2,
            tokens_per_day: 1000.0,
            ..Default::default()
        };
    })
    .await;
    let requester = caller(&app, "reader", 1000.0).await;
    let ask = |max_length: u32| json!({"prompt": "q", "models": [MODEL], "params": {"max_length": max_length}});
    let (code, _) = requester
        .post("/api/v2/generate/text/async", ask(600))
        .await;
    assert_eq!(code, 202);
    let (code, over) = requester
        .post("/api/v2/generate/text/async", ask(500))
        .await;
    assert_eq!(
        (code, over["rc"].as_str()),
        (429, Some("DailyQuotaExceeded")),
        "tokens: {over}"
    );
    let (code, _) = requester
        .post("/api/v2/generate/text/async", ask(400))
        .await;
    assert_eq!(code, 202);
    let (code, over) = requester.post("/api/v2/generate/text/async", ask(16)).await;
    assert_eq!(
        (code, over["rc"].as_str()),
        (429, Some("DailyQuotaExceeded")),
        "texts: {over}"
    );

    // A shared key's max_text_tokens bounds each text asked with it.
    let (code, key) = requester
        .send(
            reqwest::Method::PUT,
            "/api/v2/sharedkeys",
            Some(json!({"kudos": 500, "name": "texts", "max_text_tokens": 100})),
        )
        .await;
    assert_eq!(code, 200, "{key}");
    let shared = Caller {
        root: &app.root,
        key: key["id"].as_str().unwrap().to_string(),
    };
    let (code, refused) = shared.post("/api/v2/generate/text/async", ask(200)).await;
    assert_eq!(
        (code, refused["rc"].as_str()),
        (400, Some("BadRequest")),
        "{refused}"
    );
    assert!(refused["message"].as_str().unwrap().contains("100"));
    app.stop().await;
}

#[tokio::test]
async fn the_dashboard_shows_text_workers_and_the_text_queue() {
    let app = spawn_app().await;
    let requester = caller(&app, "reader", 100.0).await;
    let owner = caller(&app, "owner", 0.0).await;
    owner
        .post("/api/v2/generate/text/pop", text_pop("scribe"))
        .await;
    requester
        .post(
            "/api/v2/generate/text/async",
            json!({"prompt": "queued", "models": [MODEL], "params": {"max_length": 100}}),
        )
        .await;
    let page = app.page("/").await;
    let table = &page[page
        .find("<h2>Text models</h2>")
        .expect("a text models table")..];
    let row = &table[table.find(MODEL).expect("the text model listed")..];
    let row = &row[..row.find("</tr>").unwrap()];
    // One thread serves it, one text waits, 100 tokens queued.
    assert!(
        row.contains("<td class=\"n\">1</td><td class=\"n\">1</td><td class=\"n\">100</td>"),
        "{row}"
    );
    assert!(
        page.contains("scribe"),
        "the text worker is in the workers table"
    );
    assert!(page.contains("tokens/s"), "its speed in tokens a second");
    app.stop().await;
}

#[tokio::test]
async fn text_endpoints_are_rate_limited_as_the_public_horde_limits_them() {
    let app = spawn_app_with(|c| c.api.rate_limits = true).await;
    let requester = caller(&app, "reader", 100.0).await;
    with_a_minute_window_ahead(std::time::Duration::from_secs(15)).await;
    // 2 a second per key on /generate/text/async, counted apart from images'. Five calls in
    // well under a second cross at most one window boundary, so one window holds three.
    let ask = json!({"prompt": "q", "models": [MODEL]});
    let mut codes = vec![];
    for _ in 0..5 {
        codes.push(
            requester
                .post("/api/v2/generate/text/async", ask.clone())
                .await
                .0,
        );
    }
    assert_eq!(codes[0], 202);
    assert!(codes.contains(&429), "{codes:?}");
    assert!(codes.iter().all(|c| *c == 202 || *c == 429), "{codes:?}");
    let image = requester
        .post(
            "/api/v2/generate/async",
            json!({"prompt": "a cat", "params": {"steps": 10}}),
        )
        .await;
    assert_eq!(image.0, 202, "images have their own counters: {}", image.1);
    // 60 a minute per address on a text request's status.
    let id = "00000000-0000-0000-0000-000000000000";
    let mut last = 0;
    for _ in 0..61 {
        last = requester
            .get(&format!("/api/v2/generate/text/status/{id}"))
            .await
            .0;
    }
    assert_eq!(last, 429);
    app.stop().await;
}

#[tokio::test]
async fn the_text_model_reference_is_read_from_a_file_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db.json");
    let one = json!({"test/Custom-7B": {"baseline": "llama", "parameters": 7_000_000_000_u64, "nsfw": false}});
    std::fs::write(&file, one.to_string()).unwrap();
    let path = file.to_string_lossy().into_owned();
    let app = spawn_app_with(|c| c.text.reference = path).await;
    let requester = caller(&app, "reader", 100.0).await;
    let ask =
        |model: &str| json!({"prompt": "q", "models": [model], "params": {"max_length": 100}});
    let (code, priced) = requester
        .post("/api/v2/generate/text/async", ask("test/Custom-7B"))
        .await;
    assert_eq!(code, 202, "{priced}");
    // 100 tokens × 7 (7B) × 3.4 / 100 = 23.8, reported whole.
    assert_eq!(priced["kudos"], json!(24.0));
    let (code, refused) = requester
        .post("/api/v2/generate/text/async", ask(MODEL))
        .await;
    assert_eq!(
        (code, refused["rc"].as_str()),
        (400, Some("UnsupportedModel")),
        "the built-in reference is not read when a file is named"
    );

    let mut two = one.clone();
    two["test/Other-13B"] = json!({"baseline": "llama", "parameters": "13000000000"});
    std::fs::write(&file, two.to_string()).unwrap();
    assert!(app.state.reload_models().await);
    let (code, _) = requester
        .post("/api/v2/generate/text/async", ask("test/Other-13B"))
        .await;
    assert_eq!(code, 202, "the reloaded reference knows the new model");
    std::fs::write(&file, "not json").unwrap();
    assert!(
        !app.state.reload_models().await,
        "a broken file is not loaded"
    );
    let (code, _) = requester
        .post("/api/v2/generate/text/async", ask("test/Other-13B"))
        .await;
    assert_eq!(code, 202, "a failed reload keeps the loaded reference");
    app.stop().await;
}
