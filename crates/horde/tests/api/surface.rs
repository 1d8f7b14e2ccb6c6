//! What every client sees before any job: headers, CORS, service info, the OpenAPI document and
//! Swagger UI, the public server's effective defaults, the test-user switch and the anonymous key.

use crate::helpers::*;
use horde_api::image::ImageRequest;
use horde_api::user::TestUserRequest;

#[tokio::test]
async fn every_answer_carries_horde_node_and_cors() {
    let app = spawn_app().await;
    let client = http();
    for (path, status) in [
        ("/api/v2/status/heartbeat", 200),
        ("/api/v2/no/such/thing", 404),
        ("/api/v2/find_user", 401),
    ] {
        let response = client
            .get(format!("{}{path}", app.root))
            .header("Origin", "https://artbot.site")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        assert!(
            response
                .headers()
                .get("horde-node")
                .is_some_and(|v| !v.is_empty()),
            "{path} has Horde-Node"
        );
        assert_eq!(
            response
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap()),
            Some("*"),
            "{path}"
        );
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
    }
    let preflight = client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v2/generate/async", app.root),
        )
        .header("Origin", "https://artbot.site")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "apikey,content-type,client-agent",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    assert!(preflight.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let not_found: horde_api::ErrorBody = client
        .get(format!("{}/api/v2/no/such/thing", app.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(not_found.rc.as_deref(), Some("ThingNotFound"));
    app.stop().await;
}

#[tokio::test]
async fn serviceinfo_openapi_and_swagger_ui_answer_offline() {
    let app = spawn_app().await;
    let info: serde_json::Value = http()
        .get(format!("{}/.well-known/serviceinfo", app.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        info["api"]["aihorde"]["base_url"],
        format!("{}/api/", app.root)
    );
    assert_eq!(info["software"]["name"], "horde");

    let spec: serde_json::Value = http()
        .get(format!("{}/api/swagger.json", app.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v2/generate/async",
        "/api/v2/generate/pop",
        "/api/v2/generate/submit",
        "/api/v2/find_user",
        "/api/v2/workers/{id}",
        "/api/v2/uploads/{job_id}",
        "/api/v2/images/{file}",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "the spec documents {path}"
        );
    }
    // Our extensions are documented; what only the coordinator sets is not offered to clients.
    let schemas = &spec["components"]["schemas"];
    let request = &schemas["ImageRequest"]["properties"];
    assert_eq!(request["post_processing_fallback"]["type"], "boolean");
    assert!(request.get("post_processing_skipped").is_none());
    let declared = &schemas["PopRequest"]["properties"]["post_processors"];
    assert_eq!(declared["maxItems"], 32, "{declared}");
    assert_eq!(declared["items"]["maxLength"], 255, "{declared}");
    // Issue 30: the model references workers read, and the bounds of a worker's reports.
    for path in ["/api/v2/reference/image", "/api/v2/reference/text"] {
        assert!(
            spec["paths"][path]["get"].is_object(),
            "the spec documents {path}"
        );
    }
    let loaded = &schemas["PopRequest"]["properties"]["loaded_models"];
    assert_eq!(loaded["maxItems"], 300, "{loaded}");
    assert_eq!(loaded["items"]["maxLength"], 255, "{loaded}");
    let load_secs = &schemas["WorkerHardware"]["properties"]["load_secs"];
    assert_eq!(load_secs["maximum"], 1800, "{load_secs}");
    // The answers every operation can give: 429 where a limit counts it, 401 where it reads
    // a key.
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let answers = &operation["responses"];
            let unlimited = [
                "/api/v2/status/heartbeat",
                "/api/v2/uploads/",
                "/api/v2/images/",
                "/api/v2/sources/",
            ]
            .iter()
            .any(|p| path.starts_with(p));
            assert_eq!(answers.get("429").is_some(), !unlimited, "{method} {path}");
            let reads_key = operation["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "apikey"));
            assert!(
                !reads_key || answers.get("401").is_some(),
                "{method} {path}"
            );
        }
    }
    let schema = &spec["components"]["schemas"]["ImageParams"]["properties"];
    assert!(
        schema.get("sampler_name").is_some() && schema.get("cfg_scale").is_some(),
        "schemas come from the Rust types"
    );

    let page = http()
        .get(format!("{}/api/", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "the Swagger UI page");
    // Its assets are served by us, not a CDN.
    assert!(!html.contains("unpkg.com") && !html.contains("cdn.jsdelivr"));
    let bundle = http()
        .get(format!("{}/api/swagger-ui-bundle.js", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status().as_u16(), 200);
    assert!(bundle.bytes().await.unwrap().len() > 100_000);
    app.stop().await;
}

#[tokio::test]
async fn a_bare_request_gets_the_public_servers_effective_defaults() {
    let app = spawn_app().await;
    let (requester, _) = app.user("requester", 100.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let accepted = requester
        .request(reqwest::Method::POST, "/generate/async")
        .json(&serde_json::json!({"prompt": "defaults"}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status().as_u16(), 202);
    let mut idle = pop_request("w1");
    idle.models = vec![];
    let refused = owner.pop(&idle).await.unwrap_err();
    assert_eq!(
        refused.rc(),
        Some("ValidationError"),
        "a worker serving no model is told so"
    );
    let job = owner.pop(&pop_request("w1")).await.unwrap();
    assert_eq!(
        job.model.as_deref(),
        Some("stable_diffusion"),
        "requests default to models [\"stable_diffusion\"]"
    );
    let p = &job.payload;
    assert_eq!(p["sampler_name"], "k_euler_a");
    assert_eq!(
        p["cfg_scale"], 5.0,
        "the parser default, not the swagger text's 7.5"
    );
    assert_eq!(p["ddim_steps"], 30);
    assert_eq!(
        (p["width"].as_u64(), p["height"].as_u64()),
        (Some(512), Some(512))
    );
    assert_eq!(p["karras"], true);
    assert_eq!(p["n_iter"], 1);
    assert_eq!(p["tiling"], false);
    assert!(
        p["seed"].as_str().unwrap().parse::<u64>().is_ok(),
        "a random seed, as a string of digits"
    );
    assert!(job.r2_upload.is_some(), "r2 defaults to true");
    assert_eq!(
        ImageRequest::new("x").params.sampler_name.name(),
        "k_euler_a"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_anonymous_key_works_with_the_lowest_priority() {
    let app = spawn_app().await;
    let (user, _) = app.user("registered", 0.0).await;
    let (owner, _) = app.user("owner", 0.0).await;
    let anonymous = app
        .anonymous()
        .generate_async(&small_request("anonymous first", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    let registered = user
        .generate_async(&small_request("registered second", 1, false))
        .await
        .unwrap()
        .id
        .unwrap();
    assert_eq!(
        app.anonymous()
            .check(&anonymous)
            .await
            .unwrap()
            .queue_position,
        2
    );
    let first = owner.pop(&pop_request("w1")).await.unwrap();
    assert_eq!(
        first.payload["prompt"], "registered second",
        "registered users go before anonymous ones"
    );
    let second = owner.pop(&pop_request("w1")).await.unwrap();
    assert_eq!(second.payload["prompt"], "anonymous first");
    assert_eq!(user.check(&registered).await.unwrap().processing, 1);
    app.stop().await;
}

#[tokio::test]
async fn test_users_exist_only_when_the_operator_enables_them() {
    let app = spawn_app_with(|c| c.api.test_users = false).await;
    let request = TestUserRequest {
        username: "nope".into(),
        oauth_id: None,
        moderator: true,
        trusted: true,
        kudos: 1.0,
    };
    let err = app
        .anonymous()
        .create_test_user(&request)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
    app.stop().await;

    let app = spawn_app().await;
    let request = TestUserRequest {
        username: "ci".into(),
        oauth_id: Some("ci-oauth".into()),
        moderator: true,
        trusted: true,
        kudos: 5000.0,
    };
    let created = app.anonymous().create_test_user(&request).await.unwrap();
    assert!(created.created);
    assert_eq!(created.api_key.len(), 22);
    assert!(created
        .api_key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    let me = app.client(&created.api_key).find_user().await.unwrap();
    assert_eq!(
        (me.id, me.kudos, me.moderator, me.trusted),
        (created.user_id, 5000.0, true, true)
    );
    assert_eq!(me.username, format!("ci#{}", created.user_id));
    // The same oauth id again rotates the key of the same user.
    let again = app.anonymous().create_test_user(&request).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.user_id, created.user_id);
    assert_ne!(again.api_key, created.api_key);
    assert!(
        app.client(&created.api_key).find_user().await.is_err(),
        "the old key is gone"
    );
    // Stored as hashes: the key appears nowhere in the database.
    let stored = crate::backend::stored_bytes(app.dir.path()).await;
    assert!(
        !stored.windows(22).any(|w| w == again.api_key.as_bytes()),
        "the plain key is stored"
    );
    app.stop().await;
}

/// A path with each `{parameter}` made `{}`: the public table and ours name them differently.
fn path_shape(path: &str) -> String {
    let mut shape = String::with_capacity(path.len());
    let mut in_parameter = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_parameter = true;
                shape.push('{');
            }
            '}' => {
                in_parameter = false;
                shape.push('}');
            }
            _ if !in_parameter => shape.push(c),
            _ => {}
        }
    }
    shape
}

/// Issue 29, point 8: every method and path of the public API (`public_routes.txt`, written
/// from the public server's route table) is in our OpenAPI document and reaches a handler: a
/// call with made-up ids is never the router's own 404 or 405.
#[tokio::test]
async fn every_operation_of_the_public_api_is_documented_and_routed() {
    let table = include_str!("public_routes.txt");
    let public: Vec<(&str, &str)> = table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_once(' ').expect("METHOD /path"))
        .collect();
    assert_eq!(public.len(), 90, "the public table has 90 pairs");
    let app = spawn_app().await;
    let spec: serde_json::Value = http()
        .get(format!("{}/api/swagger.json", app.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ours: std::collections::HashSet<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path_shape(path)))
        })
        .collect();
    let mut missing = vec![];
    let mut unrouted = vec![];
    for (method, path) in &public {
        let full = format!("/api/v2{path}");
        if !ours.contains(&(method.to_string(), path_shape(&full))) {
            missing.push(format!("{method} {path}"));
        }
        let concrete = full
            .replace("{user_id}", "12345")
            .replace("{ipaddr}", "10.1.2.3")
            .replace(['{', '}'], "");
        let answer = http()
            .request(method.parse().unwrap(), format!("{}{concrete}", app.root))
            .header("apikey", horde_api::ANONYMOUS_API_KEY)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let body: serde_json::Value = answer.json().await.unwrap_or_default();
        let fallback = status == 405
            || (status == 404
                && body["message"] == "The requested URL was not found on this server.");
        if fallback {
            unrouted.push(format!("{method} {concrete}: {status} {body}"));
        }
    }
    assert!(
        missing.is_empty(),
        "not in our spec:\n{}",
        missing.join("\n")
    );
    assert!(unrouted.is_empty(), "not routed:\n{}", unrouted.join("\n"));
}
