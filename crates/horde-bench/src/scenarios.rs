//! The scenarios: each drives one coordinator for a bounded time and returns per-endpoint
//! figures. Loads are closed loops (each task sends its next call when the last answered), so
//! throughput is what the coordinator sustains at that concurrency.

use crate::api::{Api, Bodies, Population};
use crate::stats::{EndpointSummary, Recorder};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one scenario measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub endpoints: Vec<EndpointSummary>,
    /// The coordinator's RSS at the point the scenario names, in MB.
    pub rss_mb: Option<f64>,
}

impl Outcome {
    pub fn endpoint(&self, name: &str) -> Option<&EndpointSummary> {
        self.endpoints.iter().find(|e| e.endpoint == name)
    }
}

/// Runs `tasks` copies of `task` until `duration` has passed; merges what they recorded.
pub async fn run_tasks<F, Fut>(tasks: usize, duration: Duration, task: F) -> Vec<EndpointSummary>
where
    F: Fn(usize, Instant) -> Fut,
    Fut: Future<Output = Recorder> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + duration;
    let handles: Vec<_> = (0..tasks)
        .map(|i| tokio::spawn(task(i, deadline)))
        .collect();
    let mut merged = Recorder::default();
    for handle in handles {
        merged.merge(handle.await.expect("a load task"));
    }
    merged.summarise(started.elapsed())
}

/// `GET /status/heartbeat`: the HTTP floor, what the server costs with no work behind it.
pub async fn heartbeat(api: &Api, connections: usize, duration: Duration) -> Vec<EndpointSummary> {
    run_tasks(connections, duration, |_, deadline| {
        let api = api.clone();
        async move {
            let mut rec = Recorder::default();
            while Instant::now() < deadline {
                api.timed_status(&mut rec, "heartbeat", api.heartbeat(), 200)
                    .await;
            }
            rec
        }
    })
    .await
}

/// `POST /generate/async` from `connections` clients, each request written to the database
/// before its 202.
pub async fn submit_requests(
    api: &Api,
    people: &Population,
    bodies: &Arc<Bodies>,
    connections: usize,
    duration: Duration,
) -> Vec<EndpointSummary> {
    let keys = Arc::new(people.requesters.clone());
    run_tasks(connections, duration, |task, deadline| {
        let (api, keys, bodies) = (api.clone(), keys.clone(), bodies.clone());
        async move {
            let mut rec = Recorder::default();
            let mut n = task;
            while Instant::now() < deadline {
                let key = &keys[n % keys.len()];
                api.timed_status(&mut rec, "async", api.generate(key, &bodies), 202)
                    .await;
                n += connections;
            }
            rec
        }
    })
    .await
}

/// Queues `count` requests of `QUEUED_N` images as fast as `connections` clients can; returns
/// their ids.
pub async fn fill_queue(
    api: &Api,
    people: &Population,
    bodies: &Arc<Bodies>,
    count: usize,
    connections: usize,
) -> anyhow::Result<Vec<String>> {
    let keys = Arc::new(people.requesters.clone());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (api, keys, bodies, next) = (api.clone(), keys.clone(), bodies.clone(), next.clone());
        tasks.spawn(async move {
            let mut rec = Recorder::default();
            let mut ids = vec![];
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= count {
                    return Ok(ids);
                }
                let key = &keys[n % keys.len()];
                let request = api.generate_body(key, bodies.queued_request.clone());
                let Some(accepted) = api.timed(&mut rec, "async", request, 202).await else {
                    anyhow::bail!("a request was refused while filling the queue");
                };
                ids.extend(accepted["id"].as_str().map(String::from));
            }
        });
    }
    let mut ids = vec![];
    while let Some(done) = tasks.join_next().await {
        ids.extend(done??);
    }
    Ok(ids)
}

