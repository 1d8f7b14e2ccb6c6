//! `GET /metrics`: read with a parser of the Prometheus text format, as a scraper reads it; the
//! counters move by exactly what was done, labelled by route template; the queue's gauges agree
//! with `/status/models` and `/status/performance`; the bearer token and the switch hold.

use crate::helpers::*;
use horde_api::image::SubmitState;
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};
use serde_json::{json, Value};

type Scrape = MetricsExposition<PrometheusType, PrometheusValue>;

/// `/metrics` of `app`, parsed; it must answer 200 in the text format's version 0.0.4.
async fn scrape(app: &TestApp) -> Scrape {
    let answer = http()
        .get(format!("{}/metrics", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(
        answer.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    parse(&answer.text().await.unwrap())
}

fn parse(text: &str) -> Scrape {
    parse_prometheus(text)
        .unwrap_or_else(|e| panic!("not the Prometheus text format: {e:?}\n{text}"))
}

/// The value of the series of `family` with exactly `labels` (a histogram's count), or 0 when
/// the series does not exist yet (a counter that never moved is not listed).
fn value(scrape: &Scrape, family: &str, labels: &[(&str, &str)]) -> f64 {
    let Some(family) = scrape.families.get(family) else {
        return 0.0;
    };
    let names = family.get_label_names();
    assert_eq!(names.len(), labels.len(), "the labels of {names:?}");
    let found = family.iter_samples().find(|sample| {
        let set = sample.get_labelset().unwrap();
        labels
            .iter()
            .all(|(name, value)| set.get_label_value(name) == Some(*value))
    });
    match found.map(|sample| &sample.value) {
        None => 0.0,
        Some(PrometheusValue::Counter(c)) => c.value.as_f64(),
        Some(PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n)) => n.as_f64(),
        Some(PrometheusValue::Histogram(h)) => h.count.unwrap_or(0) as f64,
        Some(PrometheusValue::Summary(s)) => s.count.unwrap_or(0) as f64,
    }
}

/// Every value `label` takes in `family`.
fn label_values(scrape: &Scrape, family: &str, label: &str) -> Vec<String> {
    scrape.families[family]
        .iter_samples()
        .filter_map(|s| {
            let set = s.get_labelset().unwrap();
            set.get_label_value(label).map(str::to_string)
        })
        .collect()
}

fn requests(scrape: &Scrape, endpoint: &str, method: &str, status: &str) -> f64 {
    value(
        scrape,
        "horde_http_requests_total",
        &[
            ("endpoint", endpoint),
            ("method", method),
            ("status", status),
        ],
    )
}

#[tokio::test]
async fn requests_are_counted_by_route_template_method_and_status() {
    let app = spawn_app().await;
    let before = scrape(&app).await;
    let http = http();
    let get = |path: &str| http.get(format!("{}{path}", app.root)).send();
    for _ in 0..2 {
        assert_eq!(get("/api/v2/status/heartbeat").await.unwrap().status(), 200);
    }
    let unknown = uuid::Uuid::new_v4();
    let check = get(&format!("/api/v2/generate/check/{unknown}")).await;
    assert_eq!(check.unwrap().status(), 404);
    assert_eq!(get("/no/such/page").await.unwrap().status(), 404);
    let refused = http
        .post(format!("{}/api/v2/generate/async", app.root))
        .header("apikey", horde_api::ANONYMOUS_API_KEY)
        .json(&json!({"prompt": "x", "params": {"width": 100}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let after = scrape(&app).await;

    let moved = |endpoint, method, status| {
        requests(&after, endpoint, method, status) - requests(&before, endpoint, method, status)
    };
    assert_eq!(moved("/api/v2/status/heartbeat", "GET", "200"), 2.0);
    assert_eq!(moved("/api/v2/generate/check/{id}", "GET", "404"), 1.0);
    assert_eq!(moved("unmatched", "GET", "404"), 1.0);
    assert_eq!(moved("/api/v2/generate/async", "POST", "400"), 1.0);
    // The first scrape, counted once answered.
    assert_eq!(moved("/metrics", "GET", "200"), 1.0);
    let seconds = "horde_http_request_duration_seconds";
    let timed = |scrape: &Scrape| {
        value(
            scrape,
            seconds,
            &[("endpoint", "/api/v2/status/heartbeat"), ("method", "GET")],
        )
    };
    assert_eq!(timed(&after) - timed(&before), 2.0);
    // Never the path a client sent: a label value per id would be unbounded.
    let endpoints = label_values(&after, "horde_http_requests_total", "endpoint");
    assert!(
        endpoints
            .iter()
            .all(|e| !e.contains(&unknown.to_string()) && e != "/no/such/page"),
        "{endpoints:?}"
    );
}

#[tokio::test]
async fn the_queue_gauges_agree_with_the_status_endpoints_per_model_and_overall() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let mut request = small_request("two models", 2, false);
    request.models = vec!["stable_diffusion".into(), "Deliberate".into()];
    requester.generate_async(&request).await.unwrap();

    let metrics = scrape(&app).await;
    for model in ["stable_diffusion", "Deliberate"] {
        let of = |family| value(&metrics, family, &[("model", model)]);
        assert_eq!(of("horde_queue_requests"), 1.0, "{model}");
        assert_eq!(of("horde_queue_images"), 2.0, "{model}");
    }
    // A request naming two models counts once overall.
    assert_eq!(value(&metrics, "horde_queue_requests_all_models", &[]), 1.0);
    assert_eq!(value(&metrics, "horde_queue_images_all_models", &[]), 2.0);
    assert_gauges_match_status(&app, &metrics).await;
    assert_eq!(
        value(&metrics, "horde_workers_online", &[("type", "image")]),
        0.0
    );

    // A worker takes one image: it is online, and one image is left waiting.
    owner.pop(&pop_request("gauged worker")).await.unwrap();
    let metrics = scrape(&app).await;
    assert_eq!(
        value(&metrics, "horde_workers_online", &[("type", "image")]),
        1.0
    );
    assert_gauges_match_status(&app, &metrics).await;
}

/// The megapixelsteps each model waits for are `/status/models`' `queued` (in pixelsteps),
/// and the whole queue's `/status/performance`' `queued_megapixelsteps`.
async fn assert_gauges_match_status(app: &TestApp, metrics: &Scrape) {
    let models = app.anonymous().models().await.unwrap();
    let waiting: Vec<_> = models.iter().filter(|m| m.queued > 0.0).collect();
    assert_eq!(waiting.len(), 2, "{models:?}");
    for model in waiting {
        let gauge = value(
            metrics,
            "horde_queue_megapixelsteps",
            &[("model", &model.name)],
        );
        assert!(
            (gauge - model.queued / 1e6).abs() < 1e-9,
            "{}: {gauge} against {}",
            model.name,
            model.queued
        );
    }
    let performance = app.anonymous().performance().await.unwrap();
    let all = value(metrics, "horde_queue_megapixelsteps_all_models", &[]);
    assert!(all > 0.0);
    assert!(
        (all - performance.queued_megapixelsteps).abs() < 1e-9,
        "{all} against {}",
        performance.queued_megapixelsteps
    );
}

#[tokio::test]
async fn pops_and_submits_move_the_job_counters() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 1000.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    requester
        .generate_async(&small_request("counted", 2, false))
        .await
        .unwrap();
    let before = scrape(&app).await;
    let done = owner.pop(&pop_request("counting worker")).await.unwrap();
    owner
        .submit(&submit_inline(&done, &webp(512, 512, [1; 3], [250; 3])))
        .await
        .unwrap();
    let faulted = owner.pop(&pop_request("counting worker")).await.unwrap();
    let mut fault = submit_with(&faulted, None);
    fault.state = SubmitState::Faulted;
    owner.submit(&fault).await.unwrap();
    let after = scrape(&app).await;

    let moved = |family, labels: &[(&str, &str)]| {
        value(&after, family, labels) - value(&before, family, labels)
    };
    assert_eq!(moved("horde_jobs_handed_out_total", &[]), 2.0);
    assert_eq!(moved("horde_jobs_finished_total", &[("state", "ok")]), 1.0);
    assert_eq!(
        moved("horde_jobs_finished_total", &[("state", "faulted")]),
        1.0
    );
    assert_eq!(moved("horde_jobs_taken_back_total", &[]), 0.0);
    assert!(
        moved("horde_database_commit_seconds", &[]) >= 4.0,
        "the accepted request is before; two assignments and two submits after"
    );
}

#[tokio::test]
async fn a_configured_bearer_token_is_required() {
    let app = spawn_app_with(|c| c.metrics.bearer_token = "scrape-s3cret".into()).await;
    let url = format!("{}/metrics", app.root);
    for authorization in [None, Some("Bearer wrong"), Some("Basic scrape-s3cret")] {
        let mut call = http().get(&url);
        if let Some(value) = authorization {
            call = call.header("authorization", value);
        }
        let answer = call.send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 401, "{authorization:?}");
        assert_eq!(
            answer.headers()["www-authenticate"],
            "Bearer realm=\"metrics\""
        );
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["rc"], "InvalidAPIKey", "{body}");
        assert!(body["message"].is_string(), "{body}");
    }
    let answer = http()
        .get(&url)
        .header("authorization", "Bearer scrape-s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let metrics = parse(&answer.text().await.unwrap());
    // The three refusals were counted.
    assert_eq!(requests(&metrics, "/metrics", "GET", "401"), 3.0);
}

#[tokio::test]
async fn disabled_metrics_are_not_found() {
    let app = spawn_app_with(|c| c.metrics.enabled = false).await;
    let answer = http()
        .get(format!("{}/metrics", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 404);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["rc"], "ThingNotFound", "{body}");
}
