use super::*;
use crate::matching::WorkerCaps;
use crate::queue::{DeadlineTerms, PopOutcome, Queue};
use crate::request::JobState;
use crate::routing::Standby;
use crate::Image;
use horde_api::image::SubmitState;

const KCPP: &str = "KoboldCppEmbedWorker:2:https://github.com/LostRuins/koboldcpp";

fn body(max_length: u32, max_context_length: u32) -> TextBody {
    let mut request = TextRequest::new("Once upon a time");
    request.models = vec!["koboldcpp/tiny".into()];
    request.params.max_length = max_length;
    request.params.max_context_length = max_context_length;
    TextBody {
        request,
        model_multiplier: 7.0,
    }
}

fn live(body: TextBody) -> LiveRequest<Text> {
    LiveRequest {
        id: Uuid::new_v4(),
        user_id: 1,
        job_kudos: Text::job_kudos(&body),
        body,
        base_seed: None,
        created: 0,
        seq: 0,
        priority: 0,
        n_remaining: 3,
        jobs_total: 3,
        consumed_kudos: 0.0,
        faulted: false,
        cancelled: false,
        can_pay_upfront: true,
        shared_key: None,
        expiry: 1000,
        version: 0,
        batch_id: None,
        batch_index: 0,
        jobs: vec![],
    }
}

fn worker() -> TextWorkerCaps {
    TextWorkerCaps {
        worker_id: Uuid::new_v4(),
        owner_id: 2,
        owner_trusted: false,
        models: vec!["koboldcpp/tiny".into()],
        max_length: 512,
        max_context_length: 4096,
        softprompts: vec![],
        nsfw: true,
        blacklist: vec![],
        amount: 1,
        bridge_agent: KCPP.into(),
        priority_user_ids: vec![2],
        maintenance: false,
        require_upfront_kudos: false,
        speed_tps: Some(20.0),
        extra_slow: false,
    }
}

fn skip(request: &LiveRequest<Text>, worker: &TextWorkerCaps) -> Option<&'static str> {
    can_serve(request, worker).err().map(TextSkip::key)
}

#[test]
fn a_worker_within_its_lengths_takes_the_job() {
    assert_eq!(skip(&live(body(80, 2048)), &worker()), None);
    assert_eq!(
        skip(&live(body(512, 4096)), &worker()),
        None,
        "the limits are inclusive"
    );
}

#[test]
fn the_text_only_skips_have_their_public_names() {
    let w = worker();
    assert_eq!(skip(&live(body(80, 8192)), &w), Some("max_context_length"));
    assert_eq!(skip(&live(body(513, 4096)), &w), Some("max_length"));
    let mut with_softprompt = body(80, 2048);
    with_softprompt.request.softprompt = Some("fantasy".into());
    assert_eq!(
        skip(&live(with_softprompt.clone()), &w),
        Some("matching_softprompt")
    );
    let offering = TextWorkerCaps {
        softprompts: vec!["fantasy_v2.zip".into()],
        ..worker()
    };
    assert_eq!(skip(&live(with_softprompt.clone()), &offering), None);
    with_softprompt.request.softprompt = Some(String::new());
    assert_eq!(
        skip(&live(with_softprompt), &w),
        None,
        "an empty one is none"
    );
}

#[test]
fn the_shared_skips_come_in_the_public_order() {
    let request = live(body(80, 2048));
    let other_model = TextWorkerCaps {
        models: vec!["koboldcpp/other".into()],
        ..worker()
    };
    assert_eq!(skip(&request, &other_model), Some("models"));
    let mut any_model = body(80, 2048);
    any_model.request.models.clear();
    assert_eq!(skip(&live(any_model), &other_model), None);
    let in_maintenance = TextWorkerCaps {
        maintenance: true,
        ..other_model.clone()
    };
    assert_eq!(
        skip(&request, &in_maintenance),
        Some("maintenance"),
        "first"
    );
    let mut trusted_only = body(80, 2048);
    trusted_only.request.trusted_workers = true;
    assert_eq!(skip(&live(trusted_only), &worker()), Some("untrusted"));
    let mut fast_only = body(80, 2048);
    fast_only.request.slow_workers = false;
    let slow = TextWorkerCaps {
        speed_tps: Some(1.0),
        ..worker()
    };
    assert_eq!(skip(&live(fast_only), &slow), Some("performance"));
    let extra_slow = TextWorkerCaps {
        extra_slow: true,
        ..worker()
    };
    assert_eq!(skip(&request, &extra_slow), Some("performance"));
    let blacklisting = TextWorkerCaps {
        blacklist: vec!["UPON".into()],
        ..worker()
    };
    assert_eq!(skip(&request, &blacklisting), Some("blacklist"));
    let upfront = TextWorkerCaps {
        require_upfront_kudos: true,
        ..worker()
    };
    let mut cannot_pay = live(body(80, 2048));
    cannot_pay.can_pay_upfront = false;
    assert_eq!(skip(&cannot_pay, &upfront), Some("kudos"));
}

