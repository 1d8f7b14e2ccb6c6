//! The cheap attacks on a public coordinator (issue 21), each performed for real: a flood of
//! distinct paths against the rate limiter, idle and byte-by-byte sockets, decompression
//! bombs, oversized lists, forged forwarded-for headers, and malformed bodies. The ones that
//! measure memory run the `horde` binary as its own process and read its resident size.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A kilobyte of a process's memory as /proc reports it (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// `requests` GETs of `path_of(i)` spread over 32 concurrent tasks; the count of each status.
async fn flood(
    root: &str,
    requests: usize,
    path_of: impl Fn(usize) -> String + Send + Sync + 'static,
) -> std::collections::BTreeMap<u16, usize> {
    let path_of = std::sync::Arc::new(path_of);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (root, path_of, next) = (root.to_string(), path_of.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let client = http();
            let mut counts = std::collections::BTreeMap::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests {
                    return counts;
                }
                let status = client
                    .get(format!("{root}{}", path_of(i)))
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                *counts.entry(status).or_insert(0) += 1;
            }
        }));
    }
    let mut total = std::collections::BTreeMap::new();
    for task in tasks {
        for (status, n) in task.await.unwrap() {
            *total.entry(status).or_insert(0) += n;
        }
    }
    total
}

/// The limit the flood test holds the server to, in MiB of resident memory: a debug build
/// starts near 45 MiB and ends the flood near 45 MiB (20 000 counters of a short key each);
/// keyed by the literal path, the 50 000 long paths alone would hold 200 MB.
const FLOOD_RSS_BOUND_MIB: u64 = 100;

#[tokio::test]
async fn a_flood_of_distinct_paths_leaves_the_rate_limiter_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["--listen", "127.0.0.1:0"],
        &[("HORDE_API__RATE_LIMIT_KEYS", "20000")],
    );
    let pid = server.child.id();
    let before = proc_kib(pid, "VmRSS");
    // Half new request ids (each a counter of its own, up to the cap), half long garbage ids
    // (all one counter).
    let garbage = "x".repeat(4000);
    let statuses = flood(&server.root, 100_000, move |i| {
        if i % 2 == 0 {
            format!("/api/v2/generate/check/{}", uuid::Uuid::new_v4())
        } else {
            format!("/api/v2/users/{garbage}{i}")
        }
    })
    .await;
    let after = proc_kib(pid, "VmRSS");
    eprintln!("RSS before {before} KiB, after {after} KiB");
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [404, 429],
        "unknown ids are 404 until their shared counter says 429: {statuses:?}"
    );
    assert!(
        after < FLOOD_RSS_BOUND_MIB * 1024,
        "resident {before} KiB before, {after} KiB after 100 000 distinct paths"
    );
}

#[tokio::test]
async fn a_percent_encoded_id_counts_against_the_same_limit() {
    let (app, _, id) = rate_limited_with_a_request().await;
    let get = |path: String| http().get(format!("{}/api/v2{path}", app.root)).send();
    for _ in 0..10 {
        let answer = get(format!("/generate/status/{id}")).await.unwrap();
        assert_eq!(answer.status().as_u16(), 200);
    }
    // The same id with its first character percent-encoded, and in capitals.
    let encoded = format!("%{:02X}{}", id.as_bytes()[0], &id[1..]);
    for spelled in [encoded, id.to_uppercase()] {
        let answer = get(format!("/generate/status/{spelled}")).await.unwrap();
        assert_eq!(answer.status().as_u16(), 429, "{spelled} escaped the limit");
    }
}

/// A socket that connected and sends nothing, or `prefix` and then nothing.
fn stalled_socket(root: &str, prefix: &[u8]) -> TcpStream {
    let address = root.trim_start_matches("http://");
    let mut socket = TcpStream::connect(address).unwrap();
    socket.write_all(prefix).unwrap();
    socket
}

/// Whether the server closed `socket` within `wait` (EOF, or a reset), reading whatever it
/// answered.
fn closed_within(socket: &mut TcpStream, wait: Duration) -> (bool, String) {
    socket.set_read_timeout(Some(wait)).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match socket.read(&mut buffer) {
            Ok(0) => return (true, String::from_utf8_lossy(&answer).into_owned()),
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (true, String::from_utf8_lossy(&answer).into_owned())
            }
            Err(_) => return (false, String::from_utf8_lossy(&answer).into_owned()),
        }
    }
}

