//! Matching over HTTP, one capability at a time: for each thing the public horde matches on, a
//! worker lacking it is skipped with the public `skipped` key and one having it gets the job;
//! then fallback routing to another model of the same baseline.

use crate::helpers::*;
use base64::Engine;
use horde_api::image::{ImageRequest, PopRequest};
use serde_json::{json, Value};

/// One capability: the request that needs it, the worker change that lacks it (the capable
/// worker is `pop_request` as is), and the `skipped` key the lacking worker must see.
struct Case {
    name: &'static str,
    request: Value,
    lacking: fn(&mut PopRequest),
    skipped: &'static str,
}

fn source_image() -> String {
    base64::engine::general_purpose::STANDARD.encode(webp(512, 512, [1, 2, 3], [4, 5, 6]))
}

fn cases() -> Vec<Case> {
    let source = source_image();
    vec![
        Case {
            name: "models",
            request: json!({"models": ["Deliberate"]}),
            lacking: |_| {},
            skipped: "models",
        },
        Case {
            name: "max_pixels",
            request: json!({"params": {"width": 768, "height": 768}}),
            lacking: |p| p.max_pixels = 512 * 512,
            skipped: "max_pixels",
        },
        Case {
            name: "nsfw",
            request: json!({"nsfw": true}),
            lacking: |p| p.nsfw = false,
            skipped: "nsfw",
        },
        Case {
            name: "SFW with censor (any worker, told to censor)",
            request: json!({"nsfw": false, "censor_nsfw": true, "models": ["Deliberate"]}),
            lacking: |_| {},
            skipped: "models",
        },
        Case {
            name: "extra slow worker",
            request: json!({}),
            lacking: |p| p.extra_slow_worker = true,
            skipped: "performance",
        },
        Case {
            name: "fast workers only",
            request: json!({"slow_workers": false, "extra_slow_workers": true}),
            lacking: |p| p.extra_slow_worker = true,
            skipped: "performance",
        },
        Case {
            name: "blacklist words",
            request: json!({"prompt": "a Lighthouse at dusk ### fog"}),
            lacking: |p| p.blacklist = vec!["lighthouse".into()],
            skipped: "blacklist",
        },
        Case {
            name: "img2img",
            request: json!({"source_image": source}),
            lacking: |p| p.allow_img2img = false,
            skipped: "img2img",
        },
        Case {
            name: "painting",
            request: json!({"source_image": source, "source_mask": source, "source_processing": "inpainting", "models": ["stable_diffusion_inpainting"]}),
            lacking: |p| p.allow_painting = false,
            skipped: "painting",
        },
        Case {
            name: "post-processing",
            request: json!({"params": {"post_processing": ["GFPGAN"]}}),
            lacking: |p| p.allow_post_processing = false,
            skipped: "post-processing",
        },
        Case {
            name: "declared post-processors",
            request: json!({"params": {"post_processing": ["GFPGAN", "RealESRGAN_x2plus"]}}),
            lacking: |p| p.post_processors = Some(vec!["GFPGAN".into()]),
            skipped: "post-processing",
        },
        Case {
            name: "a post-processor newer than the bridge",
            request: json!({"params": {"post_processing": ["RestoreFormer"]}}),
            lacking: |p| p.bridge_agent = "AI Horde Worker reGen:12.0.0:https://example.com".into(),
            skipped: "bridge_version",
        },
        Case {
            name: "lora",
            request: json!({"params": {"loras": [{"name": "123"}]}}),
            lacking: |p| p.allow_lora = false,
            skipped: "lora",
        },
        Case {
            name: "controlnet",
            request: json!({"source_image": source, "params": {"control_type": "canny"}}),
            lacking: |p| p.allow_controlnet = false,
            skipped: "controlnet",
        },
        Case {
            name: "tiling",
            request: json!({"params": {"tiling": true}}),
            lacking: |p| p.bridge_agent = "my own bridge:1:https://example.com".into(),
            skipped: "bridge_version",
        },
        Case {
            name: "limit_max_steps",
            request: json!({"params": {"steps": 35}}),
            lacking: |p| p.limit_max_steps = true,
            skipped: "step_count",
        },
    ]
}