#[test]
fn named_workers_allow_or_block() {
    let w = worker();
    let mut listed = body(80, 2048);
    listed.request.workers = vec![w.worker_id.to_string()];
    assert_eq!(skip(&live(listed.clone()), &w), None);
    listed.request.worker_blacklist = true;
    assert_eq!(skip(&live(listed), &w), Some("worker_id"));
    let mut others = body(80, 2048);
    others.request.workers = vec![Uuid::new_v4().to_string()];
    assert_eq!(skip(&live(others), &w), Some("worker_id"));
}

#[test]
fn only_validated_backends_serve_requests_that_want_them() {
    for (agent, validated) in [
        (KCPP, true),
        ("AI Horde Worker~aphrodite~oai:4:https://x", true),
        ("TabbyAPI:1:https://x", true),
        ("AI Horde Worker reGen:9:https://x", false),
        ("unknown:0:unknown", false),
        // Ours: the built-in engine (its numbers pinned to llama.cpp's), not its bridges to
        // servers it knows nothing about.
        ("horde-worker:0.1.0:https://github.com/horde-rs/horde", true),
        (
            "horde-worker~oai:0.1.0:https://github.com/horde-rs/horde",
            false,
        ),
        (
            "horde-worker~kai:0.1.0:https://github.com/horde-rs/horde",
            false,
        ),
    ] {
        assert_eq!(is_validated_backend(agent), validated, "{agent}");
    }
    let other_bridge = TextWorkerCaps {
        bridge_agent: "my-bridge:1:x".into(),
        ..worker()
    };
    let mut request = body(80, 2048);
    assert_eq!(
        skip(&live(request.clone()), &other_bridge),
        Some("bridge_version")
    );
    request.request.validated_backends = false;
    assert_eq!(skip(&live(request), &other_bridge), None);
}

#[test]
fn work_deadline_and_price_follow_the_tokens() {
    let b = body(100, 2048);
    assert_eq!(Text::work(&b, 3), 300.0);
    let bounds = DeadlineBounds {
        floor_secs: 60,
        ceiling_secs: 3600,
    };
    // 30 + 3 × 200 tokens / 10 tokens/s.
    assert_eq!(Text::deadline_secs(&b, 2, Some(10.0), bounds), 90);
    assert_eq!(Text::deadline_secs(&b, 2, Some(1000.0), bounds), 60);
    // Unmeasured: 2 tokens/s, 30 + 3 × 100 / 2.
    assert_eq!(Text::deadline_secs(&b, 1, None, bounds), 180);
    // 100 × 7 × 3.4 / 100, and the horde's fee.
    assert_eq!(Text::job_kudos(&b), 23.8);
    assert_eq!(Text::requester_charge(&b, 23.8), 24.8);
}

