//! `horde bench`: drives a coordinator over real HTTP on loopback and measures it.
//!
//! Each scenario gets a fresh coordinator (a `horde serve` child on its own data directory, so
//! its RSS can be read and no scenario inherits another's queue), populates it through the API
//! (a moderator, requesters, a worker owner), loads it with closed-loop tasks for a bounded time,
//! and reports per-endpoint throughput and p50/p99/p999 latency. The ratios BENCHMARKS.md tracks are
//! computed from scenarios run side by side in one invocation.
//!
//! The load generator shares the machine with the coordinator (2 cores here), so absolute
//! figures are lower than a separate load machine would show; the ratios compare like with like.

pub mod api;
pub mod coordinator;
pub mod scenarios;
pub mod stats;
pub mod waiters;

use api::{Api, Bodies};
use coordinator::{Coordinator, Deployment};
use scenarios::{Mix, Outcome};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How big a run is.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Seconds each measured phase lasts.
    pub secs: f64,
    /// Queue sizes compared for pop latency (small, large).
    pub queued: (usize, usize),
    /// Registered worker counts compared for pop throughput (few, many).
    pub workers: (usize, usize),
    /// Connections of the throughput scenarios.
    pub connections: usize,
    /// Connections of the submitters' collapse check.
    pub many_connections: usize,
    /// Clients waiting (`?wait=60`) while pops are measured (`pop-waiters`).
    pub waiters: usize,
}

impl Sizes {
    /// The sizes BENCHMARKS.md records: 100 000 queued requests, 10 000 workers, 5-s phases.
    pub fn full() -> Sizes {
        Sizes {
            secs: 5.0,
            queued: (1_000, 100_000),
            workers: (100, 10_000),
            connections: 50,
            many_connections: 500,
            waiters: 5_000,
        }
    }

    /// Seconds, not minutes: for CI, so the harness cannot rot.
    pub fn smoke() -> Sizes {
        Sizes {
            secs: 0.5,
            queued: (50, 500),
            workers: (10, 100),
            connections: 8,
            many_connections: 32,
            waiters: 50,
        }
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.secs)
    }
}

/// Where the coordinators come from.
#[derive(Debug, Clone)]
pub enum Target {
    /// Launch `horde serve` from `binary`, fresh for each scenario: one on SQLite, or
    /// `coordinators` processes sharing a new database on the PostgreSQL server `postgres`.
    Launch {
        binary: PathBuf,
        postgres: Option<String>,
        coordinators: usize,
    },
    /// Use the coordinators at these URLs for every scenario (no RSS; state accumulates).
    Urls(Vec<String>),
}

/// Every scenario name, in the order `all` runs them.
pub const SCENARIOS: [&str; 7] = [
    "heartbeat",
    "pop-empty",
    "async",
    "pop-queued",
    "pop-workers",
    "mixed",
    "pop-waiters",
];

