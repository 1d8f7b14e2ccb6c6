//! Self-service registration at `/register` (issue 32): the form as a browser uses it, the key
//! shown once and working, and every refusal with its message and nothing created.

use crate::authz::{check_rows, five_callers, row, Callers};
use crate::helpers::*;
use horde_core::registration::solve_proof;
use std::sync::{Arc, Mutex};

/// A browser's view of the form: its cookie and the token in the page.
pub(crate) struct Form {
    pub(crate) cookie: String,
    pub(crate) token: String,
}

/// `GET /register` as a browser: the cookie it sets and the token in the page.
pub(crate) async fn open_form(app: &TestApp) -> Form {
    let page = http()
        .get(format!("{}/register", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let set = page.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let html = page.text().await.unwrap();
    Form {
        cookie,
        token: between(&html, "name=\"csrf_token\" value=\"", "\"").to_string(),
    }
}

/// The text between `start` and the next `end` in `html`.
pub(crate) fn between<'a>(html: &'a str, start: &str, end: &str) -> &'a str {
    let from = html
        .find(start)
        .unwrap_or_else(|| panic!("{start} in {html}"))
        + start.len();
    &html[from..from + html[from..].find(end).unwrap()]
}

/// `POST /register` with `fields`, the cookie `cookie` and extra headers: status, headers and
/// page.
pub(crate) async fn post(
    app: &TestApp,
    cookie: Option<&str>,
    fields: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut call = http().post(format!("{}/register", app.root)).form(fields);
    if let Some(cookie) = cookie {
        call = call.header("cookie", cookie);
    }
    for (name, value) in headers {
        call = call.header(*name, *value);
    }
    let answer = call.send().await.unwrap();
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    (status, headers, answer.text().await.unwrap())
}

/// Registers `name` through a fresh form from `headers`' address: status and page.
async fn register_as(app: &TestApp, name: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let form = open_form(app).await;
    let fields = [("username", name), ("csrf_token", form.token.as_str())];
    let (status, _, page) = post(app, Some(&form.cookie), &fields, headers).await;
    (status, page)
}

pub(crate) async fn users(app: &TestApp) -> i64 {
    app.state.store.user_count().await.unwrap()
}

/// A log writer the test reads back.
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

/// What the whole test binary logged: horde's own crates at every level, the others from
/// INFO, captured from the first call on by the process's one global subscriber. A subscriber
/// set per test (`set_default`) lost the server's events now and then when other tests ran
/// beside it (tracing caches each call site's interest across threads): one run in four on
/// PostgreSQL. The tests that search the logs for a key read this, so a key logged by any
/// test's server is found.
pub(crate) fn captured_logs() -> Captured {
    use tracing_subscriber::layer::SubscriberExt;
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        let levels = tracing_subscriber::filter::Targets::new()
            .with_default(tracing::Level::INFO)
            .with_target("horde", tracing::Level::TRACE);
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(move || writer.clone()))
            .with(levels);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in the test binary");
        logs
    })
    .clone()
}

impl Captured {
    /// What was written so far, as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_browser_registers_and_the_key_shown_once_works_and_rotates() {
    let logs = captured_logs();
    let app = spawn_app().await;
    let before = users(&app).await;
    let form = open_form(&app).await;
    let fields = [("username", " alice "), ("csrf_token", form.token.as_str())];
    let origin = [("origin", app.root.as_str())];
    let (status, headers, page) = post(&app, Some(&form.cookie), &fields, &origin).await;
    assert_eq!(status, 201, "{page}");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(page.contains("Store it now: it is shown only once and cannot be recovered"));
    assert!(page.contains("href=\"/api/\"") && page.contains("href=\"/\""));
    let alias = between(&page, "<strong id=\"alias\">", "<").to_string();
    let key = between(&page, "<code id=\"api-key\">", "<").to_string();
    assert_eq!(key.len(), 22);
    let me = app.client(&key).find_user().await.unwrap();
    assert_eq!(me.username, alias);
    assert!(alias.starts_with("alice#"), "{alias}");
    assert_eq!(users(&app).await, before + 1);

