//! The image job lifecycle end to end: request, pops by two workers, submits of real WebP
//! images, check and status, cancel, and expiry.

use crate::helpers::*;
use horde_server::sweeper;

const RED: [u8; 3] = [220, 30, 30];
const BLUE: [u8; 3] = [30, 30, 220];
const GREEN: [u8; 3] = [30, 200, 30];
const WHITE: [u8; 3] = [250, 250, 250];

#[tokio::test]
async fn two_workers_each_finish_one_image_of_an_n2_request() {
    let app = spawn_app().await;
    let (requester, requester_id) = app.user("requester", 100.0).await;
    let (owner_a, _) = app.user("owner-a", 0.0).await;
    let (owner_b, _) = app.user("owner-b", 0.0).await;

    let accepted = requester
        .generate_async(&small_request("a lighthouse ### fog", 2, false))
        .await
        .unwrap();
    let id = accepted.id.clone().expect("202 carries the request id");
    uuid::Uuid::parse_str(&id).expect("request ids are UUIDs");
    assert!(
        accepted.kudos > 0.0,
        "the request has a price: {accepted:?}"
    );
    let check = requester.check(&id).await.unwrap();
    assert_eq!(
        (check.waiting, check.processing, check.finished, check.done),
        (2, 0, 0, false)
    );
    assert_eq!(check.queue_position, 1);

    // Two workers, each taking one image (amount 1).
    let pop_a = owner_a.pop(&pop_request("worker-a")).await.unwrap();
    let pop_b = owner_b.pop(&pop_request("worker-b")).await.unwrap();
    assert_eq!(pop_a.ids.len(), 1);
    assert_eq!(pop_b.ids.len(), 1);
    assert_ne!(pop_a.id, pop_b.id, "each job goes to one worker");
    assert_eq!(pop_a.payload["prompt"], "a lighthouse ### fog");
    assert_eq!(pop_a.payload["ddim_steps"], 10);
    assert_eq!(pop_a.model.as_deref(), Some("stable_diffusion"));
    assert!(
        pop_a.r2_upload.is_some(),
        "every pop carries an upload URL, as the public pop: r2 decides only what the client gets"
    );
    let seed_a: u64 = pop_a.payload["seed"]
        .as_str()
        .expect("seed is a string")
        .parse()
        .expect("of digits");
    let check = requester.check(&id).await.unwrap();
    assert_eq!((check.waiting, check.processing, check.finished), (0, 2, 0));

    // A third worker finds nothing left, and is told so with the empty answer.
    let (owner_c, _) = app.user("owner-c", 0.0).await;
    let empty = owner_c.pop(&pop_request("worker-c")).await.unwrap();
    assert!(empty.id.is_none() && empty.ids.is_empty());

    let reward_a = owner_a
        .submit(&submit_inline(&pop_a, &webp(512, 512, RED, BLUE)))
        .await
        .unwrap()
        .reward;
    assert!(reward_a > 0.0);
    let halfway = requester.check(&id).await.unwrap();
    assert_eq!(
        (halfway.finished, halfway.processing, halfway.done),
        (1, 1, false)
    );
    owner_b
        .submit(&submit_inline(&pop_b, &webp(512, 512, GREEN, WHITE)))
        .await
        .unwrap();

    let status = requester.status(&id).await.unwrap();
    assert!(status.check.done);
    assert_eq!(status.check.finished, 2);
    assert_eq!(status.generations.len(), 2);
    for generation in &status.generations {
        let ((w, h), top, bottom) = halves_of(&base64_decode(&generation.img));
        assert_eq!((w, h), (512, 512));
        let expected = if generation.worker_name == "worker-a" {
            (RED, BLUE)
        } else {
            (GREEN, WHITE)
        };
        assert_eq!(
            (top, bottom),
            expected,
            "{} sent these colours",
            generation.worker_name
        );
        assert_eq!(generation.state, "ok");
        assert_eq!(generation.model, "stable_diffusion");
    }
    let from_a = status
        .generations
        .iter()
        .find(|g| g.worker_name == "worker-a")
        .unwrap();
    assert_eq!(from_a.seed, seed_a.to_string());
    assert_eq!(Some(from_a.id.clone()), pop_a.id);

    // Kudos moved: the requester paid, the owners earned; the workers count their work.
    let requester_after = requester.find_user().await.unwrap();
    assert_eq!(requester_after.id, requester_id);
    assert!(
        requester_after.kudos < 100.0,
        "requester paid: {}",
        requester_after.kudos
    );
    assert_eq!(requester_after.records.request.image, 2);
    let owner_after = owner_a.find_user().await.unwrap();
    assert!(
        (owner_after.kudos - reward_a).abs() < 1e-6,
        "owner earned {reward_a}: {}",
        owner_after.kudos
    );
    assert_eq!(owner_after.records.fulfillment.image, 1);
    let worker = requester.worker_by_name("worker-a").await.unwrap();
    assert_eq!(worker.requests_fulfilled, 1);
    assert!(worker.online);
    assert_eq!(
        owner_after.worker_ids.as_deref(),
        Some(&[worker.id.clone()][..])
    );
    app.stop().await;
}

