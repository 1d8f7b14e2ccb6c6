//! The queue's order, the pop's choices and the indexes it keeps, on plain requests and
//! workers (no server, no clock).

use super::*;
use crate::matching::WorkerCaps;
use crate::request::tests::request_from;
use serde_json::json;

/// Jobs due back `secs` after they are handed out, whatever the worker's speed.
pub(crate) fn fixed_deadline(secs: i64) -> DeadlineTerms {
    DeadlineTerms {
        speed: None,
        bounds: DeadlineBounds {
            floor_secs: secs,
            ceiling_secs: secs,
        },
    }
}

pub(crate) fn worker(models: &[&str]) -> WorkerCaps {
    WorkerCaps {
        worker_id: Uuid::new_v4(),
        owner_id: 99,
        owner_trusted: false,
        models: models.iter().map(|m| m.to_string()).collect(),
        max_pixels: 1024 * 1024,
        nsfw: true,
        blacklist: vec![],
        allow_img2img: true,
        allow_painting: true,
        allow_post_processing: true,
        nsfw_censor: true,
        declared_post_processors: None,
        allow_lora: false,
        allow_controlnet: false,
        control_types: None,
        control_map_types: None,
        amount: 1,
        bridge_agent: "AI Horde Worker reGen:9.0.1:x".into(),
        priority_user_ids: vec![99],
        maintenance: false,
        require_upfront_kudos: false,
        speed_mps: None,
        extra_slow: false,
        step_limits: None,
        fallback: vec![],
        inpainting_models: vec![],
        loaded_models: None,
    }
}

pub(crate) fn add(queue: &mut Queue, body: serde_json::Value, priority: i64, user: i64) -> Uuid {
    let mut r = request_from(body);
    r.priority = priority;
    r.user_id = user;
    r.seq = queue.next_seq();
    let id = r.id;
    queue.insert(r);
    id
}

#[test]
fn waiting_images_per_user_follow_every_change() {
    let brute = |q: &Queue, user: i64| -> u64 {
        q.requests()
            .filter(|r| r.user_id == user && r.is_waiting())
            .map(|r| u64::from(r.n_remaining))
            .sum()
    };
    let mut q = Queue::new();
    let a = add(&mut q, json!({"prompt": "a", "params": {"n": 2}}), 0, 5);
    add(&mut q, json!({"prompt": "b", "params": {"n": 3}}), 0, 5);
    add(&mut q, json!({"prompt": "c", "params": {"n": 4}}), 0, 6);
    assert_eq!(q.waiting_images_of_user(5), 5);
    let w = worker(&["stable_diffusion"]);
    popped(&mut q, &w);
    popped(&mut q, &w);
    popped(&mut q, &w);
    for user in [5, 6, 7] {
        assert_eq!(
            q.waiting_images_of_user(user),
            brute(&q, user),
            "user {user}"
        );
    }
    q.update(a, |r| r.cancelled = true);
    q.remove(a);
    for user in [5, 6] {
        assert_eq!(
            q.waiting_images_of_user(user),
            brute(&q, user),
            "user {user}"
        );
    }
}

fn popped(queue: &mut Queue, w: &WorkerCaps) -> Option<Uuid> {
    match queue.pop(
        w,
        "w",
        0,
        fixed_deadline(150),
        &mut Standby::none(),
        &mut rand::rng(),
    ) {
        PopOutcome::Assigned(a) => Some(a.request_id),
        PopOutcome::Nothing(_) => None,
    }
}

/// The jobs of one pop: what the queue decided for `rng`.
fn popped_jobs(queue: &mut Queue, w: &WorkerCaps, rng: &mut impl rand::Rng) -> Vec<(Uuid, u64)> {
    match queue.pop(
        w,
        "w",
        1_700_000_000,
        fixed_deadline(150),
        &mut Standby::none(),
        rng,
    ) {
        PopOutcome::Assigned(a) => a.jobs.iter().map(|j| (j.id, j.seed)).collect(),
        PopOutcome::Nothing(_) => vec![],
    }
}

