//! Prometheus metrics: `GET /metrics` in the Prometheus text format, for operators to scrape.
//!
//! Why it looks like this:
//!
//! * **One registry per coordinator.** [`Metrics`] owns its own `prometheus::Registry` and lives
//!   in `AppState`, never in the crate's global registry: the integration tests run several
//!   coordinators in one process, and each must count only its own answers.
//! * **Events are counted where they happen; the live state is read when scraped.** The request
//!   counters and histograms are fed by [`record_requests`] (a middleware round every route);
//!   the job path, the webhook sender and the store's writers call the methods on [`Metrics`]
//!   ([`Metrics::jobs_handed_out`], …). The queue, per model, and the workers online are not
//!   mirrored into gauges kept up to date: [`LiveFigures::of`] computes them at each scrape
//!   from the same functions `/status/models` and the dashboard use
//!   (`horde_core::activity`), through the components' query methods, so the three cannot
//!   disagree and a model that left the queue leaves the scrape.
//! * **Bounded label values.** Every label value comes from a closed set: the endpoint is the
//!   matched route *template* (`/api/v2/generate/check/{id}`, never the path a client sent,
//!   whose ids would make a new series per request), with every unmatched path under one
//!   value, [`UNMATCHED`]; the method is one of the standard ones or `other`; job states and
//!   webhook outcomes are enums. Model names come from the live queue and online workers,
//!   which the model reference already bounds.
//! * **Who may scrape.** What it reveals (queue sizes, model names, workers online) is public
//!   through `/status/models` and `/status/performance` already, so it is open by default;
//!   `[metrics] bearer_token` asks for `Authorization: Bearer <token>` (401 with the AI Horde
//!   body without it) and `enabled = false` removes the route (404). Like the dashboard, it
//!   is outside `/api/v2/` and so not rate limited (`ratelimit::limits_for`): a scraper calls
//!   it every few seconds from one address, and a 429 would leave gaps in its graphs.

use crate::clock::now;
use crate::config::MetricsConfig;
use crate::error::ApiError;
use crate::state::SharedState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use horde_api::Rc;
use horde_core::{JobState, LiveRequest};
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::BTreeMap;

/// The `endpoint` label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

/// The coordinator's counters and histograms, and its registry.
///
/// Cloning is cheap and shares the series (each metric is reference-counted), so a task (the
/// request writer, a webhook sender) can hold its own handle.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    jobs_handed_out: IntCounter,
    jobs_finished: IntCounterVec,
    jobs_taken_back: IntCounter,
    webhook_deliveries: IntCounterVec,
    commit_seconds: Histogram,
}

/// What became of one attempt to call a request's webhook. Each attempt has exactly one
/// outcome, so their sum is the attempts made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// The attempt failed in a way worth trying again, and another attempt will be made.
    Retried,
    /// The attempt failed in a way trying again cannot mend (the receiver refused it): no
    /// more attempts.
    Failed,
    /// The attempt failed, worth trying again, but it was the last one allowed.
    GaveUp,
}