/// A write the database refuses (a full disk, a broken connection: here a trigger refusing
/// one worker's rows) is answered 500 and changes nothing: the coordinator's copy of the
/// request is the stored one again, so the image goes to the next worker at once, and a
/// result refused once is accepted when sent again.
#[tokio::test]
async fn a_write_the_database_refuses_leaves_the_request_as_stored() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let id = submitted(&requester, &small_request("refused once", 1, false)).await;
    crate::backend::execute_beside(
        app.dir.path(),
        "CREATE TRIGGER refuse_jobs BEFORE INSERT ON jobs WHEN NEW.worker_name = 'doomed' \
         BEGIN SELECT RAISE(ABORT, 'the disk is full'); END; \
         CREATE TRIGGER refuse_results BEFORE UPDATE ON jobs WHEN NEW.worker_name = 'unlucky' \
         AND NEW.state = 'ok' BEGIN SELECT RAISE(ABORT, 'the disk is full'); END;",
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN \
         RAISE EXCEPTION 'the disk is full'; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER refuse_jobs BEFORE INSERT ON jobs FOR EACH ROW \
         WHEN (NEW.worker_name = 'doomed') EXECUTE FUNCTION refuse(); \
         CREATE TRIGGER refuse_results BEFORE UPDATE ON jobs FOR EACH ROW \
         WHEN (NEW.worker_name = 'unlucky' AND NEW.state = 'ok') EXECUTE FUNCTION refuse();",
    )
    .await;

    // The hand-out to `doomed` is not stored: the image waits for the next worker.
    let refused = owner.pop(&pop_request("doomed")).await.unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(500), "{refused}");
    let check = requester.check(&id).await.unwrap();
    assert_eq!((check.waiting, check.processing), (1, 0), "{check:?}");
    let popped = owner.pop(&pop_request("unlucky")).await.unwrap();
    assert_eq!(popped.payload["prompt"], "refused once");

    // Its result is refused once; the request stays as stored (in flight), and the result
    // sent again is accepted and paid.
    let submit = submit_inline(&popped, &webp(512, 512, RED, BLUE));
    let refused = owner.submit(&submit).await.unwrap_err();
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(500), "{refused}");
    let check = requester.check(&id).await.unwrap();
    assert_eq!(
        (check.processing, check.finished, check.done),
        (1, 0, false)
    );
    let unpaid = owner.worker_by_name("unlucky").await.unwrap();
    assert_eq!(
        unpaid.kudos_rewards, 0.0,
        "nothing earned by a refused result"
    );
    crate::backend::execute_beside(
        app.dir.path(),
        "DROP TRIGGER refuse_results",
        "DROP TRIGGER refuse_results ON jobs",
    )
    .await;
    let accepted = owner.submit(&submit).await.unwrap();
    assert!(accepted.reward > 0.0, "{accepted:?}");
    let paid = owner.worker_by_name("unlucky").await.unwrap();
    assert_eq!(paid.kudos_rewards, accepted.reward, "earned once");
    let status = requester.status(&id).await.unwrap();
    assert!(status.check.done);
    assert_eq!(status.generations.len(), 1);
    assert_eq!(halves_of(&base64_decode(&status.generations[0].img)).1, RED);
    app.stop().await;
}

