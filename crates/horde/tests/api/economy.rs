//! The kudos economy over HTTP: prices from the public horde's kudos model, transfers with the
//! public horde's rules, and a ledger that every balance agrees with.

use crate::helpers::*;
use horde_api::image::ImageRequest;
use horde_store::ledger::Kind;

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
    assert_eq!(app.state.live.len(), 0);
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
    let (alice_now, bob_now) = (
        alice.find_user().await.unwrap(),
        bob.find_user().await.unwrap(),
    );
    assert_eq!(alice_now.kudos, 50.0);
    assert_eq!(bob_now.kudos, 60.0);
    // kudos_details come from the ledger: starting kudos are the operator's, transfers are
    // gifted and received.
    let (a, b) = (&alice_now.kudos_details, &bob_now.kudos_details);
    assert_eq!((a.admin, a.gifted, a.received), (100.0, 50.0, 0.0));
    assert_eq!((b.admin, b.gifted, b.received), (10.0, 0.0, 50.0));
    let public = app.anonymous().user(bob_id as u64).await.unwrap();
    assert_eq!(public.kudos_details.received, 50.0);

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
        totals.users(Kind::Transfer),
        0.0,
        "transfers only move kudos"
    );
    assert_eq!(
        totals.users(Kind::Grant),
        110.0,
        "the starting kudos of alice and bob"
    );
    assert_eq!(totals.horde(Kind::Grant), -110.0, "granted by the horde");
}

#[tokio::test]
async fn escrow_uptime_rewards_and_the_balance_floor_follow_the_public_horde() {
    let app = spawn_app().await;
    // Accounts made without OAuth have a floor of 14 kudos.
    let (requester, _) = app.user("nearly broke", 20.0).await;
    let (owner, _) = app.untrusted_user("new volunteer", 0.0).await;

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
    let worker_id = app.state.workers.change(|registry| {
        let id = registry.by_name("escrowed worker").unwrap().worker.id;
        registry.get_mut(id).unwrap().worker.uptime = 1250;
        id
    });
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

#[tokio::test]
async fn large_requests_need_upfront_kudos_or_a_downgrade() {
    let app = spawn_app().await;
    let (poor, _) = app.user("poor", 0.0).await;
    let mut big = small_request("a huge mural", 1, false);
    (big.params.width, big.params.height, big.params.steps) = (1536, 1536, Some(50));

    let refused = poor.generate_async(&big).await.unwrap_err();
    assert_eq!(refused.rc(), Some("KudosUpfront"));
    assert_eq!(refused.status().map(|s| s.as_u16()), Some(403));
    assert!(refused.to_string().contains("allow_downgrade"), "{refused}");
    assert_eq!(app.state.live.len(), 0, "nothing queued");

    big.allow_downgrade = true;
    let accepted = poor.generate_async(&big).await.unwrap();
    let warning = &accepted.warnings[0];
    assert_eq!(warning.code, "Downgraded");
    let queued = app
        .state
        .live
        .get(accepted.id.as_deref().unwrap().parse().unwrap())
        .unwrap()
        .body
        .params
        .clone();
    assert!(queued.width <= 1024 && queued.height <= 1024 && queued.width % 64 == 0);
    assert_eq!(queued.steps, Some(30), "{}", warning.message);

    let (rich, _) = app.user("rich", 10_000.0).await;
    big.allow_downgrade = false;
    rich.generate_async(&big)
        .await
        .expect("whoever can pay upfront is served as asked");
}

#[tokio::test]
async fn workers_that_require_upfront_kudos_skip_requesters_who_could_not_pay() {
    let app = spawn_app().await;
    let (poor, _) = app.untrusted_user("poor", 0.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    poor.generate_async(&small_request("cheap", 1, false))
        .await
        .unwrap();
    let mut pop = pop_request("picky worker");
    pop.require_upfront_kudos = true;
    let skipped = owner.pop(&pop).await.unwrap();
    assert!(skipped.id.is_none());
    assert_eq!(
        skipped.skipped.get("kudos"),
        Some(&1),
        "{:?}",
        skipped.skipped
    );
    let any = owner.pop(&pop_request("easy worker")).await.unwrap();
    assert!(
        any.id.is_some(),
        "a worker without the requirement takes it"
    );
}

#[tokio::test]
async fn queued_sdxl_images_count_at_their_price_against_upfront_kudos() {
    let app = spawn_app().await;
    let (pricer, _) = app.user("pricer", 10_000.0).await;
    let price = |mut request: ImageRequest| {
        request.dry_run = true;
        let pricer = pricer.clone();
        async move { pricer.generate_async(&request).await.unwrap().kudos }
    };
    let mut queued_xl = small_request("four XL images", 4, false);
    queued_xl.models = vec!["SDXL 1.0".into()];
    let mut queued_sd = queued_xl.clone();
    queued_sd.models = vec!["stable_diffusion".into()];
    let mut big = small_request("sixty steps", 1, false);
    big.params.steps = Some(60);
    // A dry run's price is what the images will be charged plus the activation fee of 1.
    let debits_xl = price(queued_xl.clone()).await - 1.0;
    let debits_sd = price(queued_sd.clone()).await - 1.0;
    let big_cost = price(big.clone()).await;
    assert!(debits_xl > debits_sd + 2.0, "{debits_xl} vs {debits_sd}");

    // Enough for the big request beside four queued SD 1.5 images, not beside four SDXL ones:
    // the floor (14 without OAuth), the queued request's activation fee, its images, the big
    // request, and half the difference.
    let kudos = 14.0 + 1.0 + debits_sd + big_cost + (debits_xl - debits_sd) / 2.0;
    for (name, queued, accepted) in [("sd", queued_sd, true), ("xl", queued_xl, false)] {
        let (user, _) = app.user(name, kudos).await;
        user.generate_async(&queued).await.unwrap();
        let answer = user.generate_async(&big).await;
        match accepted {
            true => assert!(answer.is_ok(), "{name}: {answer:?}"),
            false => assert_eq!(answer.unwrap_err().rc(), Some("KudosUpfront"), "{name}"),
        }
    }
}

#[tokio::test]
async fn kudos_sent_to_an_education_account_count_as_donated() {
    let app = spawn_app().await;
    let moderator = app.client(&app.moderator().await.0);
    let (giver, _) = app.user("giver", 100.0).await;
    let (_, school_id) = app.user("school", 0.0).await;
    let education = horde_api::user::ModifyUser {
        education: Some(true),
        ..Default::default()
    };
    moderator.modify_user(school_id, &education).await.unwrap();
    giver
        .transfer_kudos(&format!("school#{school_id}"), 20.0)
        .await
        .unwrap();
    let details = giver.find_user().await.unwrap().kudos_details;
    assert_eq!((details.gifted, details.donated), (0.0, 20.0));
}
