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
    assert!(!html.contains("<script"), "the page needs no script");
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
    app.stop().await;
}
