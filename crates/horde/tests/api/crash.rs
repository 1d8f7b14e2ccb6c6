//! Crash test: the coordinator binary is killed with SIGKILL three times while workers and a
//! client are busy, and restarted on the same port. Nothing it acknowledged is lost, every
//! request finishes, and no job is ever handed out twice.

use crate::helpers::*;
use horde_api::image::{SubmitRequest, SubmitState};
use horde_api::user::TestUserRequest;
use horde_client::Client;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Seen {
    handed_out: Vec<String>,
    /// Jobs whose result the coordinator acknowledged, with their request's prompt.
    accepted_results: Vec<(String, String)>,
}

async fn retrying<T, F, Fut>(mut call: F) -> Result<T, horde_client::ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, horde_client::ClientError>>,
{
    for _ in 0..300 {
        match call().await {
            Err(horde_client::ClientError::Transport(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => return other,
        }
    }
    call().await
}

async fn worker(
    client: Client,
    name: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    image: String,
) {
    let mut pop = pop_request(&name);
    pop.amount = 2;
    pop.max_pixels = 1024 * 1024;
    while !stop.load(Ordering::SeqCst) {
        let Ok(answer) = client.pop(&pop).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if answer.id.is_none() {
            tokio::time::sleep(Duration::from_millis(30)).await;
            continue;
        }
        let prompt = answer.payload["prompt"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        seen.lock()
            .unwrap()
            .handed_out
            .extend(answer.ids.iter().cloned());
        for id in &answer.ids {
            let submit = SubmitRequest {
                id: id.clone(),
                generation: Some(image.clone()),
                state: SubmitState::Ok,
                seed: None,
                censored: false,
                gen_metadata: vec![],
            };
            // Across a crash the job may have been taken back (AbortedGen), or an attempt whose
            // answer the crash swallowed got through (DuplicateGen); nothing else is refused.
            match retrying(|| client.submit(&submit)).await {
                Ok(_) => seen
                    .lock()
                    .unwrap()
                    .accepted_results
                    .push((id.clone(), prompt.clone())),
                Err(e) => assert!(
                    matches!(e.rc(), Some("AbortedGen" | "DuplicateGen")),
                    "{name}: {e}"
                ),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.path().to_str().unwrap().to_string();
    let args = [
        "--listen",
        listen.as_str(),
        "--data-dir",
        data.as_str(),
        "--enable-test-users",
        "--no-rate-limits",
    ];
    // Short deadlines and sweeps, set through the environment as an operator would.
    let env = [
        ("HORDE_JOBS__DEADLINE_FLOOR_SECS", "2"),
        ("HORDE_JOBS__DEADLINE_CEILING_SECS", "2"),
        ("HORDE_REQUESTS__SWEEP_INTERVAL_SECS", "1"),
    ];
    let mut server = ServerProcess::start(dir.path(), &args, &env);
    let anonymous = Client::new(&server.root, horde_api::ANONYMOUS_API_KEY);
    let key = |name: &str| {
        let request = TestUserRequest {
            username: name.into(),
            oauth_id: None,
            moderator: false,
            trusted: true,
            kudos: 100_000.0,
        };
        let anonymous = anonymous.clone();
        async move { anonymous.create_test_user(&request).await.unwrap().api_key }
    };
    let requester = Client::new(&server.root, key("requester").await);
    let image = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(webp(64, 64, [5, 6, 7], [8, 9, 10]))
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let client = Client::new(&server.root, key(&format!("owner-{w}")).await);
        workers.push(tokio::spawn(worker(
            client,
            format!("crash-worker-{w}"),
            seen.clone(),
            stop.clone(),
            image.clone(),
        )));
    }

    // The client submits 120 requests while the coordinator is killed three times.
    let submitter = {
        let requester = requester.clone();
        tokio::spawn(async move {
            let mut acknowledged = HashMap::new();
            for i in 0..120u32 {
                // Each attempt has its own prompt: an attempt whose answer a crash swallowed may
                // still exist, and its images must not be mistaken for the acknowledged one's.
                for attempt in 0.. {
                    let prompt = format!("crash {i} attempt {attempt}");
                    let mut request = small_request(&prompt, 1 + i % 3, false);
                    request.params.steps = Some(4);
                    (request.params.width, request.params.height) = (64, 64); // the images sent
                    match requester.generate_async(&request).await {
                        Ok(accepted) => {
                            acknowledged.insert(accepted.id.unwrap(), (1 + i % 3, prompt));
                            break;
                        }
                        Err(e)
                            if e.rc() == Some("TooManyPrompts")
                                || matches!(e, horde_client::ClientError::Transport(_)) =>
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        Err(e) => panic!("request {i}: {e}"),
                    }
                }
            }
            acknowledged
        })
    };
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(700 + 400 * round)).await;
        server.kill_9();
        server = ServerProcess::start(dir.path(), &args, &env);
    }
    let acknowledged = submitter.await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    for (id, (n, _)) in &acknowledged {
        loop {
            let status = retrying(|| requester.status(id))
                .await
                .expect("every acknowledged request survives");
            if status.check.done {
                assert!(!status.check.faulted, "{id} faulted");
                assert_eq!(
                    status.generations.len() as u32,
                    *n,
                    "{id} got all its images"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} did not finish: {:?}",
                status.check
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let unique: HashSet<&String> = seen.handed_out.iter().collect();
    assert_eq!(
        unique.len(),
        seen.handed_out.len(),
        "a job was handed out twice"
    );
    let mut delivered = HashSet::new();
    for id in acknowledged.keys() {
        for generation in requester.status(id).await.unwrap().generations {
            delivered.insert(generation.id);
        }
    }
    let acknowledged_prompts: HashSet<&String> = acknowledged.values().map(|(_, p)| p).collect();
    let mut checked = 0;
    for (job, prompt) in &seen.accepted_results {
        // Results for attempts the client never heard back about cannot be looked up by id.
        if acknowledged_prompts.contains(prompt) {
            assert!(
                delivered.contains(job),
                "the acknowledged result of job {job} was lost"
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} results checked");
    drop(server);
}
