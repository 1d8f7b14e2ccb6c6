use super::*;
use crate::queue::{DeadlineTerms, PopOutcome, Queue};
use crate::routing::Standby;
use horde_api::image::SubmitState;
use serde_json::json;

fn body(forms: &[&str], tile_count: u32) -> AlchemyBody {
    let request: InterrogationRequest = serde_json::from_value(json!({
        "forms": forms.iter().map(|f| json!({"name": f})).collect::<Vec<_>>(),
        "source_image": "https://example.com/a.webp",
    }))
    .unwrap();
    AlchemyBody::accept(normalise(request).unwrap(), Some((512 * tile_count, 512)))
}

fn live(body: AlchemyBody) -> LiveRequest<Alchemy> {
    let n = body.form_names.len() as u32;
    LiveRequest {
        id: Uuid::now_v7(),
        user_id: 7,
        job_kudos: Alchemy::job_kudos(&body),
        body,
        base_seed: None,
        created: 0,
        seq: 1,
        priority: 0,
        n_remaining: n,
        jobs_total: n,
        consumed_kudos: 0.0,
        faulted: false,
        cancelled: false,
        can_pay_upfront: true,
        shared_key: None,
        expiry: 10_000,
        version: 0,
        batch_id: None,
        batch_index: 0,
        jobs: vec![],
    }
}

fn alchemist(forms: &[&str], max_tiles: u32) -> AlchemistCaps {
    AlchemistCaps {
        worker_id: Uuid::new_v4(),
        owner_id: 1,
        owner_trusted: false,
        forms: forms.iter().map(|f| f.to_string()).collect(),
        max_tiles,
        amount: 1,
        priority_user_ids: vec![1],
        maintenance: false,
        speed_fps: None,
    }
}

fn terms() -> DeadlineTerms {
    DeadlineTerms {
        speed: None,
        bounds: DeadlineBounds {
            floor_secs: 10,
            ceiling_secs: 600,
        },
    }
}

#[test]
fn forms_are_priced_as_the_public_horde_prices_them() {
    assert_eq!(form_kudos("caption", 4), 1.0);
    assert_eq!(form_kudos("nsfw", 4), 1.0);
    assert_eq!(form_kudos("interrogation", 4), 3.0);
    assert_eq!(form_kudos("RealESRGAN_x4plus", 4), 12.0);
    assert_eq!(tiles(512, 512), 1);
    assert_eq!(tiles(513, 512), 2);
    assert_eq!(tiles(1024, 1536), 6);
    assert_eq!(requester_charge(3.0, true), 5.0);
    assert_eq!(requester_charge(3.0, false), 4.0);
}

#[test]
fn unknown_forms_are_refused_and_repeated_ones_kept_once() {
    let request: InterrogationRequest = serde_json::from_value(json!({
        "forms": [{"name": "caption"}, {"name": "nsfw"}, {"name": "caption"}],
        "source_image": "x",
    }))
    .unwrap();
    let names: Vec<String> = normalise(request)
        .unwrap()
        .forms
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, ["caption", "nsfw"]);
    let unknown: InterrogationRequest =
        serde_json::from_value(json!({"forms": [{"name": "telepathy"}], "source_image": "x"}))
            .unwrap();
    let refusal = normalise(unknown).unwrap_err();
    assert_eq!(refusal.rc(), Rc::BadRequest);
    assert!(refusal.message().contains("telepathy"));
}

#[test]
fn each_alchemist_gets_the_forms_it_runs_once_each_and_a_faulted_form_again() {
    let mut queue: Queue<Alchemy> = Queue::new();
    let request = live(body(&["caption", "nsfw", "RealESRGAN_x2plus"], 2));
    let id = request.id;
    queue.insert(request);
    let mut rng = rand::rng();
    let nsfw_only = alchemist(&["nsfw"], 16);
    let pop = |queue: &mut Queue<Alchemy>, w: &AlchemistCaps, rng: &mut _| {
        queue.pop(w, "a", 0, terms(), &mut Standby::none(), rng)
    };
    let PopOutcome::Assigned(first) = pop(&mut queue, &nsfw_only, &mut rng) else {
        panic!("the nsfw alchemist gets the nsfw form");
    };
    assert_eq!(first.model, "nsfw");
    assert_eq!(first.jobs.len(), 1);
    assert!(matches!(
        pop(&mut queue, &nsfw_only, &mut rng),
        PopOutcome::Nothing(_)
    ));

    // Too many tiles for a small alchemist; a bigger one takes the caption, then the upscale.
    let small = alchemist(&["caption", "RealESRGAN_x2plus"], 1);
    let PopOutcome::Nothing(skipped) = pop(&mut queue, &small, &mut rng) else {
        panic!("2 tiles are over a max_tiles of 1");
    };
    assert_eq!(skipped.get("max_tiles"), Some(&1));
    let big = alchemist(&["caption", "RealESRGAN_x2plus"], 16);
    let PopOutcome::Assigned(caption) = pop(&mut queue, &big, &mut rng) else {
        panic!("caption");
    };
    assert_eq!(caption.model, "caption");
    let PopOutcome::Assigned(upscale) = pop(&mut queue, &big, &mut rng) else {
        panic!("upscale");
    };
    assert_eq!(upscale.model, "RealESRGAN_x2plus");
    assert!(matches!(
        pop(&mut queue, &big, &mut rng),
        PopOutcome::Nothing(_)
    ));

    // The caption faults: it is wanted again, and handed out as the same form.
    queue
        .update(id, |r| {
            r.apply_submit(
                caption.jobs[0].id,
                SubmitState::Faulted,
                None,
                vec![],
                0.0,
                3,
            )
            .map(|_| ())
        })
        .unwrap()
        .unwrap();
    let PopOutcome::Assigned(again) = pop(&mut queue, &big, &mut rng) else {
        panic!("the faulted caption again");
    };
    assert_eq!(again.model, "caption");
}

#[test]
fn a_form_has_the_public_hordes_three_minutes() {
    let b = body(&["caption"], 1);
    let bounds = DeadlineBounds {
        floor_secs: 10,
        ceiling_secs: 60,
    };
    assert_eq!(Alchemy::deadline_secs(&b, 1, Some(100.0), bounds), 180);
    assert_eq!(
        Alchemy::job_kudos(&body(&["caption", "interrogation"], 1)),
        3.0
    );
}
