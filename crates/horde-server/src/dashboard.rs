//! The dashboard at `/`: the horde at a glance, rendered on the server.
//!
//! The page is plain HTML with a small inline stylesheet and no asset from anywhere, so it
//! works offline, without JavaScript and with a keyboard alone. The workers table sorts and
//! filters through links and a GET form (`?sort=speed&q=name`). Every text that comes from
//! users or workers is escaped. A few lines of inline script only make the overview live: they
//! follow `/dashboard/events` (server-sent events, every 2 s), which the browser reconnects to
//! by itself after the coordinator restarts.

use crate::routes::status::active_models;
use crate::state::{now, SharedState};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use horde_api::worker::WorkerDetails;
use std::fmt::Write;

/// How the workers table is ordered and filtered.
#[derive(Debug, Default, serde::Deserialize)]
pub struct WorkersView {
    /// `name` (default), `speed`, `jobs`, `kudos`, `uptime`, `reliability` or `max_pixels`.
    pub sort: Option<String>,
    /// Only workers whose name or a model contains this (case-insensitive).
    pub q: Option<String>,
}

/// Columns the workers table can be sorted by (descending, except the name).
const SORTS: [(&str, &str); 7] = [
    ("name", "Name"),
    ("speed", "Speed"),
    ("jobs", "Jobs done"),
    ("reliability", "Reliability"),
    ("uptime", "Uptime"),
    ("kudos", "Kudos"),
    ("max_pixels", "Max pixels"),
];

/// The overview's figures, on the page and in each live event.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Overview {
    pub workers_online: usize,
    pub queued_requests: usize,
    pub queued_megapixelsteps: f64,
    pub images_last_hour: u64,
}

async fn overview_now(state: &SharedState, models: &Models, workers_online: usize) -> Overview {
    let totals = state.store.image_totals(now()).await.unwrap_or_default();
    Overview {
        workers_online,
        queued_requests: state.queue.lock().expect("queue lock").waiting_count(),
        queued_megapixelsteps: models.values().map(|m| m.queued).sum::<f64>() / 1e6,
        images_last_hour: totals
            .iter()
            .find(|(period, _)| *period == "hour")
            .map_or(0, |(_, t)| t.images),
    }
}

type Models = std::collections::BTreeMap<String, horde_api::status::ActiveModel>;