#[tokio::test]
async fn idle_and_byte_by_byte_sockets_are_closed_and_the_heartbeat_keeps_answering() {
    let app = spawn_app_with(|c| {
        c.api.header_timeout_secs = 2;
        c.api.body_timeout_secs = 2;
    })
    .await;
    let root = app.root.clone();
    let sockets = tokio::task::spawn_blocking(move || {
        let mut sockets: Vec<TcpStream> = (0..1000).map(|_| stalled_socket(&root, b"")).collect();
        // Slowloris: a request line begun and never finished.
        sockets.extend((0..100).map(|_| {
            stalled_socket(
                &root,
                b"GET /api/v2/status/heartbeat HTTP/1.1\r\nHost: x\r\nX-a: ",
            )
        }));
        sockets
    })
    .await
    .unwrap();
    let heartbeat = http()
        .get(format!("{}/api/v2/status/heartbeat", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(
        heartbeat.status().as_u16(),
        200,
        "1 100 stalled sockets do not starve it"
    );
    let closed = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(3));
        sockets
            .into_iter()
            .map(|mut s| closed_within(&mut s, Duration::from_secs(2)).0)
            .filter(|closed| *closed)
            .count()
    })
    .await
    .unwrap();
    assert_eq!(
        closed, 1100,
        "the header timeout closed every stalled socket"
    );

    // A kept-alive connection left idle after its answer is closed too.
    let root = app.root.clone();
    let (kept_closed, answer) = tokio::task::spawn_blocking(move || {
        let mut socket = stalled_socket(
            &root,
            b"GET /api/v2/status/heartbeat HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        closed_within(&mut socket, Duration::from_secs(6))
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(kept_closed, "an idle kept-alive connection is closed");

    // A body that never arrives whole: 408 with the AI Horde body.
    let root = app.root.clone();
    let (_, answer) = tokio::task::spawn_blocking(move || {
        let mut socket = stalled_socket(
            &root,
            b"POST /api/v2/generate/async HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\"",
        );
        closed_within(&mut socket, Duration::from_secs(6))
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""rc":"RequestTimeout""#), "{answer}");
}

#[tokio::test]
async fn past_the_connection_cap_a_connection_is_refused_clearly() {
    let app = spawn_app_with(|c| {
        c.api.max_connections = 20;
        c.api.header_timeout_secs = 2;
    })
    .await;
    let root = app.root.clone();
    let (held, refused) = tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..20).map(|_| stalled_socket(&root, b"")).collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut extra = stalled_socket(
            &root,
            b"GET /api/v2/status/heartbeat HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        (held, closed_within(&mut extra, Duration::from_secs(2)).1)
    })
    .await
    .unwrap();
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.contains(r#""rc":"TooManyConnections""#),
        "{refused}"
    );
    // Once the header timeout closed the idle ones, everyone is served again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(held);
    let heartbeat = http()
        .get(format!("{}/api/v2/status/heartbeat", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(heartbeat.status().as_u16(), 200);
}

/// A PNG whose header claims `width` × `height` RGBA pixels, all zero: a few hundred KB that
/// decode to width × height × 4 bytes.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    use flate2::{write::ZlibEncoder, Compression};
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 6, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &header);
    let mut pixels = ZlibEncoder::new(Vec::new(), Compression::best());
    let row = vec![0u8; width as usize * 4 + 1];
    for _ in 0..height {
        pixels.write_all(&row).unwrap();
    }
    chunk(&mut out, b"IDAT", &pixels.finish().unwrap());
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A lossless WebP header claiming 16 384 × 16 384 pixels, with a few bytes of data.
fn webp_bomb() -> Vec<u8> {
    let side = 16_384u32 - 1;
    let bits = side | (side << 14);
    let mut vp8l = vec![0x2f];
    vp8l.extend_from_slice(&bits.to_le_bytes());
    vp8l.extend_from_slice(&[0u8; 64]);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((4 + 8 + vp8l.len()) as u32).to_le_bytes());
    out.extend_from_slice(b"WEBPVP8L");
    out.extend_from_slice(&(vp8l.len() as u32).to_le_bytes());
    out.extend_from_slice(&vp8l);
    out
}

/// A JPEG start-of-frame header claiming 65 000 × 65 000 pixels.
fn jpeg_bomb() -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
    out.extend_from_slice(&65_000u16.to_be_bytes());
    out.extend_from_slice(&65_000u16.to_be_bytes());
    out.extend_from_slice(&[3, 1, 0x11, 0, 2, 0x11, 1, 3, 0x11, 1]);
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

#[tokio::test]
async fn decompression_bombs_are_refused_from_their_header_before_any_pixel_is_decoded() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--enable-test-users",
            "--no-rate-limits",
        ],
        &[],
    );
    let pid = server.child.id();
    let app_root = server.root.clone();
    let anonymous = horde_client::Client::new(&app_root, horde_api::ANONYMOUS_API_KEY);
    let create = |name: &str| horde_api::user::TestUserRequest {
        username: name.into(),
        oauth_id: None,
        moderator: false,
        trusted: true,
        kudos: 1000.0,
    };
    let requester = anonymous
        .create_test_user(&create("requester"))
        .await
        .unwrap();
    let owner = anonymous.create_test_user(&create("owner")).await.unwrap();
    let requester = anonymous.with_api_key(&requester.api_key);
    let owner = anonymous.with_api_key(&owner.api_key);
    let png = png_bomb(10_000, 10_000);
    assert!(png.len() < 1_000_000, "{} bytes", png.len());
    let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let before = proc_kib(pid, "VmHWM");

    // As a worker's result: base64 and uploaded, each format.
    requester
        .generate_async(&small_request("a cat", 3, true))
        .await
        .unwrap();
    for bomb in [png.clone(), webp_bomb(), jpeg_bomb()] {
        let pop = owner.pop(&pop_request("bomber")).await.unwrap();
        let uploaded = http()
            .put(pop.r2_upload.clone().unwrap())
            .body(bomb.clone())
            .send()
            .await
            .unwrap();
        let (status, body) = (uploaded.status().as_u16(), uploaded.text().await.unwrap());
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("ImageValidationFailed"), "{body}");
        let submitted = owner.submit(&submit_inline(&pop, &bomb)).await.unwrap_err();
        assert_eq!(
            submitted.rc(),
            Some("ImageValidationFailed"),
            "{submitted:?}"
        );
    }
    // As a request's source image or mask.
    for (field, bomb) in [("source_image", &png), ("source_mask", &jpeg_bomb())] {
        let mut request = json!({"prompt": "a cat", "source_image": encode(&png_bomb(64, 64))});
        request[field] = Value::String(encode(bomb));
        let answer = requester
            .request(Method::POST, "/generate/async")
            .json(&request)
            .send()
            .await
            .unwrap();
        let body: Value = answer.json().await.unwrap();
        assert_eq!(
            body["rc"], "SourceImageResolutionExceeded",
            "{field}: {body}"
        );
    }
    let after = proc_kib(pid, "VmHWM");
    assert!(
        after - before < 64 * 1024,
        "peak resident grew by {} KiB (a decoded bomb is 381 MiB)",
        after - before
    );
}

