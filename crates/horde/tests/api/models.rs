//! The model reference over HTTP: requests and workers are checked against the model reference,
//! each baseline's kudos multiplier prices the jobs run on it, and the reference reloads from a
//! file while the coordinator runs.

use crate::helpers::*;
use std::time::Duration;

const SDXL: &str = "SDXL 1.0";

#[tokio::test]
async fn unknown_models_are_refused_unless_the_operator_allows_custom_ones() {
    let app = spawn_app().await;
    let (user, _) = app.user("requester", 100.0).await;
    let mut request = small_request("a lighthouse", 1, false);
    request.models = vec!["stable_diffusion".into(), "My Finetune 3".into()];
    let error = user.generate_async(&request).await.expect_err("refused");
    assert_eq!(error.status().map(|s| s.as_u16()), Some(400), "{error}");
    assert_eq!(error.rc(), Some("UnsupportedModel"), "{error}");
    assert!(error.to_string().contains("My Finetune 3"), "{error}");
    assert!(
        !error.to_string().contains("stable_diffusion,"),
        "only the unknown one is named: {error}"
    );
    assert_eq!(app.state.live.len(), 0, "nothing queued");
    app.stop().await;

    let custom = spawn_app_with(|c| c.models.allow_custom = true).await;
    let (user, _) = custom.user("requester", 100.0).await;
    user.generate_async(&request)
        .await
        .expect("a private horde may serve its own finetunes");
    custom.stop().await;
}

#[tokio::test]
async fn a_worker_is_told_which_of_its_models_were_ignored() {
    let app = spawn_app().await;
    let (owner, _) = app.user("owner", 0.0).await;
    let mut pop = pop_request("mixed-worker");
    pop.models = vec!["stable_diffusion".into(), "My Finetune 3".into()];
    let answer = owner.pop(&pop).await.unwrap();
    assert_eq!(answer.id, None, "nothing queued yet");
    let notice = answer
        .messages
        .iter()
        .filter_map(|m| m["message"].as_str())
        .find(|m| m.contains("My Finetune 3"))
        .expect("the pop names the ignored model");
    assert!(!notice.contains("stable_diffusion"), "{notice}");
    let worker = owner.worker_by_name("mixed-worker").await.unwrap();
    assert_eq!(
        worker.models,
        vec!["stable_diffusion".to_string()],
        "only the known model is advertised"
    );

    let mut only_unknown = pop_request("custom-worker");
    only_unknown.models = vec!["My Finetune 3".into()];
    let error = owner.pop(&only_unknown).await.expect_err("refused");
    assert_eq!(error.status().map(|s| s.as_u16()), Some(400), "{error}");
    assert_eq!(error.rc(), Some("UnsupportedModel"), "{error}");
    app.stop().await;
}