    // The same name again is another user.
    let (status, page) = register_as(&app, "alice", &[]).await;
    assert_eq!(status, 201);
    let second = between(&page, "<strong id=\"alias\">", "<");
    assert!(second.starts_with("alice#") && second != alias, "{second}");

    // The key rotated: the old one refused at once, the new one works.
    let rotated = app.client(&key).reset_api_key(me.id).await.unwrap().api_key;
    let old = app.client(&key).find_user().await.unwrap_err();
    assert_eq!(old.rc(), Some("UserNotFound"), "the old key still works");
    assert_eq!(app.client(&rotated).find_user().await.unwrap().id, me.id);

    // Both keys are stored only as their salted hashes, and never logged.
    let stored = crate::backend::stored_bytes(app.dir.path()).await;
    let logged = logs.text();
    assert!(logged.contains("registered through /register"), "{logged}");
    assert!(logged.contains("API key reset"), "{logged}");
    for (what, plain) in [("registered", &key), ("rotated", &rotated)] {
        let found = stored.windows(plain.len()).any(|w| w == plain.as_bytes());
        assert!(!found, "the plain {what} key is in the database");
        assert!(
            !logged.contains(plain.as_str()),
            "the plain {what} key is in the logs"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_names_and_forged_forms_are_refused_with_nothing_created() {
    let app = spawn_app().await;
    let before = users(&app).await;
    let long = "a".repeat(51);
    let just_over = "a".repeat(31);
    for (name, message) in [
        ("", "Please choose a username."),
        ("   ", "Please choose a username."),
        (long.as_str(), "at most 30 characters"),
        (just_over.as_str(), "at most 30 characters"),
        ("fucking user", "not allowed"),
    ] {
        let (status, page) = register_as(&app, name, &[]).await;
        assert_eq!(status, 400, "{name:?}: {page}");
        assert!(page.contains(message), "{name:?}: {page}");
    }

    let form = open_form(&app).await;
    let other = open_form(&app).await;
    let name = ("username", "mallory");
    // No token, a token made for another browser's cookie, no cookie, a page on another site.
    for (cookie, token, headers, message) in [
        (Some(form.cookie.as_str()), None, vec![], "token is missing"),
        (
            Some(form.cookie.as_str()),
            Some(other.token.as_str()),
            vec![],
            "not valid for this browser",
        ),
        (None, Some(form.token.as_str()), vec![], "token is missing"),
        (
            Some(form.cookie.as_str()),
            Some(form.token.as_str()),
            vec![("origin", "https://evil.example")],
            "from another site",
        ),
    ] {
        let mut fields = vec![name];
        if let Some(token) = token {
            fields.push(("csrf_token", token));
        }
        let (status, _, page) = post(&app, cookie, &fields, &headers).await;
        assert_eq!(status, 403, "{message}: {page}");
        assert!(page.contains(message), "{message}: {page}");
    }
    assert_eq!(users(&app).await, before, "a refusal created a user");

    // A token works once.
    let fields = [name, ("csrf_token", form.token.as_str())];
    let (status, _, _) = post(&app, Some(&form.cookie), &fields, &[]).await;
    assert_eq!(status, 201);
    let (status, _, page) = post(&app, Some(&form.cookie), &fields, &[]).await;
    assert_eq!(status, 403);
    assert!(page.contains("already submitted"), "{page}");
    assert_eq!(users(&app).await, before + 1);

    // A JSON client gets the AI Horde error body.
    let (status, _, body) = post(
        &app,
        Some(&form.cookie),
        &fields,
        &[("accept", "application/json")],
    )
    .await;
    assert_eq!(status, 403);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["rc"], "Forbidden");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("already submitted"));
    app.stop().await;
}

#[tokio::test]
async fn one_address_and_one_ipv6_64_register_a_few_times_an_hour() {
    let app = spawn_app_with(|c| {
        c.api.trusted_proxies = vec!["127.0.0.0/8".into()];
        c.registration.per_ip_per_hour = 2;
    })
    .await;
    let from = |address: &'static str| [("x-forwarded-for", address)];
    for address in ["2001:db8:1:2::1", "2001:db8:1:2::ffff"] {
        let (status, page) = register_as(&app, "neighbour", &from(address)).await;
        assert_eq!(status, 201, "{page}");
    }
    let before = users(&app).await;
    let form = open_form(&app).await;
    let fields = [
        ("username", "neighbour"),
        ("csrf_token", form.token.as_str()),
    ];
    let headers = from("2001:db8:1:2:abcd::7");
    let (status, answer, page) = post(&app, Some(&form.cookie), &fields, &headers).await;
    assert_eq!(status, 429, "the third from the same /64: {page}");
    assert!(
        answer["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(
        page.contains("Too many registrations from your address"),
        "{page}"
    );
    assert_eq!(users(&app).await, before);
    let (status, _) = register_as(&app, "neighbour", &from("2001:db8:1:3::1")).await;
    assert_eq!(status, 201, "another /64 has its own count");
    let (status, _) = register_as(&app, "neighbour", &from("198.51.100.4")).await;
    assert_eq!(status, 201);
    app.stop().await;
}

#[tokio::test]
async fn registration_turned_off_refuses_everyone() {
    let app = spawn_app_with(|c| {
        c.registration.mode = horde_core::registration::RegistrationMode::Off;
    })
    .await;
    let before = users(&app).await;
    let (status, page) = register_as(&app, "alice", &[]).await;
    assert_eq!(status, 403);
    assert!(page.contains("Registration is turned off"), "{page}");
    assert_eq!(users(&app).await, before);
    app.stop().await;
}

#[tokio::test]
async fn a_required_proof_of_work_is_checked() {
    let bits = 12;
    let app = spawn_app_with(|c| c.registration.proof_of_work_bits = bits).await;
    let before = users(&app).await;
    let form = open_form(&app).await;
    let good = solve_proof(&form.token, bits);
    let wrong = (0u64..)
        .map(|n| n.to_string())
        .find(|n| !horde_core::registration::proof_is_valid(&form.token, n, bits))
        .unwrap();
    let base = [("username", "miner"), ("csrf_token", form.token.as_str())];
    for (nonce, message) in [
        (None, "requires a proof of work"),
        (Some(&wrong), "is wrong"),
    ] {
        let mut fields = base.to_vec();
        if let Some(nonce) = nonce {
            fields.push(("pow_nonce", nonce));
        }
        let (status, _, page) = post(&app, Some(&form.cookie), &fields, &[]).await;
        assert_eq!(status, 403, "{page}");
        assert!(page.contains(message), "{page}");
    }
    assert_eq!(users(&app).await, before);
    let mut fields = base.to_vec();
    fields.push(("pow_nonce", &good));
    let (status, _, page) = post(&app, Some(&form.cookie), &fields, &[]).await;
    assert_eq!(status, 201, "{page}");
    assert_eq!(users(&app).await, before + 1);
    app.stop().await;
}

/// The form ignores who calls it: every caller gets the page, and a JSON body (not a form) is
/// a 400 in the AI Horde body.
#[tokio::test]
async fn the_form_answers_every_caller_alike() {
    let app = spawn_app().await;
    let Callers { keys, .. } = five_callers(&app).await;
    let body = serde_json::json!({"username": "json"});
    let rows = [
        row("GET", "/register".into(), None, [200; 5]),
        row("POST", "/register".into(), Some(body), [400; 5]),
    ];
    check_rows(&app, &keys, &rows).await;
    app.stop().await;
}

/// The page in a real browser with JavaScript off (`tests/browser/register.mjs`): the key it
/// shows works. Needs chromium and playwright-core, as `browser.rs` does.
#[tokio::test]
#[ignore = "needs Debian's chromium and playwright-core: .ci/run installs both (.ci/browser.sh)"]
async fn a_real_browser_registers_without_javascript() {
    let app = spawn_app().await;
    let printed = crate::browser::run_browser_script("register", &[("HORDE_URL", &app.root)]).await;
    let key = between(&printed, "key: ", "\n");
    let me = app.client(key).find_user().await.unwrap();
    assert!(me.username.starts_with("browser user#"), "{}", me.username);
    app.stop().await;
}
