//! Interrogation ("alchemy") through the coordinator: a request of several forms on a base64
//! image, each form popped by an alchemist that runs it (the first wanted form it runs), its
//! source downloaded from the signed URL, results submitted (a post-processor's image uploaded
//! first), the status of each form, the kudos, a fault, a cancel; the public horde's refusals.

use crate::helpers::*;
use serde_json::{json, Value};

/// Calls the coordinator with `key`, answering the status and the JSON body.
async fn call(
    app: &TestApp,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call_as(app, key, method.as_str(), path, body).await
}

async fn key_of(app: &TestApp, name: &str, kudos: f64) -> String {
    let request = horde_api::user::TestUserRequest {
        username: name.into(),
        oauth_id: None,
        moderator: false,
        trusted: true,
        kudos,
    };
    app.anonymous()
        .create_test_user(&request)
        .await
        .unwrap()
        .api_key
}

fn pop(name: &str, forms: &[&str]) -> Value {
    json!({"name": name, "forms": forms, "max_tiles": 16})
}

#[tokio::test]
async fn an_interrogation_runs_each_form_on_an_alchemist_that_runs_it() {
    let app = spawn_app().await;
    let requester = key_of(&app, "curious", 100.0).await;
    let alchemist = key_of(&app, "alchemist", 0.0).await;
    let image = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        webp(600, 400, [200, 10, 10], [10, 10, 200]),
    );
    let (code, accepted) = call(
        &app,
        &requester,
        reqwest::Method::POST,
        "/api/v2/interrogate/async",
        Some(json!({"forms": [{"name": "caption"}, {"name": "nsfw"}, {"name": "RealESRGAN_x2plus"}, {"name": "caption"}],
                    "source_image": image})),
    )
    .await;
    assert_eq!(code, 202, "{accepted}");
    // caption 1 + nsfw 1 + the upscaler 3 × 2 tiles (600×400), each with the horde's 1 and
    // 1 more for slow workers.
    assert_eq!(accepted["kudos"], json!(14.0));
    let id = accepted["id"].as_str().unwrap().to_string();
    let status_path = format!("/api/v2/interrogate/status/{id}");
    let (_, status) = call(&app, &requester, reqwest::Method::GET, &status_path, None).await;
    assert_eq!(status["state"], "waiting", "{status}");
    let names: Vec<&str> = status["forms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["form"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["caption", "nsfw", "RealESRGAN_x2plus"],
        "a form asked twice is kept once"
    );

    // An nsfw-only alchemist gets the nsfw form, and nothing more.
    let (_, popped) = call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/pop",
        Some(pop("judge", &["nsfw"])),
    )
    .await;
    let form = &popped["forms"][0];
    assert_eq!(form["form"], "nsfw", "{popped}");
    assert!(form.get("r2_upload").is_none());
    let source = http()
        .get(form["source_image"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(source.status().as_u16(), 200);
    let bytes = source.bytes().await.unwrap();
    let decoded = image::load_from_memory(&bytes).unwrap();
    assert_eq!(
        (decoded.width(), decoded.height()),
        (600, 400),
        "the stored source, as sent"
    );
    let (_, nothing) = call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/pop",
        Some(pop("judge", &["nsfw"])),
    )
    .await;
    assert_eq!(nothing["forms"], json!([]));
    let (code, paid) = call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/submit",
        Some(json!({"id": form["id"], "result": {"nsfw": false}})),
    )
    .await;
    assert_eq!((code, paid["reward"].as_f64()), (200, Some(1.0)), "{paid}");

    // A second alchemist runs the caption, then the upscaler, uploading its image first.
    let (_, popped) = call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/pop",
        Some(pop("scribe", &["caption", "RealESRGAN_x2plus"])),
    )
    .await;
    let caption = popped["forms"][0].clone();
    assert_eq!(caption["form"], "caption");
    call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/submit",
        Some(json!({"id": caption["id"], "result": {"caption": "a red and blue flag"}})),
    )
    .await;
    let (_, popped) = call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/pop",
        Some(pop("scribe", &["caption", "RealESRGAN_x2plus"])),
    )
    .await;
    let upscale = popped["forms"][0].clone();
    assert_eq!(upscale["form"], "RealESRGAN_x2plus");
    let upload = upscale["r2_upload"]
        .as_str()
        .expect("an upload URL for a post-processor")
        .to_string();
    let (code, early) = call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/submit",
        Some(json!({"id": upscale["id"], "result": {"RealESRGAN_x2plus": "R2"}})),
    )
    .await;
    assert_eq!(
        (code, early["rc"].as_str()),
        (400, Some("ImageValidationFailed")),
        "nothing uploaded yet"
    );
    let too_big = http()
        .put(&upload)
        .body(webp(1800, 1200, [1; 3], [1; 3]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        too_big.status().as_u16(),
        400,
        "3× is no size an upscaler gives back"
    );
    let uploaded = http()
        .put(&upload)
        .body(webp(1200, 800, [1; 3], [1; 3]))
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status().as_u16(), 200, "twice the source's size");
    let (code, paid) = call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/submit",
        Some(json!({"id": upscale["id"], "result": {"RealESRGAN_x2plus": "R2"}})),
    )
    .await;
    assert_eq!((code, paid["reward"].as_f64()), (200, Some(6.0)), "{paid}");

    let (_, done) = call(&app, &requester, reqwest::Method::GET, &status_path, None).await;
    assert_eq!(done["state"], "done", "{done}");
    let forms = done["forms"].as_array().unwrap();
    assert_eq!(
        forms[0]["result"],
        json!({"caption": "a red and blue flag"})
    );
    assert_eq!(forms[0]["worker_name"], "scribe");
    assert_eq!(forms[1]["result"], json!({"nsfw": false}));
    let url = forms[2]["result"]["RealESRGAN_x2plus"].as_str().unwrap();
    let image = http().get(url).send().await.unwrap();
    assert_eq!(image.status().as_u16(), 200);
    let (_, me) = call(
        &app,
        &requester,
        reqwest::Method::GET,
        "/api/v2/find_user",
        None,
    )
    .await;
    assert_eq!(
        me["kudos"],
        json!(100.0 - 1.0 - 14.0),
        "the activation fee and the three forms: {me}"
    );
    assert_eq!(me["records"]["request"]["interrogation"], 3);
    let (_, workers) = call(
        &app,
        &requester,
        reqwest::Method::GET,
        "/api/v2/workers?type=interrogation",
        None,
    )
    .await;
    let names: Vec<&str> = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["judge", "scribe"]);
    assert_eq!(workers[1]["forms"], json!(["caption", "RealESRGAN_x2plus"]));
    app.stop().await;
}

