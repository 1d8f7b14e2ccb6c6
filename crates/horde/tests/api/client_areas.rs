//! Issue 29's areas through `horde-client`: every method added for styles and collections,
//! teams, workers' messages and deletion, the horde's modes, news and documents, the users
//! list, account deletion and awards, IP operations, ratings, and an interrogation's cancel,
//! each called against the real coordinator. What each returns is checked (ids round-trip,
//! lists hold what was made) and a refusal comes back as `ClientError::Api` with its status
//! and rc.

use crate::helpers::*;
use horde_api::interrogation::InterrogationRequest;
use horde_api::modes::{DocumentFormat, HordeModesChange, UserSort};
use horde_api::operations::{
    AddTimeoutIp, AestheticRating, AestheticsPayload, BlockWorkerIp, DeleteTimeoutIp,
};
use horde_api::styles::{
    CollectionInput, CollectionPatch, CollectionQuery, StyleExampleInput, StyleExamplePatch,
    StyleInput, StylePatch, StyleQuery,
};
use horde_api::teams::{TeamInput, TeamPatch, WorkerMessageInput, WorkerMessageQuery};
use horde_api::worker::ModifyWorker;
use horde_client::{ClientError, Result};
use serde_json::json;

/// A model of the built-in text model reference.
const TEXT_MODEL: &str = "koboldcpp/Marx-3B-V3";
const UNKNOWN_ID: &str = "6038971e-f0b0-4fdd-a3bb-148f561f815e";

/// Asserts `result` is the server's refusal with `status` and `rc`.
fn refused<T: std::fmt::Debug>(result: Result<T>, status: u16, rc: &str) {
    match result {
        Err(ClientError::Api { status: got, body }) => {
            assert_eq!(
                (got.as_u16(), body.rc.as_deref()),
                (status, Some(rc)),
                "{}",
                body.message
            );
        }
        other => panic!("expected {status} {rc}, got {other:?}"),
    }
}

fn image_style(name: &str) -> StyleInput {
    StyleInput {
        name: name.into(),
        info: Some("film noir, high contrast".into()),
        prompt: "{p}, film noir {np}".into(),
        params: json!({"steps": 12, "sampler_name": "k_euler"})
            .as_object()
            .cloned(),
        public: true,
        nsfw: false,
        tags: vec!["noir".into()],
        models: vec!["stable_diffusion".into()],
    }
}

fn text_style(name: &str) -> StyleInput {
    StyleInput {
        name: name.into(),
        info: None,
        prompt: "Story: {p}".into(),
        params: None,
        public: true,
        nsfw: false,
        tags: vec![],
        models: vec![TEXT_MODEL.into()],
    }
}

fn ids<T>(list: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    list.iter().map(|x| id(x).to_string()).collect()
}

