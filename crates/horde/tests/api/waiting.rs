//! Waiting for a request instead of polling it: `?wait=SECONDS` on check and status, and the
//! progress stream (`/generate/stream/{id}`, server-sent events), against the real coordinator
//! with a worker popping and submitting real WebP images.

use crate::helpers::*;
use horde_client::Client;
use horde_server::live_requests::Watcher;
use serde_json::Value;
use std::time::{Duration, Instant};

const GREY: [u8; 3] = [128, 128, 128];

/// A coordinator, a requester with one request of one image waiting, and a worker's owner.
async fn one_request(app: &TestApp) -> (Client, String, Client) {
    let (requester, _) = app.user("waiter", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let id = requester
        .generate_async(&small_request("a lighthouse", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    (requester, id, owner)
}

/// Waits until `n` clients of the sort `watcher` watch a request in the coordinator.
async fn until_watching(app: &TestApp, watcher: Watcher, n: usize) {
    for _ in 0..500 {
        if app.state.live.watchers(watcher) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{n} {watcher:?} watchers never came");
}

/// Pops the request's job as `worker` and submits a real image for it.
async fn finish_it(owner: &Client) {
    let job = owner.pop(&pop_request("waited-on")).await.unwrap();
    assert!(job.id.is_some(), "a job: {job:?}");
    owner
        .submit(&submit_inline(&job, &webp(512, 512, GREY, GREY)))
        .await
        .unwrap();
}

fn check_url(app: &TestApp, id: &str, wait: &str) -> String {
    format!("{}/api/v2/generate/check/{id}?wait={wait}", app.root)
}

#[tokio::test]
async fn a_wait_answers_as_soon_as_the_worker_submits() {
    let app = spawn_app().await;
    let (_, id, owner) = one_request(&app).await;
    let started = Instant::now();
    let waiting = tokio::spawn(http().get(check_url(&app, &id, "30")).send());
    until_watching(&app, Watcher::Wait, 1).await;
    assert_eq!(app.state.live.watched_requests(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "the wait answered before the work was done"
    );

    let working = started.elapsed();
    finish_it(&owner).await;
    let answer = waiting.await.unwrap().unwrap();
    let answered = started.elapsed();
    assert_eq!(answer.status(), 200);
    assert!(answer.headers().get("x-horde-wait-clamped").is_none());
    let check: Value = answer.json().await.unwrap();
    assert_eq!(
        (check["done"].as_bool(), check["finished"].as_u64()),
        (Some(true), Some(1))
    );
    assert!(
        answered > working,
        "answered after the worker's pop and submit began"
    );
    assert!(
        answered < Duration::from_secs(15),
        "answered long before the 30 s were up: {answered:?}"
    );
    until_watching(&app, Watcher::Wait, 0).await;
    assert_eq!(
        app.state.live.watched_requests(),
        0,
        "the signal went with its last watcher"
    );
}

#[tokio::test]
async fn a_wait_on_a_request_that_stays_queued_answers_when_the_time_is_up() {
    let app = spawn_app().await;
    let (_, id, _) = one_request(&app).await;
    let started = Instant::now();
    let status: Value = http()
        .get(format!("{}/api/v2/generate/status/{id}?wait=1.5", app.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(status["done"], false);
    assert_eq!(status["waiting"], 1);
    assert_eq!(status["generations"].as_array().map(Vec::len), Some(0));
    assert!(
        waited >= Duration::from_millis(1500),
        "waited the time asked: {waited:?}"
    );
    assert!(waited < Duration::from_secs(15), "{waited:?}");
}

#[tokio::test]
async fn a_wait_over_a_minute_is_clamped_and_the_answer_says_so() {
    let app = spawn_app().await;
    let (requester, id, _) = one_request(&app).await;
    requester.cancel(&id).await.unwrap();
    for path in ["check", "status"] {
        let url = format!("{}/api/v2/generate/{path}/{id}?wait=600", app.root);
        let answer = http().get(url).send().await.unwrap();
        assert_eq!(
            answer.status(),
            200,
            "{path}: a cancelled request answers at once"
        );
        let clamped = answer.headers().get("x-horde-wait-clamped");
        assert_eq!(clamped.map(|v| v.to_str().unwrap()), Some("60"), "{path}");
    }
    let answer = http().get(check_url(&app, &id, "60")).send().await.unwrap();
    assert!(answer.headers().get("x-horde-wait-clamped").is_none());
}

#[tokio::test]
async fn a_negative_or_non_numeric_wait_is_refused_with_the_horde_body() {
    let app = spawn_app().await;
    let (_, id, _) = one_request(&app).await;
    for wait in ["-1", "soon", "NaN", ""] {
        let answer = http().get(check_url(&app, &id, wait)).send().await.unwrap();
        assert_eq!(answer.status(), 400, "wait={wait}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["rc"], "ValidationError", "wait={wait}");
        assert!(body["errors"]["wait"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn past_the_most_waiters_a_wait_answers_at_once() {
    let app = spawn_app_with(|c| c.api.max_waiters = 1).await;
    let (_, id, _) = one_request(&app).await;
    let first = tokio::spawn(http().get(check_url(&app, &id, "30")).send());
    until_watching(&app, Watcher::Wait, 1).await;
    let started = Instant::now();
    let second = http().get(check_url(&app, &id, "30")).send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered at once"
    );
    assert!(!first.is_finished(), "the first still waits");
    first.abort();
}

#[tokio::test]
async fn a_waiting_client_is_answered_when_the_coordinator_stops() {
    let app = spawn_app().await;
    let (_, id, _) = one_request(&app).await;
    let waiting = tokio::spawn(http().get(check_url(&app, &id, "60")).send());
    until_watching(&app, Watcher::Wait, 1).await;
    let stopping = Instant::now();
    app.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "the wait did not hold the shutdown: {:?}",
        stopping.elapsed()
    );
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    let check: Value = answer.json().await.unwrap();
    assert_eq!(check["done"], false);
}

/// A server-sent events reader over a streaming answer.
struct Events {
    answer: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(app: &TestApp, id: &str) -> Events {
        let url = format!("{}/api/v2/generate/stream/{id}", app.root);
        let answer = http().get(url).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        let kind = answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        Events {
            answer,
            buffer: String::new(),
        }
    }

    /// The next event (name and JSON data), `None` when the stream closed. Comments (the
    /// keep-alive) are skipped.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((name, serde_json::from_str(&data).expect("JSON data")));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.answer.chunk())
                .await
                .expect("an event within 30 s")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

#[tokio::test]
async fn the_stream_tells_the_position_then_each_generation_then_the_end() {
    let app = spawn_app().await;
    let (requester, id, owner) = one_request(&app).await;
    let mut events = Events::open(&app, &id).await;
    let (name, first) = events.next().await.unwrap();
    assert_eq!(name, "position");
    assert_eq!(
        (first["queue_position"].as_i64(), first["waiting"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(first["wait_time"].is_i64());

    finish_it(&owner).await;
    let mut seen = vec![];
    let mut generation = None;
    let mut end = None;
    while let Some((name, data)) = events.next().await {
        seen.push(name.clone());
        match name.as_str() {
            "generation" => generation = Some(data),
            "end" => end = Some(data),
            _ => {}
        }
    }
    let tail: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .skip_while(|n| *n == "position")
        .collect();
    assert_eq!(
        tail,
        ["generation", "end"],
        "in order, then closed: {seen:?}"
    );
    let end = end.unwrap();
    assert_eq!(
        (end["state"].as_str(), end["done"].as_bool()),
        (Some("done"), Some(true))
    );
    assert_eq!(end["finished"], 1);

    let status = requester.status(&id).await.unwrap();
    let expected = serde_json::to_value(&status.generations[0]).unwrap();
    assert_eq!(
        generation.unwrap(),
        expected,
        "the same entry as the status's generations"
    );
    until_watching(&app, Watcher::Stream, 0).await;
}

#[tokio::test]
async fn a_stream_ends_when_its_request_is_cancelled() {
    let app = spawn_app().await;
    let (requester, id, _) = one_request(&app).await;
    let mut events = Events::open(&app, &id).await;
    assert_eq!(events.next().await.unwrap().0, "position");
    requester.cancel(&id).await.unwrap();
    let mut last = None;
    while let Some(event) = events.next().await {
        last = Some(event);
    }
    let (name, data) = last.expect("an end event");
    assert_eq!(
        (name.as_str(), data["state"].as_str()),
        ("end", Some("cancelled"))
    );
}

#[tokio::test]
async fn past_the_most_streams_a_new_one_is_refused_and_unknown_requests_are_404() {
    let app = spawn_app_with(|c| c.api.max_streams = 1).await;
    let (_, id, _) = one_request(&app).await;
    let _open = Events::open(&app, &id).await;
    until_watching(&app, Watcher::Stream, 1).await;
    let url = format!("{}/api/v2/generate/stream/{id}", app.root);
    let refused = http().get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["rc"], "TooManyConnections");

    let unknown = format!(
        "{}/api/v2/generate/stream/{}",
        app.root,
        uuid::Uuid::new_v4()
    );
    let answer = http().get(unknown).send().await.unwrap();
    assert_eq!(answer.status(), 404);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["rc"], "RequestNotFound");
}

#[tokio::test]
async fn waits_and_streams_count_against_the_rate_limits_as_status_calls() {
    let (app, _, id) = rate_limited_with_a_request().await;
    let status = format!("{}/api/v2/generate/status/{id}?wait=0.05", app.root);
    let stream = format!("{}/api/v2/generate/stream/{id}", app.root);
    for url in [status, stream] {
        // `limits.status_per_ip`: 10 a minute per address and request.
        for n in 0..10 {
            let answer = http().get(&url).send().await.unwrap();
            assert_eq!(answer.status(), 200, "call {n} of {url}");
        }
        let refused = http().get(&url).send().await.unwrap();
        assert_eq!(refused.status(), 429, "{url}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["rc"], "RateLimited");
    }
}

/// A change made to be stored wakes its watchers only once it is stored: while the write turn
/// is held (the change is in memory, its transaction not committed), a watcher sleeps on, so a
/// waiting client never reads a result before it is durable (or an image before it is kept).
#[tokio::test]
async fn watchers_wake_once_the_change_is_stored_not_before() {
    let app = spawn_app().await;
    let (_requester, id, _owner) = one_request(&app).await;
    let id: uuid::Uuid = id.parse().unwrap();
    let mut watch = app.state.live.watch(id, Watcher::Wait, 10).unwrap();
    let turn = app.state.live.write_turn().await;
    // A coordinator on PostgreSQL reloads its requests when its listener connects: a change
    // stored and woken before this turn was taken. Let any such wake through first.
    let settle = || tokio::time::Instant::now() + Duration::from_millis(50);
    while watch.next_change(settle()).await == horde_server::live_requests::Woken::Changed {}
    app.state.live.update(id, |r| r.version += 1).unwrap();
    let soon = tokio::time::Instant::now() + Duration::from_millis(300);
    assert_eq!(
        watch.next_change(soon).await,
        horde_server::live_requests::Woken::TimeUp,
        "woken while the change was not stored yet"
    );
    drop(turn);
    let later = tokio::time::Instant::now() + Duration::from_secs(5);
    assert_eq!(
        watch.next_change(later).await,
        horde_server::live_requests::Woken::Changed
    );
}
