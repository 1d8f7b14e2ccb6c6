//! The dashboard at `/`: the horde at a glance, rendered on the server.
//!
//! The page is plain HTML with an inline stylesheet and one small script of our own
//! (`app.js`, served from here): no asset from anywhere else, so it works offline. Everything
//! read-only (overview, throughput chart, models, leaderboard, workers) is in the HTML itself,
//! so it works without JavaScript and with a keyboard alone; the workers table sorts and
//! filters through links and a GET form (`?sort=speed&q=name`). Every text that comes from
//! users or workers is escaped, and a Content-Security-Policy allows only our own script.
//!
//! The script makes the page live (`live`: server-sent events, tables fetched again from
//! `/dashboard/tables` when they changed) and adds the views that need an API key: the key is
//! kept in the browser's local storage and sent only to this coordinator's API, as `apikey`.

mod live;

pub use live::{events, throughput_svg};

use crate::routes::status::active_models;
use crate::state::SharedState;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use horde_api::worker::WorkerDetails;
use live::Overview;
use std::fmt::Write;

/// How the workers table is ordered and filtered.
#[derive(Debug, Default, serde::Deserialize)]
pub struct WorkersView {
    /// `name` (default), `online` (online first, then the most recently seen), `speed`,
    /// `jobs`, `kudos`, `uptime`, `reliability` or `max_pixels`.
    pub sort: Option<String>,
    /// Only workers whose name or a model contains this (case-insensitive).
    pub q: Option<String>,
}

/// Columns the workers table can be sorted by (descending, except the name).
const SORTS: [(&str, &str); 8] = [
    ("name", "Name"),
    ("online", "Online"),
    ("speed", "Speed"),
    ("jobs", "Jobs done"),
    ("reliability", "Reliability"),
    ("uptime", "Uptime"),
    ("kudos", "Kudos"),
    ("max_pixels", "Max pixels"),
];

type Models = std::collections::BTreeMap<String, horde_api::status::ActiveModel>;

/// `GET /`: the whole dashboard.
pub async fn page(State(state): State<SharedState>, Query(view): Query<WorkersView>) -> Response {
    let (figures, minutes) = live::overview_now(&state).await;
    let mut html = String::with_capacity(32 * 1024);
    start_page(&mut html, "horde");
    overview(&mut html, &figures);
    html.push_str("<h2>Throughput over the last hour</h2>\n<div id=\"chart\">");
    live::throughput_chart(&mut html, &minutes);
    html.push_str("</div>\n");
    html.push_str(ACCOUNT);
    // The script fetches the tables again when an event's digest differs from this one.
    let _ = writeln!(
        html,
        "<div id=\"tables\" data-digest=\"{}\">",
        escape(&figures.digest)
    );
    tables(&mut html, &state, &view);
    html.push_str("</div>\n</main></body></html>\n");
    html_response(html)
}

/// `GET /dashboard/tables`: the models, leaderboard and workers tables alone, as on `/` with
/// the same query (the script swaps them in when they changed).
pub async fn tables_fragment(
    State(state): State<SharedState>,
    Query(view): Query<WorkersView>,
) -> Response {
    let mut html = String::with_capacity(16 * 1024);
    tables(&mut html, &state, &view);
    html_response(html)
}

/// `GET /dashboard/app.js`: the page's one script.
pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("app.js"),
    )
        .into_response()
}

/// The workers table lists the workers seen this long ago or later, online or not.
const WORKERS_SEEN_WITHIN_SECS: i64 = 86_400;

/// A worker on the dashboard: its public details, and when it last checked in.
type Seen = (WorkerDetails, i64);

fn tables(html: &mut String, state: &SharedState, view: &WorkersView) {
    let models = active_models(state);
    let mut workers = state.recent_worker_details(WORKERS_SEEN_WITHIN_SECS);
    models_table(html, &models);
    text_models_table(html, &crate::routes::status::active_text_models(state));
    leaderboard(html, &workers);
    filter_and_sort(&mut workers, view);
    workers_table(html, &workers, view);
}