#[tokio::test]
async fn image_styles_and_their_examples_round_trip_through_the_client() {
    let app = spawn_app().await;
    let (owner, owner_id) = app.user("owner", 100.0).await;
    let (plain, _) = app.untrusted_user("plain", 100.0).await;
    refused(
        plain.create_image_style(&image_style("mine")).await,
        403,
        "StylesRequiresCustomizer",
    );
    let id = owner
        .create_image_style(&image_style("noir"))
        .await
        .unwrap()
        .id;
    let tagged = StyleQuery {
        tag: Some("noir".into()),
        ..Default::default()
    };
    let listed = owner.image_styles(&tagged).await.unwrap();
    assert_eq!(ids(&listed, |s| &s.id), [id.as_str()]);
    let other_tag = StyleQuery {
        tag: Some("bright".into()),
        ..Default::default()
    };
    assert!(owner.image_styles(&other_tag).await.unwrap().is_empty());
    let shown = app.anonymous().image_style(&id).await.unwrap();
    assert_eq!(
        (shown.name.as_str(), shown.params["steps"].as_u64()),
        ("noir", Some(12))
    );
    let full_name = format!("owner#{owner_id}::style::noir");
    assert_eq!(owner.image_style_by_name(&full_name).await.unwrap().id, id);

    let patch = StylePatch {
        info: Some("film noir, now brighter".into()),
        ..Default::default()
    };
    assert_eq!(owner.modify_image_style(&id, &patch).await.unwrap().id, id);
    let shown = owner.image_style(&id).await.unwrap();
    assert_eq!(shown.info, "film noir, now brighter");

    let example = StyleExampleInput {
        url: "https://example.com/noir.webp".into(),
        primary: false,
    };
    let example_id = owner.add_style_example(&id, &example).await.unwrap().id;
    refused(
        plain.add_style_example(&id, &example).await,
        403,
        "NotOwner",
    );
    let primary = StyleExamplePatch {
        primary: Some(true),
        ..Default::default()
    };
    let changed = owner.modify_style_example(&id, &example_id, &primary).await;
    assert_eq!(changed.unwrap().id, example_id);
    let examples = owner.image_style(&id).await.unwrap().examples.unwrap();
    assert_eq!(ids(&examples, |e| &e.id), [example_id.as_str()]);
    assert!(examples[0].primary);
    let deleted = owner.delete_style_example(&id, &example_id).await.unwrap();
    assert_eq!(deleted.message, "OK");
    let left = owner.image_style(&id).await.unwrap().examples;
    assert!(left.unwrap_or_default().is_empty());

    refused(plain.delete_image_style(&id).await, 403, "NotOwner");
    assert_eq!(owner.delete_image_style(&id).await.unwrap().message, "OK");
    refused(owner.image_style(&id).await, 404, "ThingNotFound");
}

#[tokio::test]
async fn text_styles_and_collections_round_trip_through_the_client() {
    let app = spawn_app().await;
    let (owner, owner_id) = app.user("owner", 100.0).await;
    let image = owner
        .create_image_style(&image_style("noir"))
        .await
        .unwrap()
        .id;
    let text = owner
        .create_text_style(&text_style("story"))
        .await
        .unwrap()
        .id;
    let listed = owner.text_styles(&StyleQuery::default()).await.unwrap();
    assert_eq!(ids(&listed, |s| &s.id), [text.as_str()]);
    assert_eq!(owner.text_style(&text).await.unwrap().prompt, "Story: {p}");
    assert_eq!(owner.text_style_by_name("story").await.unwrap().id, text);
    refused(owner.image_style(&text).await, 404, "ThingNotFound");
    let patch = StylePatch {
        prompt: Some("Tale: {p}".into()),
        ..Default::default()
    };
    owner.modify_text_style(&text, &patch).await.unwrap();
    assert_eq!(owner.text_style(&text).await.unwrap().prompt, "Tale: {p}");

    let input = CollectionInput {
        name: "moods".into(),
        info: None,
        public: true,
        styles: vec![image.clone()],
    };
    let collection = owner.create_collection(&input).await.unwrap().id;
    let of = |kind: &str| CollectionQuery {
        kind: Some(kind.into()),
        ..Default::default()
    };
    let images = owner.collections(&of("image")).await.unwrap();
    assert_eq!(ids(&images, |c| &c.id), [collection.as_str()]);
    assert!(owner.collections(&of("text")).await.unwrap().is_empty());
    let shown = owner.collection(&collection).await.unwrap();
    assert_eq!(
        (shown.kind.as_str(), ids(&shown.styles, |s| &s.id)),
        ("image", vec![image])
    );
    let full_name = format!("owner#{owner_id}::collection::moods");
    let by_name = owner.collection_by_name(&full_name).await.unwrap();
    assert_eq!(by_name.id, collection);
    let rename = CollectionPatch {
        name: Some("stories".into()),
        styles: Some(vec![text.clone()]),
        ..Default::default()
    };
    owner.modify_collection(&collection, &rename).await.unwrap();
    let shown = owner.collection(&collection).await.unwrap();
    assert_eq!(
        (shown.name.as_str(), shown.kind.as_str()),
        ("stories", "text")
    );

    let (stranger, _) = app.user("stranger", 0.0).await;
    refused(
        stranger.delete_collection(&collection).await,
        403,
        "NotOwner",
    );
    assert_eq!(
        owner.delete_collection(&collection).await.unwrap().message,
        "OK"
    );
    refused(owner.collection(&collection).await, 404, "ThingNotFound");
    assert_eq!(owner.delete_text_style(&text).await.unwrap().message, "OK");
    refused(owner.text_style(&text).await, 404, "ThingNotFound");
}

