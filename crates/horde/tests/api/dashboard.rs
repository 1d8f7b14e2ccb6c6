//! The dashboard at `/`, read over HTTP as a browser without JavaScript would: the horde at a
//! glance, the workers table sorted and filtered by links and a form, user text escaped.

use crate::helpers::*;

async fn page(app: &TestApp, query: &str) -> String {
    let answer = http()
        .get(format!("{}/{query}", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let kind = answer.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(kind.starts_with("text/html"), "{kind}");
    // Only our own script may run, and it may talk only to this coordinator.
    let policy = answer.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(policy.contains("script-src 'self'") && policy.contains("connect-src 'self'"));
    answer.text().await.unwrap()
}

#[tokio::test]
async fn the_dashboard_shows_the_horde_without_scripts_and_escapes_what_workers_send() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let empty = page(&app, "").await;
    assert!(empty.contains("id=\"workers-online\">0<"), "{empty}");
    assert!(empty.contains("No worker was seen in the last day."));

    let sneaky = "<b>sneaky</b> & \"co\"";
    for name in [sneaky, "plain worker"] {
        let pop = owner.pop(&pop_request(name)).await.unwrap();
        assert!(pop.id.is_none());
    }
    requester
        .generate_async(&small_request("waiting here", 1, false))
        .await
        .unwrap();
    let html = page(&app, "").await;
    assert!(html.contains("id=\"workers-online\">2<"), "{html}");
    assert!(html.contains("id=\"queued-requests\">1<"), "{html}");
    assert!(html.contains("&lt;b&gt;sneaky&lt;/b&gt; &amp; &quot;co&quot;"));
    assert!(!html.contains("<b>sneaky"), "a worker's name became markup");
    // The tables are in the HTML itself; the one script, our own, only adds to them.
    assert_eq!(html.matches("<script").count(), 1);
    assert!(html.contains("<script src=\"/dashboard/app.js\" defer></script>"));
    assert!(html.contains("<noscript>"));
    let script = http()
        .get(format!("{}/dashboard/app.js", app.root))
        .send()
        .await
        .unwrap();
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let script = script.text().await.unwrap();
    assert!(script.contains("new EventSource(\"/dashboard/events\")"));
    assert!(
        html.len() + script.len() < 200 * 1024,
        "{} + {} bytes",
        html.len(),
        script.len()
    );
    // Every sort is a link a keyboard can follow; the filter is a GET form.
    for sort in [
        "name",
        "online",
        "speed",
        "jobs",
        "reliability",
        "uptime",
        "kudos",
        "max_pixels",
    ] {
        assert!(
            html.contains(&format!("href=\"/?sort={sort}&amp;q=#workers\"")),
            "{sort}"
        );
    }
    assert!(html.contains("<form method=\"get\""));

    // The workers table is the page's last section (the leaderboard above lists everyone).
    let table = |html: &str| html.split("id=\"workers\"").nth(1).unwrap().to_string();
    let filtered = table(&page(&app, "?q=plain&sort=jobs").await);
    assert!(filtered.contains("plain worker"));
    assert!(!filtered.contains("sneaky&lt;/b&gt;"), "filtered out");
    assert!(
        filtered.contains("value=\"plain\""),
        "the form keeps the filter"
    );
    let none = page(&app, "?q=nobody").await;
    assert!(none.contains("No worker matches."));
    let by_name = table(&page(&app, "?sort=name").await);
    let (plain, sneaky_at) = (
        by_name.find("plain worker").unwrap(),
        by_name.rfind("&lt;b&gt;sneaky").unwrap(),
    );
    assert!(sneaky_at < plain, "'<' sorts before 'p'");

    // The model page, linked from the models table: its figures and its workers.
    let html = page(&app, "").await;
    assert!(html.contains("<a href=\"/models/stable_diffusion\">stable_diffusion</a>"));
    let model = page(&app, "models/stable_diffusion").await;
    assert!(model.contains("<h1>stable_diffusion</h1>"), "{model}");
    assert!(model.contains("plain worker") && model.contains("&lt;b&gt;sneaky"));
    assert!(model.contains(">1</b>jobs waiting or running"), "{model}");
    // The tables alone, as the script fetches them when they changed.
    let fragment = app.page("/dashboard/tables?sort=name").await;
    assert!(fragment.starts_with("<h2>Models</h2>"), "{fragment}");
    assert!(!fragment.contains("<html"));
    assert!(html.contains(&fragment), "the page holds the same tables");
    let unknown = page(&app, "models/%3Cnothing%3E").await;
    assert!(unknown.contains("<h1>&lt;nothing&gt;</h1>"), "{unknown}");
    assert!(unknown.contains("No online worker serves this model"));
    app.stop().await;
}

/// Reads server-sent events from `response` until `done` accepts one `overview` figure set.
async fn overview_until(
    response: &mut reqwest::Response,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut buffer = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no such event: {buffer}"
        );
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), response.chunk())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if !event.contains("event: overview") {
                continue;
            }
            let data = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            let figures: serde_json::Value = serde_json::from_str(data).unwrap();
            if done(&figures) {
                return figures;
            }
        }
    }
}