/// `GET /models/{name}`: one model: its figures and the online workers serving it.
pub async fn model_page(
    State(state): State<SharedState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let models = active_models(&state);
    let mut workers = state.recent_worker_details(WORKERS_SEEN_WITHIN_SECS);
    workers.retain(|(w, _)| w.online && w.models.contains(&name));
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

/// Only our own script runs, and it talks only to this coordinator: text that slipped past
/// the escaping could not run, nor send an API key elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     connect-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";

/// A finished page, never cached (its figures change by the second).
fn html_response(html: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
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
<link rel="icon" href="data:,">
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
a{color:#0b57d0}a:focus,input:focus,button:focus,select:focus,textarea:focus{outline:3px solid #f4b400}
form.grid{display:grid;grid-template-columns:max-content 1fr;gap:.4rem .75rem;max-width:40rem}
textarea{width:100%;min-height:3rem}#throughput{display:block;max-width:48rem;border:1px solid #ddd}
#generated img{max-width:256px;margin:.25rem;border:1px solid #ddd;image-rendering:pixelated}
.error{color:#a50e0e}[hidden]{display:none!important}
</style>
<script src="/dashboard/app.js" defer></script>
</head><body><main>
"#;

/// The views behind an API key; the script fills them in (they need the key, which only the
/// browser holds).
const ACCOUNT: &str = r#"<section id="account" aria-labelledby="account-heading">
<h2 id="account-heading">Your account</h2>
<noscript><p>Your account, your workers and the generate form need JavaScript; everything
else on this page works without it.</p></noscript>
<form id="key-form" hidden><label for="apikey">API key</label>
<input id="apikey" name="apikey" type="password" autocomplete="off" size="24">
<button type="submit">Show my account</button>
<button type="button" id="forget-key" hidden>Forget the key</button>
<p>The key stays in this browser (its local storage) and is sent only to this coordinator.</p>
</form>
<p id="account-error" class="error" role="alert"></p>
<div id="account-view" hidden>
<ul class="cards"><li><b id="my-name"></b>user</li><li><b id="my-kudos"></b>kudos</li>
<li><b id="my-images"></b>images requested</li><li><b id="my-mps"></b>megapixelsteps used</li>
<li><b id="my-made"></b>images made by your workers</li><li><b id="my-tier"></b>tier</li></ul>
<h3>Daily quota</h3>
<table id="my-quota"><thead><tr><th scope="col">Requested today</th><th scope="col" class="n">Used</th>
<th scope="col" class="n">Limit</th></tr></thead><tbody></tbody></table>
<p id="quota-reset"></p>
<h3>Your workers</h3>
<table id="my-workers"><thead><tr><th scope="col">Worker</th><th scope="col">Online</th>
<th scope="col" class="n">Jobs done</th><th scope="col" class="n">Kudos</th>
<th scope="col">Maintenance</th><th scope="col" class="mod-only" hidden>Paused</th></tr></thead>
<tbody></tbody></table>
<h3>Your API key</h3>
<p><button type="button" id="rotate-key">Rotate my key</button> A new key replaces yours: the old
one stops working at once, everywhere it is used.</p>
<div id="rotated" hidden><p class="error" role="alert"><strong>Store it now: your new key is shown
only once.</strong> This browser already uses it.</p><p><code id="new-key"></code></p></div>
<h3>Shared keys</h3>
<p>A shared key lets others make requests on your account, within its own kudos budget, expiry
and size limits (−1: no limit).</p>
<table id="my-sharedkeys"><thead><tr><th scope="col">Name</th><th scope="col" class="n">Kudos left</th>
<th scope="col" class="n">Kudos used</th><th scope="col">Expires</th><th scope="col" class="n">Max pixels</th>
<th scope="col" class="n">Max steps</th><th scope="col" class="n">Max tokens</th><th scope="col">Actions</th></tr></thead>
<tbody></tbody></table>
<form id="sharedkey-form" class="grid"><input type="hidden" id="sk-id" name="id">
<label for="sk-name">Name</label><input id="sk-name" name="name" minlength="3" maxlength="255" required>
<label for="sk-kudos">Kudos budget</label><input id="sk-kudos" name="kudos" type="number" min="-1" max="50000000" value="5000" required>
<label for="sk-expiry">Expires in (days)</label><input id="sk-expiry" name="expiry" type="number" min="-1" max="100000" value="-1" required>
<label for="sk-pixels">Max image pixels</label><input id="sk-pixels" name="max_image_pixels" type="number" min="-1" max="4194304" value="-1" required>
<label for="sk-steps">Max image steps</label><input id="sk-steps" name="max_image_steps" type="number" min="-1" max="500" value="-1" required>
<label for="sk-tokens">Max text tokens</label><input id="sk-tokens" name="max_text_tokens" type="number" min="-1" max="500" value="-1" required>
<span></span><span><button type="submit" id="sk-submit">Create the shared key</button>
<button type="button" id="sk-cancel" hidden>Cancel the edit</button></span>
</form>
<p id="sharedkey-status" role="status" aria-live="polite"></p>
<div id="sharedkey-new" hidden><p class="error" role="alert"><strong>Store it now: the new shared
key is shown only once.</strong></p><p><code id="sharedkey-value"></code></p></div>
<h3>Generate</h3>
<form id="generate-form" class="grid">
<label for="gen-prompt">Prompt</label><textarea id="gen-prompt" name="prompt" required></textarea>
<label for="gen-model">Model</label><select id="gen-model" name="model"><option value="">Any model</option></select>
<label for="gen-width">Width</label><input id="gen-width" name="width" type="number" min="64" max="3072" step="64" value="512">
<label for="gen-height">Height</label><input id="gen-height" name="height" type="number" min="64" max="3072" step="64" value="512">
<label for="gen-steps">Steps</label><input id="gen-steps" name="steps" type="number" min="1" max="500" value="25">
<label for="gen-n">Images</label><input id="gen-n" name="n" type="number" min="1" max="20" value="1">
<span></span><button type="submit">Generate</button>
</form>
<p id="generate-status" role="status" aria-live="polite"></p>
<div id="generated"></div>
<h3>Kudos ledger</h3>
<table id="my-ledger"><thead><tr><th scope="col">When</th><th scope="col">What</th>
<th scope="col" class="n">Kudos</th><th scope="col">Request</th></tr></thead><tbody></tbody></table>
<section id="moderation" hidden aria-labelledby="moderation-heading">
<h3 id="moderation-heading">Suspicious workers (moderators)</h3>
<table id="suspicious"><thead><tr><th scope="col">Worker</th><th scope="col">Owner</th>
<th scope="col" class="n">Suspicion</th><th scope="col">Why</th><th scope="col">Actions</th></tr></thead>
<tbody></tbody></table>
<h3>Move a user between tiers (moderators)</h3>
<form id="tier-form" class="grid"><label for="tier-user">User id</label>
<input id="tier-user" name="user" type="number" min="0" required>
<span></span><button type="submit">Look up</button></form>
<div id="tier-move" hidden><p id="tier-current"></p>
<label for="tier-select">New tier</label> <select id="tier-select"></select>
<button type="button" id="tier-apply">Move</button></div>
<p id="tier-status" role="status" aria-live="polite"></p>
</section>
</div>
</section>
"#;

fn overview(html: &mut String, figures: &Overview) {
    let Overview {
        workers_online,
        queued_requests: waiting,
        queued_megapixelsteps: megapixelsteps,
        images_last_hour: finished_last_hour,
        ..
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

/// The text queue by model: the online text workers' threads, the texts waiting or running,
/// the tokens waiting and how long they take at the model's recent speed.
fn text_models_table(html: &mut String, models: &Models) {
    html.push_str(
        "<h2>Text models</h2><table><thead><tr><th scope=\"col\">Model</th>\
         <th scope=\"col\" class=\"n\">Worker threads</th><th scope=\"col\" class=\"n\">Texts</th>\
         <th scope=\"col\" class=\"n\">Tokens queued</th><th scope=\"col\" class=\"n\">ETA (s)</th>\
         </tr></thead><tbody>\n",
    );
    if models.is_empty() {
        html.push_str("<tr><td colspan=\"5\">No text model is served or asked for.</td></tr>\n");
    }
    for m in models.values() {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.0}</td><td class=\"n\">{}</td></tr>",
            escape(&m.name),
            m.count,
            m.jobs,
            m.queued,
            m.eta
        );
    }
    html.push_str("</tbody></table>\n");
}

fn leaderboard(html: &mut String, workers: &[Seen]) {
    let mut top: Vec<&WorkerDetails> = workers.iter().map(|(w, _)| w).collect();
    top.sort_by(|a, b| b.kudos_rewards.total_cmp(&a.kudos_rewards));
    html.push_str("<h2>Leaderboard: kudos earned by the workers of the last day</h2><ol>\n");
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
        html.push_str("<li>No worker was seen in the last day.</li>\n");
    }
    html.push_str("</ol>\n");
}

fn filter_and_sort(workers: &mut Vec<Seen>, view: &WorkersView) {
    if let Some(q) = view
        .q
        .as_deref()
        .map(str::to_lowercase)
        .filter(|q| !q.is_empty())
    {
        workers.retain(|(w, _)| {
            w.name.to_lowercase().contains(&q)
                || w.models.iter().any(|m| m.to_lowercase().contains(&q))
        });
    }
    let speed = |w: &WorkerDetails| w.reputation.as_ref().map_or(0.0, |r| r.speed_mps);
    let reliability = |w: &WorkerDetails| w.reputation.as_ref().map_or(0.0, |r| r.reliability);
    let descending =
        |key: fn(&WorkerDetails) -> f64| move |a: &Seen, b: &Seen| key(&b.0).total_cmp(&key(&a.0));
    match view.sort.as_deref().unwrap_or("name") {
        "online" => workers.sort_by_key(|(w, seen)| (std::cmp::Reverse(w.online), -seen)),
        "speed" => workers.sort_by(descending(speed)),
        "jobs" => workers.sort_by_key(|(w, _)| std::cmp::Reverse(w.requests_fulfilled)),
        "reliability" => workers.sort_by(descending(reliability)),
        "uptime" => workers.sort_by_key(|(w, _)| std::cmp::Reverse(w.uptime)),
        "kudos" => workers.sort_by(descending(|w| w.kudos_rewards)),
        "max_pixels" => workers.sort_by_key(|(w, _)| std::cmp::Reverse(w.max_pixels)),
        _ => workers.sort_by(|a, b| a.0.name.cmp(&b.0.name)),
    }
}

fn workers_table(html: &mut String, workers: &[Seen], view: &WorkersView) {
    let q = view.q.as_deref().unwrap_or("");
    let _ = write!(
        html,
        "<h2 id=\"workers\">Workers of the last day</h2>\
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
        "<th scope=\"col\">Models</th><th scope=\"col\" class=\"n\">Suspicion</th>\
         <th scope=\"col\">Hardware</th></tr></thead><tbody>\n",
    );
    if workers.is_empty() {
        let why = if q.is_empty() {
            "No worker was seen in the last day."
        } else {
            "No worker matches."
        };
        let _ = writeln!(html, "<tr><td colspan=\"11\">{why}</td></tr>");
    }
    let now = crate::clock::now();
    for (w, seen) in workers {
        let (speed, reliability, suspicion) = w
            .reputation
            .as_ref()
            .map_or((0.0, 0.0, 0), |r| (r.speed_mps, r.reliability, r.suspicion));
        let status = match (w.online, w.maintenance_mode) {
            (true, false) => "online".to_string(),
            (true, true) => "in maintenance".to_string(),
            (false, _) => format!("seen {} ago", duration((now - seen).max(0) as u64)),
        };
        let unit = match w.kind.as_str() {
            "text" => "tokens/s",
            "interrogation" => "forms/s",
            _ => "MPS",
        };
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{status}</td><td class=\"n\">{speed:.2} {unit}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{:.0} %{}</td><td class=\"n\">{}</td><td class=\"n\">{:.0}</td>\
             <td class=\"n\">{}</td><td>{}</td><td class=\"n\">{suspicion}</td><td>{}</td></tr>",
            escape(&w.name),
            w.requests_fulfilled,
            reliability * 100.0,
            rating_note(w),
            duration(w.uptime),
            w.kudos_rewards,
            w.max_pixels,
            escape(&w.models.join(", ")),
            hardware_note(w),
        );
    }
    html.push_str("</tbody></table>\n");
}

/// What a worker runs on and the models it holds in memory, as it last reported them (issue
/// 30), escaped: `cuda:0, NVIDIA H100 · RAM 64.0 GiB, VRAM 80.0 GiB · engine, f16 · loaded: …`.
fn hardware_note(w: &WorkerDetails) -> String {
    let mut parts = vec![];
    if let Some(h) = &w.hardware {
        let device = match &h.gpu {
            Some(gpu) => format!("{}, {gpu}", h.device),
            None => format!("{}, {} ({} cores)", h.device, h.cpu, h.cpu_cores),
        };
        let mut memory = format!("RAM {}", gib(h.ram_bytes));
        if let Some(vram) = h.vram_bytes {
            memory.push_str(&format!(", VRAM {}", gib(vram)));
        }
        parts.extend([device, memory, format!("{}, {}", h.engine, h.dtype)]);
    }
    if let Some(loaded) = &w.loaded_models {
        parts.push(format!("loaded: {}", loaded.join(", ")));
    }
    escape(&parts.join(" · "))
}

/// `bytes` in GiB with one decimal.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// A rated worker's mean rating and how many requesters gave it (they moved its reliability:
/// `horde_core::ratings`); nothing before any rating.
fn rating_note(w: &WorkerDetails) -> String {
    let Some(r) = w.reputation.as_ref() else {
        return String::new();
    };
    r.rating.map_or(String::new(), |mean| {
        format!(
            " <span title=\"mean rating from {n} requester(s), one voice each\">★ {mean:.1} ({n})</span>",
            n = r.rated_by
        )
    })
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

/// Escapes text for HTML content and double-quoted attributes (also the `/register` pages').
pub(crate) fn escape(text: &str) -> String {
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
