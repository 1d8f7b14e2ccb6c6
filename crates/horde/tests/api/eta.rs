//! Queue position and wait time against a simulation: workers of known speed (HTTP clients that
//! take as long per job as their speed says) serve a queue, and the wait `check` estimates for
//! the last request is compared with the wait observed.

use crate::helpers::*;
use horde_client::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 512×512 at 20 steps: 5.24288 megapixelsteps a job.
const STEPS: u32 = 20;
const JOB_MPS: f64 = 512.0 * 512.0 * STEPS as f64 / 1e6;

/// A worker that takes `JOB_MPS / speed` seconds per job; returns the jobs it did.
fn simulated_worker(
    owner: Client,
    name: String,
    speed_mps: f64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let image = webp(512, 512, [10, 20, 30], [40, 50, 60]);
        let pop = pop_request(&name);
        let mut done = 0;
        while !stop.load(Ordering::SeqCst) {
            let job = owner.pop(&pop).await.unwrap();
            if job.id.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            tokio::time::sleep(Duration::from_secs_f64(JOB_MPS / speed_mps)).await;
            owner.submit(&submit_inline(&job, &image)).await.unwrap();
            done += 1;
        }
        done
    })
}

fn request(prompt: &str) -> horde_api::image::ImageRequest {
    let mut request = small_request(prompt, 1, false);
    request.params.steps = Some(STEPS);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_estimated_wait_is_within_half_again_of_the_observed_one() {
    let app = spawn_app_with(|c| c.workers.reliability_hold_secs = 0).await;
    let (requester, _) = app.user("requester", 100_000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let stop = Arc::new(AtomicBool::new(false));
    // 1, 2 and 3 megapixelsteps per second: jobs of 5.2, 2.6 and 1.7 seconds.
    let workers: Vec<_> = [1.0, 2.0, 3.0]
        .iter()
        .enumerate()
        .map(|(i, speed)| simulated_worker(owner.clone(), format!("sim-{i}"), *speed, stop.clone()))
        .collect();

    // Warm up: every worker finishes a job, so the coordinator has measured each speed.
    let warm: Vec<String> = futures_ids(&requester, "warm-up", 6).await;
    for id in &warm {
        wait_done_secs(&requester, id, 60).await;
    }

    let queued = futures_ids(&requester, "queued", 12).await;
    let last = queued.last().unwrap();
    let check = requester.check(last).await.unwrap();
    let estimated = check.wait_time as f64;
    let since = Instant::now();
    assert!(
        check.queue_position >= 8,
        "most of the queue is ahead of the last request: {check:?}"
    );
    let first = requester.check(&queued[0]).await.unwrap();
    assert!(first.queue_position < check.queue_position);

    wait_done_secs(&requester, last, 120).await;
    let observed = since.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let ratio = estimated / observed;
    eprintln!("estimated {estimated} s, observed {observed:.1} s, ratio {ratio:.2}");
    assert!(
        (1.0 / 1.5..=1.5).contains(&ratio),
        "estimated {estimated} s, observed {observed:.1} s"
    );
    app.stop().await;
}

async fn futures_ids(client: &Client, prompt: &str, count: usize) -> Vec<String> {
    let mut ids = vec![];
    for i in 0..count {
        let answer = client
            .generate_async(&request(&format!("{prompt} {i}")))
            .await
            .unwrap();
        ids.push(answer.id.unwrap());
    }
    ids
}

async fn wait_done_secs(client: &Client, id: &str, limit: u64) {
    let started = Instant::now();
    while !client.check(id).await.unwrap().done {
        assert!(
            started.elapsed() < Duration::from_secs(limit),
            "{id} not done in {limit} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
