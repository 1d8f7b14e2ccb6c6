//! Requests' source images: decoded and checked when the request is accepted (each refusal
//! with the public horde's `rc`, and nothing stored), kept apart from the request's body as
//! lossless WebP (files on SQLite, rows on PostgreSQL), handed to workers as signed, expiring
//! URLs (`r2_source`) or base64, kept across a restart and removed with the request; matched
//! only to workers holding an inpainting model where one is needed.

use crate::helpers::*;
use base64::Engine;
use horde_api::image::{ImageRequest, SourceProcessing};
use horde_client::Client;
use horde_server::sweeper;
use image::{ImageFormat, RgbImage, RgbaImage};
use serde_json::Value;
use sqlx::{Connection, Row};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A `width` × `height` image in `format`: a gradient, so a decode that loses pixels shows.
fn encoded(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 77]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A PNG with an alpha channel: its left half transparent, to paint into.
fn transparent_png(width: u32, height: u32) -> Vec<u8> {
    let image = RgbaImage::from_fn(width, height, |x, _| {
        image::Rgba([9, 9, 9, if x < width / 2 { 0 } else { 255 }])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

fn with_source(prompt: &str, source: &[u8]) -> ImageRequest {
    let mut request = small_request(prompt, 1, true);
    request.source_image = Some(b64(source));
    request
}

/// How many source images are stored: files under the data directory on SQLite, rows of
/// `source_images` on PostgreSQL.
async fn stored_sources(app: &TestApp) -> usize {
    if crate::backend::postgres_server().is_some() {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&app.state.config.database.url)
            .await
            .unwrap();
        let row = sqlx::query("SELECT COUNT(*) FROM source_images")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        return row.get::<i64, _>(0) as usize;
    }
    let Ok(requests) = std::fs::read_dir(app.dir.path().join("images").join("sources")) else {
        return 0;
    };
    requests
        .map(|dir| std::fs::read_dir(dir.unwrap().path()).unwrap().count())
        .sum()
}

/// What the coordinator stored for `request_id`'s `role`.
async fn stored(app: &TestApp, request_id: &str, role: &str) -> Option<Vec<u8>> {
    let role = horde_core::request_rules::SourceRole::parse(role).unwrap();
    app.state
        .images
        .read_source(request_id.parse().unwrap(), role)
        .await
}

async fn accepted(requester: &Client, request: &ImageRequest) -> String {
    requester.generate_async(request).await.unwrap().id.unwrap()
}

#[tokio::test]
async fn sources_are_stored_as_webp_and_handed_out_as_base64_or_as_a_url() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let png = encoded(ImageFormat::Png, 64, 48);
    let mut request = with_source("inline", &png);
    request.source_mask = Some(b64(&encoded(ImageFormat::Jpeg, 64, 48)));
    let inline_id = accepted(&requester, &request).await;
    let image = stored(&app, &inline_id, "source_image")
        .await
        .expect("stored");
    assert_eq!(image::guess_format(&image).unwrap(), ImageFormat::WebP);
    let decoded = image::load_from_memory(&image).unwrap().to_rgb8();
    assert_eq!(
        decoded,
        image::load_from_memory(&png).unwrap().to_rgb8(),
        "lossless: the PNG's pixels"
    );
    assert_eq!(stored_sources(&app).await, 2, "the image and its mask");
    let row = app
        .state
        .store
        .load_request::<horde_core::Image>(inline_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let marker = row.body.source_image.clone().unwrap();
    assert!(
        marker.len() < 200 && horde_core::request_rules::is_marker(&marker),
        "the stored body keeps a marker, not the image: {marker}"
    );

    // A worker without r2_source gets the stored WebP as base64.
    let popped = owner.pop(&pop_request("inline worker")).await.unwrap();
    assert!(popped.id.is_some(), "{popped:?}");
    assert_eq!(
        base64_decode(popped.source_image.as_deref().unwrap()),
        image
    );
    let mask = stored(&app, &inline_id, "source_mask").await.unwrap();
    assert_eq!(base64_decode(popped.source_mask.as_deref().unwrap()), mask);
    assert_eq!(popped.source_processing, SourceProcessing::Img2img);

    // A worker with r2_source gets a URL that downloads the same bytes.
    let webp_source = webp(32, 32, [1, 2, 3], [4, 5, 6]);
    let url_id = accepted(&requester, &with_source("by url", &webp_source)).await;
    let mut pop = pop_request("url worker");
    pop.r2_source = true;
    let popped = owner.pop(&pop).await.unwrap();
    let url = popped.source_image.clone().unwrap();
    assert!(
        url.starts_with(&format!(
            "{}/api/v2/sources/{url_id}/source_image?",
            app.root
        )),
        "{url}"
    );
    let downloaded = http().get(&url).send().await.unwrap();
    assert_eq!(downloaded.status().as_u16(), 200);
    assert_eq!(downloaded.headers()["content-type"], "image/webp");
    let bytes = downloaded.bytes().await.unwrap().to_vec();
    assert_eq!(Some(bytes), stored(&app, &url_id, "source_image").await);
    assert_eq!(
        halves_of(&stored(&app, &url_id, "source_image").await.unwrap()).1,
        [1, 2, 3]
    );
    app.stop().await;
}

/// A batch's shared source image is checked and kept like a request's: each member stores
/// the lossless WebP and a marker in its body, and hands the image out.
#[tokio::test]
async fn the_members_of_a_batch_keep_its_source_image_apart() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let png = encoded(ImageFormat::Png, 64, 48);
    let batch: horde_api::batch::BatchRequest = serde_json::from_value(serde_json::json!({
        "prompts": [{"prompt": "a cat"}, {"prompt": "a dog"}],
        "models": ["stable_diffusion"],
        "params": {"steps": 10},
        "source_image": b64(&png),
    }))
    .unwrap();
    let ids = requester.generate_batch(&batch).await.unwrap().ids;
    assert_eq!(ids.len(), 2);
    for id in &ids {
        let row = app
            .state
            .store
            .load_request::<horde_core::Image>(id.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert!(horde_core::request_rules::is_marker(
            row.body.source_image.as_deref().unwrap()
        ));
        let kept = stored(&app, id, "source_image").await.expect("kept");
        assert_eq!(
            image::load_from_memory(&kept).unwrap().to_rgb8(),
            image::load_from_memory(&png).unwrap().to_rgb8()
        );
    }
    let popped = owner.pop(&pop_request("w")).await.unwrap();
    let image = base64_decode(popped.source_image.as_deref().unwrap());
    assert_eq!(image::guess_format(&image).unwrap(), ImageFormat::WebP);

    // A batch whose source is not an image is refused whole; nothing is kept.
    let mut garbage = batch.clone();
    garbage.shared.insert(
        "source_image".into(),
        serde_json::json!(b64(b"not an image")),
    );
    let error = requester.generate_batch(&garbage).await.unwrap_err();
    assert_eq!(error.rc(), Some("SourceImageUnreadable"));
    assert_eq!(stored_sources(&app).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn extra_source_images_of_a_remix_are_stored_and_handed_out_in_their_place() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let mut request = with_source("remix", &encoded(ImageFormat::Png, 32, 32));
    request.source_processing = SourceProcessing::Remix;
    request.extra_source_images = serde_json::from_value(serde_json::json!([
        {"image": "https://example.com/style.png", "strength": 0.25},
        {"image": b64(&encoded(ImageFormat::Jpeg, 24, 16)), "strength": 0.75},
    ]))
    .unwrap();
    let id = accepted(&requester, &request).await;
    let mut again = request.clone();
    again.prompt = "remix again".into();
    let second = accepted(&requester, &again).await;
    assert_eq!(stored_sources(&app).await, 4, "two images and two extras");
    let extra = stored(&app, &id, "extra_1")
        .await
        .expect("the base64 extra is stored");
    assert_eq!(halves_of(&extra).0, (24, 16));

    let popped = owner.pop(&pop_request("inline")).await.unwrap();
    let extras = &popped.extra_source_images;
    assert_eq!(extras.len(), 2);
    assert_eq!(extras[0].image, "https://example.com/style.png");
    assert_eq!(extras[0].strength, 0.25);
    assert_eq!(base64_decode(&extras[1].image), extra);
    assert_eq!(extras[1].strength, 0.75);

    let mut pop = pop_request("by url");
    pop.r2_source = true;
    let popped = owner.pop(&pop).await.unwrap();
    let extras = &popped.extra_source_images;
    assert_eq!(extras[0].image, "https://example.com/style.png");
    assert!(
        extras[1].image.contains("/extra_1?expires="),
        "{}",
        extras[1].image
    );
    let downloaded = http().get(&extras[1].image).send().await.unwrap();
    assert_eq!(downloaded.status().as_u16(), 200);
    let bytes = downloaded.bytes().await.unwrap().to_vec();
    assert_eq!(Some(bytes), stored(&app, &second, "extra_1").await);
    app.stop().await;
}

/// Posts `request` and returns the answer's status and body.
async fn refused(requester: &Client, request: &Value) -> (u16, Value) {
    let answer = requester
        .request(reqwest::Method::POST, "/generate/async")
        .json(request)
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

#[tokio::test]
async fn each_bad_source_is_refused_with_the_hordes_rc_and_nothing_is_stored() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let image = b64(&encoded(ImageFormat::Png, 64, 64));
    let cases = [
        (
            serde_json::json!({"source_image": b64(b"%PDF-1.4 not an image")}),
            "SourceImageUnreadable",
            "source_image",
        ),
        (
            serde_json::json!({"source_image": image, "source_mask": "not base64!"}),
            "SourceImageUnreadable",
            "source_mask",
        ),
        (
            serde_json::json!({"source_image": b64(&encoded(ImageFormat::Png, 3080, 16))}),
            "SourceImageResolutionExceeded",
            "3080x16",
        ),
        (
            serde_json::json!({"source_image": image, "source_mask": b64(&encoded(ImageFormat::Png, 32, 64))}),
            "ValidationError",
            "source_mask is 32x64 but source_image is 64x64",
        ),
        (
            serde_json::json!({"source_image": b64(&encoded(ImageFormat::Jpeg, 64, 64)), "source_processing": "inpainting"}),
            "InpaintingMissingMask",
            "alpha channel",
        ),
        (
            serde_json::json!({"source_mask": image}),
            "SourceMaskUnnecessary",
            "without a source image",
        ),
        (
            serde_json::json!({"source_image": image, "source_processing": "remix", "extra_source_images": [{"image": b64(b"GIF89a")}]}),
            "SourceImageUnreadable",
            "extra_source_images",
        ),
    ];
    let kudos = requester.find_user().await.unwrap().kudos;
    for (fields, rc, says) in cases {
        let mut request = serde_json::json!({"prompt": "a cat", "params": {"steps": 10}});
        for (key, value) in fields.as_object().unwrap() {
            request[key] = value.clone();
        }
        let (status, body) = refused(&requester, &request).await;
        assert_eq!((status, body["rc"].as_str()), (400, Some(rc)), "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(says), "{rc}: {message}");
        // A dry run refuses it alike.
        request["dry_run"] = Value::Bool(true);
        assert_eq!(refused(&requester, &request).await.1["rc"], rc);
    }
    assert_eq!(app.state.store.request_count().await.unwrap(), 0);
    assert_eq!(stored_sources(&app).await, 0, "nothing stored on refusal");
    assert_eq!(requester.find_user().await.unwrap().kudos, kudos);

    // The same shapes, done right, are accepted and stored.
    let mut inpainting = with_source("paint", &transparent_png(64, 64));
    inpainting.source_processing = SourceProcessing::Inpainting;
    accepted(&requester, &inpainting).await;
    assert_eq!(stored_sources(&app).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_dry_run_prices_a_source_as_before_and_stores_nothing() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let mut request = with_source("priced", &encoded(ImageFormat::WebP, 64, 64));
    request.dry_run = true;
    let with_source_kudos = requester.generate_async(&request).await.unwrap().kudos;
    request.source_image = None;
    let without = requester.generate_async(&request).await.unwrap().kudos;
    assert!(
        with_source_kudos > without,
        "a source image costs more ({with_source_kudos} vs {without})"
    );
    assert_eq!(stored_sources(&app).await, 0);
    app.stop().await;
}

#[tokio::test]
async fn forged_and_expired_source_urls_are_refused_with_the_horde_body() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    accepted(
        &requester,
        &with_source("signed", &encoded(ImageFormat::Png, 16, 16)),
    )
    .await;
    let mut pop = pop_request("w1");
    pop.r2_source = true;
    let url = owner.pop(&pop).await.unwrap().source_image.unwrap();
    let expires: i64 = url
        .split("expires=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let forged = [
        url.replace("sig=", "sig=00"),
        url.replace(
            &format!("expires={expires}"),
            &format!("expires={}", expires + 1),
        ),
        url.replace("/source_image?", "/source_mask?"),
        url.replace("/source_image?", "/extra_9?"),
    ];
    for forged in forged {
        let answer = http().get(&forged).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 403, "{forged}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["rc"], "Forbidden", "{body}");
        assert!(body["message"].as_str().unwrap().contains("not valid"));
    }
    app.stop().await;

    let app = spawn_app_with(|c| c.requests.upload_url_ttl_secs = -1).await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    accepted(
        &requester,
        &with_source("stale", &encoded(ImageFormat::Png, 16, 16)),
    )
    .await;
    let url = owner.pop(&pop).await.unwrap().source_image.unwrap();
    let answer = http().get(&url).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 403);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["rc"], "Forbidden");
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_source_survives_a_restart_and_goes_when_its_request_expires() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let png = encoded(ImageFormat::Png, 40, 40);
    let id = accepted(&requester, &with_source("kept", &png)).await;
    let before = stored(&app, &id, "source_image").await.unwrap();
    let app = app.restart().await;
    let (owner, _) = app.user("owner", 0.0).await;
    let popped = owner.pop(&pop_request("w1")).await.unwrap();
    assert!(popped.id.is_some());
    assert_eq!(
        base64_decode(popped.source_image.as_deref().unwrap()),
        before
    );
    owner
        .submit(&submit_inline(&popped, &webp(512, 512, [1; 3], [2; 3])))
        .await
        .unwrap();

    let now = horde_server::clock::now();
    let retention = app.state.config.requests.retention_secs;
    assert_eq!(sweeper::step(&app.state, now + retention + 1).await, 1);
    assert_eq!(stored(&app, &id, "source_image").await, None);
    assert_eq!(stored_sources(&app).await, 0, "removed with its request");
    app.stop().await;
}

#[tokio::test]
async fn orphaned_sources_are_swept_and_those_of_stored_requests_kept() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let id = accepted(
        &requester,
        &with_source("live", &encoded(ImageFormat::Png, 8, 8)),
    )
    .await;
    // What a crash between storing the sources and committing the request leaves behind.
    let mut orphan = with_source("orphan", &encoded(ImageFormat::Png, 8, 8));
    orphan.source_mask = Some(b64(&encoded(ImageFormat::Png, 8, 8)));
    let prepared = horde_core::request_rules::prepare_sources(&orphan).unwrap();
    let now = horde_server::clock::now();
    app.state
        .images
        .put_sources(uuid::Uuid::now_v7(), &prepared, now)
        .await
        .unwrap();
    assert_eq!(stored_sources(&app).await, 3);

    let grace = horde_server::images::ORPHAN_GRACE_SECS;
    sweeper::step(&app.state, now).await;
    assert_eq!(stored_sources(&app).await, 3, "too young to be an orphan");
    sweeper::step(&app.state, now + grace + 10).await;
    assert_eq!(stored_sources(&app).await, 1, "the orphan's two went");
    assert!(stored(&app, &id, "source_image").await.is_some());
    app.stop().await;
}

#[tokio::test]
async fn painting_goes_only_to_workers_holding_an_inpainting_model() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    // A worker with a plain model only is online.
    let plain = pop_request("plain");
    assert!(owner.pop(&plain).await.unwrap().id.is_none());
    let mut request = with_source("outpaint", &encoded(ImageFormat::Png, 64, 64));
    request.source_processing = SourceProcessing::Outpainting;
    let answer = requester.generate_async(&request).await.unwrap();
    assert!(
        answer
            .warnings
            .iter()
            .any(|w| w.code == "NoAvailableWorker"),
        "{answer:?}"
    );
    let id = answer.id.unwrap();
    assert!(!requester.check(&id).await.unwrap().is_possible);
    let skipped = owner.pop(&plain).await.unwrap();
    assert_eq!(skipped.id, None);
    assert_eq!(skipped.skipped.get("models"), Some(&1), "{skipped:?}");

    // A worker that also holds an inpainting model takes it (with the requested model).
    let mut painter = pop_request("painter");
    painter.models = vec![
        "stable_diffusion".into(),
        "stable_diffusion_inpainting".into(),
    ];
    let mut refuses_painting = painter.clone();
    refuses_painting.name = "no painting".into();
    refuses_painting.allow_painting = false;
    let skipped = owner.pop(&refuses_painting).await.unwrap();
    assert_eq!(skipped.skipped.get("painting"), Some(&1), "{skipped:?}");
    let popped = owner.pop(&painter).await.unwrap();
    assert!(popped.id.is_some(), "{popped:?}");
    assert_eq!(popped.model.as_deref(), Some("stable_diffusion"));
    assert_eq!(popped.source_processing, SourceProcessing::Outpainting);

    // A worker with only inpainting models takes no plain generation.
    let mut plain_generation = small_request("plain", 1, true);
    plain_generation.models = vec!["stable_diffusion_inpainting".into()];
    requester.generate_async(&plain_generation).await.unwrap();
    let mut only = pop_request("only inpainting");
    only.models = vec!["stable_diffusion_inpainting".into()];
    let skipped = owner.pop(&only).await.unwrap();
    assert_eq!(skipped.id, None);
    assert_eq!(skipped.skipped.get("models"), Some(&1), "{skipped:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: .ci/run runs it with HORDE_TEST_POSTGRES_URL"]
async fn a_source_accepted_on_one_coordinator_is_handed_out_by_another() {
    let apps = spawn_cluster(2, |_| {}).await;
    let (requester, _) = apps[0].user("requester", 1000.0).await;
    let (owner, _) = apps[0].user("owner", 0.0).await;
    let id = accepted(
        &requester,
        &with_source("shared", &encoded(ImageFormat::Jpeg, 48, 48)),
    )
    .await;
    let stored_on_a = stored(&apps[0], &id, "source_image").await.unwrap();
    let owner_on_b = owner.with_base_url(&apps[1].root);
    let request_id: uuid::Uuid = id.parse().unwrap();
    for _ in 0..500 {
        if apps[1].state.live.contains(request_id) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut pop = pop_request("w1");
    pop.r2_source = true;
    let popped = owner_on_b.pop(&pop).await.unwrap();
    let url = popped.source_image.unwrap();
    assert!(url.starts_with(&apps[1].root), "{url}");
    let bytes = http()
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.to_vec(), stored_on_a);
    for app in apps {
        app.stop().await;
    }
}