#[tokio::test]
async fn teams_messages_and_worker_deletion_round_trip_through_the_client() {
    let app = spawn_app().await;
    let (owner, _) = app.user("owner", 0.0).await;
    let (untrusted, _) = app.untrusted_user("untrusted", 0.0).await;
    let night = TeamInput {
        name: "Night Shift".into(),
        info: Some("workers at night".into()),
    };
    refused(
        untrusted.create_team(&night).await,
        403,
        "UntrustedTeamCreation",
    );
    let team = owner.create_team(&night).await.unwrap().id.unwrap();
    owner.pop(&pop_request("team worker")).await.unwrap();
    let worker = owner.worker_by_name("team worker").await.unwrap().id;
    let join = ModifyWorker {
        team: Some(team.clone()),
        ..Default::default()
    };
    owner.modify_worker(&worker, &join).await.unwrap();
    let shown = app.anonymous().team(&team).await.unwrap();
    assert_eq!(ids(&shown.workers, |w| &w.id), [worker.as_str()]);
    let all = app.anonymous().teams().await.unwrap();
    assert_eq!(ids(&all, |t| &t.id), [team.as_str()]);
    let rename = TeamPatch {
        name: Some("Day Shift".into()),
        ..Default::default()
    };
    let renamed = owner.modify_team(&team, &rename).await.unwrap();
    assert_eq!(renamed.name.as_deref(), Some("Day Shift"));
    assert_eq!(owner.team(&team).await.unwrap().name, "Day Shift");

    let hello = WorkerMessageInput {
        worker_id: Some(worker.clone()),
        message: "hello".into(),
        origin: None,
        expiry: 12,
    };
    let sent = owner.send_worker_message(&hello).await.unwrap();
    assert_eq!(
        app.anonymous().worker_message(&sent.id).await.unwrap(),
        sent
    );
    let to_worker = WorkerMessageQuery {
        worker_id: Some(worker.clone()),
        ..Default::default()
    };
    let listed = owner.worker_messages(&to_worker).await.unwrap();
    assert_eq!(listed, std::slice::from_ref(&sent));
    let anonymous = app.anonymous().worker_messages(&to_worker).await;
    refused(anonymous, 403, "AnonForbidden");
    assert_eq!(
        owner.delete_worker_message(&sent.id).await.unwrap().message,
        "OK"
    );
    refused(owner.worker_message(&sent.id).await, 404, "ThingNotFound");

    let gone = owner.delete_team(&team).await.unwrap();
    assert_eq!(
        (gone.deleted_id, gone.deleted_name.as_str()),
        (team.clone(), "Day Shift")
    );
    refused(owner.team(&team).await, 404, "TeamNotFound");
    refused(untrusted.delete_worker(&worker).await, 403, "NotOwner");
    let deleted = owner.delete_worker(&worker).await.unwrap();
    assert_eq!(
        (deleted.deleted_id.as_str(), deleted.deleted_name.as_str()),
        (worker.as_str(), "team worker")
    );
    refused(owner.worker(&worker).await, 404, "WorkerNotFound");
}

