//! LoRAs, textual inversions and ControlNet on the coordinator's side, over HTTP: the public
//! horde's limits and `rc`s (each refusal answered with its error body, for a dry run too, and
//! nothing stored or charged), the prices (+3 per LoRA, +1 for any TI, control priced by the
//! kudos network), matching on the worker's leave (`allow_lora`, `allow_controlnet`) and its
//! bridge's capabilities (skipped as `lora`, `controlnet`, `bridge_version`), and the pop's
//! payload as horde-worker-reGen and horde-sdk read it (entries with their defaults filled,
//! control fields, steps and ttl).

use crate::helpers::*;
use base64::Engine;
use horde_api::batch::{BatchPrompt, BatchRequest};
use horde_api::image::{ImageRequest, PopRequest};
use horde_client::Client;
use horde_core::ttl::LORA_DOWNLOAD_SECS;
use serde_json::{json, Value};

/// The reference worker, a version with every capability this file asks for.
const REGEN: &str = "AI Horde Worker reGen:13.0.0:https://github.com/Haidra-Org/horde-worker-reGen";

fn source_image() -> String {
    base64::engine::general_purpose::STANDARD.encode(webp(512, 512, [10, 20, 30], [200, 210, 220]))
}

/// A request of 10 steps on `stable_diffusion` with `fields` set (`params` merged in).
fn request_json(fields: &Value) -> Value {
    let mut body =
        json!({"prompt": "a lighthouse", "params": {"steps": 10}, "models": ["stable_diffusion"]});
    for (key, value) in fields.as_object().unwrap() {
        if key == "params" {
            for (k, v) in value.as_object().unwrap() {
                body["params"][k] = v.clone();
            }
        } else {
            body[key] = value.clone();
        }
    }
    body
}

fn request_of(fields: &Value) -> ImageRequest {
    serde_json::from_value(request_json(fields)).unwrap()
}

fn named(prefix: &str, n: usize) -> Value {
    json!((0..n)
        .map(|i| json!({"name": format!("{prefix}{i}")}))
        .collect::<Vec<_>>())
}