/// Runs the named scenarios (all when empty), printing each as it finishes.
pub async fn run(target: &Target, sizes: &Sizes, names: &[String]) -> anyhow::Result<Vec<Outcome>> {
    let bodies = Arc::new(Bodies::new()?);
    let wanted = |name: &str| names.is_empty() || names.iter().any(|n| n == name || n == "all");
    let mut outcomes = vec![];
    for name in SCENARIOS.into_iter().filter(|n| wanted(n)) {
        for outcome in run_one(target, sizes, name, &bodies).await? {
            print_outcome(&outcome);
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

async fn fresh(target: &Target) -> anyhow::Result<Deployment> {
    fresh_with(target, &[]).await
}

/// [`fresh`] with settings `envs` (`HORDE_…` variables) for the coordinators it launches.
async fn fresh_with(target: &Target, envs: &[(&str, &str)]) -> anyhow::Result<Deployment> {
    let members = match target {
        Target::Launch {
            binary,
            postgres: None,
            ..
        } => vec![Coordinator::launch_with(binary, None, envs).await?],
        Target::Launch {
            binary,
            postgres: Some(server),
            coordinators,
        } => {
            let name = format!("horde_bench_{}", uuid::Uuid::new_v4().simple());
            let url = horde_store::admin::create_postgres_database(server, &name).await?;
            let mut members = vec![];
            for _ in 0..(*coordinators).max(1) {
                members.push(Coordinator::launch_with(binary, Some(&url), envs).await?);
            }
            members
        }
        Target::Urls(urls) => urls.iter().map(|url| Coordinator::at(url)).collect(),
    };
    Ok(Deployment { members })
}

async fn run_one(
    target: &Target,
    sizes: &Sizes,
    name: &str,
    bodies: &Arc<Bodies>,
) -> anyhow::Result<Vec<Outcome>> {
    let d = sizes.duration();
    let c = sizes.connections;
    let outcome = |name: String, endpoints, rss_mb| Outcome {
        name,
        endpoints,
        rss_mb,
    };
    Ok(match name {
        "heartbeat" => {
            let mut out = vec![];
            for connections in [c, sizes.many_connections] {
                let co = fresh(target).await?;
                let api = Api::new(&co.urls());
                let figures = scenarios::heartbeat(&api, connections, d).await;
                out.push(outcome(
                    format!("heartbeat c={connections}"),
                    figures,
                    co.rss_mb(),
                ));
            }
            out
        }
        "pop-empty" => {
            let co = fresh(target).await?;
            let api = Api::new(&co.urls());
            let people = api.populate(1, c as u32).await?;
            scenarios::register_workers(&api, &people, c).await?;
            let pops = scenarios::pop_loop(&api, &people, c, c, d, usize::MAX).await;
            vec![outcome(format!("pop-empty c={c}"), pops, co.rss_mb())]
        }
        "async" => {
            let mut out = vec![];
            for connections in [10, c, sizes.many_connections] {
                let co = fresh(target).await?;
                let api = Api::new(&co.urls());
                // Enough requesters (500 waiting images each) that none reaches its limit at
                // up to 40 000 accepted requests a second.
                let waiting = (40_000.0 * sizes.secs) as usize;
                let people = api.populate(requesters_for(waiting), 1).await?;
                let figures =
                    scenarios::submit_requests(&api, &people, bodies, connections, d).await;
                out.push(outcome(
                    format!("async c={connections}"),
                    figures,
                    co.rss_mb(),
                ));
            }
            out
        }
        "pop-queued" => {
            let mut out = vec![];
            for queued in [sizes.queued.0, sizes.queued.1] {
                let co = fresh(target).await?;
                let api = Api::new(&co.urls());
                let images = queued * api::QUEUED_N;
                let people = api.populate(requesters_for(images), c as u32).await?;
                scenarios::register_workers(&api, &people, c).await?;
                scenarios::fill_queue(&api, &people, bodies, queued, 64).await?;
                let rss = co.rss_mb();
                // At most half the images are taken, so every request stays queued.
                let pops = scenarios::pop_loop(&api, &people, c, c, d, images / 2).await;
                out.push(outcome(format!("pop-queued q={queued}"), pops, rss));
            }
            out
        }
        "pop-workers" => {
            let mut out = vec![];
            for workers in [sizes.workers.0, sizes.workers.1] {
                let co = fresh(target).await?;
                let api = Api::new(&co.urls());
                let people = api.populate(1, workers as u32).await?;
                scenarios::register_workers(&api, &people, workers).await?;
                let pops = scenarios::pop_loop(&api, &people, workers, c, d, usize::MAX).await;
                out.push(outcome(
                    format!("pop-workers w={workers}"),
                    pops,
                    co.rss_mb(),
                ));
            }
            out
        }
        "mixed" => {
            let co = fresh(target).await?;
            let api = Api::new(&co.urls());
            let mix = Mix {
                workers: c,
                clients: c,
                work: Duration::from_millis(200),
                idle: Duration::from_millis(500),
                poll: Duration::from_millis(250),
            };
            let people = api
                .populate(requesters_for(c * 500), mix.workers as u32)
                .await?;
            let figures = scenarios::mixed(&api, &people, bodies, &mix, d).await;
            vec![outcome(
                format!("mixed w={} c={}", mix.workers, mix.clients),
                figures,
                co.rss_mb(),
            )]
        }
        "pop-waiters" => pop_with_waiters(target, sizes, bodies).await?,
        other => anyhow::bail!(
            "no scenario named {other}; they are: {}",
            SCENARIOS.join(", ")
        ),
    })
}

/// Requesters needed to hold `waiting` images at 500 each.
fn requesters_for(waiting: usize) -> usize {
    waiting.div_ceil(500).max(1)
}

fn print_outcome(o: &Outcome) {
    let rss = o
        .rss_mb
        .map_or(String::new(), |r| format!(", coordinator RSS {r:.0} MB"));
    println!("\n{}{rss}", o.name);
    println!(
        "  {:<10} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9}",
        "endpoint", "ok", "errors", "req/s", "p50 ms", "p99 ms", "p999 ms"
    );
    for e in &o.endpoints {
        println!(
            "  {:<10} {:>9} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
            e.endpoint, e.ok, e.errors, e.per_sec, e.p50_ms, e.p99_ms, e.p999_ms
        );
    }
}

/// One of the ratios BENCHMARKS.md tracks: its value and its target.
#[derive(Debug, Clone)]
pub struct Ratio {
    pub what: &'static str,
    pub value: f64,
    pub target: &'static str,
    pub met: bool,
}

/// The ratios that the outcomes allow.
pub fn ratios(outcomes: &[Outcome], sizes: &Sizes) -> Vec<Ratio> {
    let find = |name: String, endpoint: &str| {
        outcomes
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.endpoint(endpoint))
            .cloned()
    };
    let c = sizes.connections;
    let mut out = vec![];
    let mut push = |what, value: Option<f64>, target, met: fn(f64) -> bool| {
        if let Some(value) = value.filter(|v| v.is_finite()) {
            out.push(Ratio {
                what,
                value,
                target,
                met: met(value),
            });
        }
    };
    let (small, large) = sizes.queued;
    let p99 = |q| find(format!("pop-queued q={q}"), "pop").map(|e| e.p99_ms);
    push(
        "pop p99, large queue ÷ small queue",
        p99(large).zip(p99(small)).map(|(a, b)| a / b),
        "≤ 1.5",
        |v| v <= 1.5,
    );
    let (few, many) = sizes.workers;
    let rate = |w| find(format!("pop-workers w={w}"), "pop").map(|e| e.per_sec);
    push(
        "pop req/s, many workers ÷ few",
        rate(many).zip(rate(few)).map(|(a, b)| a / b),
        "≥ 0.8",
        |v| v >= 0.8,
    );
    let floor = find(format!("heartbeat c={c}"), "heartbeat").map(|e| e.per_sec);
    let empty = find(format!("pop-empty c={c}"), "pop").map(|e| e.per_sec);
    push(
        "pop req/s (empty queue) ÷ heartbeat req/s",
        empty.zip(floor).map(|(a, b)| a / b),
        "≥ 0.5",
        |v| v >= 0.5,
    );
    let submits = find(format!("async c={c}"), "async").map(|e| e.per_sec);
    push(
        "async ÷ heartbeat req/s, both at fewer connections",
        submits.zip(floor).map(|(a, b)| a / b),
        "≥ 0.25",
        |v| v >= 0.25,
    );
    let many = sizes.many_connections;
    let submits_many = find(format!("async c={many}"), "async").map(|e| e.per_sec);
    let floor_many = find(format!("heartbeat c={many}"), "heartbeat").map(|e| e.per_sec);
    push(
        "async ÷ heartbeat req/s, both at many connections",
        submits_many.zip(floor_many).map(|(a, b)| a / b),
        "≥ 0.25",
        |v| v >= 0.25,
    );
    let best_of = |name: &str, endpoint: &str| {
        outcomes
            .iter()
            .filter(|o| o.name.starts_with(name))
            .filter_map(|o| o.endpoint(endpoint).map(|e| e.per_sec))
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    push(
        "async ÷ heartbeat req/s, each at its best",
        best_of("async c=", "async")
            .zip(best_of("heartbeat c=", "heartbeat"))
            .map(|(a, b)| a / b),
        "≥ 0.25",
        |v| v >= 0.25,
    );
    let rss = outcomes
        .iter()
        .find(|o| o.name == format!("pop-queued q={large}"))
        .and_then(|o| o.rss_mb);
    push(
        "coordinator RSS (MB) with the large queue",
        rss,
        "≤ 300",
        |v| v <= 300.0,
    );
    let at = |k: usize| find(format!("async c={k}"), "async").map(|e| e.per_sec);
    push(
        "async req/s at many connections ÷ best",
        at(sizes.many_connections)
            .zip(best_of("async c=", "async"))
            .map(|(a, b)| a / b),
        "≥ 0.9",
        |v| v >= 0.9,
    );
    out
}

pub fn print_ratios(ratios: &[Ratio]) {
    println!("\nratios");
    for r in ratios {
        let verdict = if r.met { "met" } else { "MISSED" };
        println!(
            "  {:<48} {:>8.3}  target {:<7} {verdict}",
            r.what, r.value, r.target
        );
    }
}

/// What the coordinator of `pop-waiters` is started with: room for every waiter among its
/// connections and its waiters.
const WAITER_SETTINGS: [(&str, &str); 2] = [
    ("HORDE_API__MAX_CONNECTIONS", "16000"),
    ("HORDE_API__MAX_WAITERS", "15000"),
];

/// `pop-waiters`: the pop rate against a queue of `sizes.queued.1 / 10` requests without waiting
/// clients, with `sizes.waiters` clients waiting (`?wait=60`) on those requests, and without
/// again (the rate without is the mean of both, so the queue's shrinking counts for neither
/// side); the coordinator's RSS without and with them.
async fn pop_with_waiters(
    target: &Target,
    sizes: &Sizes,
    bodies: &Arc<Bodies>,
) -> anyhow::Result<Vec<Outcome>> {
    // A tenth of the large queue (10 000 requests, 100 000 images at full size), so that a
    // sixth of its images lasts each phase at the pop rates seen here.
    let (d, c, queued) = (sizes.duration(), sizes.connections, sizes.queued.1 / 10);
    let co = fresh_with(target, &WAITER_SETTINGS).await?;
    let api = Api::new(&co.urls());
    let images = queued * api::QUEUED_N;
    let people = api.populate(requesters_for(images), c as u32).await?;
    scenarios::register_workers(&api, &people, c).await?;
    let ids = scenarios::fill_queue(&api, &people, bodies, queued, 64).await?;
    // Each phase takes at most a sixth of the images, so every request stays queued.
    let most = images / 6;
    let rss_without = co.rss_mb();
    let before = scenarios::pop_loop(&api, &people, c, c, d, most).await;
    let open_files = waiters::raise_open_file_limit();
    let held = waiters::Waiters::open(&co.urls()[0], &ids, sizes.waiters).await?;
    let rss_with = co.rss_mb();
    let during = scenarios::pop_loop(&api, &people, c, c, d, most).await;
    let (answered, failed) = (
        held.answered.load(std::sync::atomic::Ordering::Relaxed),
        held.failed.load(std::sync::atomic::Ordering::Relaxed),
    );
    held.close().await;
    let after = scenarios::pop_loop(&api, &people, c, c, d, most).await;
    let rate = |figures: &[stats::EndpointSummary]| {
        figures
            .iter()
            .find(|e| e.endpoint == "pop")
            .map_or(0.0, |e| e.per_sec)
    };
    let without = (rate(&before) + rate(&after)) / 2.0;
    println!(
        "\npop-waiters: {} waiters held (open-file limit {open_files}; {answered} waits answered, {failed} failed meanwhile); pop req/s with ÷ without {:.3} (target ≥ 0.9); coordinator RSS {} → {} MB, {} KB per waiter",
        sizes.waiters,
        rate(&during) / without.max(f64::MIN_POSITIVE),
        rss_without.map_or("?".into(), |r| format!("{r:.0}")),
        rss_with.map_or("?".into(), |r| format!("{r:.0}")),
        rss_without
            .zip(rss_with)
            .map_or("?".into(), |(a, b)| format!("{:.1}", (b - a) * 1024.0 / sizes.waiters as f64)),
    );
    anyhow::ensure!(failed == 0, "{failed} waits failed");
    let outcome = |name: String, endpoints, rss_mb| Outcome {
        name,
        endpoints,
        rss_mb,
    };
    Ok(vec![
        outcome("pop-waiters none, before".into(), before, rss_without),
        outcome(format!("pop-waiters w={}", sizes.waiters), during, rss_with),
        outcome("pop-waiters none, after".into(), after, co.rss_mb()),
    ])
}