impl WebhookOutcome {
    fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Delivered => "delivered",
            WebhookOutcome::Retried => "retried",
            WebhookOutcome::Failed => "failed",
            WebhookOutcome::GaveUp => "gave_up",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A new registry holding the coordinator's metrics, all at zero.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let metrics = Metrics {
            http_requests: IntCounterVec::new(
                Opts::new(
                    "horde_http_requests_total",
                    "HTTP requests answered, by route template (`unmatched` when no route \
                     matched), method and status code.",
                ),
                &["endpoint", "method", "status"],
            )
            .expect("valid metric"),
            http_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "horde_http_request_duration_seconds",
                    "Time from a request reaching the router to its answer's headers, in \
                     seconds, by route template and method.",
                ),
                &["endpoint", "method"],
            )
            .expect("valid metric"),
            jobs_handed_out: IntCounter::new(
                "horde_jobs_handed_out_total",
                "Jobs (one image each) handed to workers by their pops.",
            )
            .expect("valid metric"),
            jobs_finished: IntCounterVec::new(
                Opts::new(
                    "horde_jobs_finished_total",
                    "Jobs whose result a worker submitted, by the state it reported or was \
                     given (ok, censored, csam, faulted).",
                ),
                &["state"],
            )
            .expect("valid metric"),
            jobs_taken_back: IntCounter::new(
                "horde_jobs_taken_back_total",
                "Jobs taken back from their worker after their deadline passed, their images \
                 queued again.",
            )
            .expect("valid metric"),
            webhook_deliveries: IntCounterVec::new(
                Opts::new(
                    "horde_webhook_deliveries_total",
                    "Attempts to call a request's webhook, by outcome: delivered, retried (failed, \
                     another attempt follows), failed (refused, not retried), gave_up (failed, \
                     the last attempt).",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "horde_database_commit_seconds",
                    "Time to store one acknowledged change (a database transaction), in \
                     seconds.",
                )
                .buckets(exponential_buckets(0.0005, 2.0, 14).expect("valid buckets")),
            )
            .expect("valid metric"),
            registry,
        };
        metrics.register_all();
        metrics
    }

    fn register_all(&self) {
        let collectors: [Box<dyn Collector>; 7] = [
            Box::new(self.http_requests.clone()),
            Box::new(self.http_seconds.clone()),
            Box::new(self.jobs_handed_out.clone()),
            Box::new(self.jobs_finished.clone()),
            Box::new(self.jobs_taken_back.clone()),
            Box::new(self.webhook_deliveries.clone()),
            Box::new(self.commit_seconds.clone()),
        ];
        for collector in collectors {
            self.registry
                .register(collector)
                .expect("each metric is registered once, under its own name");
        }
    }

    /// `n` jobs were handed to a worker (one pop may hand out a batch).
    pub fn jobs_handed_out(&self, n: usize) {
        self.jobs_handed_out.inc_by(n as u64);
    }

    /// A job's result was stored, in `state`.
    pub fn job_finished(&self, state: JobState) {
        self.jobs_finished
            .with_label_values(&[state.as_str()])
            .inc();
    }

    /// `n` jobs were taken back from late workers.
    pub fn jobs_taken_back(&self, n: usize) {
        self.jobs_taken_back.inc_by(n as u64);
    }

    /// One attempt to call a webhook ended with `outcome`.
    pub fn webhook_delivery(&self, outcome: WebhookOutcome) {
        self.webhook_deliveries
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    /// One transaction took `seconds` to commit.
    pub fn observe_commit(&self, seconds: f64) {
        self.commit_seconds.observe(seconds);
    }

    /// Awaits `commit` (a store call) and records how long it took.
    pub async fn time_commit<F: std::future::Future>(&self, commit: F) -> F::Output {
        let timer = self.commit_seconds.start_timer();
        let output = commit.await;
        timer.observe_duration();
        output
    }

    /// Every metric in the text format: the counters and histograms, then the gauges of
    /// `live`.
    pub fn render(&self, live: &LiveFigures) -> prometheus::Result<String> {
        let mut families = self.registry.gather();
        families.extend(live.families()?);
        // A labelled gauge with no series (an empty queue) has nothing to say.
        families.retain(|family| !family.get_metric().is_empty());
        let mut text = String::new();
        TextEncoder::new().encode_utf8(&families, &mut text)?;
        Ok(text)
    }
}

/// The work waiting under one model, or in the whole queue.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueFigures {
    /// Requests with images waiting or in flight.
    pub requests: u64,
    /// Images waiting or in flight.
    pub images: f64,
    /// Megapixelsteps of the images waiting.
    pub megapixelsteps: f64,
}

/// The gauges, computed from the live state at a scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveFigures {
    /// Each model `/status/models` lists, with its queue as it reports it: a request naming
    /// two models counts under both.
    pub models: BTreeMap<String, QueueFigures>,
    /// The whole queue, each request once (as `/status/performance` and the dashboard).
    pub all: QueueFigures,
    /// Workers that checked in within the online window.
    pub workers_online: u64,
}

