//! Chaos: a real coordinator, 20 simulated workers over the real HTTP API — some die holding a
//! job, some stall past their deadline, some report faults — and 500 requests of 1 to 4 images,
//! some cancelled midway. Every request ends done, no image is delivered twice, nothing of a
//! cancelled request is handed out after its cancel, and the kudos add up.
//!
//! The same with two and three coordinators sharing one PostgreSQL database: every call of
//! every worker and client goes to a coordinator picked at random, as behind a load balancer.

use crate::helpers::*;
use horde_api::image::{SubmitRequest, SubmitState};
use horde_client::Client;
use horde_store::ledger::Kind;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WORKERS: usize = 20;
const REQUESTS: usize = 500;
const CANCELLED: usize = 20;

#[derive(Default)]
struct Record {
    /// Job ids the coordinator accepted a result for, with the reward it paid.
    delivered: HashMap<String, f64>,
    /// Results accepted from each worker.
    completed_by: HashMap<String, u64>,
    /// (prompt, when its pop was sent) of every job handed out.
    handed_out: Vec<(String, Instant)>,
    double_deliveries: Vec<String>,
}

enum Behaviour {
    Deliver,
    Fault,
    Stall,
    Die,
}

/// The same user's client on each coordinator; each call goes to one picked at random.
#[derive(Clone)]
struct Spread(Vec<Client>);

impl Spread {
    fn on(apps: &[TestApp], client: &Client) -> Spread {
        Spread(
            apps.iter()
                .map(|app| client.with_base_url(&app.root))
                .collect(),
        )
    }

    fn any(&self) -> &Client {
        &self.0[rand::rng().random_range(0..self.0.len())]
    }
}

async fn simulated_worker(
    client: Spread,
    name: String,
    seed: u64,
    dies_after: Option<usize>,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    image: Arc<String>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut pop = pop_request(&name);
    pop.amount = 2;
    pop.max_pixels = 1024 * 1024;
    let mut jobs_seen = 0;
    while !stop.load(Ordering::SeqCst) {
        // A job is handed out no earlier than its pop was sent.
        let asked = Instant::now();
        let Ok(answer) = client.any().pop(&pop).await else {
            continue;
        };
        let Some(_) = &answer.id else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let prompt = answer.payload["prompt"].as_str().unwrap().to_string();
        record.lock().unwrap().handed_out.push((prompt, asked));
        jobs_seen += 1;
        let behaviour = match (dies_after, rng.random_range(0..100)) {
            (Some(limit), _) if jobs_seen >= limit => Behaviour::Die,
            (_, 0..5) => Behaviour::Fault,
            (_, 5..10) => Behaviour::Stall,
            _ => Behaviour::Deliver,
        };
        if matches!(behaviour, Behaviour::Die) {
            return; // vanishes holding its jobs
        }
        if matches!(behaviour, Behaviour::Stall) {
            tokio::time::sleep(Duration::from_millis(4500)).await;
        }
        for id in &answer.ids {
            let submit = SubmitRequest {
                id: id.clone(),
                generation: (!matches!(behaviour, Behaviour::Fault))
                    .then(|| image.as_str().to_string()),
                state: if matches!(behaviour, Behaviour::Fault) {
                    SubmitState::Faulted
                } else {
                    SubmitState::Ok
                },
                seed: None,
                censored: false,
                gen_metadata: vec![],
            };
            match client.any().submit(&submit).await {
                Ok(reward) if !matches!(behaviour, Behaviour::Fault) => {
                    let mut record = record.lock().unwrap();
                    if record.delivered.insert(id.clone(), reward.reward).is_some() {
                        record.double_deliveries.push(id.clone());
                    }
                    *record.completed_by.entry(name.clone()).or_default() += 1;
                }
                Ok(_) => {}
                // A job past its deadline (a stalled worker's, or any on a loaded machine) was
                // taken back: AbortedGen, and no pay. Nothing else may be refused.
                Err(e) => assert_eq!(e.rc(), Some("AbortedGen"), "{name}: unexpected refusal {e}"),
            }
        }
    }
}

