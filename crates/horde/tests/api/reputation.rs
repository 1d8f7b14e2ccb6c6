//! The reputation ledger: every outcome of a worker's jobs is counted, persisted and shown on
//! `/workers/{id}`; bad images and impossible speeds raise suspicion, which suspends a worker
//! until a moderator clears it; and routing gives the most important request to the most
//! reliable waiting worker.

use crate::helpers::*;
use horde_api::image::{PopResponse, SubmitState};
use horde_api::user::TestUserRequest;
use horde_api::worker::{ModifyWorker, WorkerReputation};
use horde_client::Client;

const WORKER: &str = "ledger-worker";

/// A moderator (not trusted: roles are independent) and a client acting as them.
async fn moderator(app: &TestApp) -> Client {
    let created = app
        .anonymous()
        .create_test_user(&TestUserRequest {
            username: "moderator".into(),
            oauth_id: None,
            moderator: true,
            trusted: false,
            kudos: 0.0,
        })
        .await
        .expect("moderator created");
    app.client(&created.api_key)
}

async fn pop_job(worker: &Client, name: &str) -> PopResponse {
    let popped = worker.pop(&pop_request(name)).await.expect("pop answers");
    assert!(popped.id.is_some(), "{name} expected a job: {popped:?}");
    popped
}

async fn reputation_of(client: &Client, name: &str) -> (String, WorkerReputation) {
    let details = client.worker_by_name(name).await.expect("worker details");
    let reputation = details.reputation.expect("our ledger is shown");
    (details.id, reputation)
}

fn reasons(r: &WorkerReputation) -> Vec<&str> {
    r.suspicions.iter().map(|s| s.reason.as_str()).collect()
}

