//! What makes the dashboard live: the overview's figures, the throughput chart, and the
//! server-sent events that carry them.
//!
//! Each event carries the figures and a digest of everything the tables show; the page's
//! script fetches the server-rendered tables again only when the digest changed, so the HTML
//! is rendered in one place (here, in Rust) and a quiet horde costs one small event per 2 s.

use crate::clock::now;
use crate::routes::status::active_models;
use crate::state::SharedState;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use horde_store::stats::Totals;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// How often the live overview is sent.
const LIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Minutes in the throughput chart.
pub(crate) const CHART_MINUTES: usize = 60;

/// The overview's figures, on the page and in each live event.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Overview {
    pub workers_online: usize,
    pub queued_requests: usize,
    pub queued_megapixelsteps: f64,
    pub images_last_hour: u64,
    /// Images finished in each of the last 60 minutes, oldest first.
    pub images_per_minute: Vec<u64>,
    /// Changes whenever a figure in the tables does: the script then fetches them again.
    pub digest: String,
}

/// Images and pixelsteps finished in each of the last [`CHART_MINUTES`] minutes (zeros when
/// the database cannot say: the dashboard shows the rest).
async fn last_hour(state: &SharedState) -> Vec<Totals> {
    state
        .store
        .images_per_minute(now(), CHART_MINUTES)
        .await
        .unwrap_or_else(|_| vec![Totals::default(); CHART_MINUTES])
}

/// The figures now, and the throughput of the last hour behind them.
pub(crate) async fn overview_now(state: &SharedState) -> (Overview, Vec<Totals>) {
    let models = active_models(state);
    let (workers_online, jobs_done, kudos_earned) = state.workers.read(|registry| {
        registry
            .online(now())
            .fold((0, 0, 0.0), |(n, jobs, kudos), e| {
                let w = &e.worker;
                (
                    n + 1,
                    jobs + w.reputation.completed,
                    kudos + w.kudos_generated + w.kudos_uptime,
                )
            })
    });
    let minutes = last_hour(state).await;
    let queued_requests = state.live.waiting_count();
    // The same figure as `/status/performance`: each request once, whatever models it names.
    let queued_megapixelsteps = state
        .live
        .read(|queue| horde_core::activity::queued_work(queue.requests()).megapixelsteps);
    let images_per_minute: Vec<u64> = minutes.iter().map(|t| t.images).collect();
    let images_last_hour = images_per_minute.iter().sum();
    let model_jobs: f64 = models.values().map(|m| m.jobs).sum();
    let digest = format!(
        "{workers_online}/{queued_requests}/{queued_megapixelsteps:.2}/{jobs_done}/{kudos_earned:.0}/{}/{model_jobs}",
        models.len()
    );
    let overview = Overview {
        workers_online,
        queued_requests,
        queued_megapixelsteps,
        images_last_hour,
        images_per_minute,
        digest,
    };
    (overview, minutes)
}

/// `GET /dashboard/events`: the overview now, then every 2 s, as server-sent events named
/// `overview` (JSON data), until the coordinator shuts down. `retry: 2000` makes the browser
/// reconnect by itself, to this coordinator after a restart or to another behind the same
/// address. `X-Accel-Buffering: no` asks a proxy in front (nginx) not to hold the events back.
pub async fn events(State(state): State<SharedState>) -> impl IntoResponse {
    let stream = futures_util::stream::unfold((state, true), |(state, first)| async move {
        if !first {
            tokio::time::sleep(LIVE_EVERY).await;
        }
        if state.shutting_down.load(Ordering::SeqCst) {
            return None;
        }
        let (overview, _) = overview_now(&state).await;
        let event = Event::default()
            .event("overview")
            .retry(LIVE_EVERY)
            .json_data(&overview)
            .unwrap_or_else(|_| Event::default().comment("unencodable"));
        Some((Ok::<_, std::convert::Infallible>(event), (state, false)))
    });
    (
        [("x-accel-buffering", "no")],
        Sse::new(stream).keep_alive(KeepAlive::default()),
    )
}

/// `GET /dashboard/throughput.svg`: the chart alone, for the script to reload.
pub async fn throughput_svg(State(state): State<SharedState>) -> Response {
    let minutes = last_hour(&state).await;
    let mut svg = String::new();
    throughput_chart(&mut svg, &minutes);
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        svg,
    )
        .into_response()
}

const CHART_WIDTH: usize = 600;
const CHART_HEIGHT: usize = 120;

/// Images finished per minute over the last hour as an SVG bar chart, inline in the page (so
/// it needs no script); each bar's title tells its figures.
pub(crate) fn throughput_chart(out: &mut String, minutes: &[Totals]) {
    let peak = minutes.iter().map(|t| t.images).max().unwrap_or(0).max(1);
    let total: u64 = minutes.iter().map(|t| t.images).sum();
    let megapixelsteps: f64 = minutes.iter().map(|t| t.pixelsteps).sum::<f64>() / 1e6;
    let bar = CHART_WIDTH / minutes.len().max(1);
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"throughput\" role=\"img\" \
         viewBox=\"0 0 {CHART_WIDTH} {h}\" width=\"100%\" data-images=\"{total}\">\
         <title>Images finished per minute over the last hour: {total} images, \
         {megapixelsteps:.1} megapixelsteps</title>\
         <rect width=\"{CHART_WIDTH}\" height=\"{h}\" fill=\"#fff\"/>",
        h = CHART_HEIGHT + 14,
    );
    for (i, t) in minutes.iter().enumerate() {
        let height = (t.images as usize * CHART_HEIGHT).div_ceil(peak as usize);
        let ago = minutes.len() - i;
        let _ = write!(
            out,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{height}\" fill=\"#0b57d0\">\
             <title>{ago} min ago: {} images, {:.2} megapixelsteps</title></rect>",
            i * bar + 1,
            CHART_HEIGHT - height,
            bar.saturating_sub(2).max(1),
            t.images,
            t.pixelsteps / 1e6,
        );
    }
    let _ = write!(
        out,
        "<text x=\"2\" y=\"{y}\" font-size=\"11\" fill=\"#555\">60 min ago</text>\
         <text x=\"{CHART_WIDTH}\" y=\"{y}\" font-size=\"11\" fill=\"#555\" text-anchor=\"end\">now \
         (peak {peak}/min)</text></svg>",
        y = CHART_HEIGHT + 12,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_minute_is_a_bar_as_tall_as_its_share_of_the_peak() {
        let mut minutes = vec![Totals::default(); 60];
        minutes[59] = Totals {
            images: 4,
            pixelsteps: 2e6,
        };
        minutes[0] = Totals {
            images: 2,
            pixelsteps: 1e6,
        };
        let mut svg = String::new();
        throughput_chart(&mut svg, &minutes);
        assert_eq!(svg.matches("fill=\"#0b57d0\"").count(), 60);
        assert!(svg.contains("data-images=\"6\""));
        assert!(svg.contains("1 min ago: 4 images, 2.00 megapixelsteps"));
        assert!(svg.contains(&format!(
            "height=\"{CHART_HEIGHT}\" fill=\"#0b57d0\"><title>1 min"
        )));
        assert!(svg.contains(&format!(
            "height=\"{}\" fill=\"#0b57d0\"><title>60 min",
            CHART_HEIGHT / 2
        )));
        assert!(svg.contains("3.0 megapixelsteps"));
    }
}