/// Short deadlines and sweeps; nothing expires during the test.
fn chaos_settings(c: &mut horde_server::config::ServerConfig) {
    c.jobs.deadline_floor_secs = 3;
    c.jobs.deadline_ceiling_secs = 3;
    c.jobs.max_restarts = 12;
    c.requests.sweep_interval_secs = 1;
    c.requests.idle_expiry_secs = 3600;
    c.requests.retention_secs = 3600;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_finishes_despite_dying_stalling_and_faulting_workers() {
    let app = spawn_app_with(chaos_settings).await;
    run_chaos(std::slice::from_ref(&app)).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: .ci/run runs it with HORDE_TEST_POSTGRES_URL"]
async fn two_coordinators_on_one_postgresql_survive_the_chaos() {
    let apps = spawn_cluster(2, chaos_settings).await;
    run_chaos(&apps).await;
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: .ci/run runs it with HORDE_TEST_POSTGRES_URL"]
async fn three_coordinators_on_one_postgresql_survive_the_chaos() {
    let apps = spawn_cluster(3, chaos_settings).await;
    run_chaos(&apps).await;
    for app in apps {
        app.stop().await;
    }
}

/// Each coordinator's status of request `id` and the database's copy of it, in words.
async fn views_of_request(apps: &[TestApp], client: &Spread, id: &str) -> String {
    let mut views = Vec::new();
    for (k, coordinator) in client.0.iter().enumerate() {
        let s = coordinator.status(id).await.unwrap();
        let c = &s.check;
        views.push(format!(
            "coordinator {k}: {} images (finished {}, processing {}, restarted {}, waiting {}, done {})",
            s.generations.len(),
            c.finished,
            c.processing,
            c.restarted,
            c.waiting,
            c.done
        ));
    }
    let ids = [id.parse().unwrap()];
    let stored = apps[0]
        .state
        .store
        .load_requests_by_id::<horde_core::Image>(&ids);
    for request in stored.await.unwrap() {
        let states: Vec<&str> = request.jobs.iter().map(|j| j.state.as_str()).collect();
        views.push(format!(
            "stored: version {}, jobs {states:?}",
            request.version
        ));
    }
    views.join("; ")
}

async fn run_chaos(apps: &[TestApp]) {
    let app = &apps[0];
    let mut requesters = Vec::new();
    let mut requester_ids = Vec::new();
    for i in 0..25 {
        let (client, id) = app.user(&format!("requester-{i}"), 10_000.0).await;
        requesters.push(Spread::on(apps, &client));
        requester_ids.push(id);
    }
    let mut transfers = 0;
    let image = Arc::new({
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(webp(64, 64, [10, 20, 30], [40, 50, 60]))
    });
    let record = Arc::new(Mutex::new(Record::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut owners = Vec::new();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (owner, _) = app.user(&format!("owner-{w}"), 0.0).await;
        owners.push(owner.clone());
        let owner = Spread::on(apps, &owner);
        let dies_after = (w < 3).then_some(15 + w * 5);
        workers.push(tokio::spawn(simulated_worker(
            owner,
            format!("chaos-worker-{w}"),
            w as u64,
            dies_after,
            record.clone(),
            stop.clone(),
            image.clone(),
        )));
    }

    // Requests go in as fast as each user's concurrency limit allows (429 TooManyPrompts
    // means: try again shortly, as clients do); some are cancelled while workers are at them.
    let mut ids: Vec<(usize, String, Spread)> = Vec::new();
    let mut cancelled_at: HashMap<String, Instant> = HashMap::new();
    for i in 0..REQUESTS {
        let mut request = small_request(&format!("request {i}"), 1 + (i % 4) as u32, false);
        request.params.steps = Some(4);
        (request.params.width, request.params.height) = (64, 64); // the images sent
        let client = requesters[i % requesters.len()].clone();
        let id = loop {
            match client.any().generate_async(&request).await {
                Ok(accepted) => break accepted.id.unwrap(),
                Err(e) if e.rc() == Some("TooManyPrompts") => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("request {i}: {e}"),
            }
        };
        ids.push((i, id, client));
        // Kudos also change hands among requesters while their requests run (a mixed ledger);
        // a quick transfer back is refused by the public rule, which is fine here.
        if i % 10 == 5 {
            let (from, to) = (i % requesters.len(), (i * 7 + 1) % requesters.len());
            if from != to {
                match requesters[from]
                    .any()
                    .transfer_kudos(&format!("requester-{to}#{}", requester_ids[to]), 3.0)
                    .await
                {
                    Ok(_) => transfers += 1,
                    Err(e) => assert_eq!(e.rc(), Some("TooFastKudosTransfers"), "{e}"),
                }
            }
        }
        if i % (REQUESTS / CANCELLED) == 3 {
            let (j, victim, owner) = &ids[i - 2];
            owner.any().cancel(victim).await.unwrap();
            cancelled_at.insert(format!("request {j}"), Instant::now());
        }
    }

    let deadline = Instant::now() + Duration::from_secs(240);
    let mut pending: Vec<_> = ids.clone();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for entry in pending {
            if !entry.2.any().check(&entry.1).await.unwrap().done {
                still.push(entry);
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(
        pending.is_empty(),
        "{} requests never finished",
        pending.len()
    );

    let record = std::mem::take(&mut *record.lock().unwrap());
    assert!(
        record.double_deliveries.is_empty(),
        "delivered twice: {:?}",
        record.double_deliveries
    );
    for (prompt, at) in &record.handed_out {
        if let Some(cancelled) = cancelled_at.get(prompt) {
            assert!(at < cancelled, "{prompt} was handed out after its cancel");
        }
    }
    let mut images_seen = HashSet::new();
    for (i, id, client) in &ids {
        let status = client.any().status(id).await.unwrap();
        let cancelled = cancelled_at.contains_key(&format!("request {i}"));
        assert!(
            !status.check.faulted,
            "request {i} faulted though workers remained"
        );
        if !cancelled && status.generations.len() != 1 + i % 4 {
            // Seen in CI before a status compared its copy with the stored version (a listener
            // lagging a second under load: 2 of 3 images here, 3 everywhere a moment later):
            // say what each coordinator and the database hold.
            let views = views_of_request(apps, client, id).await;
            panic!(
                "request {i} got {} of its {} images; {views}",
                status.generations.len(),
                1 + i % 4
            );
        }
        for generation in &status.generations {
            assert!(
                images_seen.insert(generation.id.clone()),
                "image {} returned twice",
                generation.id
            );
            assert!(
                record.delivered.contains_key(&generation.id),
                "image {} was never accepted from a worker",
                generation.id
            );
        }
    }

    // Reputations: each worker's stored count of completed jobs is what it delivered, however
    // many coordinators counted them.
    for (name, delivered) in &record.completed_by {
        let stored = app.state.store.worker_by_name(name).await.unwrap().unwrap();
        assert_eq!(stored.reputation.completed, *delivered, "{name}");
    }
    assert_eq!(record.completed_by.len(), WORKERS, "every worker delivered");

    // Kudos: owners hold exactly the rewards they were paid; requesters paid exactly what the
    // coordinator charged their requests.
    let paid: f64 = record.delivered.values().sum();
    let mut earned = 0.0;
    for owner in &owners {
        earned += owner.find_user().await.unwrap().kudos;
    }
    assert!(
        (paid - earned).abs() < 1e-6,
        "rewards paid {paid} vs owners' kudos {earned}"
    );
    let charged: f64 = app.state.store.charged_kudos().await.unwrap();
    let mut spent = 0.0;
    for requester in &requesters {
        spent += 10_000.0 - requester.any().find_user().await.unwrap().kudos;
    }
    assert!(
        (charged - spent).abs() < 1e-6,
        "charged {charged} vs requesters' spending {spent}"
    );
    assert!(charged > 0.0 && paid > 0.0);

    // The ledger: every balance is the sum of its rows, and what requesters paid is what
    // workers earned plus what the horde kept plus what was refunded.
    let store = &app.state.store;
    assert_eq!(store.ledger_discrepancies().await.unwrap(), vec![]);
    let totals = store.ledger_totals().await.unwrap();
    assert!(transfers > 10, "{transfers} transfers made");
    assert_eq!(
        totals.users(Kind::Transfer),
        0.0,
        "transfers only move kudos"
    );
    let paid_by_requesters = -totals.users(Kind::Spend);
    let earned = totals.users(Kind::Earn);
    let refunded = totals.users(Kind::Refund);
    let kept_by_horde = totals.horde(Kind::Burn) + totals.horde(Kind::Refund);
    assert!(
        (paid_by_requesters - refunded - charged).abs() < 1e-6,
        "net payments {paid_by_requesters} - {refunded} vs charges {charged}"
    );
    assert!(
        (earned - paid).abs() < 1e-6,
        "ledger earnings {earned} vs rewards paid {paid}"
    );
    assert!(
        (paid_by_requesters - (earned + refunded + kept_by_horde)).abs() < 1e-6,
        "paid {paid_by_requesters} = earned {earned} + refunded {refunded} + kept {kept_by_horde}"
    );
}