async fn post(requester: &Client, path: &str, body: &Value) -> (u16, Value) {
    let answer = requester
        .request(reqwest::Method::POST, path)
        .json(body)
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

/// Each rule's request (fields over a plain request), its `rc`, and what its message names.
fn refused_cases() -> Vec<(Value, &'static str, &'static str)> {
    let source = source_image();
    vec![
        (
            json!({"params": {"loras": named("", 6)}}),
            "TooManyLoras",
            "params.loras",
        ),
        (
            json!({"params": {"loras": [{"name": "1"}, {"name": "GlowingRunes", "is_version": true}]}}),
            "BadLoraVersion",
            "params.loras.1.name 'GlowingRunes'",
        ),
        (
            json!({"params": {"tis": named("ti", 21)}}),
            "TooManyTIs",
            "params.tis",
        ),
        (
            json!({"params": {"control_type": "canny"}}),
            "ControlNetSourceMissing",
            "source_image",
        ),
        (
            json!({"params": {"control_type": "canny"}, "source_image": source, "source_processing": "inpainting"}),
            "ControlNetInpaintingMismatch",
            "inpainting",
        ),
        (
            json!({"params": {"control_type": "canny"}, "source_image": source, "models": ["stable_diffusion", "SDXL 1.0"]}),
            "ControlNetMismatch",
            "'SDXL 1.0'",
        ),
        (
            json!({"params": {"control_type": "depth"}, "source_image": source, "models": ["Stable Cascade 1.0"]}),
            "ControlNetMismatch",
            "stable_cascade",
        ),
        (
            json!({"params": {"control_type": "hough"}, "source_image": source, "models": ["stable_diffusion_2.1"]}),
            "ControlNetUnsupported",
            "'hough'",
        ),
        (
            json!({"params": {"control_type": "canny", "init_as_image": true, "return_control_map": true}, "source_image": source}),
            "ControlNetInvalidPayload",
            "params.init_as_image",
        ),
        (
            json!({"params": {"control_strength": 0.5}}),
            "ControlStrengthWithoutControlType",
            "params.control_type",
        ),
        (
            json!({"params": {"control_type": "canny", "control_strength": 3.5}, "source_image": source}),
            "ControlStrengthOutOfRange",
            "not 3.5",
        ),
    ]
}

#[tokio::test]
async fn each_rule_refuses_with_the_hordes_rc_and_nothing_is_stored_or_charged() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let kudos = requester.find_user().await.unwrap().kudos;
    for (fields, rc, says) in refused_cases() {
        let mut request = request_json(&fields);
        let (status, body) = post(&requester, "/generate/async", &request).await;
        assert_eq!((status, body["rc"].as_str()), (400, Some(rc)), "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(says), "{rc}: {message}");
        assert!(
            body.get("errors").is_none(),
            "a rule, not a schema error: {body}"
        );
        request["dry_run"] = Value::Bool(true);
        let (status, body) = post(&requester, "/generate/async", &request).await;
        assert_eq!(
            (status, body["rc"].as_str()),
            (400, Some(rc)),
            "dry run: {body}"
        );
    }
    // A batch of prompts runs each rule as well.
    let shared = request_of(&json!({"params": {"loras": named("", 6)}}));
    let batch = BatchRequest::new(
        &shared,
        vec![BatchPrompt::new("one"), BatchPrompt::new("two")],
    );
    let (status, body) = post(&requester, "/generate/batch", &json!(batch)).await;
    assert_eq!(
        (status, body["rc"].as_str()),
        (400, Some("TooManyLoras")),
        "{body}"
    );

    assert_eq!(app.state.store.request_count().await.unwrap(), 0);
    assert_eq!(app.state.live.len(), 0, "nothing queued");
    assert_eq!(
        requester.find_user().await.unwrap().kudos,
        kudos,
        "nothing charged"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_limits_themselves_and_control_on_stable_diffusion_are_accepted() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let source = source_image();
    let mut loras = named("", 4);
    loras
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "128713", "is_version": true}));
    let accepted = [
        json!({"params": {"loras": loras, "tis": named("ti", 20)}}),
        json!({"params": {"control_type": "canny"}, "source_image": source}),
        json!({"params": {"control_type": "hough", "image_is_control": true}, "source_image": source, "source_processing": "outpainting"}),
        json!({"params": {"control_type": "canny"}, "source_image": source, "models": ["stable_diffusion_2.1"]}),
    ];
    for fields in accepted {
        let answer = requester.generate_async(&request_of(&fields)).await;
        assert!(answer.is_ok_and(|a| a.id.is_some()), "{fields}");
    }
    assert_eq!(app.state.store.request_count().await.unwrap(), 4);
    app.stop().await;
}

/// The 202's `kudos` (one image's basis, rounded) and the dry run's projected total.
async fn priced(requester: &Client, fields: &Value) -> (f64, f64) {
    let mut request = request_of(fields);
    let queued = requester.generate_async(&request).await.unwrap();
    request.dry_run = true;
    let dry = requester.generate_async(&request).await.unwrap();
    (queued.kudos, dry.kudos)
}

#[tokio::test]
async fn loras_tis_and_control_are_priced_as_on_the_public_horde() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let thirty = json!({"params": {"steps": 30}});
    // 512², 30 steps: 7.61 (horde-api.md §5.1); a dry run adds the horde's +1 per image and
    // the activation fee.
    assert_eq!(priced(&requester, &thirty).await, (8.0, 9.61));
    let networks = json!({"params": {"steps": 30, "loras": named("", 2), "tis": named("ti", 3)}});
    assert_eq!(
        priced(&requester, &networks).await,
        (15.0, 16.61),
        "+3 per LoRA, +1 for the TIs however many"
    );
    // Canny on a source image: 13.69, +7; the source image's ×1.3 applies to it all.
    let control = json!({"params": {"steps": 30, "control_type": "canny", "loras": named("", 2), "tis": named("ti", 1)}, "source_image": source_image()});
    assert_eq!(priced(&requester, &control).await, (21.0, 28.9));
    app.stop().await;
}