#[test]
fn the_same_randomness_hands_out_the_same_job_ids_and_seeds() {
    use rand::SeedableRng;
    let request = request_from(json!({"prompt": "p", "models": ["m"], "params": {"n": 3}}));
    let run = |seed: u64| {
        let mut queue = Queue::new();
        queue.insert(request.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        popped_jobs(&mut queue, &worker(&["m"]), &mut rng)
    };
    let (first, again, other) = (run(7), run(7), run(8));
    assert!(!first.is_empty());
    assert_eq!(first, again, "reproducible from the randomness passed in");
    assert_ne!(first, other, "and drawn from it");
}

#[test]
fn waiting_requests_gain_priority_until_old_ones_overtake_richer_newcomers() {
    let mut queue = Queue::new();
    let body = json!({"prompt": "p", "models": ["m"]});
    let mut add_at = |priority: i64, created: i64| {
        let mut r = request_from(body.clone());
        (r.priority, r.created, r.seq) = (priority, created, queue.next_seq());
        let id = r.id;
        queue.insert(r);
        id
    };
    let old_poor = add_at(100, 0);
    let newer_rich = add_at(200, 30); // 100 more kudos, but 30 s later: 150 points of aging
    let recent_rich = add_at(300, 10); // 200 more kudos, 10 s later: 50 points of aging
    let w = worker(&["m"]);
    assert_eq!(popped(&mut queue, &w), Some(recent_rich));
    assert_eq!(popped(&mut queue, &w), Some(old_poor));
    assert_eq!(popped(&mut queue, &w), Some(newer_rich));
}

#[test]
fn higher_priority_then_older_first() {
    let mut q = Queue::new();
    let low = add(&mut q, json!({"prompt": "a"}), 1, 1);
    let high_old = add(&mut q, json!({"prompt": "b"}), 5, 2);
    let high_new = add(&mut q, json!({"prompt": "c"}), 5, 3);
    let w = worker(&["stable_diffusion"]);
    assert_eq!(q.position(high_new), 2);
    assert_eq!(popped(&mut q, &w), Some(high_old));
    assert_eq!(popped(&mut q, &w), Some(high_new));
    assert_eq!(popped(&mut q, &w), Some(low));
    assert_eq!(popped(&mut q, &w), None);
    assert_eq!(q.waiting_count(), 0);
}

#[test]
fn late_jobs_go_back_ahead_of_newer_work_until_the_restart_limit() {
    let mut q = Queue::new();
    let old = add(&mut q, json!({"prompt": "a"}), 0, 1);
    let w = worker(&["stable_diffusion"]);
    assert_eq!(popped(&mut q, &w), Some(old));
    let newer = add(&mut q, json!({"prompt": "b"}), 0, 2);
    assert!(
        q.take_back_late_jobs(150, 2).is_empty(),
        "not before the deadline"
    );
    let taken = q.take_back_late_jobs(151, 2);
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].0, old);
    let counts = q.get(old).unwrap().counts();
    assert_eq!(
        (counts.restarted, counts.waiting, counts.processing),
        (1, 1, 0)
    );
    match q.pop(
        &w,
        "w",
        200,
        fixed_deadline(150),
        &mut Standby::none(),
        &mut rand::rng(),
    ) {
        PopOutcome::Assigned(a) => assert_eq!(
            a.request_id, old,
            "the restarted image goes before newer work"
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        q.take_back_late_jobs(300, 2).is_empty(),
        "the new job has its own deadline"
    );
    assert_eq!(q.take_back_late_jobs(1000, 2).len(), 1);
    let request = q.get(old).unwrap();
    assert!(
        request.faulted && request.counts().done,
        "two restarts fault the request"
    );
    assert_eq!(popped(&mut q, &w), Some(newer));
    assert_eq!(popped(&mut q, &w), None);
}

#[test]
fn the_owners_requests_come_first() {
    let mut q = Queue::new();
    let rich = add(&mut q, json!({"prompt": "a"}), 1000, 1);
    let own = add(&mut q, json!({"prompt": "b"}), -5, 99);
    let w = worker(&["stable_diffusion"]);
    assert_eq!(popped(&mut q, &w), Some(own));
    assert_eq!(popped(&mut q, &w), Some(rich));
}

#[test]
fn only_requests_for_the_workers_models_are_considered() {
    let mut q = Queue::new();
    add(&mut q, json!({"prompt": "a", "models": ["other"]}), 10, 1);
    let any = add(&mut q, json!({"prompt": "b", "models": []}), 0, 1);
    let w = worker(&["stable_diffusion"]);
    assert_eq!(popped(&mut q, &w), Some(any));
    assert_eq!(popped(&mut q, &w), None);
}

#[test]
fn skipped_counts_say_why() {
    let mut q = Queue::new();
    add(
        &mut q,
        json!({"prompt": "a", "params": {"width": 2048, "height": 2048}}),
        0,
        1,
    );
    add(
        &mut q,
        json!({"prompt": "a", "trusted_workers": true}),
        0,
        1,
    );
    let w = worker(&["stable_diffusion"]);
    match q.pop(
        &w,
        "w",
        0,
        fixed_deadline(150),
        &mut Standby::none(),
        &mut rand::rng(),
    ) {
        PopOutcome::Nothing(skipped) => {
            assert_eq!(skipped.get("max_pixels"), Some(&1));
            assert_eq!(skipped.get("untrusted"), Some(&1));
        }
        other => panic!("expected nothing, got {other:?}"),
    }
}

