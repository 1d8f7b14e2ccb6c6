//! The dashboard in a real browser: Debian's chromium, driven by playwright-core
//! (`tests/browser/dashboard.mjs`), against the real coordinator and the real worker on a tiny
//! checkpoint. The script checks what a person would see (the worker appearing live, a
//! generation from the form showing its image, the counters moving, the moderator's actions,
//! the live figures coming back after a coordinator restart, keyboard use, the tables without
//! JavaScript, a first load under 200 KB); this side checks
//! that what the page did reached the coordinator, and that the screenshots are real images.
//!
//! It needs chromium and `npm ci` in `tests/browser`, which `.ci/run` installs
//! (`.ci/browser.sh`); it is ignored in the plain `cargo test` pass and runs in the
//! `--include-ignored` pass.

use crate::helpers::*;
use crate::worker::{start_worker, tiny_checkpoint, worker_config};
use horde_api::user::TestUserRequest;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The worker that a moderator finds suspicious on the page.
const SHADY: &str = "shady-worker";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's chromium and playwright-core: .ci/run installs both (.ci/browser.sh)"]
async fn the_dashboard_works_in_a_real_browser() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let moderator = app
        .anonymous()
        .create_test_user(&TestUserRequest {
            username: "dash-moderator".into(),
            oauth_id: None,
            moderator: true,
            trusted: true,
            kudos: 100.0,
        })
        .await
        .unwrap();
    let requester = make_a_shady_worker(&app).await;

    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&screenshots);
    std::fs::create_dir_all(&screenshots).unwrap();
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run .ci/browser.sh (or .ci/run)"
    );
    let mut script = tokio::process::Command::new("node")
        .arg("dashboard.mjs")
        .current_dir(&browser_dir)
        .env("HORDE_URL", &app.root)
        .env("HORDE_API_KEY", &moderator.api_key)
        .env("HORDE_SHADY_WORKER", SHADY)
        .env("SCREENSHOTS", &screenshots)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");

    // The worker starts once the page is open, so that the page sees it arrive; the
    // coordinator restarts when the page asks, and a request then waits that no worker can
    // take (512×512 is beyond the tiny worker, the shady one's owner is flagged by then).
    let mut lines = BufReader::new(script.stdout.take().unwrap()).lines();
    let mut worker = None;
    let mut printed = vec![];
    let mut app = Some(app);
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            println!("browser: {line}");
            let running = app.as_ref().unwrap();
            if line == "page-ready" {
                let checkpoint = tiny_checkpoint(dir.path());
                worker = Some(start_worker(worker_config(
                    &running.root,
                    moderator.api_key.clone(),
                    &checkpoint,
                )));
            } else if line == "restart-please" {
                let restarted = app.take().unwrap().restart_in_place().await;
                requester
                    .generate_async(&small_request("waits after the restart", 1, false))
                    .await
                    .unwrap();
                app = Some(restarted);
            }
            printed.push(line);
        }
    };
    tokio::time::timeout(Duration::from_secs(240), read)
        .await
        .expect("the browser checks finish within 4 minutes");
    let app = app.unwrap();
    let status = script.wait().await.unwrap();
    assert!(status.success(), "the browser checks failed: {printed:?}");
    assert!(printed.iter().any(|l| l == "browser checks passed"));

    // What the page did reached the coordinator.
    let owner = app.client(&moderator.api_key);
    let me = owner.find_user().await.unwrap();
    assert_eq!(me.records.request.image, 1, "the form's request was made");
    assert!(me.kudos < 100.0, "and paid for: {}", me.kudos);
    let tiny = owner.worker_by_name("tiny-worker").await.unwrap();
    assert!(
        !tiny.maintenance_mode,
        "maintenance toggled on and off again"
    );
    assert_eq!(tiny.requests_fulfilled, 1);
    let shady = owner.worker_by_name(SHADY).await.unwrap();
    assert_eq!(
        shady.reputation.unwrap().suspicion,
        0,
        "cleared by the page"
    );
    assert!(shady.flagged, "its owner was flagged from the page");

    for name in [
        "1-worker-online.png",
        "2-generated.png",
        "3-moderation.png",
        "4-after-restart.png",
        "5-without-javascript.png",
    ] {
        let shot = image::open(screenshots.join(name)).expect("a screenshot decodes");
        assert!(
            shot.width() >= 800 && shot.height() >= 300,
            "{name} is too small"
        );
    }
    println!("screenshots: {}", screenshots.display());
    let (stop, task) = worker.expect("the worker was started");
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// A worker whose image had the wrong size: one suspicion, still online. Returns the client
/// of the requester it failed.
async fn make_a_shady_worker(app: &TestApp) -> horde_client::Client {
    let (requester, _) = app.user("dash-requester", 100.0).await;
    let (shady_owner, _) = app.user("shady-owner", 0.0).await;
    let id = requester
        .generate_async(&small_request("for the shady worker", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let job = shady_owner.pop(&pop_request(SHADY)).await.unwrap();
    assert!(job.id.is_some(), "{job:?}");
    let refused = shady_owner
        .submit(&submit_inline(&job, &webp(256, 256, [1; 3], [1; 3])))
        .await
        .unwrap_err();
    assert_eq!(refused.rc(), Some("ImageValidationFailed"));
    requester.cancel(&id).await.unwrap();
    let details = requester.worker_by_name(SHADY).await.unwrap();
    assert_eq!(details.reputation.unwrap().suspicion, 1);
    requester
}

/// Runs `tests/browser/{name}.mjs` with `env`, asserts it succeeded and printed
/// "{name} checks passed", and returns what it printed.
pub(crate) async fn run_browser_script(name: &str, env: &[(&str, &str)]) -> String {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let output = tokio::process::Command::new("node")
        .arg(format!("{name}.mjs"))
        .current_dir(&browser_dir)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("node runs");
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{printed}\n{errors}");
    assert!(
        printed.contains(&format!("{name} checks passed")),
        "{printed}"
    );
    printed
}

/// The account page's tier, quota and key management in a real browser
/// (`tests/browser/keys.mjs`): what the page did is checked here through the API, and the keys
/// it showed (the rotated key, a shared key) are in neither the database nor the logs (the
/// test binary's, `register::captured_logs`).
#[tokio::test]
#[ignore = "needs Debian's chromium and playwright-core: .ci/run installs both (.ci/browser.sh)"]
async fn the_account_page_manages_tiers_and_keys() {
    let logs = crate::register::captured_logs();
    let app = spawn_app_with(|c| {
        c.quotas.tiers.insert(
            "gold".into(),
            horde_core::quota::Quota {
                images_per_day: 50,
                ..Default::default()
            },
        );
    })
    .await;
    let moderator = app
        .anonymous()
        .create_test_user(&TestUserRequest {
            username: "keys-moderator".into(),
            oauth_id: None,
            moderator: true,
            trusted: true,
            kudos: 100.0,
        })
        .await
        .unwrap();
    let (user, user_id) = app.untrusted_user("tiered", 0.0).await;
    let user_id = user_id.to_string();
    let printed = run_browser_script(
        "keys",
        &[
            ("HORDE_URL", &app.root),
            ("HORDE_API_KEY", &moderator.api_key),
            ("HORDE_USER_ID", &user_id),
        ],
    )
    .await;
    let line = |label: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("{label} in {printed}"))
            .to_string()
    };
    let (shared, deleted, rotated) = (line("shared: "), line("deleted: "), line("rotated: "));

    // The user's tier, the shared keys and the rotation reached the coordinator.
    let quota = user.find_user().await.unwrap().daily_quota.unwrap();
    assert_eq!((quota.tier.as_str(), quota.images_per_day), ("gold", 50));
    let kept = app.anonymous().shared_key(&shared).await.unwrap();
    assert_eq!((kept.name.as_str(), kept.kudos), ("for my friend", 75));
    assert!(kept.expiry.is_some());
    let gone = app.anonymous().shared_key(&deleted).await.unwrap_err();
    assert_eq!(gone.rc(), Some("SharedKeyInvalid"));
    let old = app
        .client(&moderator.api_key)
        .find_user()
        .await
        .unwrap_err();
    assert_eq!(old.rc(), Some("UserNotFound"), "the old key is refused");
    let me = app.client(&rotated).find_user().await.unwrap();
    assert_eq!(me.id, moderator.user_id);

    // Keys made here are stored only as salted hashes, and never logged.
    let stored = crate::backend::stored_bytes(app.dir.path()).await;
    let logged = logs.text();
    for key in [&rotated, &shared, &deleted] {
        assert!(
            !stored.windows(key.len()).any(|w| w == key.as_bytes()),
            "{key} is in the database"
        );
        assert!(!logged.contains(key.as_str()), "{key} is in the logs");
    }
    assert!(logged.contains("API key reset"), "the rotation is logged");
    app.stop().await;
}
