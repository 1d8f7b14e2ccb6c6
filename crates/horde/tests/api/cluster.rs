//! Several coordinators sharing one PostgreSQL database (run with HORDE_TEST_POSTGRES_URL; the
//! chaos test with two and three coordinators is in `chaos`): what one accepts, the others
//! serve at once; images, rate limits and concurrency caps hold across them; the background
//! duties survive the coordinator running them being killed.

use crate::helpers::*;
use horde_api::user::TestUserRequest;
use horde_client::Client;
use horde_core::ratelimit::Limit;
use std::time::{Duration, Instant};

const RED: [u8; 3] = [200, 20, 20];
const BLUE: [u8; 3] = [20, 20, 200];

/// Waits (up to 10 s) for `ready`, polling every few milliseconds; returns how long it took.
async fn wait_for(mut ready: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if ready() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: .ci/run runs it with HORDE_TEST_POSTGRES_URL"]
async fn a_request_accepted_on_one_coordinator_reaches_the_others_without_a_poll() {
    let apps = spawn_cluster(3, |_| {}).await;
    let (requester, _) = apps[0].user("requester", 100.0).await;
    let (owner, _) = apps[0].user("owner", 0.0).await;
    let owner_on_c = owner.with_base_url(&apps[2].root);
    // The worker registers on the third coordinator and finds nothing.
    let empty = owner_on_c.pop(&pop_request("w1")).await.unwrap();
    assert!(empty.id.is_none());

    let id = requester
        .generate_async(&small_request("announced", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let request_id: uuid::Uuid = id.parse().unwrap();
    // Nothing is asked of the others: the announcement alone puts it in their queues.
    for app in &apps[1..] {
        let arrived = wait_for(|| app.state.live.contains(request_id)).await;
        let arrived = arrived.expect("the request reached the other coordinator");
        println!("request announced to {} after {arrived:?}", app.root);
    }
    let popped = owner_on_c.pop(&pop_request("w1")).await.unwrap();
    assert_eq!(popped.payload["prompt"], "announced");

    // The result, submitted to the second coordinator, is seen by the first.
    owner
        .with_base_url(&apps[1].root)
        .submit(&submit_inline(&popped, &webp(512, 512, RED, BLUE)))
        .await
        .unwrap();
    let done_on_a = wait_for(|| {
        apps[0]
            .state
            .live
            .get(request_id)
            .is_some_and(|r| r.is_done())
    })
    .await;
    assert!(done_on_a.is_some(), "the first coordinator saw the result");
    let status = requester.status(&id).await.unwrap();
    assert_eq!(status.generations.len(), 1);
    assert_eq!(halves_of(&base64_decode(&status.generations[0].img)).1, RED);
    for app in apps {
        app.stop().await;
    }
}

/// A client told "done" by one coordinator and sent to another by a load balancer gets every
/// result there, though that coordinator has not yet applied the announcement of the last one
/// (its listener waits here for a write turn the test holds; under load it lags up to a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: .ci/run runs it with HORDE_TEST_POSTGRES_URL"]
async fn a_status_asked_of_a_coordinator_behind_the_announcements_has_every_result() {
    let apps = spawn_cluster(2, |_| {}).await;
    let (requester, _) = apps[0].user("requester", 100.0).await;
    let (owner, _) = apps[0].user("owner", 0.0).await;
    let id = submitted(&requester, &small_request("behind", 1, false)).await;
    let request_id: uuid::Uuid = id.parse().unwrap();
    let arrived = wait_for(|| apps[1].state.live.contains(request_id)).await;
    assert!(
        arrived.is_some(),
        "the request reached the second coordinator"
    );

    let held = apps[1].state.live.write_turn().await;
    let popped = owner.pop(&pop_request("w1")).await.unwrap();
    owner
        .submit(&submit_inline(&popped, &webp(512, 512, RED, BLUE)))
        .await
        .unwrap();
    assert!(requester.check(&id).await.unwrap().done);
    let status = requester
        .with_base_url(&apps[1].root)
        .status(&id)
        .await
        .unwrap();
    let local = apps[1].state.live.get(request_id).unwrap();
    assert!(
        !local.is_done(),
        "the second coordinator's copy is still behind"
    );
    assert!(status.check.done, "{:?}", status.check);
    assert_eq!(status.generations.len(), 1);
    assert_eq!(halves_of(&base64_decode(&status.generations[0].img)).1, RED);
    drop(held);
    let caught_up = wait_for(|| {
        apps[1]
            .state
            .live
            .get(request_id)
            .is_some_and(|r| r.is_done())
    })
    .await;
    assert!(
        caught_up.is_some(),
        "the listener applied the change once free"
    );
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: .ci/run runs it with HORDE_TEST_POSTGRES_URL"]
async fn a_worker_uploads_to_one_coordinator_and_the_client_downloads_from_another() {
    let apps = spawn_cluster(2, |_| {}).await;
    let (requester, _) = apps[0].user("requester", 100.0).await;
    let (owner, _) = apps[0].user("owner", 0.0).await;
    let id = requester
        .generate_async(&small_request("r2 across", 1, true))
        .await
        .unwrap()
        .id
        .unwrap();
    let popped = owner.pop(&pop_request("w1")).await.unwrap();
    let upload = popped.r2_upload.clone().expect("an upload URL");
    // Behind a load balancer the URL's host is the balancer: any coordinator takes it.
    let upload_to_b = upload.replace(&apps[0].root, &apps[1].root);
    assert_ne!(upload, upload_to_b);
    owner
        .upload(&upload_to_b, webp(512, 512, BLUE, RED))
        .await
        .unwrap();
    owner
        .with_base_url(&apps[1].root)
        .submit(&submit_with(&popped, Some("R2".into())))
        .await
        .unwrap();
    // The first coordinator learns of the result from the announcement, as a client polling
    // it would.
    while !requester.check(&id).await.unwrap().done {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = requester.status(&id).await.unwrap();
    let url = &status.generations[0].img;
    let from_b = url.replace(&apps[0].root, &apps[1].root);
    for url in [url, &from_b] {
        let ((w, h), top, bottom) = halves_of(&requester.download(url).await.unwrap());
        assert_eq!(((w, h), top, bottom), ((512, 512), BLUE, RED), "{url}");
    }
    // No image file on either coordinator's disk: they are in the database.
    for app in &apps {
        let files = std::fs::read_dir(app.dir.path().join("images"))
            .unwrap()
            .count();
        assert_eq!(files, 0, "{}", app.root);
    }
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: .ci/run runs it with HORDE_TEST_POSTGRES_URL"]
async fn rate_limits_and_concurrency_caps_hold_across_coordinators() {
    let day = Limit {
        count: 4,
        window_ms: 86_400_000,
    };
    let apps = spawn_cluster(2, |c| {
        c.api.rate_limits = true;
        c.limits.check_per_ip = day;
        c.limits.generate_per_ip = vec![Limit::per_second(100)];
        c.limits.generate_per_key = Limit::per_second(100);
    })
    .await;
    // Rate limit: four checks in all, wherever they land.
    let url = |app: &TestApp| format!("{}/api/v2/generate/check/{}", app.root, uuid::Uuid::nil());
    let mut statuses = vec![];
    for i in 0..6 {
        let answer = http().get(url(&apps[i % 2])).send().await.unwrap();
        statuses.push(answer.status().as_u16());
    }
    assert_eq!(statuses, vec![404, 404, 404, 404, 429, 429]);

    // Concurrency cap: a user allowed 3 waiting images, 2 asked on one coordinator, 2 more
    // on the other once the first two are known there.
    let created = apps[0]
        .anonymous()
        .create_test_user(&TestUserRequest {
            username: "capped".into(),
            oauth_id: None,
            moderator: false,
            trusted: false,
            kudos: 1000.0,
        })
        .await
        .unwrap();
    let moderator = apps[0].moderator().await.0;
    let limited = serde_json::json!({"concurrency": 3});
    let set = apps[0]
        .client(&moderator)
        .request(reqwest::Method::PUT, &format!("/users/{}", created.user_id))
        .json(&limited)
        .send()
        .await
        .unwrap();
    assert_eq!(set.status().as_u16(), 200, "{}", set.text().await.unwrap());
    let on = |app: &TestApp| Client::new(&app.root, created.api_key.clone());
    let first = on(&apps[0])
        .generate_async(&small_request("two", 2, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let first: uuid::Uuid = first.parse().unwrap();
    wait_for(|| apps[1].state.live.contains(first))
        .await
        .expect("announced");
    let refused = on(&apps[1])
        .generate_async(&small_request("two more", 2, false))
        .await
        .unwrap_err();
    assert_eq!(refused.rc(), Some("TooManyPrompts"), "{refused}");
    on(&apps[1])
        .generate_async(&small_request("one more", 1, false))
        .await
        .expect("within the cap");
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: .ci/run runs it with HORDE_TEST_POSTGRES_URL"]
async fn the_sweeper_runs_on_one_coordinator_and_moves_when_it_is_killed() {
    // Two `horde serve` processes on one database; deadlines of 2 s, sweeps every second.
    let first_dir = tempfile::tempdir().unwrap();
    let url =
        crate::backend::database_for(first_dir.path()).expect("needs HORDE_TEST_POSTGRES_URL");
    let second_dir = tempfile::tempdir().unwrap();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--enable-test-users",
        "--no-rate-limits",
    ];
    let env = [
        ("HORDE_DATABASE__URL", url.as_str()),
        ("HORDE_JOBS__DEADLINE_FLOOR_SECS", "2"),
        ("HORDE_JOBS__DEADLINE_CEILING_SECS", "2"),
        ("HORDE_REQUESTS__SWEEP_INTERVAL_SECS", "1"),
        // The take-backs are the point: no warning for each in the test output.
        ("RUST_LOG", "error"),
    ];
    let leader = ServerProcess::start(first_dir.path(), &args, &env);
    // The first process takes the lease at its first sweep.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let other = ServerProcess::start(second_dir.path(), &args, &env);
    let requester = other.trusted_user("requester", 100.0).await;
    let owner = other.trusted_user("owner", 100.0).await;
    let id = requester
        .generate_async(&small_request("late twice", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let restarted = || async { requester.check(&id).await.unwrap().restarted };

    // A job handed out by the second process and never finished is taken back by the first.
    let first = owner.pop(&pop_request("sleepy")).await.unwrap();
    assert!(first.id.is_some());
    let started = Instant::now();
    while restarted().await < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never taken back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // kill -9 the process holding the lease: the survivor takes the duties over.
    leader.kill_9();
    let second = owner.pop(&pop_request("sleepy")).await.unwrap();
    assert!(second.id.is_some(), "the image was back in the queue");
    assert_ne!(second.id, first.id);
    let started = Instant::now();
    while restarted().await < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the survivor never took the late job back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let third = owner.pop(&pop_request("sleepy")).await.unwrap();
    assert!(third.id.is_some());
    owner
        .submit(&submit_inline(&third, &webp(512, 512, RED, RED)))
        .await
        .unwrap();
    assert!(requester.check(&id).await.unwrap().done);
    drop(other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: .ci/run runs it with HORDE_TEST_POSTGRES_URL"]
async fn a_worker_seen_by_one_coordinator_is_known_to_the_others() {
    let apps = spawn_cluster(2, |_| {}).await;
    let (requester, _) = apps[0].user("requester", 100.0).await;
    let (owner, _) = apps[0].user("owner", 0.0).await;
    let (moderator, _) = apps[0].moderator().await;
    let owner_on_b = owner.with_base_url(&apps[1].root);
    // The worker only ever pops on the second coordinator.
    assert!(owner_on_b
        .pop(&pop_request("far away"))
        .await
        .unwrap()
        .id
        .is_none());
    let started = Instant::now();
    let listed = loop {
        let workers = requester.workers().await.unwrap();
        if let Some(w) = workers.into_iter().find(|w| w.name == "far away") {
            break w;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never listed on the first"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "listed on the other coordinator after {:?}",
        started.elapsed()
    );
    // A request on the first coordinator is possible: a worker that serves it is online.
    let id = requester
        .generate_async(&small_request("for the far worker", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    assert!(requester.check(&id).await.unwrap().is_possible);

    // Paused through the first coordinator: the second stops handing it jobs.
    let paused = apps[0]
        .client(&moderator)
        .request(reqwest::Method::PUT, &format!("/workers/{}", listed.id))
        .json(&serde_json::json!({"paused": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        paused.status().as_u16(),
        200,
        "{}",
        paused.text().await.unwrap()
    );
    let worker_id: uuid::Uuid = listed.id.parse().unwrap();
    let paused_on_b = wait_for(|| {
        apps[1]
            .state
            .workers
            .get(worker_id)
            .is_some_and(|e| e.worker.paused)
    })
    .await;
    assert!(
        paused_on_b.is_some(),
        "the pause reached the second coordinator"
    );
    let pop = owner_on_b.pop(&pop_request("far away")).await.unwrap();
    assert!(pop.id.is_none(), "a paused worker gets no job");
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: .ci/run runs it with HORDE_TEST_POSTGRES_URL"]
async fn a_prompt_filter_added_on_one_coordinator_screens_on_the_others() {
    let apps = spawn_cluster(2, |_| {}).await;
    let (moderator, _) = apps[0].moderator().await;
    let call = |app: &TestApp, method: reqwest::Method, body: serde_json::Value| {
        apps[0]
            .client(&moderator)
            .with_base_url(&app.root)
            .request(method, "/filters")
            .json(&body)
            .send()
    };
    let prompt = serde_json::json!({"prompt": "a zorblax in the rain", "filter_type": 20});
    let before: serde_json::Value = call(&apps[1], reqwest::Method::POST, prompt.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(before["suspicion"], 0, "{before}");
    let added = call(
        &apps[0],
        reqwest::Method::PUT,
        serde_json::json!({"regex": "zorblax", "filter_type": 20, "description": "made up"}),
    )
    .await
    .unwrap();
    assert_eq!(added.status().as_u16(), 200);
    let started = Instant::now();
    loop {
        let check: serde_json::Value = call(&apps[1], reqwest::Method::POST, prompt.clone())
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if check["suspicion"] == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never screened: {check}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for app in apps {
        app.stop().await;
    }
}