#[tokio::test]
async fn refusals_faults_and_cancels_of_interrogations() {
    let app = spawn_app().await;
    let requester = key_of(&app, "curious", 100.0).await;
    let alchemist = key_of(&app, "alchemist", 0.0).await;
    let ask = |forms: Value, source: &str| json!({"forms": forms, "source_image": source});
    for (body, status, rc) in [
        (
            ask(json!([{"name": "telepathy"}]), "https://example.com/a.png"),
            400,
            "BadRequest",
        ),
        (
            ask(json!([]), "https://example.com/a.png"),
            400,
            "ValidationError",
        ),
        (
            ask(json!([{"name": "caption"}]), "bm90IGFuIGltYWdl"),
            400,
            "SourceImageUnreadable",
        ),
        (
            ask(json!([{"name": "GFPGAN"}]), "https://example.com/a.png"),
            400,
            "BadRequest",
        ),
    ] {
        let (code, refused) = call(
            &app,
            &requester,
            reqwest::Method::POST,
            "/api/v2/interrogate/async",
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (code, refused["rc"].as_str()),
            (status, Some(rc)),
            "{body}: {refused}"
        );
    }
    // A URL source is passed to the alchemist as sent.
    let (code, accepted) = call(
        &app,
        &requester,
        reqwest::Method::POST,
        "/api/v2/interrogate/async",
        Some(ask(
            json!([{"name": "caption"}, {"name": "interrogation"}]),
            "https://example.com/a.png",
        )),
    )
    .await;
    assert_eq!(code, 202);
    let id = accepted["id"].as_str().unwrap().to_string();
    let (_, popped) = call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/pop",
        Some(pop("seer", &["caption", "interrogation"])),
    )
    .await;
    let form = popped["forms"][0].clone();
    assert_eq!(form["source_image"], "https://example.com/a.png");
    let (code, faulted) = call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/submit",
        Some(json!({"id": form["id"], "result": {}, "state": "faulted"})),
    )
    .await;
    assert_eq!((code, faulted["reward"].as_f64()), (200, Some(0.0)));
    let (_, again) = call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/pop",
        Some(pop("seer", &["caption", "interrogation"])),
    )
    .await;
    assert_eq!(
        again["forms"][0]["form"], form["form"],
        "a faulted form is wanted again"
    );
    let (code, cancelled) = call(
        &app,
        &requester,
        reqwest::Method::DELETE,
        &format!("/api/v2/interrogate/status/{id}"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{cancelled}");
    let (_, nothing) = call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/pop",
        Some(pop("seer", &["caption", "interrogation"])),
    )
    .await;
    assert_eq!(nothing["forms"], json!([]), "nothing more after a cancel");
    // An image worker's name cannot pop forms.
    call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/generate/pop",
        Some(json!({"name": "painter", "models": ["stable_diffusion"]})),
    )
    .await;
    let (code, conflict) = call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/pop",
        Some(pop("painter", &["caption"])),
    )
    .await;
    assert_eq!(
        (code, conflict["rc"].as_str()),
        (400, Some("PolymorphicNameConflict"))
    );
    let (code, missing) = call(
        &app,
        &requester,
        reqwest::Method::GET,
        "/api/v2/interrogate/status/00000000-0000-0000-0000-000000000000",
        None,
    )
    .await;
    assert_eq!(
        (code, missing["rc"].as_str()),
        (404, Some("RequestNotFound"))
    );
    app.stop().await;
}

