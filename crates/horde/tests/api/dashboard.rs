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
    answer.text().await.unwrap()
}

#[tokio::test]
async fn the_dashboard_shows_the_horde_without_scripts_and_escapes_what_workers_send() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let empty = page(&app, "").await;
    assert!(empty.contains("id=\"workers-online\">0<"), "{empty}");
    assert!(empty.contains("No worker is online."));

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
    // The tables are in the HTML itself; the one script only makes the overview live.
    assert_eq!(html.matches("<script").count(), 1);
    let script = html
        .split("<script>")
        .nth(1)
        .unwrap()
        .split("</script>")
        .next()
        .unwrap();
    assert!(script.contains("EventSource(\"/dashboard/events\")"));
    assert!(script.len() < 1024, "{} bytes of script", script.len());
    assert!(html.len() < 200 * 1024, "{} bytes", html.len());
    // Every sort is a link a keyboard can follow; the filter is a GET form.
    for sort in [
        "name",
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
    assert!(none.contains("No online worker matches."));
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
    let first = overview_until(&mut events, |_| true).await;
    assert_eq!(first["workers_online"], 0, "{first}");
    assert_eq!(first["queued_requests"], 0, "{first}");
    // A worker comes online: a later event says so, without reloading anything.
    owner.pop(&pop_request("live worker")).await.unwrap();
    let later = overview_until(&mut events, |f| f["workers_online"] == 1).await;
    assert_eq!(later["images_last_hour"], 0, "{later}");
    app.stop().await;
}