#[tokio::test]
async fn the_overview_is_live_through_server_sent_events() {
    let app = spawn_app().await;
    let (owner, _) = app.user("owner", 0.0).await;
    let mut events = http()
        .get(format!("{}/dashboard/events", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 200);
    let kind = events.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    assert_eq!(events.headers()["x-accel-buffering"], "no");
    let first = overview_until(&mut events, |_| true).await;
    assert_eq!(first["workers_online"], 0, "{first}");
    assert_eq!(first["queued_requests"], 0, "{first}");
    // A worker comes online: a later event says so, without reloading anything.
    owner.pop(&pop_request("live worker")).await.unwrap();
    let later = overview_until(&mut events, |f| f["workers_online"] == 1).await;
    assert_eq!(later["images_last_hour"], 0, "{later}");
    assert_ne!(later["digest"], first["digest"], "the tables changed");
    let minutes = later["images_per_minute"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    assert!(minutes.iter().all(|m| m == 0));

    // An image is delivered: the last minute of the throughput chart counts it.
    let (requester, _) = app.user("requester", 100.0).await;
    requester
        .generate_async(&small_request("counted", 1, false))
        .await
        .unwrap();
    let job = owner.pop(&pop_request("live worker")).await.unwrap();
    owner
        .submit(&submit_inline(&job, &webp(512, 512, [9; 3], [200; 3])))
        .await
        .unwrap();
    let after = overview_until(&mut events, |f| f["images_last_hour"] == 1).await;
    let minutes = after["images_per_minute"].as_array().unwrap();
    assert_eq!(minutes[59], 1, "{after}");
    assert_eq!(minutes.iter().filter(|m| **m == 0).count(), 59);
    let chart = http()
        .get(format!("{}/dashboard/throughput.svg", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(chart.headers()["content-type"], "image/svg+xml");
    let chart = chart.text().await.unwrap();
    assert!(chart.contains("data-images=\"1\""), "{chart}");
    assert!(chart.contains("1 min ago: 1 images"), "{chart}");
    let html = page(&app, "").await;
    assert!(html.contains("<svg") && html.contains("data-images=\"1\""));
    app.stop().await;
}

/// A worker that stopped checking in stays in the table for a day, marked with when it was
/// last seen; the counters count it out at once.
#[tokio::test]
async fn a_worker_gone_offline_is_listed_with_when_it_was_last_seen() {
    let app = spawn_app_with(|c| c.workers.online_window_secs = 1).await;
    let (owner, _) = app.user("owner", 0.0).await;
    owner.pop(&pop_request("gone worker")).await.unwrap();
    owner.pop(&pop_request("here worker")).await.unwrap();
    let html = page(&app, "").await;
    assert!(
        html.contains("<td>gone worker</td><td>online</td>"),
        "{html}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    owner.pop(&pop_request("here worker")).await.unwrap();
    let html = page(&app, "?sort=online").await;
    assert!(html.contains("id=\"workers-online\">1<"), "{html}");
    assert!(
        html.contains("<td>gone worker</td><td>seen 2 s ago</td>")
            || html.contains("<td>gone worker</td><td>seen 3 s ago</td>"),
        "{html}"
    );
    let table = html.split("id=\"workers\"").nth(1).unwrap();
    assert!(
        table.find("here worker").unwrap() < table.find("gone worker").unwrap(),
        "online first"
    );
    app.stop().await;
}

/// Queued work is counted once per request, whatever models it names: the dashboard's queued
/// megapixelsteps are those `/status/performance` reports (the dashboard summed the per-model
/// figures of `/status/models`, which count a request under each model it names).
#[tokio::test]
async fn queued_megapixelsteps_count_a_request_naming_two_models_once() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 100.0).await;
    let mut request = small_request("two models", 2, false);
    request.models = vec!["stable_diffusion".into(), "Deliberate".into()];
    requester.generate_async(&request).await.unwrap();
    let mut events = http()
        .get(format!("{}/dashboard/events", app.root))
        .send()
        .await
        .unwrap();
    let overview = overview_until(&mut events, |f| f["queued_requests"] == 1).await;
    let performance: serde_json::Value = http()
        .get(format!("{}/api/v2/status/performance", app.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Two images of 512 × 512 at 10 steps.
    let expected = 2.0 * 512.0 * 512.0 * 10.0 / 1e6;
    let reported = performance["queued_megapixelsteps"].as_f64().unwrap();
    assert!((reported - expected).abs() < 1e-9, "{performance}");
    let shown = overview["queued_megapixelsteps"].as_f64().unwrap();
    assert!((shown - expected).abs() < 1e-9, "{overview}");
    app.stop().await;
}

/// Issue 30: each worker's row shows what it runs on and the models it holds in memory, as its
/// last pop reported them, escaped like the rest of what workers send.
#[tokio::test]
async fn the_workers_table_shows_each_workers_hardware_and_loaded_models() {
    let app = spawn_app().await;
    let (owner, _) = app.user("owner", 0.0).await;
    let mut pop = pop_request("gpu worker");
    pop.models = vec!["stable_diffusion".into(), "Deliberate".into()];
    pop.loaded_models = Some(vec!["Deliberate".into()]);
    pop.hardware = Some(horde_api::worker::WorkerHardware {
        device: "cuda:0".into(),
        cpu: "AMD EPYC".into(),
        cpu_cores: 16,
        ram_bytes: 64 << 30,
        gpu: Some("<i>H100</i>".into()),
        vram_bytes: Some(80 << 30),
        engine: "horde-worker 0.1.0 (candle)".into(),
        dtype: "bf16".into(),
        load_secs: 12,
    });
    owner.pop(&pop).await.unwrap();
    owner.pop(&pop_request("plain worker")).await.unwrap();
    let html = page(&app, "").await;
    let table = html.split("id=\"workers\"").nth(1).unwrap();
    let row_of = |name: &str| {
        let start = table.find(&format!("<td>{name}</td>")).unwrap();
        table[start..].split("</tr>").next().unwrap().to_string()
    };
    let gpu_row = row_of("gpu worker");
    assert!(
        gpu_row.contains(
            "<td>cuda:0, &lt;i&gt;H100&lt;/i&gt; · RAM 64.0 GiB, VRAM 80.0 GiB · \
             horde-worker 0.1.0 (candle), bf16 · loaded: Deliberate</td>"
        ),
        "{gpu_row}"
    );
    assert!(table.contains("<th scope=\"col\">Hardware</th>"));
    assert!(
        row_of("plain worker").ends_with("<td></td>"),
        "nothing reported, nothing shown"
    );
}
