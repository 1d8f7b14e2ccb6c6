//! Issue 29, points 2 and 3, through the real server: teams (who creates, changes and deletes
//! them; workers joining and leaving; figures summed from the workers), deleting a worker (423
//! while a job names it), and messages to workers (rights, listing, expiry, and the pop that
//! shows them).

use crate::authz::{check_rows, five_callers, row, Callers};
use crate::helpers::*;
use horde_api::user::TestUserRequest;
use serde_json::{json, Value};

/// An account on `app`: its key and id.
async fn account(app: &TestApp, name: &str, trusted: bool, moderator: bool) -> (String, i64) {
    let created = app
        .anonymous()
        .create_test_user(&TestUserRequest {
            username: name.into(),
            oauth_id: None,
            moderator,
            trusted,
            kudos: 100.0,
        })
        .await
        .expect("test user created");
    (created.api_key, created.user_id)
}

/// `method path` with `body` as the caller with `key`: the status and the JSON answer.
async fn call(
    app: &TestApp,
    method: &str,
    key: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call_as(app, key, method, path, body).await
}

/// Asserts a refusal's status and rc.
fn refused(answer: &(u16, Value), status: u16, rc: &str) {
    assert_eq!(
        (answer.0, answer.1["rc"].as_str()),
        (status, Some(rc)),
        "{}",
        answer.1
    );
}

/// The id of a worker `name` of the owner with `key`, registered by a pop that finds nothing.
async fn idle_worker(app: &TestApp, key: &str, name: &str) -> String {
    let owner = app.client(key);
    owner.pop(&pop_request(name)).await.unwrap();
    owner.worker_by_name(name).await.unwrap().id
}

/// A team created by the trusted user with `key`: its id.
async fn team(app: &TestApp, key: &str, name: &str) -> String {
    let created = call(
        app,
        "POST",
        key,
        "/api/v2/teams",
        Some(json!({"name": name, "info": "a team"})),
    )
    .await;
    assert_eq!(created.0, 200, "{}", created.1);
    created.1["id"].as_str().expect("an id").to_string()
}