#[tokio::test]
async fn modes_news_documents_and_awards_through_the_client() {
    let app = spawn_app_with(|c| c.api.admins = vec![1]).await;
    let (admin, admin_id) = app.user("admin", 0.0).await;
    assert_eq!(admin_id, 1, "the administrator is the first user");
    let (moderator_key, _) = app.moderator().await;
    let moderator = app.client(&moderator_key);
    let (user, user_id) = app.user("receiver", 10.0).await;

    let modes = app.anonymous().modes().await.unwrap();
    assert_eq!((modes.invite_only_mode, modes.raid_mode), (false, None));
    refused(user.modes().await, 403, "NotModerator");
    let invite_only = HordeModesChange {
        invite_only_mode: Some(true),
        ..Default::default()
    };
    assert_eq!(
        moderator.change_modes(&invite_only).await.unwrap(),
        invite_only
    );
    let maintenance = HordeModesChange {
        maintenance_mode: Some(true),
        ..Default::default()
    };
    refused(moderator.change_modes(&maintenance).await, 403, "NotAdmin");
    let shown = moderator.modes().await.unwrap();
    let flags = (
        shown.maintenance_mode,
        shown.invite_only_mode,
        shown.raid_mode,
    );
    assert_eq!(flags, (false, true, Some(false)));

    assert_eq!(
        app.anonymous().news().await.unwrap()[0].title.as_deref(),
        Some("Welcome")
    );
    let terms = app.anonymous().terms(DocumentFormat::Html).await.unwrap();
    assert!(terms.html.unwrap().starts_with("<h1>Terms of Service"));
    assert!(terms.markdown.is_none());
    let privacy = app
        .anonymous()
        .privacy(DocumentFormat::Markdown)
        .await
        .unwrap();
    assert!(privacy.markdown.unwrap().starts_with("# Privacy Policy"));
    assert!(privacy.html.is_none());
    let sponsors = app
        .anonymous()
        .sponsors(DocumentFormat::Markdown)
        .await
        .unwrap();
    assert!(sponsors.markdown.unwrap().starts_with("# Sponsors"));

    let receiver = format!("receiver#{user_id}");
    refused(moderator.award_kudos(&receiver, 5).await, 403, "NotAdmin");
    assert_eq!(
        admin.award_kudos(&receiver, 250).await.unwrap().awarded,
        250.0
    );
    assert_eq!(user.find_user().await.unwrap().kudos, 260.0);
}

#[tokio::test]
async fn the_users_list_and_account_deletion_through_the_client() {
    let app = spawn_app().await;
    let (rich, rich_id) = app.user("u-rich", 300.0).await;
    let (_, poor_id) = app.user("u-poor", 5.0).await;
    let (_, middle_id) = app.user("u-middle", 50.0).await;
    let names = |page: Vec<horde_api::user::UserDetails>| -> Vec<i64> {
        page.into_iter()
            .filter(|u| u.username.starts_with("u-"))
            .map(|u| u.id)
            .collect()
    };
    let by_kudos = app.anonymous().users(UserSort::Kudos, 1).await.unwrap();
    assert_eq!(names(by_kudos), [rich_id, middle_id, poor_id]);
    let by_age = app.anonymous().users(UserSort::Age, 1).await.unwrap();
    assert_eq!(names(by_age), [rich_id, poor_id, middle_id]);
    assert!(app
        .anonymous()
        .users(UserSort::Kudos, 2)
        .await
        .unwrap()
        .is_empty());

    let (other, _) = app.user("other", 0.0).await;
    refused(other.delete_user(rich_id).await, 403, "NotModerator");
    assert_eq!(rich.delete_user(rich_id).await.unwrap().message, "OK");
    refused(rich.find_user().await, 403, "DeletedUser");
    let rich_user = u64::try_from(rich_id).unwrap();
    assert!(app.anonymous().user(rich_user).await.unwrap().deleted);
    let left = app.anonymous().users(UserSort::Kudos, 1).await.unwrap();
    assert_eq!(names(left), [middle_id, poor_id]);
}