#[tokio::test]
async fn a_delivered_image_pays_the_surcharges_to_its_worker_and_charges_its_requester() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let fields = json!({"params": {"steps": 30, "loras": named("", 2), "tis": named("ti", 1)}});
    let mut request = request_of(&fields);
    request.r2 = false;
    requester.generate_async(&request).await.unwrap();
    let job = owner.pop(&worker("paid", REGEN, |_| {})).await.unwrap();
    let image = webp(512, 512, [5, 6, 7], [8, 9, 10]);
    let paid = owner.submit(&submit_inline(&job, &image)).await.unwrap();
    // 7.61 + 3 × 2 + 1, to a trusted owner's reGen worker in full.
    assert_eq!(paid.reward, 14.61);
    // The activation fee, then the image's 14.61 + 1.
    let kudos = requester.find_user().await.unwrap().kudos;
    assert!((kudos - (1000.0 - 1.0 - 15.61)).abs() < 1e-9, "{kudos}");
    app.stop().await;
}

/// A worker allowing LoRAs and ControlNet on `bridge`, then `edit`.
fn worker(name: &str, bridge: &str, edit: impl FnOnce(&mut PopRequest)) -> PopRequest {
    let mut pop = pop_request(name);
    pop.allow_lora = true;
    pop.allow_controlnet = true;
    pop.bridge_agent = bridge.into();
    edit(&mut pop);
    pop
}

/// One request needing `fields`; each of `lacking` pops and is skipped for its reason, then a
/// worker able to run it gets it.
async fn skipped_then_served(
    app: &TestApp,
    tag: &str,
    fields: Value,
    lacking: Vec<(PopRequest, &str)>,
    able: PopRequest,
) {
    let (requester, _) = app.user(&format!("requester {tag}"), 1000.0).await;
    let (owner, _) = app.user(&format!("owner {tag}"), 0.0).await;
    requester
        .generate_async(&request_of(&fields))
        .await
        .unwrap();
    for (pop, reason) in lacking {
        let refused = owner.pop(&pop).await.unwrap();
        assert_eq!(
            (refused.id, refused.skipped.get(reason)),
            (None, Some(&1)),
            "{fields}, {}: {:?}",
            pop.bridge_agent,
            refused.skipped
        );
    }
    let served = owner.pop(&able).await.unwrap();
    assert!(served.id.is_some(), "{fields}: {:?}", served.skipped);
}