async fn team_names(app: &TestApp) -> Vec<String> {
    let (status, teams) = call(app, "GET", "", "/api/v2/teams", None).await;
    assert_eq!(status, 200);
    teams
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn trusted_users_create_teams_and_others_or_bad_bodies_are_refused_with_nothing_stored() {
    let app = spawn_app().await;
    let (trusted, trusted_id) = account(&app, "trusted", true, false).await;
    let (untrusted, _) = account(&app, "untrusted", false, false).await;
    let body = json!({"name": "Night Shift", "info": "workers at night"});

    let created = call(&app, "POST", &trusted, "/api/v2/teams", Some(body.clone())).await;
    assert_eq!(created.0, 200, "{}", created.1);
    assert_eq!(created.1["name"], "Night Shift");
    assert_eq!(created.1["info"], "workers at night");
    let id = created.1["id"].as_str().unwrap().to_string();
    let (_, shown) = call(&app, "GET", "", &format!("/api/v2/teams/{id}"), None).await;
    assert_eq!(shown["creator"], format!("trusted#{trusted_id}"));
    assert_eq!(
        (
            shown["worker_count"].as_u64(),
            shown["requests_fulfilled"].as_u64()
        ),
        (Some(0), Some(0))
    );

    let other = json!({"name": "Other Team"});
    refused(
        &call(
            &app,
            "POST",
            &untrusted,
            "/api/v2/teams",
            Some(other.clone()),
        )
        .await,
        403,
        "UntrustedTeamCreation",
    );
    refused(
        &call(
            &app,
            "POST",
            horde_api::ANONYMOUS_API_KEY,
            "/api/v2/teams",
            Some(other),
        )
        .await,
        403,
        "AnonForbidden",
    );
    refused(
        &call(&app, "POST", &trusted, "/api/v2/teams", Some(body)).await,
        400,
        "TeamNameAlreadyExists",
    );
    for (bad, field) in [
        (json!({"name": "ab"}), "name"),
        (json!({"name": "n".repeat(101)}), "name"),
        (json!({"name": "Fine Name", "info": "x"}), "info"),
        (
            json!({"name": "Fine Name", "info": "i".repeat(1001)}),
            "info",
        ),
    ] {
        let answer = call(&app, "POST", &trusted, "/api/v2/teams", Some(bad.clone())).await;
        assert_eq!(answer.0, 400, "{bad}");
        assert!(answer.1["errors"][field].is_string(), "{bad}: {}", answer.1);
    }
    let no_name = call(
        &app,
        "POST",
        &trusted,
        "/api/v2/teams",
        Some(json!({"info": "no name"})),
    )
    .await;
    assert_eq!(no_name.0, 400, "{}", no_name.1);
    refused(
        &call(
            &app,
            "POST",
            &trusted,
            "/api/v2/teams",
            Some(json!({"name": "fuck team"})),
        )
        .await,
        400,
        "ProfaneTeamName",
    );
    assert_eq!(
        team_names(&app).await,
        ["Night Shift"],
        "no refused team was stored"
    );
    refused(
        &call(&app, "GET", "", "/api/v2/teams/not-a-team", None).await,
        404,
        "TeamNotFound",
    );
    refused(
        &call(
            &app,
            "GET",
            "",
            &format!("/api/v2/teams/{}", uuid::Uuid::new_v4()),
            None,
        )
        .await,
        404,
        "TeamNotFound",
    );
}

/// Runs one 512×512 job of `worker` (of the owner with `key`) for a new request: the reward.
async fn one_job(app: &TestApp, key: &str, requester: &str, worker: &str) -> f64 {
    app.client(requester)
        .generate_async(&small_request(worker, 1, false))
        .await
        .unwrap();
    let owner = app.client(key);
    let job = owner.pop(&pop_request(worker)).await.unwrap();
    assert!(job.id.is_some(), "{worker} got the job");
    owner
        .submit(&submit_inline(&job, &webp(512, 512, [7; 3], [9; 3])))
        .await
        .unwrap()
        .reward
}

#[tokio::test]
async fn workers_join_and_leave_a_team_whose_figures_are_summed_from_them() {
    let app = spawn_app().await;
    let (owner, _) = account(&app, "owner", true, false).await;
    let (requester, _) = account(&app, "requester", true, false).await;
    let (stranger, _) = account(&app, "stranger", true, false).await;
    let team_id = team(&app, &owner, "Day Shift").await;
    let first = idle_worker(&app, &owner, "first worker").await;
    let second = idle_worker(&app, &owner, "second worker").await;
    one_job(&app, &owner, &requester, "first worker").await;
    one_job(&app, &owner, &requester, "second worker").await;
    one_job(&app, &owner, &requester, "second worker").await;

    let join = json!({"team": team_id});
    refused(
        &call(
            &app,
            "PUT",
            &stranger,
            &format!("/api/v2/workers/{first}"),
            Some(join.clone()),
        )
        .await,
        403,
        "NotOwner",
    );
    let joined = call(
        &app,
        "PUT",
        &owner,
        &format!("/api/v2/workers/{first}"),
        Some(join.clone()),
    )
    .await;
    assert_eq!(
        (joined.0, &joined.1["team"]),
        (200, &json!("Day Shift")),
        "{}",
        joined.1
    );
    let shown = app.client(&owner).worker(&first).await.unwrap();
    assert_eq!(
        (shown.team.id.as_deref(), shown.team.name.as_deref()),
        (Some(team_id.as_str()), Some("Day Shift"))
    );
    assert_figures_are_the_sum_of(&app, &owner, &team_id, &[&first]).await;

    call(
        &app,
        "PUT",
        &owner,
        &format!("/api/v2/workers/{second}"),
        Some(join),
    )
    .await;
    assert_figures_are_the_sum_of(&app, &owner, &team_id, &[&first, &second]).await;

    let unknown = json!({"team": uuid::Uuid::new_v4().to_string()});
    refused(
        &call(
            &app,
            "PUT",
            &owner,
            &format!("/api/v2/workers/{second}"),
            Some(unknown),
        )
        .await,
        404,
        "TeamNotFound",
    );
    let too_long = call(
        &app,
        "PUT",
        &owner,
        &format!("/api/v2/workers/{second}"),
        Some(json!({"team": "t".repeat(37)})),
    )
    .await;
    assert_eq!(too_long.0, 400, "{}", too_long.1);
    assert_figures_are_the_sum_of(&app, &owner, &team_id, &[&first, &second]).await;

    let left = call(
        &app,
        "PUT",
        &owner,
        &format!("/api/v2/workers/{first}"),
        Some(json!({"team": ""})),
    )
    .await;
    assert_eq!(
        (left.0, &left.1["team"]),
        (200, &json!("None")),
        "{}",
        left.1
    );
    let shown = app.client(&owner).worker(&first).await.unwrap();
    assert_eq!((shown.team.id, shown.team.name), (None, None));
    assert_figures_are_the_sum_of(&app, &owner, &team_id, &[&second]).await;
}

/// The team's figures are those of `members` (as their details show them) added up.
async fn assert_figures_are_the_sum_of(app: &TestApp, key: &str, team_id: &str, members: &[&str]) {
    let (status, team) = call(app, "GET", "", &format!("/api/v2/teams/{team_id}"), None).await;
    assert_eq!(status, 200, "{team}");
    let mut workers = Vec::new();
    for id in members {
        workers.push(app.client(key).worker(id).await.unwrap());
    }
    let fulfilled: u64 = workers.iter().map(|w| w.requests_fulfilled).sum();
    let kudos: f64 = workers.iter().map(|w| w.kudos_details.generated).sum();
    let uptime: u64 = workers.iter().map(|w| w.uptime).sum();
    assert!(fulfilled > 0 && kudos > 0.0, "the members did work");
    assert_eq!(
        team["worker_count"].as_u64(),
        Some(members.len() as u64),
        "{team}"
    );
    assert_eq!(
        team["requests_fulfilled"].as_u64(),
        Some(fulfilled),
        "{team}"
    );
    assert!(
        (team["kudos"].as_f64().unwrap() - kudos).abs() < 0.01,
        "{team}: {kudos}"
    );
    assert_eq!(team["uptime"].as_u64(), Some(uptime), "{team}");
    // 512×512 at 10 steps is 2.62144 megapixelsteps a job.
    let contributions = team["contributions"].as_f64().unwrap();
    assert!(
        (contributions - fulfilled as f64 * 2.62144).abs() < 0.01,
        "{team}"
    );
    let mut listed: Vec<&str> = team["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut expected = members.to_vec();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(
        team["models"],
        json!([{"name": "stable_diffusion", "count": members.len()}])
    );
    let (_, all) = call(app, "GET", "", "/api/v2/teams", None).await;
    assert_eq!(
        all.as_array().unwrap().iter().find(|t| t["id"] == team_id),
        Some(&team)
    );
}

#[tokio::test]
async fn a_team_is_changed_and_deleted_by_its_creator_or_a_moderator_only() {
    let app = spawn_app().await;
    let (owner, _) = account(&app, "owner", true, false).await;
    let (other, _) = account(&app, "other", true, false).await;
    let (moderator, _) = account(&app, "moderator", false, true).await;
    let team_id = team(&app, &owner, "Old Name").await;
    team(&app, &other, "Taken Name").await;
    let worker = idle_worker(&app, &owner, "member worker").await;
    call(
        &app,
        "PUT",
        &owner,
        &format!("/api/v2/workers/{worker}"),
        Some(json!({"team": team_id})),
    )
    .await;
    let path = format!("/api/v2/teams/{team_id}");

    refused(
        &call(
            &app,
            "PATCH",
            &other,
            &path,
            Some(json!({"name": "Hijacked"})),
        )
        .await,
        403,
        "NotOwner",
    );
    refused(
        &call(&app, "PATCH", &owner, &path, Some(json!({}))).await,
        400,
        "NoTeamModSelected",
    );
    refused(
        &call(
            &app,
            "PATCH",
            &owner,
            &path,
            Some(json!({"name": "Taken Name"})),
        )
        .await,
        400,
        "TeamNameAlreadyExists",
    );
    let bad = call(&app, "PATCH", &owner, &path, Some(json!({"info": "x"}))).await;
    assert_eq!(bad.0, 400, "{}", bad.1);
    let renamed = call(
        &app,
        "PATCH",
        &owner,
        &path,
        Some(json!({"name": "New Name"})),
    )
    .await;
    assert_eq!((renamed.0, &renamed.1), (200, &json!({"name": "New Name"})));
    let by_moderator = call(
        &app,
        "PATCH",
        &moderator,
        &path,
        Some(json!({"info": "moderated"})),
    )
    .await;
    assert_eq!(by_moderator.0, 200, "{}", by_moderator.1);
    let (_, shown) = call(&app, "GET", "", &path, None).await;
    assert_eq!(
        (&shown["name"], &shown["info"]),
        (&json!("New Name"), &json!("moderated"))
    );
    let member = app.client(&owner).worker(&worker).await.unwrap();
    assert_eq!(
        member.team.name.as_deref(),
        Some("New Name"),
        "a member shows the new name"
    );

    refused(
        &call(&app, "DELETE", &other, &path, None).await,
        403,
        "NotOwner",
    );
    let deleted = call(&app, "DELETE", &owner, &path, None).await;
    assert_eq!(
        (deleted.0, &deleted.1),
        (
            200,
            &json!({"deleted_id": team_id, "deleted_name": "New Name"})
        )
    );
    refused(
        &call(&app, "GET", "", &path, None).await,
        404,
        "TeamNotFound",
    );
    let member = app.client(&owner).worker(&worker).await.unwrap();
    assert_eq!(
        (member.team.id, member.team.name),
        (None, None),
        "its workers are in no team"
    );
    assert_eq!(team_names(&app).await, ["Taken Name"]);

    // A moderator deletes anyone's team.
    let other_team = team_names(&app).await;
    assert_eq!(other_team.len(), 1);
    let (_, teams) = call(&app, "GET", "", "/api/v2/teams", None).await;
    let other_id = teams[0]["id"].as_str().unwrap().to_string();
    let deleted = call(
        &app,
        "DELETE",
        &moderator,
        &format!("/api/v2/teams/{other_id}"),
        None,
    )
    .await;
    assert_eq!(deleted.0, 200, "{}", deleted.1);
    assert!(team_names(&app).await.is_empty());
}

#[tokio::test]
async fn a_worker_is_deleted_by_its_owner_unless_a_stored_job_names_it() {
    let app = spawn_app().await;
    let (owner, _) = account(&app, "owner", true, false).await;
    let (requester, _) = account(&app, "requester", true, false).await;
    let (stranger, _) = account(&app, "stranger", true, false).await;
    let (moderator, _) = account(&app, "moderator", false, true).await;
    let busy = idle_worker(&app, &owner, "busy worker").await;
    one_job(&app, &owner, &requester, "busy worker").await;
    let idle = idle_worker(&app, &owner, "idle worker").await;
    let spare = idle_worker(&app, &owner, "spare worker").await;
    let sent = call(
        &app,
        "POST",
        &owner,
        "/api/v2/workers/messages",
        Some(json!({"worker_id": idle, "message": "bye"})),
    )
    .await;
    let message = sent.1["id"].as_str().unwrap().to_string();

    refused(
        &call(
            &app,
            "DELETE",
            &owner,
            &format!("/api/v2/workers/{busy}"),
            None,
        )
        .await,
        423,
        "Locked",
    );
    assert!(
        app.client(&owner).worker(&busy).await.is_ok(),
        "a locked worker is kept"
    );
    refused(
        &call(
            &app,
            "DELETE",
            &stranger,
            &format!("/api/v2/workers/{idle}"),
            None,
        )
        .await,
        403,
        "NotOwner",
    );
    refused(
        &call(
            &app,
            "DELETE",
            horde_api::ANONYMOUS_API_KEY,
            &format!("/api/v2/workers/{idle}"),
            None,
        )
        .await,
        403,
        "AnonForbidden",
    );

    let deleted = call(
        &app,
        "DELETE",
        &owner,
        &format!("/api/v2/workers/{idle}"),
        None,
    )
    .await;
    assert_eq!(
        (deleted.0, &deleted.1),
        (
            200,
            &json!({"deleted_id": idle, "deleted_name": "idle worker"})
        )
    );
    refused(
        &call(&app, "GET", "", &format!("/api/v2/workers/{idle}"), None).await,
        404,
        "WorkerNotFound",
    );
    refused(
        &call(
            &app,
            "GET",
            "",
            &format!("/api/v2/workers/messages/{message}"),
            None,
        )
        .await,
        404,
        "ThingNotFound",
    );
    let stored = app
        .state
        .store
        .worker_by_id(idle.parse().unwrap())
        .await
        .unwrap();
    assert!(stored.is_none(), "the row is gone");
    refused(
        &call(
            &app,
            "DELETE",
            &owner,
            &format!("/api/v2/workers/{idle}"),
            None,
        )
        .await,
        404,
        "WorkerNotFound",
    );
    let by_moderator = call(
        &app,
        "DELETE",
        &moderator,
        &format!("/api/v2/workers/{spare}"),
        None,
    )
    .await;
    assert_eq!(by_moderator.0, 200, "{}", by_moderator.1);
    // The name is free again: a pop registers a new worker under it.
    let again = idle_worker(&app, &owner, "idle worker").await;
    assert_ne!(again, idle);
}

/// The ids of the messages in a pop of worker `name` (of the owner with `key`).
async fn popped_messages(app: &TestApp, key: &str, name: &str) -> Vec<String> {
    let pop = app.client(key).pop(&pop_request(name)).await.unwrap();
    pop.messages
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn messages_are_sent_by_owners_to_their_workers_and_by_moderators_to_any_and_popped_until_they_expire(
) {
    let app = spawn_app().await;
    let (owner, owner_id) = account(&app, "owner", true, false).await;
    let (other, _) = account(&app, "other", true, false).await;
    let (moderator, moderator_id) = account(&app, "moderator", false, true).await;
    let worker = idle_worker(&app, &owner, "messaged worker").await;
    let others_worker = idle_worker(&app, &other, "other worker").await;
    let post = |body: Value, key: String| {
        let app = &app;
        async move { call(app, "POST", &key, "/api/v2/workers/messages", Some(body)).await }
    };

    let own = post(
        json!({"worker_id": worker, "message": "update your bridge", "origin": "me, the king"}),
        owner.clone(),
    )
    .await;
    assert_eq!(own.0, 200, "{}", own.1);
    assert_eq!(
        own.1["origin"],
        format!("owner#{owner_id}"),
        "an owner writes under their alias"
    );
    assert_eq!(own.1["user_id"], owner_id.to_string());
    refused(
        &post(
            json!({"worker_id": others_worker, "message": "hi"}),
            owner.clone(),
        )
        .await,
        403,
        "MessagesOnlyOwnWorkers",
    );
    refused(
        &post(json!({"message": "to nobody"}), owner.clone()).await,
        403,
        "MessagesOnlyOwnWorkers",
    );
    refused(
        &post(
            json!({"worker_id": uuid::Uuid::new_v4(), "message": "hi"}),
            owner.clone(),
        )
        .await,
        404,
        "WorkerNotFound",
    );
    refused(
        &post(
            json!({"worker_id": worker, "message": "hi"}),
            horde_api::ANONYMOUS_API_KEY.into(),
        )
        .await,
        403,
        "AnonForbidden",
    );
    for (bad, field) in [
        (json!({"worker_id": worker, "message": ""}), "message"),
        (
            json!({"worker_id": worker, "message": "m".repeat(10241)}),
            "message",
        ),
        (
            json!({"worker_id": worker, "message": "m", "expiry": 0}),
            "expiry",
        ),
        (
            json!({"worker_id": worker, "message": "m", "expiry": 721}),
            "expiry",
        ),
        (json!({"worker_id": "nope", "message": "m"}), "worker_id"),
    ] {
        let answer = post(bad.clone(), owner.clone()).await;
        assert_eq!(answer.0, 400, "{bad}");
        assert!(answer.1["errors"][field].is_string(), "{bad}: {}", answer.1);
    }
    let moderated = post(json!({"worker_id": others_worker, "message": "slow down", "origin": "Horde Moderators", "expiry": 720}), moderator.clone()).await;
    assert_eq!(
        (moderated.0, &moderated.1["origin"]),
        (200, &json!("Horde Moderators"))
    );
    let to_mine = post(
        json!({"worker_id": worker, "message": "thanks"}),
        moderator.clone(),
    )
    .await;
    let own_id = own.1["id"].as_str().unwrap().to_string();
    let to_mine_id = to_mine.1["id"].as_str().unwrap().to_string();

    // Each worker's pop shows the active messages to it, and only those.
    let mut popped = popped_messages(&app, &owner, "messaged worker").await;
    popped.sort();
    let mut expected = vec![own_id.clone(), to_mine_id.clone()];
    expected.sort();
    assert_eq!(popped, expected);
    assert_eq!(
        popped_messages(&app, &other, "other worker").await,
        [moderated.1["id"].as_str().unwrap()]
    );

    // The worker's details show them to its owner and moderators only.
    let shown = |key: String| {
        let (app, worker) = (&app, worker.clone());
        async move { app.client(&key).worker(&worker).await.unwrap().messages }
    };
    let mut to_owner: Vec<String> = shown(owner.clone())
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    to_owner.sort();
    assert_eq!(to_owner, expected);
    assert_eq!(shown(moderator.clone()).await.map(|m| m.len()), Some(2));
    assert_eq!(shown(other.clone()).await, None);

    // Listing: an owner sees their own messages only, a moderator everyone's.
    let (status, mine) = call(
        &app,
        "GET",
        &owner,
        &format!("/api/v2/workers/messages?user_id={moderator_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ids(&mine), [own_id.as_str()]);
    let (_, all) = call(&app, "GET", &moderator, "/api/v2/workers/messages", None).await;
    assert_eq!(all.as_array().unwrap().len(), 3);
    let (_, to_worker) = call(
        &app,
        "GET",
        &moderator,
        &format!("/api/v2/workers/messages?worker_id={worker}"),
        None,
    )
    .await;
    assert_eq!(to_worker.as_array().unwrap().len(), 2);
    let (_, by_owner) = call(
        &app,
        "GET",
        &moderator,
        &format!("/api/v2/workers/messages?user_id={owner_id}"),
        None,
    )
    .await;
    assert_eq!(ids(&by_owner), [own_id.as_str()]);
    refused(
        &call(
            &app,
            "GET",
            horde_api::ANONYMOUS_API_KEY,
            "/api/v2/workers/messages",
            None,
        )
        .await,
        403,
        "AnonForbidden",
    );
    let (_, one) = call(
        &app,
        "GET",
        "",
        &format!("/api/v2/workers/messages/{own_id}"),
        None,
    )
    .await;
    assert_eq!(one, own.1);
    for bad in [
        "page=0",
        "page=10001",
        "validity=old",
        "worker_id=nope",
        "page=x",
    ] {
        let answer = call(
            &app,
            "GET",
            &moderator,
            &format!("/api/v2/workers/messages?{bad}"),
            None,
        )
        .await;
        assert_eq!(answer.0, 400, "{bad}: {}", answer.1);
    }

    // Deleting: the author or a moderator; the pop no longer shows it.
    let path = format!("/api/v2/workers/messages/{to_mine_id}");
    refused(
        &call(&app, "DELETE", &owner, &path, None).await,
        403,
        "NotOwner",
    );
    assert_eq!(
        call(&app, "DELETE", &moderator, &path, None).await,
        (200, json!({"message": "OK"}))
    );
    refused(
        &call(&app, "GET", "", &path, None).await,
        404,
        "ThingNotFound",
    );
    assert_eq!(
        popped_messages(&app, &owner, "messaged worker").await,
        [own_id.as_str()]
    );
    let own_path = format!("/api/v2/workers/messages/{own_id}");
    assert_eq!(call(&app, "DELETE", &owner, &own_path, None).await.0, 200);
    assert!(popped_messages(&app, &owner, "messaged worker")
        .await
        .is_empty());
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_expired_message_leaves_the_pop_and_is_listed_as_expired_and_pages_hold_fifty() {
    let app = spawn_app().await;
    let (owner, owner_id) = account(&app, "owner", true, false).await;
    let (moderator, _) = account(&app, "moderator", false, true).await;
    let worker = idle_worker(&app, &owner, "timed worker").await;
    let worker_id: uuid::Uuid = worker.parse().unwrap();
    // Messages' lifetimes are whole hours: one about to expire is written to the store as the
    // service would, and read into the registry as after any change.
    let now = horde_server::clock::now();
    let stored = |expiry: i64, text: &str| horde_core::teams::WorkerMessage {
        id: uuid::Uuid::new_v4(),
        worker_id: Some(worker_id),
        user_id: owner_id,
        message: text.into(),
        origin: Some("test".into()),
        expiry,
        created: now,
    };
    let soon = stored(now + 2, "soon gone");
    let gone = stored(now - 10, "long gone");
    app.state.store.insert_worker_message(&soon).await.unwrap();
    app.state.store.insert_worker_message(&gone).await.unwrap();
    app.state.reload_teams_and_messages().await.unwrap();
    assert_eq!(
        popped_messages(&app, &owner, "timed worker").await,
        [soon.id.to_string()]
    );
    let listed = |validity: &'static str| {
        let app = &app;
        let owner = owner.clone();
        async move {
            ids(&call(
                app,
                "GET",
                &owner,
                &format!("/api/v2/workers/messages?validity={validity}"),
                None,
            )
            .await
            .1)
        }
    };
    assert_eq!(listed("active").await, [soon.id.to_string()]);
    assert_eq!(listed("expired").await, [gone.id.to_string()]);
    assert_eq!(listed("all").await.len(), 2);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert!(
        popped_messages(&app, &owner, "timed worker")
            .await
            .is_empty(),
        "expired in the pop"
    );
    assert!(listed("active").await.is_empty());
    assert_eq!(listed("expired").await.len(), 2);

    for i in 0..51 {
        let body = json!({"worker_id": worker, "message": format!("note {i}")});
        assert_eq!(
            call(
                &app,
                "POST",
                &moderator,
                "/api/v2/workers/messages",
                Some(body)
            )
            .await
            .0,
            200
        );
    }
    let page = |n: u32| {
        let app = &app;
        let moderator = moderator.clone();
        async move {
            call(
                app,
                "GET",
                &moderator,
                &format!("/api/v2/workers/messages?page={n}"),
                None,
            )
            .await
            .1
        }
    };
    let (first, second) = (page(1).await, page(2).await);
    assert_eq!(
        (
            first.as_array().unwrap().len(),
            second.as_array().unwrap().len()
        ),
        (50, 1)
    );
    let mut seen: Vec<String> = ids(&first).into_iter().chain(ids(&second)).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 51, "the pages do not overlap");
    assert_eq!(
        popped_messages(&app, &owner, "timed worker").await.len(),
        51
    );
}

#[tokio::test]
async fn teams_workers_and_messages_answer_each_kind_of_caller_as_they_should() {
    let app = spawn_app().await;
    let Callers { keys, ids } = five_callers(&app).await;
    // The owner is trusted, so that they may create teams (a moderator sets it).
    let trust = json!({"trusted": true});
    let trusted = call(
        &app,
        "PUT",
        &keys[3],
        &format!("/api/v2/users/{}", ids[4]),
        Some(trust),
    )
    .await;
    assert_eq!(trusted.0, 200, "{}", trusted.1);
    let team_id = team(&app, &keys[4], "Owned Team").await;
    let worker = idle_worker(&app, &keys[4], "owned worker").await;
    let deletable = idle_worker(&app, &keys[4], "deletable worker").await;
    let message = call(
        &app,
        "POST",
        &keys[4],
        "/api/v2/workers/messages",
        Some(json!({"worker_id": worker, "message": "m"})),
    )
    .await;
    let message = message.1["id"].as_str().unwrap().to_string();

    let everyone = [200; 5];
    let registered = [403, 200, 200, 200, 200];
    let owner_and_moderator = [403, 403, 403, 200, 200];
    let rows = vec![
        row("GET", "/api/v2/teams".into(), None, everyone),
        row("GET", format!("/api/v2/teams/{team_id}"), None, everyone),
        // Only trusted users create (moderators are trusted here, and the owner was made so): the
        // moderator creates it, so the owner then finds its name taken (the owner's own team
        // above was created the same way).
        row(
            "POST",
            "/api/v2/teams".into(),
            Some(json!({"name": "Another Team"})),
            [403, 403, 403, 200, 400],
        ),
        row(
            "PATCH",
            format!("/api/v2/teams/{team_id}"),
            Some(json!({"info": "changed"})),
            owner_and_moderator,
        ),
        row(
            "PUT",
            format!("/api/v2/workers/{worker}"),
            Some(json!({"team": team_id})),
            owner_and_moderator,
        ),
        row("GET", "/api/v2/workers/messages".into(), None, registered),
        row(
            "GET",
            format!("/api/v2/workers/messages/{message}"),
            None,
            everyone,
        ),
        row(
            "POST",
            "/api/v2/workers/messages".into(),
            Some(json!({"worker_id": worker, "message": "m"})),
            owner_and_moderator,
        ),
        // Deleted by the moderator, so the owner finds it gone.
        row(
            "DELETE",
            format!("/api/v2/workers/messages/{message}"),
            None,
            [403, 403, 403, 200, 404],
        ),
        row(
            "DELETE",
            format!("/api/v2/workers/{deletable}"),
            None,
            [403, 403, 403, 200, 404],
        ),
        row(
            "DELETE",
            format!("/api/v2/teams/{team_id}"),
            None,
            [403, 403, 403, 200, 404],
        ),
    ];
    check_rows(&app, &keys, &rows).await;
}

#[tokio::test]
async fn a_workers_team_and_messages_are_read_again_after_a_restart() {
    let app = spawn_app().await;
    let (owner, _) = account(&app, "owner", true, false).await;
    let team_id = team(&app, &owner, "Lasting Team").await;
    let worker = idle_worker(&app, &owner, "lasting worker").await;
    let join = json!({"team": team_id});
    call(
        &app,
        "PUT",
        &owner,
        &format!("/api/v2/workers/{worker}"),
        Some(join),
    )
    .await;
    let body = json!({"worker_id": worker, "message": "still here"});
    let sent = call(&app, "POST", &owner, "/api/v2/workers/messages", Some(body)).await;
    let message = sent.1["id"].as_str().unwrap().to_string();

    let app = app.restart().await;
    let shown = app.client(&owner).worker(&worker).await.unwrap();
    assert_eq!(shown.team.name.as_deref(), Some("Lasting Team"));
    assert_eq!(
        popped_messages(&app, &owner, "lasting worker").await,
        [message.as_str()]
    );
    let (_, team) = call(&app, "GET", "", &format!("/api/v2/teams/{team_id}"), None).await;
    assert_eq!(team["worker_count"], 1, "{team}");
}

/// A text worker's and an alchemist's pops carry their active messages, as an image worker's
/// does; a worker without one shows no `messages` field (strict clients parse it unchanged).
#[tokio::test]
async fn text_and_alchemy_pops_show_their_workers_messages_too() {
    let app = spawn_app().await;
    let (owner, _) = account(&app, "owner", true, false).await;
    let text_pop = json!({"name": "messaged text worker", "models": ["koboldcpp/Marx-3B-V3"],
        "bridge_agent": "KoboldCppEmbedWorker:2:https://github.com/LostRuins/koboldcpp"});
    let alchemy_pop = json!({"name": "messaged alchemist", "forms": ["caption"]});
    let pops = [
        ("/api/v2/generate/text/pop", text_pop),
        ("/api/v2/interrogate/pop", alchemy_pop),
    ];
    for (path, pop) in &pops {
        let (status, answer) = call(&app, "POST", &owner, path, Some(pop.clone())).await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer.get("messages").is_none(), "{path}: {answer}");
        let name = pop["name"].as_str().unwrap();
        let id = app.client(&owner).worker_by_name(name).await.unwrap().id;
        let posted = call(
            &app,
            "POST",
            &owner,
            "/api/v2/workers/messages",
            Some(json!({"worker_id": id, "message": format!("hello {name}")})),
        )
        .await;
        assert_eq!(posted.0, 200, "{}", posted.1);
        let (status, answer) = call(&app, "POST", &owner, path, Some(pop.clone())).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(
            answer["messages"][0]["message"],
            format!("hello {name}"),
            "{path}: {answer}"
        );
        assert_eq!(answer["messages"][0]["id"], posted.1["id"], "{path}");
    }
}