/// Registers `count` workers (their first pop) under the population's owner.
pub async fn register_workers(api: &Api, people: &Population, count: usize) -> anyhow::Result<()> {
    let (owner, run) = (people.owner.as_str(), people.run.as_str());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count.clamp(1, 32) {
        let (api, owner, run, next) = (
            api.clone(),
            owner.to_string(),
            run.to_string(),
            next.clone(),
        );
        tasks.spawn(async move {
            let mut rec = Recorder::default();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= count {
                    return Ok(());
                }
                let pop = api.pop(&owner, &worker_name(&run, n));
                if api.timed(&mut rec, "pop", pop, 200).await.is_none() {
                    anyhow::bail!("worker {} could not register", worker_name(&run, n));
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

pub fn worker_name(run: &str, n: usize) -> String {
    format!("w{n}-{run}")
}

/// `connections` tasks popping (and not submitting) as the registered `workers`, in turn; stops
/// after `duration` or `max_pops` pops.
pub async fn pop_loop(
    api: &Api,
    people: &Population,
    workers: usize,
    connections: usize,
    duration: Duration,
    max_pops: usize,
) -> Vec<EndpointSummary> {
    let owner = Arc::new(people.owner.clone());
    let popped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..workers)
            .map(|n| crate::api::pop_body(&worker_name(&people.run, n)))
            .collect(),
    );
    run_tasks(connections, duration, |task, deadline| {
        let (api, owner, popped, bodies) =
            (api.clone(), owner.clone(), popped.clone(), bodies.clone());
        async move {
            let mut rec = Recorder::default();
            let mut n = task;
            while Instant::now() < deadline
                && popped.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < max_pops
            {
                let pop = api.pop_with(&owner, bodies[n % workers].clone());
                api.timed_status(&mut rec, "pop", pop, 200).await;
                n += connections;
            }
            rec
        }
    })
    .await
}

/// The realistic mix: `workers` simulated workers pop, and when they get a job submit a real
/// WebP after `work` (else wait `idle` before the next pop); `clients` submit a request each and
/// poll `check` every `poll` until it is done.
pub struct Mix {
    pub workers: usize,
    pub clients: usize,
    pub work: Duration,
    pub idle: Duration,
    pub poll: Duration,
}

pub async fn mixed(
    api: &Api,
    people: &Population,
    bodies: &Arc<Bodies>,
    mix: &Mix,
    duration: Duration,
) -> Vec<EndpointSummary> {
    let keys = Arc::new(people.requesters.clone());
    let owner = Arc::new(people.owner.clone());
    let run = Arc::new(people.run.clone());
    let (workers, work, idle, poll) = (mix.workers, mix.work, mix.idle, mix.poll);
    run_tasks(mix.workers + mix.clients, duration, |task, deadline| {
        let (api, keys, owner, bodies, run) = (
            api.clone(),
            keys.clone(),
            owner.clone(),
            bodies.clone(),
            run.clone(),
        );
        async move {
            let mut rec = Recorder::default();
            if task < workers {
                while Instant::now() < deadline {
                    let pop = api.pop(&owner, &worker_name(&run, task));
                    let job = api.timed(&mut rec, "pop", pop, 200).await;
                    match job.filter(|j| j["id"].is_string()) {
                        Some(job) => {
                            tokio::time::sleep(work).await;
                            let submit = api.submit(&owner, &job, &bodies);
                            api.timed(&mut rec, "submit", submit, 200).await;
                        }
                        None => tokio::time::sleep(idle).await,
                    }
                }
            } else {
                let key = &keys[task % keys.len()];
                while Instant::now() < deadline {
                    let accepted = api
                        .timed(&mut rec, "async", api.generate(key, &bodies), 202)
                        .await;
                    let Some(id) = accepted.and_then(|a| a["id"].as_str().map(String::from)) else {
                        tokio::time::sleep(poll).await;
                        continue;
                    };
                    while Instant::now() < deadline {
                        tokio::time::sleep(poll).await;
                        let check = api.timed(&mut rec, "check", api.check(&id), 200).await;
                        if check.is_some_and(|c| c["done"] == true) {
                            break;
                        }
                    }
                }
            }
            rec
        }
    })
    .await
}