#[tokio::test]
async fn ip_timeouts_and_worker_blocks_through_the_client() {
    let app = spawn_app().await;
    let (moderator_key, _) = app.moderator().await;
    let moderator = app.client(&moderator_key);
    let (owner, _) = app.user("owner", 0.0).await;
    let timeout = AddTimeoutIp {
        ipaddr: "2001:db8:5:6::1".into(),
        hours: 1,
    };
    refused(owner.add_ip_timeout(&timeout).await, 403, "NotModerator");
    assert!(
        moderator.ip_timeouts().await.unwrap().is_empty(),
        "nothing stored"
    );
    assert_eq!(
        moderator.add_ip_timeout(&timeout).await.unwrap().message,
        "OK"
    );
    let listed = moderator.ip_timeouts().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!((3590..=3600).contains(&listed[0].seconds), "{listed:?}");
    let holding = moderator
        .ip_timeouts_holding("2001:db8:5:6::99")
        .await
        .unwrap();
    let held_by = ids(&holding, |t| &t.ipaddr);
    assert_eq!(
        held_by,
        ids(&listed, |t| &t.ipaddr),
        "an address is held by its /64"
    );
    assert!(moderator
        .ip_timeouts_holding("2001:db8:5:7::1")
        .await
        .unwrap()
        .is_empty());
    refused(owner.ip_timeouts().await, 403, "NotModerator");
    let lift = DeleteTimeoutIp {
        ipaddr: timeout.ipaddr.clone(),
    };
    assert_eq!(
        moderator.delete_ip_timeout(&lift).await.unwrap().message,
        "OK"
    );
    assert!(moderator.ip_timeouts().await.unwrap().is_empty());

    owner.pop(&pop_request("blocked worker")).await.unwrap();
    let worker = owner.worker_by_name("blocked worker").await.unwrap().id;
    let two_days = BlockWorkerIp { days: 2 };
    refused(
        owner.block_worker_ip(&worker, &two_days).await,
        403,
        "NotModerator",
    );
    refused(
        moderator.block_worker_ip(UNKNOWN_ID, &two_days).await,
        404,
        "WorkerNotFound",
    );
    assert_eq!(
        moderator
            .block_worker_ip(&worker, &two_days)
            .await
            .unwrap()
            .message,
        "OK"
    );
    let blocked = moderator.ip_timeouts().await.unwrap();
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    assert!(
        (2 * 86_400 - 10..=2 * 86_400).contains(&blocked[0].seconds),
        "{blocked:?}"
    );
    assert_eq!(
        moderator.unblock_worker_ip(&worker).await.unwrap().message,
        "OK"
    );
    assert!(moderator.ip_timeouts().await.unwrap().is_empty());
}

#[tokio::test]
async fn ratings_and_an_interrogations_cancel_through_the_client() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let mut request = small_request("a lighthouse", 1, false);
    request.shared = true;
    let id = requester
        .generate_async(&request)
        .await
        .unwrap()
        .id
        .unwrap();
    let job = owner.pop(&pop_request("rated")).await.unwrap();
    let image = webp(512, 512, [200, 20, 20], [20, 20, 200]);
    owner.submit(&submit_inline(&job, &image)).await.unwrap();
    let generation = requester.status(&id).await.unwrap().generations[0]
        .id
        .clone();
    let ratings = AestheticsPayload {
        best: Some(generation.clone()),
        ratings: Some(vec![AestheticRating {
            id: generation,
            rating: 8,
            artifacts: Some(1),
        }]),
    };
    refused(
        app.anonymous().rate(UNKNOWN_ID, &ratings).await,
        404,
        "RequestNotFound",
    );
    assert_eq!(
        app.anonymous().rate(&id, &ratings).await.unwrap().reward,
        0.0
    );
    refused(
        app.anonymous().rate(&id, &ratings).await,
        400,
        "AestheticsAlreadyExist",
    );
    let worker = owner.worker_by_name("rated").await.unwrap().id;
    let reputation = owner.worker(&worker).await.unwrap().reputation.unwrap();
    assert_eq!(reputation.rated_by, 1);

    let source = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &image);
    let body = json!({"forms": [{"name": "caption"}], "source_image": source});
    let interrogation: InterrogationRequest = serde_json::from_value(body).unwrap();
    let accepted = requester.interrogate_async(&interrogation).await.unwrap();
    let cancelled = requester.interrogate_cancel(&accepted.id).await.unwrap();
    assert_eq!(
        cancelled.state, "waiting",
        "the answer is the state before the cancel"
    );
    assert_eq!(
        requester
            .interrogate_status(&accepted.id)
            .await
            .unwrap()
            .state,
        "cancelled"
    );
    refused(
        requester.interrogate_cancel(UNKNOWN_ID).await,
        404,
        "RequestNotFound",
    );
}