#[tokio::test]
async fn lists_and_free_form_fields_past_their_bound_are_refused_before_anything_is_stored() {
    let app = spawn_app().await;
    let (user, _) = app.user("lister", 1000.0).await;
    let models: Vec<String> = (0..400_000).map(|i| format!("model-{i}")).collect();
    let cases = [
        (
            "/generate/async",
            json!({"prompt": "a cat", "models": models}),
            "models",
        ),
        (
            "/generate/async",
            json!({"prompt": "a cat", "workers": vec!["w"; 101]}),
            "workers",
        ),
        (
            "/generate/async",
            json!({"prompt": "a cat", "params": {"special": {"x": "y".repeat(20_000)}}}),
            "params.special",
        ),
        (
            "/generate/async",
            json!({"prompt": "a cat", "params": {"seed": "9".repeat(300)}}),
            "params.seed",
        ),
        (
            "/generate/pop",
            json!({"name": "w1", "models": ["stable_diffusion"], "blacklist": vec!["word"; 201]}),
            "blacklist",
        ),
        (
            "/generate/pop",
            json!({"name": "w1", "models": ["stable_diffusion"], "priority_usernames": vec!["a#1"; 201]}),
            "priority_usernames",
        ),
        (
            "/generate/pop",
            json!({"name": "w1", "models": ["stable_diffusion"], "post_processors": vec!["GFPGAN"; 33]}),
            "post_processors",
        ),
        (
            "/generate/pop",
            json!({"name": "w1", "models": ["stable_diffusion"], "post_processors": ["x".repeat(256)]}),
            "post_processors.0",
        ),
    ];
    for (path, body, field) in cases {
        let (status, answer) = {
            let response = user
                .request(Method::POST, path)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        };
        assert_eq!(status, 400, "{field}: {answer}");
        assert!(answer["errors"][field].is_string(), "{field}: {answer}");
    }
    assert_eq!(
        app.anonymous().performance().await.unwrap().queued_requests,
        0
    );
    assert!(
        app.anonymous().workers().await.unwrap().is_empty(),
        "no worker was registered"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_limit() {
    let app = spawn_app_with(|c| {
        c.api.rate_limits = true;
        c.api.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    let heartbeatless = |client: &'static str| {
        http()
            .get(format!("{}/api/v2/status/performance", app.root))
            .header("x-forwarded-for", client)
            .send()
    };
    // The default limit is 90 a minute per address: one client uses it all up.
    with_a_minute_window_ahead(Duration::from_secs(30)).await;
    for _ in 0..90 {
        assert_eq!(heartbeatless("198.51.100.1").await.unwrap().status(), 200);
    }
    assert_eq!(heartbeatless("198.51.100.1").await.unwrap().status(), 429);
    assert_eq!(
        heartbeatless("198.51.100.2").await.unwrap().status(),
        200,
        "another client behind the same proxy has its own limit"
    );

    // From a peer that is not a trusted proxy, the header is ignored.
    let direct = spawn_app_with(|c| c.api.rate_limits = true).await;
    with_a_minute_window_ahead(Duration::from_secs(30)).await;
    for i in 0..91 {
        let status = http()
            .get(format!("{}/api/v2/status/performance", direct.root))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(
            status.as_u16(),
            if i < 90 { 200 } else { 429 },
            "request {i}"
        );
    }
}

#[tokio::test]
async fn public_workers_off_hides_the_worker_ids_from_all_but_the_user_and_moderators() {
    let app = spawn_app().await;
    let (owner, owner_id) = app.user("private", 0.0).await;
    owner.pop(&pop_request("hidden-worker")).await.unwrap();
    let (moderator_key, _) = app.moderator().await;
    let path = format!("/users/{owner_id}");
    let ids = |client: horde_client::Client| {
        let path = path.clone();
        async move {
            let body: Value = client
                .request(Method::GET, &path)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (body["worker_ids"].clone(), body["worker_count"].clone())
        }
    };
    let (public, count) = ids(app.anonymous()).await;
    assert_eq!((public, count), (Value::Null, json!(1)));
    assert_eq!(ids(owner.clone()).await.0.as_array().unwrap().len(), 1);
    assert_eq!(
        ids(app.client(&moderator_key))
            .await
            .0
            .as_array()
            .unwrap()
            .len(),
        1
    );
    owner
        .request(Method::PUT, &path)
        .json(&json!({"public_workers": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(ids(app.anonymous()).await.0.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn malformed_bodies_and_requests_are_400s_with_the_ai_horde_body() {
    let app = spawn_app_with(|c| c.api.max_body_bytes = 64 * 1024).await;
    let (user, _) = app.user("sloppy", 1000.0).await;
    let raw_body = |body: &'static str| {
        user.request(Method::POST, "/generate/async")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for body in [
        r#"{"prompt": "a cat"} trailing"#,
        r#"{"prompt": "a cat"}{"prompt": "a dog"}"#,
        r#"[{"prompt": "a cat"}]"#,
        // serde would read an array of a struct's fields in order: not here, at any depth.
        r#"["a cat"]"#,
        r#"{"prompt": "a cat", "params": []}"#,
    ] {
        let answer = raw_body(body).await.unwrap();
        let status = answer.status().as_u16();
        let json: Value = answer.json().await.unwrap();
        assert_eq!(status, 400, "{body}: {json}");
        assert!(json["message"].is_string(), "{body}: {json}");
    }
    assert_eq!(
        app.anonymous().performance().await.unwrap().queued_requests,
        0
    );

    let big = "x".repeat(100 * 1024);
    let checks: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (
            user.request(Method::POST, "/generate/async")
                .header("content-type", "application/json")
                .body(format!(r#"{{"prompt": "{big}"}}"#)),
            413,
        ),
        (
            http().get(format!("{}/api/v2/workers?{}", app.root, "a".repeat(9000))),
            414,
        ),
        (
            http()
                .get(format!("{}/api/v2/status/heartbeat", app.root))
                .header("x-big", "y".repeat(17 * 1024)),
            431,
        ),
        (
            http().get(format!("{}/api/v2/status/models?min_count=lots", app.root)),
            400,
        ),
        (http().get(format!("{}/api/v2/users/%ff%fe", app.root)), 400),
        (
            http().put(format!(
                "{}/api/v2/uploads/not-a-job?expires=soon&sig=x",
                app.root
            )),
            400,
        ),
    ];
    for (request, status) in checks {
        let answer = request.send().await.unwrap();
        let got = answer.status().as_u16();
        let content_type = answer
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let text = answer.text().await.unwrap();
        assert_eq!(got, status, "{text}");
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "{status}: {text}"
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        assert!(
            body["message"].is_string() && body["rc"].is_string(),
            "{body}"
        );
    }
}

#[tokio::test]
async fn every_answer_says_nosniff_and_the_docs_and_chart_carry_a_policy() {
    let app = spawn_app().await;
    for path in ["/api/v2/status/heartbeat", "/api/v2/no-such", "/", "/api/"] {
        let answer = http()
            .get(format!("{}{path}", app.root))
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer
                .headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{path}"
        );
    }
    for path in ["/api/", "/dashboard/throughput.svg"] {
        let answer = http()
            .get(format!("{}{path}", app.root))
            .send()
            .await
            .unwrap();
        let policy = answer
            .headers()
            .get("content-security-policy")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(policy.contains("default-src"), "{path}: {policy:?}");
    }
}