fn request_of(case: &Value) -> ImageRequest {
    let mut body =
        json!({"prompt": "a lighthouse", "params": {"steps": 10}, "models": ["stable_diffusion"]});
    for (key, value) in case.as_object().unwrap() {
        if key == "params" {
            for (k, v) in value.as_object().unwrap() {
                body["params"][k] = v.clone();
            }
        } else {
            body[key] = value.clone();
        }
    }
    serde_json::from_value(body).unwrap()
}

fn capable_worker(name: &str, request: &ImageRequest) -> PopRequest {
    let mut pop = pop_request(name);
    pop.models = request.models.clone();
    pop.max_pixels = 1024 * 1024;
    pop.allow_lora = true;
    pop.allow_controlnet = true;
    pop.bridge_agent =
        "AI Horde Worker reGen:13.0.0:https://github.com/Haidra-Org/horde-worker-reGen".into();
    pop
}

#[tokio::test]
async fn each_capability_is_matched_and_a_skip_says_why() {
    for case in cases() {
        let app = spawn_app().await;
        let (requester, _) = app.user("requester", 1000.0).await;
        let (owner, _) = app.user("owner", 0.0).await;
        let request = request_of(&case.request);
        let id = requester
            .generate_async(&request)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name))
            .id
            .unwrap();

        let mut lacking = capable_worker("lacking", &request);
        if case.skipped == "models" {
            lacking.models = vec!["stable_diffusion".into()];
        }
        (case.lacking)(&mut lacking);
        let refused = owner.pop(&lacking).await.unwrap();
        assert_eq!(
            refused.id, None,
            "{}: the lacking worker gets nothing",
            case.name
        );
        assert_eq!(
            refused.skipped.get(case.skipped),
            Some(&1),
            "{}: skipped says why: {:?}",
            case.name,
            refused.skipped
        );

        let served = owner
            .pop(&capable_worker("capable", &request))
            .await
            .unwrap();
        assert!(
            served.id.is_some(),
            "{}: the capable worker gets it",
            case.name
        );
        let status = requester.check(&id).await.unwrap();
        assert_eq!(status.processing, 1, "{}", case.name);
        app.stop().await;
    }
}

/// The `lacking` worker (owner, name) pops and is skipped once for `reason`; the `able` one
/// pops and gets the job.
async fn skipped_then_served(
    lacking: (&horde_client::Client, &str),
    able: (&horde_client::Client, &str),
    reason: &str,
) {
    let refused = lacking.0.pop(&pop_request(lacking.1)).await.unwrap();
    assert_eq!(
        (refused.id, refused.skipped.get(reason)),
        (None, Some(&1)),
        "{reason}"
    );
    let served = able.0.pop(&pop_request(able.1)).await.unwrap();
    assert!(served.id.is_some(), "{reason}: the able worker gets it");
}

