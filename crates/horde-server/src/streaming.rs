//! `GET /api/v2/generate/stream/{id}`: a request's progress as server-sent events, so that a
//! client (the dashboard's generate form among them) follows it without polling.
//!
//! Events, in this order for a request a worker finishes:
//! * `position`: the light status (`RequestStatusCheck` JSON: queue position, `wait_time`,
//!   counts), first at once, then whenever one of those figures changes;
//! * `generation`: each finished generation, the same JSON as an entry of `/generate/status`'s
//!   `generations` (a download URL for `r2` requests, base64 otherwise);
//! * `end`: `{"state": "done" | "faulted" | "cancelled" | "removed", …the light status}`, after
//!   which the stream closes.
//!
//! The stream watches its request's change signal (`LiveRequests::watch`) and looks again
//! every [`LOOK_EVERY`] as well, because a queue position moves when requests ahead of it
//! change. A comment every 15 s keeps proxies from closing a quiet stream. Open streams are
//! bounded (`api.max_streams`; past it 503 `TooManyConnections`), and every stream ends
//! when the coordinator shuts down.

use crate::error::{ApiError, ApiResult};
use crate::live_requests::{RequestWatch, Watcher, Woken};
use crate::state::SharedState;
use crate::waiting::is_over;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use horde_api::image::RequestStatusCheck;
use horde_api::{ErrorBody, Rc};
use horde_core::request::LiveRequest;
use horde_core::Image;
use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;
use uuid::Uuid;

/// How often a stream looks at its request when nothing woke it (queue positions move with
/// the requests ahead).
pub const LOOK_EVERY: Duration = Duration::from_secs(2);

/// Seconds a client refused for too many streams is told to wait.
const RETRY_AFTER_SECS: u64 = 5;

/// The `end` event's data.
#[derive(serde::Serialize)]
struct End {
    state: &'static str,
    #[serde(flatten)]
    check: Option<RequestStatusCheck>,
}

/// Follow request `id` as server-sent events.
#[utoipa::path(get, path = "/api/v2/generate/stream/{id}", tag = "v2",
    params(("id" = String, Path, description = "The request's id")),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
            description = "Server-sent events: `position` (the light status, when its position, wait time or counts change), `generation` (each finished generation, as in `/generate/status`), then `end` (`{state: done|faulted|cancelled|removed}` with the light status), after which the stream closes. Comments keep it open while quiet; it ends when the server shuts down."),
        (status = 404, body = ErrorBody),
        (status = 503, description = "Too many streams are open (`Retry-After`)", body = ErrorBody)))]
pub async fn stream(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let not_found = || {
        ApiError::new(
            Rc::RequestNotFound,
            format!("Request with ID '{id}' not found."),
        )
    };
    let request_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    state.load_request::<Image>(request_id).await?;
    if !state.live.contains(request_id) {
        return Err(not_found());
    }
    let max = state.config.api.max_streams;
    let watch = state
        .live
        .watch(request_id, Watcher::Stream, max)
        .ok_or_else(|| {
            ApiError::new(
                Rc::TooManyConnections,
                format!("Too many progress streams are open ({max}); try again shortly, or check the request's status instead."),
            )
            .retry_after(RETRY_AFTER_SECS)
        })?;
    let follow = Follow {
        state,
        id: request_id,
        watch,
        sent: HashSet::new(),
        last_position: None,
        pending: VecDeque::new(),
        ended: false,
    };
    let events = futures_util::stream::unfold(follow, |mut follow| async move {
        let event = follow.next_event().await?;
        Some((Ok::<_, Infallible>(event), follow))
    });
    Ok((
        [("x-accel-buffering", "no")],
        Sse::new(events).keep_alive(KeepAlive::default()),
    )
        .into_response())
}

/// One stream's state: what it has sent, and the events found but not yet sent.
struct Follow {
    state: SharedState,
    id: Uuid,
    watch: RequestWatch,
    /// The jobs whose generation was sent.
    sent: HashSet<Uuid>,
    /// The figures of the last `position` event.
    last_position: Option<[i64; 5]>,
    pending: VecDeque<Event>,
    ended: bool,
}

impl Follow {
    /// The next event; `None` once the `end` event is sent or the coordinator shuts down.
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            self.look().await;
            if self.pending.is_empty() {
                let deadline = tokio::time::Instant::now() + LOOK_EVERY;
                if self.watch.next_change(deadline).await == Woken::Closed {
                    return None;
                }
            }
        }
    }

    /// Looks at the request and queues the events its changes call for.
    async fn look(&mut self) {
        let request = self.state.live.get(self.id);
        let check = self.state.check_request(&self.id.to_string()).await.ok();
        let (Some(request), Some(check)) = (request, check) else {
            self.finish("removed", None);
            return;
        };
        let figures = [
            check.queue_position,
            check.wait_time,
            i64::from(check.waiting),
            i64::from(check.processing),
            i64::from(check.finished),
        ];
        if self.last_position != Some(figures) {
            self.last_position = Some(figures);
            self.pending.push_back(json_event("position", &check));
        }
        self.queue_generations(&request).await;
        if is_over(&request) {
            let state = if request.faulted {
                "faulted"
            } else if request.cancelled {
                "cancelled"
            } else {
                "done"
            };
            self.finish(state, Some(check));
        }
    }

    /// Queues a `generation` event for each finished job not sent yet.
    async fn queue_generations(&mut self, request: &LiveRequest) {
        for job in request.jobs.iter().filter(|j| j.state.is_finished()) {
            if self.sent.insert(job.id) {
                let generation = self.state.generation(request, job).await;
                self.pending
                    .push_back(json_event("generation", &generation));
            }
        }
    }

    fn finish(&mut self, state: &'static str, check: Option<RequestStatusCheck>) {
        self.pending
            .push_back(json_event("end", &End { state, check }));
        self.ended = true;
    }
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().comment("unencodable"))
}
