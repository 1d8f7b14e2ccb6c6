//! Job deadlines: a job not delivered in time goes back to the queue ahead of newer work, the
//! late worker's submit is refused and earns nothing, and a request restarted too often faults
//! without charging its requester.

use crate::helpers::*;
use horde_server::sweeper;

fn short_deadlines(max_restarts: u32) -> impl FnOnce(&mut horde_server::config::ServerConfig) {
    move |c| {
        c.jobs.deadline_floor_secs = 1;
        c.jobs.deadline_ceiling_secs = 1;
        c.jobs.max_restarts = max_restarts;
        c.requests.idle_expiry_secs = 3600;
    }
}

#[tokio::test]
async fn a_late_job_goes_back_ahead_of_newer_work_and_the_late_submit_earns_nothing() {
    let app = spawn_app_with(short_deadlines(3)).await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (slow_owner, _) = app.user("slow-owner", 0.0).await;
    let (fast_owner, _) = app.user("fast-owner", 0.0).await;
    let old = requester
        .generate_async(&small_request("old", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let slow_job = slow_owner.pop(&pop_request("slow")).await.unwrap();
    assert_eq!(
        slow_job.ttl,
        Some(150),
        "the pop's ttl is the public horde's (its minimum here), whatever our deadline"
    );
    let newer = requester
        .generate_async(&small_request("newer", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();

    assert_eq!(
        sweeper::step(&app.state, horde_server::clock::now()).await,
        0
    );
    assert_eq!(
        requester.check(&old).await.unwrap().processing,
        1,
        "not taken back before its deadline"
    );
    sweeper::step(&app.state, horde_server::clock::now() + 5).await;
    let check = requester.check(&old).await.unwrap();
    assert_eq!(
        (check.restarted, check.waiting, check.processing, check.done),
        (1, 1, 0, false)
    );

    let late = slow_owner
        .submit(&submit_inline(&slow_job, &webp(512, 512, [1; 3], [1; 3])))
        .await
        .unwrap_err();
    assert_eq!(late.status().map(|s| s.as_u16()), Some(400));
    assert_eq!(late.rc(), Some("AbortedGen"));
    assert_eq!(
        slow_owner.find_user().await.unwrap().kudos,
        0.0,
        "a late result earns nothing"
    );

    let retry = fast_owner.pop(&pop_request("fast")).await.unwrap();
    assert_eq!(
        retry.payload["prompt"], "old",
        "the restarted image goes before newer work"
    );
    fast_owner
        .submit(&submit_inline(&retry, &webp(512, 512, [2; 3], [2; 3])))
        .await
        .unwrap();
    let status = requester.status(&old).await.unwrap();
    assert!(status.check.done);
    assert_eq!(status.generations.len(), 1);
    assert_eq!(status.generations[0].worker_name, "fast");
    assert_eq!(requester.check(&newer).await.unwrap().waiting, 1);
    assert_eq!(
        slow_owner
            .worker_by_name("slow")
            .await
            .unwrap()
            .uncompleted_jobs,
        1,
        "the late worker is counted"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_request_restarted_too_often_faults_and_costs_nothing() {
    let app = spawn_app_with(short_deadlines(2)).await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let id = requester
        .generate_async(&small_request("doomed", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    for round in 1..=2 {
        owner
            .pop(&pop_request("flaky"))
            .await
            .unwrap()
            .id
            .expect("a job to lose");
        sweeper::step(&app.state, horde_server::clock::now() + 5 * round).await;
    }
    let check = requester.check(&id).await.unwrap();
    assert!(check.faulted && check.done, "{check:?}");
    assert_eq!(check.restarted, 2);
    assert!(
        owner.pop(&pop_request("flaky")).await.unwrap().id.is_none(),
        "a faulted request hands out nothing"
    );
    assert_eq!(
        requester.find_user().await.unwrap().kudos,
        100.0,
        "nothing delivered, nothing charged: the activation fee came back"
    );
    let totals = app.state.store.ledger_totals().await.unwrap();
    let refund = totals.users(horde_store::ledger::Kind::Refund);
    assert_eq!(refund, 1.0, "the activation fee came back: {totals:?}");
    assert_eq!(
        app.state.store.ledger_discrepancies().await.unwrap(),
        vec![]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_worker_is_online_only_while_it_polls_within_the_window() {
    let app = spawn_app_with(|c| c.workers.online_window_secs = 1).await;
    let (owner, _) = app.user("owner", 0.0).await;
    owner.pop(&pop_request("blinky")).await.unwrap();
    let listed = owner.workers().await.unwrap();
    assert!(
        listed.iter().any(|w| w.name == "blinky" && w.online),
        "online right after a pop"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(
        !owner.worker_by_name("blinky").await.unwrap().online,
        "offline once it stops polling"
    );
    owner.pop(&pop_request("blinky")).await.unwrap();
    assert!(
        owner.worker_by_name("blinky").await.unwrap().online,
        "back online with its next pop"
    );
    app.stop().await;
}