#[tokio::test]
async fn trust_worker_lists_priority_users_and_upfront_kudos_are_matched() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (trusted_owner, _) = app.user("trusted owner", 0.0).await;
    let (untrusted_owner, _) = app.untrusted_user("untrusted owner", 0.0).await;

    // trusted_workers: only workers whose owner is trusted.
    let mut request = small_request("for trusted workers", 1, false);
    request.trusted_workers = true;
    requester.generate_async(&request).await.unwrap();
    let untrusted = (&untrusted_owner, "untrusted");
    let trusted = (&trusted_owner, "trusted");
    skipped_then_served(untrusted, trusted, "untrusted").await;

    // workers: an allow-list, or a block-list with worker_blacklist.
    let trusted_id = trusted_owner.worker_by_name("trusted").await.unwrap().id;
    let mut listed = small_request("for one worker", 1, false);
    listed.workers = vec![trusted_id.clone()];
    requester.generate_async(&listed).await.unwrap();
    skipped_then_served(untrusted, trusted, "worker_id").await;
    listed.worker_blacklist = true;
    listed.prompt = "not for that worker".into();
    requester.generate_async(&listed).await.unwrap();
    skipped_then_served(trusted, untrusted, "worker_id").await;

    // priority_usernames: the worker serves the users it names before older requests.
    let (favourite, favourite_id) = app.user("favourite", 1000.0).await;
    requester
        .generate_async(&small_request("older", 1, false))
        .await
        .unwrap();
    let newer = favourite
        .generate_async(&small_request("newer", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let mut picky = pop_request("picky");
    picky.priority_usernames = vec![format!("favourite#{favourite_id}")];
    trusted_owner.pop(&picky).await.unwrap();
    assert_eq!(favourite.check(&newer).await.unwrap().processing, 1);

    // require_upfront_kudos: only requesters who could pay upfront.
    let (poor, _) = app.untrusted_user("poor", 0.0).await;
    let poor_request = poor
        .generate_async(&small_request("on credit", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let mut strict = pop_request("strict");
    strict.require_upfront_kudos = true;
    let mut skipped = None;
    for _ in 0..3 {
        let answer = trusted_owner.pop(&strict).await.unwrap();
        if answer.id.is_none() {
            skipped = answer.skipped.get("kudos").copied();
            break;
        }
    }
    assert_eq!(
        skipped,
        Some(1),
        "the older plain request went first, then kudos"
    );
    assert!(untrusted_owner
        .pop(&pop_request("untrusted"))
        .await
        .unwrap()
        .id
        .is_some());
    assert_eq!(poor.check(&poor_request).await.unwrap().processing, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_request_allowing_model_fallback_runs_on_a_model_of_the_same_baseline() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    // The only worker online serves stable_diffusion (SD 1.5 baseline).
    let idle = owner.pop(&pop_request("sd worker")).await.unwrap();
    assert_eq!(idle.id, None);

    let mut strict = small_request("only Anything Diffusion", 1, false);
    strict.models = vec!["Anything Diffusion".into()];
    let waiting = requester.generate_async(&strict).await.unwrap();
    let waiting_id = waiting.id.unwrap();
    assert!(waiting
        .warnings
        .iter()
        .any(|w| w.code == "NoAvailableWorker"));
    assert!(!requester.check(&waiting_id).await.unwrap().is_possible);

    let mut flexible = strict.clone();
    flexible.prompt = "Anything Diffusion or alike".into();
    flexible.allow_model_fallback = true;
    let accepted = requester.generate_async(&flexible).await.unwrap();
    let warning = accepted
        .warnings
        .iter()
        .find(|w| w.code == "ModelFallback")
        .expect("the 202 warns of the fallback");
    assert!(
        warning.message.contains("stable_diffusion"),
        "{}",
        warning.message
    );
    let id = accepted.id.unwrap();
    let check = requester.check(&id).await.unwrap();
    assert!(check.is_possible);
    assert!(check.warnings.iter().any(|w| w.code == "ModelFallback"));

    let job = owner.pop(&pop_request("sd worker")).await.unwrap();
    assert_eq!(
        job.model.as_deref(),
        Some("stable_diffusion"),
        "the stand-in runs it"
    );
    owner
        .submit(&submit_inline(
            &job,
            &webp(512, 512, [9, 9, 9], [200, 9, 9]),
        ))
        .await
        .unwrap();
    let status = requester.status(&id).await.unwrap();
    assert_eq!(status.generations[0].model, "stable_diffusion");
    let warning = status
        .check
        .warnings
        .iter()
        .find(|w| w.code == "ModelFallback")
        .expect("check names the substitute");
    assert!(
        warning
            .message
            .contains("stable_diffusion in place of Anything Diffusion"),
        "{}",
        warning.message
    );
    assert_eq!(
        requester.check(&waiting_id).await.unwrap().processing,
        0,
        "without the flag the request waits"
    );

    // Inpainting models are stood in for only by inpainting models.
    let mut painting = flexible.clone();
    painting.models = vec!["Deliberate Inpainting".into()];
    painting.prompt = "an inpainting model".into();
    let id = requester
        .generate_async(&painting)
        .await
        .unwrap()
        .id
        .unwrap();
    let check = requester.check(&id).await.unwrap();
    assert!(!check.is_possible, "{check:?}");

    // Once a worker serves the asked-for model, there is no fallback.
    let mut exact = pop_request("anything worker");
    exact.models = vec!["Anything Diffusion".into()];
    owner.pop(&exact).await.unwrap();
    let mut later = flexible.clone();
    later.prompt = "served as asked".into();
    let accepted = requester.generate_async(&later).await.unwrap();
    assert!(accepted.warnings.iter().all(|w| w.code != "ModelFallback"));
    app.stop().await;
}