impl LiveFigures {
    /// The figures now, read through the components' query methods.
    pub fn of(state: &SharedState) -> LiveFigures {
        let now = now();
        let workers_online = state.workers.read(|registry| registry.online(now).count());
        let (all, requests_by_model) = state.live.read(|queue| {
            let work = horde_core::activity::queued_work(queue.requests());
            (work, requests_with_work(queue.requests()))
        });
        let models = crate::routes::status::active_models(state)
            .into_iter()
            .map(|(name, model)| {
                let figures = QueueFigures {
                    requests: requests_by_model.by_model.get(&name).copied().unwrap_or(0),
                    images: model.jobs,
                    megapixelsteps: model.queued / 1e6,
                };
                (name, figures)
            })
            .collect();
        LiveFigures {
            models,
            all: QueueFigures {
                requests: requests_by_model.all,
                images: all.images as f64,
                megapixelsteps: all.megapixelsteps,
            },
            workers_online: workers_online as u64,
        }
    }

    /// The gauges as metric families.
    fn families(&self) -> prometheus::Result<Vec<MetricFamily>> {
        let by_model = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["model"]);
        let requests = by_model(
            "horde_queue_requests",
            "Requests with images waiting or in flight, under each model they name (a request \
             naming two models counts under both; horde_queue_requests_all_models counts it once).",
        )?;
        let images = prometheus::GaugeVec::new(
            Opts::new(
                "horde_queue_images",
                "Images waiting or in flight under each model, as /api/v2/status/models reports \
                 them (`jobs`; a request naming two models counts under both).",
            ),
            &["model"],
        )?;
        let megapixelsteps = prometheus::GaugeVec::new(
            Opts::new(
                "horde_queue_megapixelsteps",
                "Megapixelsteps of the images waiting under each model, as \
                 /api/v2/status/models reports them (`queued` / 1e6; a request naming two \
                 models counts under both).",
            ),
            &["model"],
        )?;
        for (model, figures) in &self.models {
            let model = [model.as_str()];
            requests
                .with_label_values(&model)
                .set(figures.requests as i64);
            images.with_label_values(&model).set(figures.images);
            megapixelsteps
                .with_label_values(&model)
                .set(figures.megapixelsteps);
        }
        let all_requests = IntGauge::new(
            "horde_queue_requests_all_models",
            "Requests with images waiting or in flight, each counted once.",
        )?;
        all_requests.set(self.all.requests as i64);
        let all_images = prometheus::Gauge::new(
            "horde_queue_images_all_models",
            "Images waiting or in flight, each request counted once (/api/v2/status/performance \
             `queued_requests`).",
        )?;
        all_images.set(self.all.images);
        let all_megapixelsteps = prometheus::Gauge::new(
            "horde_queue_megapixelsteps_all_models",
            "Megapixelsteps of the images waiting, each request counted once \
             (/api/v2/status/performance `queued_megapixelsteps`, the dashboard's figure).",
        )?;
        all_megapixelsteps.set(self.all.megapixelsteps);
        let workers = IntGaugeVec::new(
            Opts::new(
                "horde_workers_online",
                "Workers that checked in within the online window, by the kind of work they do.",
            ),
            &["type"],
        )?;
        // Image workers are the only kind yet (text and alchemy: issues 27 and 28).
        workers
            .with_label_values(&["image"])
            .set(self.workers_online as i64);
        let collectors: [&dyn Collector; 7] = [
            &requests,
            &images,
            &megapixelsteps,
            &all_requests,
            &all_images,
            &all_megapixelsteps,
            &workers,
        ];
        Ok(collectors.iter().flat_map(|c| c.collect()).collect())
    }
}

/// Requests with images waiting or in flight: all of them, and under each model they name.
#[derive(Default)]
struct RequestCounts {
    all: u64,
    by_model: BTreeMap<String, u64>,
}

fn requests_with_work<'a>(requests: impl IntoIterator<Item = &'a LiveRequest>) -> RequestCounts {
    let mut counts = RequestCounts::default();
    for request in requests {
        let status = request.counts();
        if status.waiting + status.processing == 0 {
            continue;
        }
        counts.all += 1;
        for model in &request.body.models {
            *counts.by_model.entry(model.clone()).or_default() += 1;
        }
    }
    counts
}

/// The method as a label value: the standard methods by name, any other as `other` (a client
/// may send any token as a method).
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN
        .iter()
        .find(|known| *known == method)
        .map_or("other", |known| known.as_str())
}

