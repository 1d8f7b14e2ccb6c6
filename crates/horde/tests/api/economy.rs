//! The kudos economy over HTTP: prices from the public horde's kudos model, transfers with the
//! public horde's rules, and a ledger that every balance agrees with.

use crate::helpers::*;
use horde_api::image::ImageRequest;

fn ledger_total(totals: &[(String, f64)], kind: &str) -> f64 {
    totals
        .iter()
        .find(|(k, _)| k == kind)
        .map_or(0.0, |(_, v)| *v)
}

#[tokio::test]
async fn a_dry_run_prices_with_the_public_horde_kudos_model() {
    let app = spawn_app().await;
    let (user, _) = app.user("pricer", 0.0).await;
    let mut request = ImageRequest::new("a lighthouse");
    request.params.steps = Some(30);
    request.params.n = 2;
    request.dry_run = true;
    let answer = user.generate_async(&request).await.unwrap();
    // 512×512, 30 steps, k_euler_a, karras, cfg 5: 7.61 per image (the public horde's table);
    // the requester pays it plus the horde's 1 per image, and 1 per request.
    assert_eq!(answer.id, None, "a dry run queues nothing");
    assert!(
        (answer.kudos - ((7.61 + 1.0) * 2.0 + 1.0)).abs() < 1e-9,
        "{}",
        answer.kudos
    );
    assert_eq!(app.state.queue.lock().unwrap().len(), 0);
}

#[tokio::test]
async fn transfers_follow_the_public_rules_and_every_balance_matches_the_ledger() {
    let app = spawn_app().await;
    let (alice, alice_id) = app.user("alice", 100.0).await;
    let (bob, bob_id) = app.user("bob", 10.0).await;
    let bob_alias = format!("bob#{bob_id}");
    let alice_alias = format!("alice#{alice_id}");

    let sent = alice.transfer_kudos(&bob_alias, 50.0).await.unwrap();
    assert_eq!(sent.transferred, 50.0);
    assert_eq!(alice.find_user().await.unwrap().kudos, 50.0);
    assert_eq!(bob.find_user().await.unwrap().kudos, 60.0);

    let refused = [
        (
            bob.transfer_kudos(&alice_alias, 5.0).await,
            "TooFastKudosTransfers",
        ),
        // Accounts without OAuth keep 14 kudos: alice may send 36 of her 50.
        (
            alice.transfer_kudos(&bob_alias, 37.0).await,
            "KudosTransferNotEnough",
        ),
        (
            alice.transfer_kudos(&alice_alias, 1.0).await,
            "KudosTransferToSelf",
        ),
        (
            alice.transfer_kudos("Anonymous#0", 1.0).await,
            "KudosTransferToAnon",
        ),
        (
            app.anonymous().transfer_kudos(&bob_alias, 1.0).await,
            "KudosTransferFromAnon",
        ),
        (
            alice.transfer_kudos(&bob_alias, -5.0).await,
            "NegativeKudosTransfer",
        ),
        (
            alice.transfer_kudos(&bob_alias, 0.0).await,
            "InvalidKudosTransferAmount",
        ),
        (
            alice.transfer_kudos("nobody#99999", 1.0).await,
            "InvalidTargetUsername",
        ),
        (
            alice.transfer_kudos("no id at all", 1.0).await,
            "InvalidTargetUsername",
        ),
    ];
    for (answer, rc) in refused {
        let error = answer.expect_err(rc);
        assert_eq!(error.rc(), Some(rc), "{error}");
        assert_eq!(error.status().map(|s| s.as_u16()), Some(400), "{error}");
    }
    alice.transfer_kudos(&bob_alias, 36.0).await.unwrap();
    assert_eq!(alice.find_user().await.unwrap().kudos, 14.0);

    assert_eq!(
        app.state.store.ledger_discrepancies().await.unwrap(),
        vec![]
    );
    let totals = app.state.store.ledger_totals().await.unwrap();
    assert_eq!(
        ledger_total(&totals, "transfer"),
        0.0,
        "transfers only move kudos"
    );
    assert_eq!(
        ledger_total(&totals, "grant"),
        0.0,
        "grants come from the horde account"
    );
}

#[tokio::test]
async fn escrow_uptime_rewards_and_the_balance_floor_follow_the_public_horde() {
    let app = spawn_app().await;
    // Accounts made without OAuth have a floor of 14 kudos.
    let (requester, _) = app.user("nearly broke", 20.0).await;
    let untrusted = app
        .anonymous()
        .create_test_user(&horde_api::user::TestUserRequest {
            username: "new volunteer".into(),
            oauth_id: None,
            moderator: false,
            trusted: false,
            kudos: 0.0,
        })
        .await
        .unwrap();
    let owner = app.client(&untrusted.api_key);

    requester
        .generate_async(&small_request("two images", 2, false))
        .await
        .unwrap();
    let mut rewards = 0.0;
    for colour in [[1; 3], [2; 3]] {
        let job = owner.pop(&pop_request("escrowed worker")).await.unwrap();
        let paid = owner
            .submit(&submit_inline(&job, &webp(512, 512, colour, colour)))
            .await
            .unwrap();
        rewards += paid.reward;
    }
    // Each image costs 4.26 + 1: the first takes 20 to 14.74, the second would take it to
    // 9.48, below the floor, so 4.52 of it is written off.
    assert_eq!(requester.find_user().await.unwrap().kudos, 14.0);
    let me = owner.find_user().await.unwrap();
    assert!(
        (me.kudos - rewards / 2.0).abs() < 0.011,
        "half now: {} of {rewards}",
        me.kudos
    );
    assert!(
        (me.kudos + me.evaluating_kudos.unwrap() - rewards).abs() < 1e-9,
        "the other half in escrow: {me:?}"
    );

    // Twenty minutes online pays two uptime rewards of 50 + 2 × (one model), into escrow.
    let worker_id = {
        let mut registry = app.state.workers.write().unwrap();
        let id = registry.by_name("escrowed worker").unwrap().worker.id;
        registry.get_mut(id).unwrap().worker.uptime = 1250;
        id
    };
    owner.pop(&pop_request("escrowed worker")).await.unwrap();
    let after = owner.find_user().await.unwrap();
    assert_eq!(
        after.kudos, me.kudos,
        "uptime kudos of untrusted owners are held"
    );
    assert!((after.evaluating_kudos.unwrap() - me.evaluating_kudos.unwrap() - 104.0).abs() < 1e-9);
    let worker = app
        .anonymous()
        .worker(&worker_id.to_string())
        .await
        .unwrap();
    assert_eq!(worker.kudos_details.uptime, 104.0);
    assert_eq!(
        app.state.store.ledger_discrepancies().await.unwrap(),
        vec![]
    );
}