#[tokio::test]
async fn sdxl_jobs_cost_and_earn_twice_what_sd15_jobs_do() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;

    let mut prices = vec![];
    let mut rewards = vec![];
    for model in ["stable_diffusion", SDXL] {
        let mut request = small_request(&format!("a lighthouse on {model}"), 1, false);
        request.params.steps = Some(30);
        request.models = vec![model.into()];
        request.dry_run = true;
        prices.push(requester.generate_async(&request).await.unwrap().kudos);

        request.dry_run = false;
        requester.generate_async(&request).await.unwrap();
        let mut pop = pop_request(&format!("worker for {model}"));
        pop.models = vec![model.into()];
        pop.max_pixels = 1024 * 1024;
        let job = owner.pop(&pop).await.unwrap();
        let submitted = owner
            .submit(&submit_inline(
                &job,
                &webp(512, 512, [9, 9, 9], [200, 9, 9]),
            ))
            .await
            .unwrap();
        rewards.push(submitted.reward);
    }
    // 512×512, 30 steps: 7.61 per image on SD 1.5, twice that on SDXL; the requester adds
    // the horde's 1 per image and 1 per request.
    assert_eq!(prices, vec![7.61 + 2.0, 2.0 * 7.61 + 2.0]);
    assert_eq!(
        rewards,
        vec![7.61, 15.22],
        "the reference worker earns in full"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_reference_reloads_from_a_file_while_the_coordinator_runs() {
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = reference_dir.path().join("stable_diffusion.json");
    let write = |name: &str| {
        let json = serde_json::json!({
            name: {"name": name, "baseline": "stable diffusion 1", "type": "ckpt", "inpainting": false}
        });
        std::fs::write(&reference, json.to_string()).unwrap();
    };
    write("Lighthouse Special");
    let path = reference.display().to_string();
    let app = spawn_app_with(|c| {
        c.models.reference = path;
        c.models.reload_interval_secs = 1;
    })
    .await;
    let (user, _) = app.user("requester", 100.0).await;
    let asks_for = |model: &str| {
        let mut request = small_request("a lighthouse", 1, false);
        request.models = vec![model.into()];
        request.dry_run = true;
        request
    };
    user.generate_async(&asks_for("Lighthouse Special"))
        .await
        .expect("the file's model is known");
    let error = user
        .generate_async(&asks_for("stable_diffusion"))
        .await
        .expect_err("the file replaced the built-in reference");
    assert_eq!(error.rc(), Some("UnsupportedModel"), "{error}");

    write("Harbour Special");
    let mut reloaded = false;
    for _ in 0..100 {
        if user
            .generate_async(&asks_for("Harbour Special"))
            .await
            .is_ok()
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "the new reference was read without a restart");
    assert!(user
        .generate_async(&asks_for("Lighthouse Special"))
        .await
        .is_err());

    // A broken file is not loaded: the last good reference stays.
    std::fs::write(&reference, "{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    user.generate_async(&asks_for("Harbour Special"))
        .await
        .expect("the last good reference is kept");
    app.stop().await;
}

#[tokio::test]
async fn model_status_and_image_stats_come_from_live_and_finished_work() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let mut pop = pop_request("two-model worker");
    pop.models = vec!["stable_diffusion".into(), SDXL.into()];
    pop.max_pixels = 1024 * 1024;
    pop.threads = 2;
    owner.pop(&pop).await.unwrap();

    let id = requester
        .generate_async(&small_request("three lighthouses", 3, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let get = |path: String| {
        let url = format!("{}{path}", app.root);
        async move {
            let answer = http().get(url).send().await.unwrap();
            let status = answer.status().as_u16();
            (status, answer.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (_, models) = get("/api/v2/status/models".into()).await;
    let sd = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "stable_diffusion")
        .expect("listed")
        .clone();
    assert_eq!(sd["count"], 2, "threads of the online workers serving it");
    assert_eq!(sd["jobs"], 3.0);
    assert_eq!(
        sd["queued"],
        3.0 * 512.0 * 512.0 * 10.0,
        "pixelsteps waiting"
    );
    assert_eq!(sd["type"], "image");
    assert_eq!(sd["eta"], 10000, "no measured performance yet");
    let (_, one) = get("/api/v2/status/models/SDXL%201.0".into()).await;
    assert_eq!(one[0]["count"], 2);
    assert_eq!(one[0]["jobs"], 0.0);
    let (_, custom) = get("/api/v2/status/models?model_state=custom".into()).await;
    assert_eq!(custom, serde_json::json!([]));
    let (status, _) = get("/api/v2/status/models?model_state=bogus".into()).await;
    assert_eq!(status, 400);

    // Finish one SD 1.5 image (slowly enough to be a plausible speed) and one SDXL image.
    let job = owner.pop(&pop).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    owner
        .submit(&submit_inline(
            &job,
            &webp(512, 512, [9, 9, 9], [200, 9, 9]),
        ))
        .await
        .unwrap();
    let mut xl = small_request("one XL lighthouse", 1, false);
    xl.models = vec![SDXL.into()];
    xl.params.width = 1024;
    xl.params.height = 1024;
    requester.generate_async(&xl).await.unwrap();
    let mut xl_pop = pop.clone();
    xl_pop.models = vec![SDXL.into()];
    let job = owner.pop(&xl_pop).await.unwrap();
    assert_eq!(job.model.as_deref(), Some(SDXL));
    owner
        .submit(&submit_inline(
            &job,
            &webp(1024, 1024, [9, 9, 9], [200, 9, 9]),
        ))
        .await
        .unwrap();

    let (_, models) = get("/api/v2/status/models/stable_diffusion".into()).await;
    assert!(models[0]["performance"].as_f64().unwrap() > 0.0, "{models}");
    assert_eq!(models[0]["jobs"], 2.0, "one image of three delivered");
    assert_eq!(requester.check(&id).await.unwrap().finished, 1);

    let expected_ps = 512 * 512 * 10 + 1024 * 1024 * 10;
    let app = app.restart().await;
    let get = |path: &str| {
        let url = format!("{}{path}", app.root);
        async move {
            http()
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let totals = get("/api/v2/stats/img/totals").await;
    for period in ["minute", "hour", "day", "month", "total"] {
        assert_eq!(totals[period]["images"], 2, "{period}: {totals}");
        assert_eq!(totals[period]["ps"], expected_ps, "{period}: {totals}");
    }
    let by_model = get("/api/v2/stats/img/models").await;
    let expected = serde_json::json!({"stable_diffusion": 1, SDXL: 1});
    for period in ["day", "month", "total"] {
        assert_eq!(by_model[period], expected, "{period}: {by_model}");
    }
    let custom = get("/api/v2/stats/img/models?model_state=custom").await;
    assert_eq!(custom["total"], serde_json::json!({}));
    app.stop().await;
}