#[test]
fn the_body_is_priced_at_acceptance_and_stored_as_the_request_beside_its_multiplier() {
    let reference =
        TextModelReference::parse(r#"{"koboldcpp/tiny": {"parameters": 1100000000}}"#).unwrap();
    let accepted = TextBody::accept(body(80, 2048).request, &reference);
    assert!((accepted.model_multiplier - 1.1).abs() < 1e-12);
    let stored = serde_json::to_value(&accepted).unwrap();
    assert_eq!(stored["prompt"], "Once upon a time");
    assert_eq!(stored["params"]["max_length"], 80);
    let loaded: TextBody = serde_json::from_value(stored).unwrap();
    assert_eq!(loaded, accepted);
}

#[test]
fn text_requests_run_on_the_generic_queue_and_lifecycle() {
    let mut queue: Queue<Text> = Queue::new();
    let (too_long, fits) = (live(body(1024, 2048)), live(body(80, 2048)));
    queue.insert(too_long.clone());
    queue.insert(fits.clone());
    let w = TextWorkerCaps {
        amount: 2,
        ..worker()
    };
    let terms = DeadlineTerms {
        speed: Some(10.0),
        bounds: DeadlineBounds {
            floor_secs: 0,
            ceiling_secs: 10_000,
        },
    };
    let mut rng = rand::rng();
    let PopOutcome::Assigned(assignment) =
        queue.pop(&w, "w", 100, terms, &mut Standby::none(), &mut rng)
    else {
        panic!("the worker takes the request that fits");
    };
    assert_eq!(assignment.request_id, fits.id);
    assert_eq!(assignment.jobs.len(), 2, "up to its amount");
    let job = &assignment.jobs[0];
    assert_eq!(job.model, "koboldcpp/tiny");
    // 30 + 3 × 160 tokens / 10 tokens/s.
    assert_eq!(job.deadline, 100 + 78);
    let done = queue
        .update(fits.id, |r| {
            r.apply_submit(job.id, SubmitState::Ok, None, vec![], 1.0, 3)
                .map(|j| j.state)
        })
        .unwrap();
    assert_eq!(done, Ok(JobState::Ok));
    let counts = queue.get(fits.id).unwrap().counts();
    assert_eq!(
        (counts.finished, counts.processing, counts.waiting),
        (1, 1, 1)
    );
}

#[test]
fn an_image_worker_never_gets_a_text_job() {
    // The image and text queues are separate types: the image worker pops the image queue,
    // which cannot hold a text body, and the text queue's pop takes text caps only (passing
    // `WorkerCaps` to `Queue<Text>::pop` does not compile).
    let mut images: Queue<Image> = Queue::new();
    let mut texts: Queue<Text> = Queue::new();
    texts.insert(live(body(80, 2048)));
    let image_worker = WorkerCaps {
        worker_id: Uuid::new_v4(),
        owner_id: 2,
        owner_trusted: true,
        models: vec!["koboldcpp/tiny".into()],
        max_pixels: u64::MAX,
        nsfw: true,
        blacklist: vec![],
        allow_img2img: true,
        allow_painting: true,
        allow_post_processing: true,
        nsfw_censor: true,
        declared_post_processors: None,
        allow_lora: true,
        allow_controlnet: true,
        control_types: None,
        control_map_types: None,
        amount: 1,
        bridge_agent: KCPP.into(),
        priority_user_ids: vec![2],
        maintenance: false,
        require_upfront_kudos: false,
        speed_mps: None,
        extra_slow: false,
        step_limits: None,
        fallback: vec![],
        inpainting_models: vec![],
        loaded_models: None,
    };
    let terms = DeadlineTerms {
        speed: None,
        bounds: DeadlineBounds {
            floor_secs: 0,
            ceiling_secs: 10_000,
        },
    };
    let mut rng = rand::rng();
    let outcome = images.pop(&image_worker, "w", 0, terms, &mut Standby::none(), &mut rng);
    assert!(
        !matches!(outcome, PopOutcome::Assigned(_)),
        "a worker of the model's name, even, finds no text job in the image queue"
    );
    assert_eq!(
        texts.len(),
        1,
        "the text job is still waiting for a text worker"
    );
}

#[test]
fn a_job_payload_is_one_text_of_the_request_as_sent() {
    let mut b = body(80, 2048);
    b.request.params.n = 3;
    b.request.params.top_p = Some(0.9);
    let payload = job_payload(&b);
    assert_eq!(payload.params.n, 1);
    assert_eq!(payload.params.top_p, Some(0.9));
    assert_eq!(payload.params.max_length, 80);
    assert_eq!(payload.prompt.as_deref(), Some("Once upon a time"));
    assert_eq!(b.request.params.n, 3, "the request keeps its n");
}

#[test]
fn each_text_skip_is_counted_by_the_queue_under_its_public_name() {
    let all = [
        TextSkip::Maintenance,
        TextSkip::Kudos,
        TextSkip::Models,
        TextSkip::Untrusted,
        TextSkip::Performance,
        TextSkip::WorkerId,
        TextSkip::Blacklist,
        TextSkip::BridgeVersion,
        TextSkip::MaxContextLength,
        TextSkip::MaxLength,
        TextSkip::MatchingSoftprompt,
    ];
    for skip in all {
        assert_eq!(skip.reason().key(), skip.key(), "{skip:?}");
    }
}

#[test]
fn the_wait_is_the_tokens_ahead_over_the_workers_speed() {
    assert_eq!(estimate_wait_secs(600.0, &[10.0, 20.0]), Some(20.0));
    assert_eq!(estimate_wait_secs(600.0, &[]), None);
    assert_eq!(estimate_wait_secs(600.0, &[0.0]), None);
}
