//! Accounts: roles and limits set through `PUT /users/{id}`, key resets, and shared keys used
//! to generate on someone else's account.

use crate::helpers::*;
use horde_api::shared_key::{SharedKeyInput, SharedKeyPatch};
use horde_api::user::ModifyUser;
use horde_client::Client;

async fn moderator(app: &TestApp) -> (Client, i64) {
    let (key, id) = app.moderator().await;
    (app.client(&key), id)
}

fn rc_of<T: std::fmt::Debug>(answer: Result<T, horde_client::ClientError>) -> String {
    answer
        .expect_err("refused")
        .rc()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn roles_limits_and_balances_change_only_for_those_allowed() {
    let app = spawn_app_with(|c| c.api.admins = vec![1]).await;
    let (admin, admin_id) = app.user("admin", 0.0).await;
    assert_eq!(admin_id, 1, "the first account after the anonymous one");
    let (moderator, _) = moderator(&app).await;
    let (volunteer, volunteer_id) = app.untrusted_user("volunteer", 0.0).await;
    let (other, _) = app.user("other", 0.0).await;

    let trust = ModifyUser {
        trusted: Some(true),
        ..Default::default()
    };
    assert_eq!(
        rc_of(volunteer.modify_user(volunteer_id, &trust).await),
        "NotModerator"
    );
    assert_eq!(
        rc_of(other.modify_user(volunteer_id, &trust).await),
        "NotModerator"
    );
    assert_eq!(
        rc_of(app.anonymous().modify_user(volunteer_id, &trust).await),
        "AnonForbidden"
    );
    assert_eq!(
        rc_of(
            volunteer
                .modify_user(volunteer_id, &ModifyUser::default())
                .await
        ),
        "NoUserModSelected"
    );
    let kudos = ModifyUser {
        kudos: Some(250.0),
        ..Default::default()
    };
    assert_eq!(
        rc_of(moderator.modify_user(volunteer_id, &kudos).await),
        "NotAdmin"
    );

    // Earn something in escrow while untrusted, then get trusted: the escrow is released.
    app.user("requester", 100.0)
        .await
        .0
        .generate_async(&small_request("one", 1, false))
        .await
        .unwrap();
    let job = volunteer
        .pop(&pop_request("volunteer's worker"))
        .await
        .unwrap();
    let reward = volunteer
        .submit(&submit_inline(&job, &webp(512, 512, [5; 3], [5; 3])))
        .await
        .unwrap()
        .reward;
    assert!(
        volunteer
            .find_user()
            .await
            .unwrap()
            .evaluating_kudos
            .unwrap()
            > 0.0
    );
    moderator.modify_user(volunteer_id, &trust).await.unwrap();
    let me = volunteer.find_user().await.unwrap();
    assert!(me.trusted);
    assert_eq!(me.evaluating_kudos, Some(0.0));
    assert!((me.kudos - reward).abs() < 1e-9, "{} vs {reward}", me.kudos);

    let answer = admin.modify_user(volunteer_id, &kudos).await.unwrap();
    assert!((answer.new_kudos.unwrap() - (reward + 250.0)).abs() < 1e-9);

    let roles = ModifyUser {
        education: Some(true),
        customizer: Some(true),
        flagged: Some(true),
        ..Default::default()
    };
    moderator.modify_user(volunteer_id, &roles).await.unwrap();
    let me = volunteer.find_user().await.unwrap();
    assert!(me.education && me.customizer && me.flagged);
    assert_eq!(me.concurrency, 200, "education accounts get 200");
    let mut risky = small_request("a classroom poster", 1, false);
    (risky.nsfw, risky.censor_nsfw, risky.shared) = (true, false, true);
    let id = volunteer.generate_async(&risky).await.unwrap().id.unwrap();
    let queued = app
        .state
        .live
        .get(id.parse().unwrap())
        .unwrap()
        .body
        .clone();
    assert_eq!(
        (
            queued.nsfw,
            queued.censor_nsfw,
            queued.trusted_workers,
            queued.shared
        ),
        (false, true, true, false),
        "education requests are safe, from trusted workers, never shared"
    );
    assert_eq!(
        rc_of(volunteer.pop(&pop_request("volunteer's worker")).await),
        "WorkerFlaggedMaintenance",
        "a flagged user's workers get no jobs"
    );

    let rename = ModifyUser {
        username: Some("renamed".into()),
        ..Default::default()
    };
    assert_eq!(
        rc_of(other.modify_user(volunteer_id, &rename).await),
        "NotModerator"
    );
    volunteer.modify_user(volunteer_id, &rename).await.unwrap();
    assert!(volunteer
        .find_user()
        .await
        .unwrap()
        .username
        .starts_with("renamed#"));
    assert_eq!(
        app.state.store.ledger_discrepancies().await.unwrap(),
        vec![]
    );
}

#[tokio::test]
async fn a_reset_key_replaces_the_old_one_at_once() {
    let app = spawn_app().await;
    let (user, id) = app.user("forgetful", 5.0).await;
    let (other, _) = app.user("other", 0.0).await;
    assert_eq!(rc_of(other.reset_api_key(id).await), "NotOwner");
    let fresh = user.reset_api_key(id).await.unwrap();
    assert_eq!(fresh.api_key.len(), 22);
    assert_eq!(
        rc_of(user.find_user().await),
        "UserNotFound",
        "find_user answers a key no user has with 404, as the public horde"
    );
    let me = app.client(&fresh.api_key).find_user().await.unwrap();
    assert_eq!(me.id, id);
}

#[tokio::test]
async fn shared_keys_lend_an_account_within_their_limits() {
    let app = spawn_app().await;
    let (owner, owner_id) = app.user("lender", 100.0).await;
    let (stranger, _) = app.user("stranger", 0.0).await;
    let (worker, _) = app.user("worker owner", 0.0).await;
    let created = owner
        .create_shared_key(&SharedKeyInput {
            kudos: 20,
            expiry: 7,
            name: Some("for my class".into()),
            max_image_pixels: 512 * 512,
            max_image_steps: 20,
            max_text_tokens: -1,
        })
        .await
        .unwrap();
    assert_eq!(created.username, format!("lender#{owner_id}"));
    assert!(created.expiry.as_deref().is_some_and(|e| e.ends_with('Z')));
    let borrower = app.client(&created.id);

    let mut too_many_steps = small_request("long", 1, false);
    too_many_steps.params.steps = Some(25);
    assert_eq!(
        rc_of(borrower.generate_async(&too_many_steps).await),
        "BadRequest"
    );
    let accepted = borrower
        .generate_async(&small_request("on a borrowed key", 1, false))
        .await
        .unwrap();
    let job = worker.pop(&pop_request("w")).await.unwrap();
    worker
        .submit(&submit_inline(&job, &webp(512, 512, [4; 3], [4; 3])))
        .await
        .unwrap();
    let status = borrower
        .status(accepted.id.as_deref().unwrap())
        .await
        .unwrap();
    assert!(status.check.done);

    // The owner paid, and the key's budget shrank by the same charge (shown in whole kudos,
    // as horde-sdk types them).
    let paid = 100.0 - owner.find_user().await.unwrap().kudos;
    assert!(paid > 0.0);
    let key = stranger.shared_key(&created.id).await.unwrap();
    assert!(
        key.utilized == paid.round() as i64 && key.kudos == (20.0 - paid).round() as i64,
        "{key:?} after paying {paid}"
    );

    let expire_now = SharedKeyPatch {
        expiry: Some(0),
        ..Default::default()
    };
    assert_eq!(
        rc_of(stranger.modify_shared_key(&created.id, &expire_now).await),
        "NotOwner"
    );
    owner
        .modify_shared_key(&created.id, &expire_now)
        .await
        .unwrap();
    assert_eq!(
        rc_of(
            borrower
                .generate_async(&small_request("late", 1, false))
                .await
        ),
        "SharedKeyExpired"
    );
    assert_eq!(
        rc_of(stranger.delete_shared_key(&created.id).await),
        "NotOwner"
    );
    owner.delete_shared_key(&created.id).await.unwrap();
    assert_eq!(
        rc_of(stranger.shared_key(&created.id).await),
        "SharedKeyInvalid"
    );
    assert_eq!(
        rc_of(
            borrower
                .generate_async(&small_request("gone", 1, false))
                .await
        ),
        "InvalidAPIKey"
    );
    assert_eq!(
        rc_of(borrower.find_user().await),
        "UserNotFound",
        "a shared key only generates"
    );
}

#[tokio::test]
async fn an_empty_shared_key_downgrades_to_anonymous_when_the_request_allows_it() {
    let app = spawn_app().await;
    let (owner, _) = app.user("lender", 100.0).await;
    let created = owner
        .create_shared_key(&SharedKeyInput {
            kudos: 0,
            expiry: -1,
            name: None,
            max_image_pixels: -1,
            max_image_steps: -1,
            max_text_tokens: -1,
        })
        .await
        .unwrap();
    let borrower = app.client(&created.id);
    let mut request = small_request("on an empty key", 1, false);
    assert_eq!(
        rc_of(borrower.generate_async(&request).await),
        "SharedKeyEmpty"
    );
    request.allow_downgrade = true;
    let accepted = borrower.generate_async(&request).await.unwrap();
    assert!(
        accepted.warnings.iter().any(|w| w.code == "SharedKeyEmpty"),
        "{:?}",
        accepted.warnings
    );
    let id = accepted.id.unwrap().parse().unwrap();
    let queued = app.state.live.get(id).unwrap();
    assert_eq!(queued.user_id, 0, "made as the anonymous user");
    assert_eq!(queued.shared_key, None);
    assert_eq!(
        owner.find_user().await.unwrap().kudos,
        100.0,
        "the key's owner pays nothing"
    );
}