/// How often the live overview is sent.
const LIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /dashboard/events`: the overview now, then every 2 s, as server-sent events named
/// `overview` (JSON data), until the coordinator shuts down.
pub async fn events(
    State(state): State<SharedState>,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let stream = futures_util::stream::unfold((state, true), |(state, first)| async move {
        if !first {
            tokio::time::sleep(LIVE_EVERY).await;
        }
        // Ends at shutdown (the browser reconnects to the next coordinator by itself).
        if state
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return None;
        }
        let models = active_models(&state);
        let online = state
            .workers
            .read()
            .expect("registry lock")
            .online(now())
            .count();
        let overview = overview_now(&state, &models, online).await;
        let event = Event::default()
            .event("overview")
            .retry(LIVE_EVERY)
            .json_data(&overview)
            .unwrap_or_else(|_| Event::default().comment("unencodable"));
        Some((Ok(event), (state, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

pub async fn page(State(state): State<SharedState>, Query(view): Query<WorkersView>) -> Response {
    let mut workers = state.online_worker_details(None);
    let models = active_models(&state);
    let figures = overview_now(&state, &models, workers.len()).await;
    let mut html = String::with_capacity(16 * 1024);
    start_page(&mut html, "horde");
    overview(&mut html, &figures);
    models_table(&mut html, &models);
    leaderboard(&mut html, &workers);
    filter_and_sort(&mut workers, &view);
    workers_table(&mut html, &workers, &view);
    html.push_str(LIVE_SCRIPT);
    html.push_str("</main></body></html>\n");
    html_response(html)
}

/// `GET /models/{name}`: one model: its figures and the online workers serving it.
pub async fn model_page(
    State(state): State<SharedState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let models = active_models(&state);
    let mut workers = state.online_worker_details(None);
    workers.retain(|w| w.models.contains(&name));
    let mut html = String::with_capacity(8 * 1024);
    start_page(&mut html, &name);
    html.push_str("<p><a href=\"/\">Back to the horde</a></p>\n");
    match models.get(&name) {
        Some(m) => {
            let _ = writeln!(
                html,
                "<ul class=\"cards\"><li><b>{}</b>worker threads</li><li><b>{}</b>jobs waiting or running</li>\
                 <li><b>{:.1}</b>megapixelsteps queued</li><li><b>{}</b>seconds to clear (ETA)</li>\
                 <li><b>{:.0}</b>pixelsteps per second lately</li></ul>",
                m.count,
                m.jobs,
                m.queued / 1e6,
                m.eta,
                m.performance
            );
        }
        None => {
            html.push_str("<p>No online worker serves this model and nothing waits for it.</p>\n")
        }
    }
    workers_table(&mut html, &workers, &WorkersView::default());
    html.push_str("</main></body></html>\n");
    html_response(html)
}

/// A finished page, never cached (its figures change by the second).
fn html_response(html: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// The document's head and stylesheet, and the page's heading (escaped).
fn start_page(html: &mut String, heading: &str) {
    html.push_str(HEAD);
    let _ = writeln!(html, "<h1>{}</h1>", escape(heading));
}

const HEAD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>horde dashboard</title>
<style>
body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#f7f7f5}
main{max-width:72rem;margin:0 auto;padding:1rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
.cards{display:flex;flex-wrap:wrap;gap:.75rem;list-style:none;padding:0}
.cards li{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem}
.cards b{display:block;font-size:1.5rem}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #e3e3e3;padding:.3rem .5rem;text-align:left}
td.n,th.n{text-align:right}
a{color:#0b57d0}a:focus,input:focus,button:focus{outline:3px solid #f4b400}
</style></head><body><main>
"#;

/// Makes the overview live; the page is whole without it.
const LIVE_SCRIPT: &str = r#"<script>
(function () {
  if (!window.EventSource) return;
  var set = function (id, text) { var e = document.getElementById(id); if (e) e.textContent = text; };
  new EventSource("/dashboard/events").addEventListener("overview", function (m) {
    var d = JSON.parse(m.data);
    set("workers-online", d.workers_online);
    set("queued-requests", d.queued_requests);
    set("queued-mps", d.queued_megapixelsteps.toFixed(1));
    set("images-hour", d.images_last_hour);
  });
})();
</script>
"#;

fn overview(html: &mut String, figures: &Overview) {
    let Overview {
        workers_online,
        queued_requests: waiting,
        queued_megapixelsteps: megapixelsteps,
        images_last_hour: finished_last_hour,
    } = figures;
    let _ = writeln!(
        html,
        "<section aria-label=\"overview\"><ul class=\"cards\">\
         <li><b id=\"workers-online\">{workers_online}</b>workers online</li>\
         <li><b id=\"queued-requests\">{waiting}</b>requests waiting</li>\
         <li><b id=\"queued-mps\">{megapixelsteps:.1}</b>megapixelsteps queued</li>\
         <li><b id=\"images-hour\">{finished_last_hour}</b>images in the last hour</li>\
         </ul></section>"
    );
}

fn models_table(html: &mut String, models: &Models) {
    html.push_str(
        "<h2>Models</h2><table><thead><tr><th scope=\"col\">Model</th>\
         <th scope=\"col\" class=\"n\">Worker threads</th><th scope=\"col\" class=\"n\">Jobs</th>\
         <th scope=\"col\" class=\"n\">Megapixelsteps queued</th><th scope=\"col\" class=\"n\">ETA (s)</th>\
         </tr></thead><tbody>\n",
    );
    if models.is_empty() {
        html.push_str("<tr><td colspan=\"5\">No model is served or asked for.</td></tr>\n");
    }
    for m in models.values() {
        let _ = writeln!(
            html,
            "<tr><td><a href=\"/models/{}\">{}</a></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1}</td><td class=\"n\">{}</td></tr>",
            escape(&url_encode(&m.name)),
            escape(&m.name),
            m.count,
            m.jobs,
            m.queued / 1e6,
            m.eta
        );
    }
    html.push_str("</tbody></table>\n");
}

fn leaderboard(html: &mut String, workers: &[WorkerDetails]) {
    let mut top: Vec<&WorkerDetails> = workers.iter().collect();
    top.sort_by(|a, b| b.kudos_rewards.total_cmp(&a.kudos_rewards));
    html.push_str("<h2>Leaderboard: kudos earned by workers online</h2><ol>\n");
    for w in top.iter().take(10) {
        let _ = writeln!(
            html,
            "<li>{} — {:.0} kudos, {} jobs</li>",
            escape(&w.name),
            w.kudos_rewards,
            w.requests_fulfilled
        );
    }
    if top.is_empty() {
        html.push_str("<li>No worker is online.</li>\n");
    }
    html.push_str("</ol>\n");
}

fn filter_and_sort(workers: &mut Vec<WorkerDetails>, view: &WorkersView) {
    if let Some(q) = view
        .q
        .as_deref()
        .map(str::to_lowercase)
        .filter(|q| !q.is_empty())
    {
        workers.retain(|w| {
            w.name.to_lowercase().contains(&q)
                || w.models.iter().any(|m| m.to_lowercase().contains(&q))
        });
    }
    let speed = |w: &WorkerDetails| w.reputation.as_ref().map_or(0.0, |r| r.speed_mps);
    let reliability = |w: &WorkerDetails| w.reputation.as_ref().map_or(0.0, |r| r.reliability);
    match view.sort.as_deref().unwrap_or("name") {
        "speed" => workers.sort_by(|a, b| speed(b).total_cmp(&speed(a))),
        "jobs" => workers.sort_by_key(|w| std::cmp::Reverse(w.requests_fulfilled)),
        "reliability" => workers.sort_by(|a, b| reliability(b).total_cmp(&reliability(a))),
        "uptime" => workers.sort_by_key(|w| std::cmp::Reverse(w.uptime)),
        "kudos" => workers.sort_by(|a, b| b.kudos_rewards.total_cmp(&a.kudos_rewards)),
        "max_pixels" => workers.sort_by_key(|w| std::cmp::Reverse(w.max_pixels)),
        _ => workers.sort_by(|a, b| a.name.cmp(&b.name)),
    }
}

fn workers_table(html: &mut String, workers: &[WorkerDetails], view: &WorkersView) {
    let q = view.q.as_deref().unwrap_or("");
    let _ = write!(
        html,
        "<h2 id=\"workers\">Workers online</h2>\
         <form method=\"get\" action=\"/#workers\"><label for=\"q\">Filter by name or model</label> \
         <input id=\"q\" name=\"q\" value=\"{}\"> <button type=\"submit\">Filter</button></form>\n\
         <table><thead><tr>",
        escape(q)
    );
    for (key, label) in SORTS {
        let _ = write!(
            html,
            "<th scope=\"col\"><a href=\"/?sort={key}&amp;q={}#workers\">{label}</a></th>",
            escape(&url_encode(q))
        );
    }
    html.push_str(
        "<th scope=\"col\">Models</th><th scope=\"col\" class=\"n\">Suspicion</th></tr></thead><tbody>\n",
    );
    if workers.is_empty() {
        let why = if q.is_empty() {
            "No worker is online."
        } else {
            "No online worker matches."
        };
        let _ = writeln!(html, "<tr><td colspan=\"9\">{why}</td></tr>");
    }
    for w in workers {
        let (speed, reliability, suspicion) = w
            .reputation
            .as_ref()
            .map_or((0.0, 0.0, 0), |r| (r.speed_mps, r.reliability, r.suspicion));
        let _ = writeln!(
            html,
            "<tr><td>{}{}</td><td class=\"n\">{speed:.2} MPS</td><td class=\"n\">{}</td>\
             <td class=\"n\">{:.0} %</td><td class=\"n\">{}</td><td class=\"n\">{:.0}</td>\
             <td class=\"n\">{}</td><td>{}</td><td class=\"n\">{suspicion}</td></tr>",
            escape(&w.name),
            if w.paused == Some(true) || w.maintenance_mode {
                " (paused)"
            } else {
                ""
            },
            w.requests_fulfilled,
            reliability * 100.0,
            duration(w.uptime),
            w.kudos_rewards,
            w.max_pixels,
            escape(&w.models.join(", ")),
        );
    }
    html.push_str("</tbody></table>\n");
}

/// `3 d 4 h`, `2 h 5 min`, `40 s`.
fn duration(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// Escapes text for HTML content and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value.
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_users_cannot_become_markup() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(url_encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(40), "40 s");
        assert_eq!(duration(125), "2 min");
        assert_eq!(duration(7_500), "2 h 5 min");
        assert_eq!(duration(2 * 86_400 + 3 * 3600), "2 d 3 h");
    }
}