/// Three members of one batch (same params, their own prompts) and a lookalike outside it.
fn batch_of_three(q: &mut Queue, params: serde_json::Value) -> (Vec<Uuid>, Uuid) {
    let batch = Some(Uuid::new_v4());
    let mut members = vec![];
    for prompt in ["a cat", "a dog", "a fox"] {
        let mut r = request_from(json!({"prompt": prompt, "params": params.clone()}));
        (r.batch_id, r.batch_index, r.seq) = (batch, members.len() as u32, q.next_seq());
        members.push(r.id);
        q.insert(r);
    }
    let outsider = add(q, json!({"prompt": "a cow", "params": params}), 0, 1);
    (members, outsider)
}

/// Deadlines that grow with the jobs of a pass.
const BY_SPEED: DeadlineTerms = DeadlineTerms {
    speed: Some(0.1),
    bounds: DeadlineBounds {
        floor_secs: 1,
        ceiling_secs: 1_000_000,
    },
};

fn pop_with_companions(q: &mut Queue, w: &WorkerCaps) -> Assignment {
    let mut rng = rand::rng();
    let PopOutcome::Assigned(mut a) = q.pop(w, "w", 0, BY_SPEED, &mut Standby::none(), &mut rng)
    else {
        panic!("nothing popped");
    };
    q.add_companions(&mut a, w, "w", 0, BY_SPEED, &mut rng);
    a
}

#[test]
fn one_pop_takes_the_batch_members_that_share_its_pass_up_to_the_amount() {
    let mut q = Queue::new();
    let (members, outsider) = batch_of_three(&mut q, json!({}));
    let mut w = worker(&["stable_diffusion"]);
    (w.amount, w.max_pixels) = (2, 4096 * 4096);
    let a = pop_with_companions(&mut q, &w);
    assert_eq!(a.request_id, members[0]);
    let ids: Vec<Uuid> = a.companions.iter().map(|c| c.request_id).collect();
    assert_eq!(ids, vec![members[1]], "one more member: the amount is 2");
    assert_eq!(a.companions[0].jobs.len(), 1);
    assert_eq!(a.companions[0].jobs[0].request_id, members[1]);
    assert_eq!(q.get(members[1]).unwrap().n_remaining, 0);
    w.amount = 3;
    let a = pop_with_companions(&mut q, &w);
    assert_eq!(a.request_id, members[2]);
    assert!(a.companions.is_empty(), "the outsider is not of the batch");
    assert_eq!(q.position(outsider), 1);
    let batch = q.get(members[0]).unwrap().batch_id.unwrap();
    let listed: Vec<Uuid> = q.batch_members(batch).iter().map(|r| r.id).collect();
    assert_eq!(listed, members, "every member, in the order of its prompts");
    q.remove(members[1]);
    assert_eq!(q.batch_members(batch).len(), 2);
}

#[test]
fn members_differing_in_more_than_the_prompt_do_not_share_a_pass() {
    let mut q = Queue::new();
    let (members, _) = batch_of_three(&mut q, json!({}));
    q.update(members[1], |r| r.body.params.steps = Some(10));
    let mut w = worker(&["stable_diffusion"]);
    (w.amount, w.max_pixels) = (3, 4096 * 4096);
    let a = pop_with_companions(&mut q, &w);
    let ids: Vec<Uuid> = a.companions.iter().map(|c| c.request_id).collect();
    assert_eq!(ids, vec![members[2]]);
    let deadline = a.jobs[0].deadline;
    let body = &q.get(members[0]).unwrap().body;
    let alone = Image::deadline_secs(body, 1, BY_SPEED.speed, BY_SPEED.bounds);
    assert!(deadline > alone, "two images take longer than one");
    assert!(a.companions[0].jobs.iter().all(|j| j.deadline == deadline));
    let stored = q.get(members[0]).unwrap().jobs[0].deadline;
    assert_eq!(
        stored, deadline,
        "the first member's job is due with the pass"
    );
}

#[test]
fn a_request_with_n_2_is_split_over_two_workers_then_leaves_the_waiting_set() {
    let mut q = Queue::new();
    let id = add(&mut q, json!({"prompt": "a", "params": {"n": 2}}), 0, 1);
    let w = worker(&["stable_diffusion"]);
    assert_eq!(popped(&mut q, &w), Some(id));
    assert_eq!(q.position(id), 1);
    assert_eq!(popped(&mut q, &w), Some(id));
    assert_eq!(q.position(id), 0);
    assert_eq!(q.get(id).unwrap().jobs.len(), 2);
    let job = q.get(id).unwrap().jobs[0].id;
    assert_eq!(q.request_of_job(job).unwrap().id, id);
}