#[tokio::test]
async fn workers_are_matched_on_their_leave_then_on_their_bridge() {
    let app = spawn_app().await;
    let source = source_image();
    let lora = json!({"params": {"loras": [{"name": "GlowingRunesAI"}]}});
    skipped_then_served(
        &app,
        "lora",
        lora,
        vec![
            (worker("no loras", REGEN, |p| p.allow_lora = false), "lora"),
            (
                worker("legacy 21", "AI Horde Worker:21:x", |_| {}),
                "bridge_version",
            ),
        ],
        worker("loras", "AI Horde Worker:22:x", |_| {}),
    )
    .await;
    let control = json!({"params": {"control_type": "canny"}, "source_image": source});
    skipped_then_served(
        &app,
        "control",
        control,
        vec![
            (
                worker("no control", REGEN, |p| p.allow_controlnet = false),
                "controlnet",
            ),
            (
                worker("legacy 22", "AI Horde Worker:22:x", |_| {}),
                "bridge_version",
            ),
        ],
        worker("control", "AI Horde Worker:23:x", |_| {}),
    )
    .await;
    let tis = json!({"params": {"tis": [{"name": "7808", "inject_ti": "negprompt"}]}});
    skipped_then_served(
        &app,
        "ti",
        tis,
        vec![(
            worker("ti legacy 23", "AI Horde Worker:23:x", |_| {}),
            "bridge_version",
        )],
        worker("ti regen 2", "AI Horde Worker reGen:2.0.0:x", |_| {}),
    )
    .await;
    let by_version = json!({"params": {"loras": [{"name": "128713", "is_version": true}]}});
    skipped_then_served(
        &app,
        "version",
        by_version,
        vec![(
            worker("version regen 2", "AI Horde Worker reGen:2.0.0:x", |_| {}),
            "bridge_version",
        )],
        worker("version regen 3", "AI Horde Worker reGen:3.0.0:x", |_| {}),
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_workers_details_show_what_it_allows() {
    let app = spawn_app().await;
    let (owner, _) = app.user("owner", 0.0).await;
    let pop = worker("everything", REGEN, |p| p.allow_sdxl_controlnet = true);
    owner.pop(&pop).await.unwrap();
    let details = owner.worker_by_name("everything").await.unwrap();
    assert!(details.lora && details.controlnet && details.sdxl_controlnet);
    let pop = worker("nothing", REGEN, |p| {
        (p.allow_lora, p.allow_controlnet) = (false, false)
    });
    owner.pop(&pop).await.unwrap();
    let details = owner.worker_by_name("nothing").await.unwrap();
    assert!(!details.lora && !details.controlnet && !details.sdxl_controlnet);
    app.stop().await;
}

/// The payload and ttl of the one job of a request with `fields`, popped by a capable worker.
async fn popped(app: &TestApp, tag: &str, fields: Value) -> (Value, u64) {
    let (requester, _) = app.user(&format!("requester {tag}"), 1000.0).await;
    let (owner, _) = app.user(&format!("owner {tag}"), 0.0).await;
    let mut request = request_of(&fields);
    request.params.steps = fields["params"]["steps"].as_u64().map(|s| s as u32);
    requester.generate_async(&request).await.unwrap();
    let pop = owner
        .pop(&worker(&format!("capable {tag}"), REGEN, |_| {}))
        .await
        .unwrap();
    assert!(pop.id.is_some(), "{:?}", pop.skipped);
    (pop.payload, pop.ttl.unwrap())
}

#[tokio::test]
async fn the_pop_carries_loras_tis_and_control_as_regen_reads_them() {
    let app = spawn_app().await;
    let fields = json!({"source_image": source_image(), "params": {
        "control_type": "canny", "control_strength": 0.75, "image_is_control": true,
        "loras": [
            {"name": "GlowingRunesAI"},
            {"name": "128713", "model": 0.5, "clip": -1.25, "inject_trigger": "any", "is_version": true}
        ],
        "tis": [{"name": "7808"}, {"name": "EasyNegative", "inject_ti": "negprompt", "strength": 0.4}]
    }});
    let (payload, ttl) = popped(&app, "networks", fields).await;
    // horde-sdk's LorasPayloadEntry / TIPayloadEntry, with the public pop's defaults filled
    // (its marshalling writes `model`, `clip`, `is_version`, `strength`; an absent
    // `inject_trigger` / `inject_ti` stays absent).
    assert_eq!(
        payload["loras"],
        json!([
            {"name": "GlowingRunesAI", "model": 1.0, "clip": 1.0, "is_version": false},
            {"name": "128713", "model": 0.5, "clip": -1.25, "inject_trigger": "any", "is_version": true}
        ])
    );
    assert_eq!(
        payload["tis"],
        json!([
            {"name": "7808", "strength": 1.0},
            {"name": "EasyNegative", "inject_ti": "negprompt", "strength": 0.4}
        ])
    );
    let control = [
        "control_type",
        "control_strength",
        "image_is_control",
        "return_control_map",
    ];
    assert_eq!(
        control.map(|field| payload[field].clone()),
        [json!("canny"), json!(0.75), json!(true), json!(false)]
    );
    assert!(payload.get("init_as_image").is_none(), "{payload}");
    // No steps with a control type: 20. The ttl: 30 + 20 × 2 = 70, ×2 for control, at least
    // 150, then each LoRA's download allowance.
    assert_eq!(payload["ddim_steps"], 20);
    assert_eq!(ttl, (150.0 + 2.0 * LORA_DOWNLOAD_SECS).ceil() as u64);

    // Steps over 40 with a control type are cut to 40; the ttl doubles for control.
    let capped = json!({"source_image": source_image(), "params": {"control_type": "depth", "steps": 50, "return_control_map": true}});
    let (payload, ttl) = popped(&app, "capped", capped).await;
    assert_eq!(
        (&payload["ddim_steps"], &payload["return_control_map"]),
        (&json!(40), &json!(true))
    );
    assert!(
        payload.get("control_strength").is_none(),
        "absent: the worker's default: {payload}"
    );
    assert_eq!(ttl, (30 + 40 * 2) * 2);
    app.stop().await;
}