#[tokio::test]
async fn interrogations_are_durable_taken_back_when_late_and_swept() {
    let app = spawn_app_with(|c| {
        c.requests.idle_expiry_secs = 3600;
        c.requests.retention_secs = 60;
    })
    .await;
    let requester = key_of(&app, "curious", 100.0).await;
    let image = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        webp(64, 64, [200, 10, 10], [10, 10, 200]),
    );
    let (_, accepted) = call(
        &app,
        &requester,
        reqwest::Method::POST,
        "/api/v2/interrogate/async",
        Some(json!({"forms": [{"name": "caption"}], "source_image": image})),
    )
    .await;
    let id = accepted["id"].as_str().unwrap().to_string();
    let app = app.restart().await;
    let alchemist = key_of(&app, "alchemist", 0.0).await;
    let status_path = format!("/api/v2/interrogate/status/{id}");
    let (code, kept) = call(&app, &requester, reqwest::Method::GET, &status_path, None).await;
    assert_eq!(
        (code, kept["state"].as_str()),
        (200, Some("waiting")),
        "{kept}"
    );

    let (_, popped) = call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/pop",
        Some(pop("slow", &["caption"])),
    )
    .await;
    let source = popped["forms"][0]["source_image"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        http().get(&source).send().await.unwrap().status().as_u16(),
        200,
        "the stored source outlived the restart"
    );
    // Past the public horde's 3 minutes the form goes back to the queue.
    let now = horde_server::clock::now();
    horde_server::sweeper::step(&app.state, now + 200).await;
    let (_, back) = call(&app, &requester, reqwest::Method::GET, &status_path, None).await;
    assert_eq!(back["forms"][0]["state"], "waiting", "{back}");
    let (_, again) = call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/pop",
        Some(pop("fast", &["caption"])),
    )
    .await;
    call(
        &app,
        &alchemist,
        reqwest::Method::POST,
        "/api/v2/interrogate/submit",
        Some(json!({"id": again["forms"][0]["id"], "result": {"caption": "a flag"}})),
    )
    .await;
    let (_, done) = call(&app, &requester, reqwest::Method::GET, &status_path, None).await;
    assert_eq!(done["state"], "done");
    horde_server::sweeper::step(&app.state, horde_server::clock::now() + 120).await;
    let (code, gone) = call(&app, &requester, reqwest::Method::GET, &status_path, None).await;
    assert_eq!((code, gone["rc"].as_str()), (404, Some("RequestNotFound")));
    app.stop().await;
}

/// A pop hands out up to `amount` forms (the public horde's field), each once: three forms,
/// two on the first pop, the last on the second, none on the third.
#[tokio::test]
async fn a_pop_hands_out_up_to_its_amount_of_forms() {
    let app = spawn_app().await;
    let requester = key_of(&app, "curious", 100.0).await;
    let alchemist = key_of(&app, "alchemist", 0.0).await;
    let (code, accepted) = call(
        &app,
        &requester,
        reqwest::Method::POST,
        "/api/v2/interrogate/async",
        Some(
            json!({"forms": [{"name": "caption"}, {"name": "nsfw"}, {"name": "interrogation"}],
                    "source_image": "https://example.com/a.png"}),
        ),
    )
    .await;
    assert_eq!(code, 202, "{accepted}");
    let mut body = pop("busy alchemist", &["caption", "nsfw", "interrogation"]);
    body["amount"] = json!(2);
    let mut handed = vec![];
    for expected in [2, 1, 0] {
        let (code, popped) = call(
            &app,
            &alchemist,
            reqwest::Method::POST,
            "/api/v2/interrogate/pop",
            Some(body.clone()),
        )
        .await;
        assert_eq!(code, 200, "{popped}");
        let forms = popped["forms"].as_array().unwrap();
        assert_eq!(forms.len(), expected, "{popped}");
        handed.extend(
            forms
                .iter()
                .map(|f| f["form"].as_str().unwrap().to_string()),
        );
    }
    handed.sort();
    assert_eq!(handed, ["caption", "interrogation", "nsfw"]);
}