/// Counts every answer and times it, by route template, method and status (when metrics are
/// enabled). Added with
/// `Router::layer`, so it runs after routing (the template is known) and outside every other
/// layer (their answers, 429s and 413s included, are counted).
pub async fn record_requests(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    if !state.config.metrics.enabled {
        return next.run(request).await;
    }
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_owned();
    let method = method_label(request.method());
    let metrics = &state.metrics;
    let timer = metrics
        .http_seconds
        .with_label_values(&[endpoint.as_str(), method])
        .start_timer();
    let response = next.run(request).await;
    timer.observe_duration();
    metrics
        .http_requests
        .with_label_values(&[endpoint.as_str(), method, response.status().as_str()])
        .inc();
    response
}

/// `GET /metrics`: every metric in the Prometheus text format (`text/plain; version=0.0.4`).
pub async fn scrape(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    if !authorised(&state.config.metrics, &headers) {
        return unauthorised();
    }
    match state.metrics.render(&LiveFigures::of(&state)) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(error) => ApiError::internal(error).into_response(),
    }
}

/// Whether no bearer token is configured or the request carries it.
fn authorised(config: &MetricsConfig, headers: &HeaderMap) -> bool {
    if config.bearer_token.is_empty() {
        return true;
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, token)| same_secret(token.trim(), &config.bearer_token))
}

/// 401 with the AI Horde body, naming the scheme expected.
fn unauthorised() -> Response {
    let mut refused = ApiError::new(
        Rc::InvalidAPIKey,
        "The metrics need the bearer token this horde's operator configured: \
         Authorization: Bearer <token>.",
    )
    .into_response();
    refused.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"metrics\""),
    );
    refused
}

/// Whether `given` is `expected`, in time that depends on their lengths only.
fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_render_with_their_labels_once_moved() {
        let metrics = Metrics::new();
        let empty = metrics.render(&LiveFigures::default()).unwrap();
        assert!(!empty.contains("horde_jobs_finished_total{"), "{empty}");
        metrics.jobs_handed_out(3);
        metrics.job_finished(JobState::Faulted);
        metrics.webhook_delivery(WebhookOutcome::GaveUp);
        metrics.observe_commit(0.002);
        let text = metrics.render(&LiveFigures::default()).unwrap();
        for line in [
            "horde_jobs_handed_out_total 3",
            "horde_jobs_finished_total{state=\"faulted\"} 1",
            "horde_webhook_deliveries_total{outcome=\"gave_up\"} 1",
            "horde_database_commit_seconds_count 1",
            "horde_database_commit_seconds_bucket{le=\"0.002\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn two_registries_count_apart() {
        let (one, two) = (Metrics::new(), Metrics::new());
        one.jobs_taken_back(2);
        let text = two.render(&LiveFigures::default()).unwrap();
        assert!(
            text.lines().any(|l| l == "horde_jobs_taken_back_total 0"),
            "{text}"
        );
    }

    #[test]
    fn the_live_gauges_render_per_model_and_once_overall() {
        let one = QueueFigures {
            requests: 1,
            images: 2.0,
            megapixelsteps: 5.24288,
        };
        let live = LiveFigures {
            models: BTreeMap::from([("a".to_string(), one), ("b".to_string(), one)]),
            all: one,
            workers_online: 4,
        };
        let text = Metrics::new().render(&live).unwrap();
        for line in [
            "horde_queue_requests{model=\"a\"} 1",
            "horde_queue_images{model=\"b\"} 2",
            "horde_queue_megapixelsteps{model=\"a\"} 5.24288",
            "horde_queue_requests_all_models 1",
            "horde_queue_megapixelsteps_all_models 5.24288",
            "horde_workers_online{type=\"image\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn methods_outside_the_standard_ones_share_one_label() {
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        let invented = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&invented), "other");
    }

    #[test]
    fn only_the_configured_bearer_token_passes() {
        let config = MetricsConfig {
            enabled: true,
            bearer_token: "s3cret".into(),
        };
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            authorised(&config, &headers)
        };
        assert!(with("Bearer s3cret"));
        assert!(with("bearer s3cret"));
        assert!(!with("Bearer s3crex"));
        assert!(!with("Bearer s3cret2"));
        assert!(!with("Basic s3cret"));
        assert!(!authorised(&config, &HeaderMap::new()));
        let open = MetricsConfig::default();
        assert!(authorised(&open, &HeaderMap::new()));
    }
}