#[tokio::test]
async fn every_outcome_is_counted_shown_and_kept_across_a_restart() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (worker, _) = app.user("owner", 0.0).await;

    // Completed.
    requester
        .generate_async(&small_request("done", 1, false))
        .await
        .unwrap();
    let job = pop_job(&worker, WORKER).await;
    worker
        .submit(&submit_inline(&job, &webp(512, 512, [1; 3], [2; 3])))
        .await
        .expect("a right-sized image is accepted");

    // Timed out, handed out again and faulted by the worker, handed out a third time and
    // cancelled while in flight.
    let id = requester
        .generate_async(&small_request("unlucky", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    pop_job(&worker, WORKER).await;
    let far_future = horde_server::clock::now() + 100_000;
    assert_eq!(app.state.take_back_late_jobs(far_future).await.unwrap(), 1);
    let job = pop_job(&worker, WORKER).await;
    let mut fault = submit_with(&job, None);
    fault.state = SubmitState::Faulted;
    worker.submit(&fault).await.expect("a fault is accepted");
    pop_job(&worker, WORKER).await;
    requester.cancel(&id).await.unwrap();

    let check = |details: &horde_api::worker::WorkerDetails| {
        let r = details.reputation.as_ref().expect("our ledger is shown");
        assert_eq!(
            (
                r.jobs_completed,
                r.jobs_faulted,
                r.jobs_timed_out,
                r.jobs_cancelled
            ),
            (1, 1, 1, 1),
            "{r:?}"
        );
        assert_eq!(details.requests_fulfilled, 1);
        assert_eq!(
            details.uncompleted_jobs, 1,
            "AI Horde counts timed-out jobs here"
        );
        // Prior of 4 successes and 1 failure: (1 + 4) / (1 + 1 + 1 + 5).
        assert!(
            (r.reliability - 5.0 / 8.0).abs() < 1e-9,
            "{}",
            r.reliability
        );
        assert!(r.speed_mps > 0.0);
        assert_eq!((r.suspicion, r.suspended), (0, false));
    };
    let details = app.anonymous().worker_by_name(WORKER).await.unwrap();
    check(&details);

    let app = app.restart().await;
    let after = app.anonymous().worker(&details.id).await.unwrap();
    check(&after);
    assert_eq!(
        after.reputation, details.reputation,
        "the ledger is persisted"
    );
}

#[tokio::test]
async fn bad_images_suspend_a_worker_until_a_moderator_clears_it() {
    let app = spawn_app_with(|c| c.workers.suspicion_threshold = 2).await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (worker, _) = app.user("owner", 0.0).await;
    let moderator = moderator(&app).await;
    let id = requester
        .generate_async(&small_request("to be finished", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let job = pop_job(&worker, WORKER).await;

    let wrong_size = worker
        .submit(&submit_inline(&job, &webp(256, 256, [1; 3], [1; 3])))
        .await
        .unwrap_err();
    assert_eq!(wrong_size.status().map(|s| s.as_u16()), Some(400));
    assert_eq!(wrong_size.rc(), Some("ImageValidationFailed"));
    assert!(
        wrong_size.to_string().contains("256x256") && wrong_size.to_string().contains("512x512"),
        "the refusal says what was wrong: {wrong_size}"
    );
    let garbage = worker
        .submit(&submit_inline(&job, b"not an image at all"))
        .await
        .unwrap_err();
    assert_eq!(garbage.rc(), Some("ImageValidationFailed"));

    let (worker_id, r) = reputation_of(&app.anonymous(), WORKER).await;
    assert_eq!(reasons(&r), ["wrong_image_size", "undecodable_image"]);
    assert_eq!((r.suspicion, r.suspended), (2, true));

    let refused = worker.pop(&pop_request(WORKER)).await.unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(403));
    assert_eq!(refused.rc(), Some("WorkerFlaggedMaintenance"));
    assert!(refused.to_string().contains("suspended"), "{refused}");

    let clear = ModifyWorker {
        reset_suspicion: Some(true),
        ..Default::default()
    };
    let not_mod = worker.modify_worker(&worker_id, &clear).await.unwrap_err();
    assert_eq!(not_mod.rc(), Some("NotModerator"));
    moderator
        .modify_worker(&worker_id, &clear)
        .await
        .expect("a moderator clears the worker");
    let (_, r) = reputation_of(&app.anonymous(), WORKER).await;
    assert_eq!(
        (r.suspicion, r.suspended, r.suspicions.len()),
        (0, false, 0)
    );

    // Cleared, it pops again, and the job it still holds was never lost.
    worker
        .pop(&pop_request(WORKER))
        .await
        .expect("pops are served again");
    worker
        .submit(&submit_inline(&job, &webp(512, 512, [7; 3], [7; 3])))
        .await
        .expect("the held job is finished");
    let status = requester.status(&id).await.unwrap();
    assert!(
        status.check.done && status.generations.len() == 1,
        "{status:?}"
    );

    // An upload of the wrong size counts too.
    requester
        .generate_async(&small_request("uploaded", 1, true))
        .await
        .unwrap();
    let job = pop_job(&worker, WORKER).await;
    let upload = worker
        .upload(
            job.r2_upload.as_deref().unwrap(),
            webp(64, 64, [1; 3], [1; 3]),
        )
        .await
        .unwrap_err();
    assert_eq!(upload.rc(), Some("ImageValidationFailed"));
    let (_, r) = reputation_of(&app.anonymous(), WORKER).await;
    assert_eq!(reasons(&r), ["wrong_image_size"]);
}

#[tokio::test]
async fn impossible_speeds_and_runs_of_faults_raise_suspicion() {
    let app = spawn_app_with(|c| {
        c.workers.max_plausible_mps = 1.0;
        c.workers.fault_streak_limit = 2;
    })
    .await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (worker, _) = app.user("owner", 0.0).await;
    // 512×512 × 10 steps is 2.6 megapixelsteps, delivered within a second or two.
    requester
        .generate_async(&small_request("fast", 1, false))
        .await
        .unwrap();
    let job = pop_job(&worker, WORKER).await;
    let paid = worker
        .submit(&submit_inline(&job, &webp(512, 512, [3; 3], [3; 3])))
        .await
        .expect("fast work is still accepted");
    assert!(paid.reward > 0.0);

    requester
        .generate_async(&small_request("faulty", 1, false))
        .await
        .unwrap();
    for _ in 0..2 {
        let job = pop_job(&worker, WORKER).await;
        let mut fault = submit_with(&job, None);
        fault.state = SubmitState::Faulted;
        worker.submit(&fault).await.unwrap();
    }
    let (_, r) = reputation_of(&app.anonymous(), WORKER).await;
    assert_eq!(reasons(&r), ["unreasonably_fast", "repeated_faults"]);
    assert_eq!(
        (r.suspicion, r.suspended),
        (2, false),
        "threshold 5 not reached"
    );
}

#[tokio::test]
async fn the_most_important_request_goes_to_the_more_reliable_waiting_worker() {
    let app = spawn_app().await;
    let (requester, _) = app.user("paying requester", 1_000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let (reliable, unreliable) = ("reliable worker", "unreliable worker");

    // A record for each: the reliable one finishes two jobs, the other faults two.
    for _ in 0..2 {
        requester
            .generate_async(&small_request("warm-up", 1, false))
            .await
            .unwrap();
        let job = pop_job(&owner, reliable).await;
        owner
            .submit(&submit_inline(&job, &webp(512, 512, [1; 3], [1; 3])))
            .await
            .unwrap();
    }
    let faulty = requester
        .generate_async(&small_request("faulted twice", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    for _ in 0..2 {
        let job = pop_job(&owner, unreliable).await;
        let mut fault = submit_with(&job, None);
        fault.state = SubmitState::Faulted;
        owner.submit(&fault).await.unwrap();
    }
    requester.cancel(&faulty).await.unwrap();
    let (_, good) = reputation_of(&owner, reliable).await;
    let (_, bad) = reputation_of(&owner, unreliable).await;
    assert!(
        good.reliability > bad.reliability + 0.05,
        "{good:?} {bad:?}"
    );

    // Both stand by; then an anonymous (lowest priority) and a paying request arrive.
    for name in [reliable, unreliable] {
        let idle = owner.pop(&pop_request(name)).await.unwrap();
        assert!(idle.id.is_none());
    }
    app.anonymous()
        .generate_async(&small_request("anonymous", 1, false))
        .await
        .unwrap();
    requester
        .generate_async(&small_request("paying", 1, false))
        .await
        .unwrap();

    // The unreliable worker asks first but is given the less important request.
    let first = pop_job(&owner, unreliable).await;
    assert_eq!(first.payload["prompt"], "anonymous");
    let second = pop_job(&owner, reliable).await;
    assert_eq!(second.payload["prompt"], "paying");
}