#[tokio::test]
async fn a_worker_with_amount_2_takes_both_images_as_a_batch() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let id = requester
        .generate_async(&small_request("batch", 2, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let mut pop = pop_request("batcher");
    pop.amount = 2;
    // The public horde's safe batch: max_pixels / 3.5 × amount must cover the pixels of each image.
    pop.max_pixels = 1024 * 1024;
    let popped = owner.pop(&pop).await.unwrap();
    assert_eq!(popped.ids.len(), 2);
    assert_eq!(popped.payload["n_iter"], 2);
    for job in &popped.ids {
        let mut one = popped.clone();
        one.id = Some(job.clone());
        owner
            .submit(&submit_inline(&one, &webp(512, 512, RED, RED)))
            .await
            .unwrap();
    }
    assert!(requester.check(&id).await.unwrap().done);
    app.stop().await;
}

#[tokio::test]
async fn disable_batching_hands_out_one_image_a_pop_and_is_for_trusted_users() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (untrusted, _) = app.untrusted_user("untrusted", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let mut request = small_request("one at a time", 2, false);
    request.disable_batching = true;
    let error = untrusted
        .generate_async(&request)
        .await
        .expect_err("refused");
    assert_eq!(error.rc(), Some("RequiresTrust"), "{error}");
    assert_eq!(error.status().map(|s| s.as_u16()), Some(400));

    requester.generate_async(&request).await.unwrap();
    let mut pop = pop_request("batcher");
    pop.amount = 2;
    pop.max_pixels = 1024 * 1024;
    for _ in 0..2 {
        let popped = owner.pop(&pop).await.unwrap();
        assert_eq!(popped.ids.len(), 1, "one image a pop");
        assert_eq!(popped.payload["n_iter"], 1);
    }
    app.stop().await;
}

#[tokio::test]
async fn cancel_returns_the_finished_images_and_stops_handing_out_jobs() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let id = requester
        .generate_async(&small_request("three cats", 3, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let popped = owner.pop(&pop_request("w1")).await.unwrap();
    owner
        .submit(&submit_inline(&popped, &webp(512, 512, BLUE, BLUE)))
        .await
        .unwrap();
    let paid_for_one = requester.find_user().await.unwrap().kudos;

    let cancelled = requester.cancel(&id).await.unwrap();
    assert_eq!(
        cancelled.generations.len(),
        1,
        "the finished image comes back"
    );
    let ((_, _), top, _) = halves_of(&base64_decode(&cancelled.generations[0].img));
    assert_eq!(top, BLUE);
    // The answer is the status just before the cancel, as on the public horde; from then on
    // nothing is left to wait for.
    assert!(!cancelled.check.done && cancelled.check.waiting == 2);
    let check = requester.check(&id).await.unwrap();
    assert!(check.done, "nothing is left to wait for: {check:?}");
    assert_eq!(check.waiting, 0);

    let after = owner.pop(&pop_request("w1")).await.unwrap();
    assert!(
        after.id.is_none(),
        "a cancelled request hands out nothing more"
    );
    assert_eq!(
        requester.find_user().await.unwrap().kudos,
        paid_for_one,
        "unfinished images cost nothing"
    );
    app.stop().await;
}

#[tokio::test]
async fn finished_requests_expire_with_their_images() {
    let app = spawn_app_with(|c| c.requests.idle_expiry_secs = 24 * 3600).await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let id = requester
        .generate_async(&small_request("short-lived", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let waiting = requester
        .generate_async(&small_request("still waiting", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let popped = owner.pop(&pop_request("w1")).await.unwrap();
    owner
        .submit(&submit_inline(&popped, &webp(512, 512, RED, RED)))
        .await
        .unwrap();
    // A file under the data directory on SQLite; a row of the database on PostgreSQL.
    let job: uuid::Uuid = popped.id.clone().unwrap().parse().unwrap();
    let image_file = app.dir.path().join("images").join(format!("{job}.webp"));
    assert_eq!(
        image_file.exists(),
        crate::backend::postgres_server().is_none(),
        "the coordinator stores the image under its data directory (SQLite)"
    );
    assert!(
        app.state.images.exists(job).await.unwrap(),
        "the image is stored"
    );

    let now = horde_server::clock::now();
    assert_eq!(
        sweeper::step(&app.state, now).await,
        0,
        "nothing expires early"
    );
    assert!(requester.check(&id).await.unwrap().done);

    let retention = app.state.config.requests.retention_secs;
    assert_eq!(
        sweeper::step(&app.state, now + retention + 1).await,
        1,
        "only the finished request expires"
    );
    let gone = requester.check(&id).await.unwrap_err();
    assert_eq!(gone.status().map(|s| s.as_u16()), Some(404));
    assert_eq!(gone.rc(), Some("RequestNotFound"));
    assert!(!image_file.exists(), "its image is removed with it");
    assert!(!app.state.images.exists(job).await.unwrap());
    assert!(
        requester.check(&waiting).await.is_ok(),
        "the waiting request stays (idle expiry is from its last pop)"
    );
    app.stop().await;
}

#[tokio::test]
async fn r2_requests_upload_to_the_coordinator_and_download_from_status() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let id = requester
        .generate_async(&small_request("r2 please", 1, true))
        .await
        .unwrap()
        .id
        .unwrap();
    let popped = owner.pop(&pop_request("w1")).await.unwrap();
    let upload = popped
        .r2_upload
        .clone()
        .expect("r2 jobs carry an upload URL");
    assert_eq!(popped.r2_uploads, vec![upload.clone()]);
    assert!(
        upload.starts_with(&app.root),
        "{upload} is served by this coordinator"
    );

    owner
        .upload(&upload, webp(512, 512, GREEN, RED))
        .await
        .unwrap();
    owner
        .submit(&submit_with(&popped, Some("R2".into())))
        .await
        .unwrap();
    let status = requester.status(&id).await.unwrap();
    let url = &status.generations[0].img;
    assert!(
        url.starts_with("http://"),
        "r2 results are download URLs: {url}"
    );
    let ((w, h), top, bottom) = halves_of(&requester.download(url).await.unwrap());
    assert_eq!(((w, h), top, bottom), ((512, 512), GREEN, RED));
    app.stop().await;
}
