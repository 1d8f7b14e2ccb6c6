//! The rate-limit layer: the public horde's per-endpoint limits, with its 429 answer and the
//! `X-RateLimit-*` headers.

use crate::clock::now_ms;
use crate::config::LimitsConfig;
use crate::state::SharedState;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use horde_api::{ErrorBody, Rc, ANONYMOUS_API_KEY};
use horde_core::ratelimit::{route_key, verdict_after, window_start, Limit, Verdict};
use std::net::SocketAddr;

/// What a limit counts by.
enum Key {
    /// The caller's address, the route and its normalised parameters (so each request id
    /// counts apart, however it is spelled: `horde_core::ratelimit::route_key`).
    IpAndPath,
    /// The caller's address and the route.
    IpAndRoute,
    /// The API key (hashed) and the route.
    ApiKeyAndRoute,
}

/// `POST /generate/rate/{id}`: 5 a minute per address and request (the public horde's).
const RATE_PER_IP: Limit = Limit {
    count: 5,
    window_ms: 60_000,
};

/// The public horde's 30 a minute per address for changing the modes and teams.
const CHANGES_PER_IP: Limit = Limit {
    count: 30,
    window_ms: 60_000,
};

/// `POST /generate/async`, whose limits a batch of prompts shares.
const ASYNC_ROUTE: &str = "/api/v2/generate/async";
/// `POST /generate/text/async`, under the same three limits (its own counters).
const TEXT_ASYNC_ROUTE: &str = "/api/v2/generate/text/async";
/// `POST /generate/batch` (beyond the public horde).
const BATCH_ROUTE: &str = "/api/v2/generate/batch";

/// The limits of one endpoint (the public horde's by default, horde-api.md §2).
fn limits_for(
    config: &LimitsConfig,
    method: &Method,
    route: &str,
    anonymous: bool,
) -> Vec<(Limit, Key)> {
    let per_ip = |limit: Limit| vec![(limit, Key::IpAndRoute)];
    match (method.as_str(), route) {
        (_, "/api/v2/status/heartbeat") => vec![],
        ("POST", ASYNC_ROUTE | TEXT_ASYNC_ROUTE) => {
            let mut limits: Vec<(Limit, Key)> = config
                .generate_per_ip
                .iter()
                .map(|l| (*l, Key::IpAndRoute))
                .collect();
            let per_key = if anonymous {
                config.generate_per_anonymous_key
            } else {
                config.generate_per_key
            };
            limits.push((per_key, Key::ApiKeyAndRoute));
            limits
        }
        // Creating a style counts as a request does, per address (its own counters).
        ("POST", "/api/v2/styles/image" | "/api/v2/styles/text") => config
            .generate_per_ip
            .iter()
            .map(|l| (*l, Key::IpAndRoute))
            .collect(),
        ("GET", "/api/v2/generate/check/{id}") => vec![(config.check_per_ip, Key::IpAndPath)],
        (_, "/api/v2/generate/status/{id}") => vec![(config.status_per_ip, Key::IpAndPath)],
        // A stream carries what status does, so it opens as often as status may be called.
        ("GET", "/api/v2/generate/stream/{id}") => vec![(config.status_per_ip, Key::IpAndPath)],
        ("GET", "/api/v2/interrogate/status/{id}") => vec![(config.check_per_ip, Key::IpAndPath)],
        (_, "/api/v2/generate/text/status/{id}") => {
            vec![(config.text_status_per_ip, Key::IpAndPath)]
        }
        (
            "POST",
            "/api/v2/generate/pop"
            | "/api/v2/generate/submit"
            | "/api/v2/generate/text/pop"
            | "/api/v2/generate/text/submit"
            | "/api/v2/interrogate/pop"
            | "/api/v2/interrogate/submit",
        ) => per_ip(config.jobs_per_ip),
        ("POST", "/api/v2/kudos/transfer") => config
            .transfer_per_key
            .iter()
            .map(|l| (*l, Key::ApiKeyAndRoute))
            .collect(),
        ("PUT", "/api/v2/sharedkeys") => vec![(config.shared_keys_per_ip, Key::IpAndPath)],
        ("POST", "/api/v2/generate/rate/{id}") => vec![(RATE_PER_IP, Key::IpAndPath)],
        ("PUT" | "DELETE", "/api/v2/workers/{id}") => {
            vec![(config.workers_per_ip, Key::IpAndPath)]
        }
        ("PUT", "/api/v2/status/modes")
        | ("POST", "/api/v2/teams")
        | ("PATCH" | "DELETE", "/api/v2/teams/{id}") => vec![(CHANGES_PER_IP, Key::IpAndRoute)],
        (_, "/api/v2/users/{id}") => vec![(config.users_per_ip, Key::IpAndPath)],
        (_, route)
            if route.starts_with("/api/v2/")
                && !route.starts_with("/api/v2/uploads")
                && !route.starts_with("/api/v2/images")
                && !route.starts_with("/api/v2/sources") =>
        {
            per_ip(config.default_per_ip)
        }
        _ => vec![],
    }
}

/// The layer: an address in timeout is refused first (`operations::guard_address`, whether or
/// not rate limits are on), then the request counts against its limits.
pub async fn rate_limit(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let client = state.trusted_proxies.client(peer.ip(), request.headers());
    let limited = limit(State(state.clone()), ConnectInfo(peer), request, next);
    crate::operations::guard_address(&state, &route, client, limited).await
}

async fn limit(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if !state.config.api.rate_limits {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    // A batch of prompts counts in `/generate/async`'s windows (`count_batch_members`).
    let route = if route == BATCH_ROUTE {
        ASYNC_ROUTE.to_string()
    } else {
        route
    };
    let apikey = request
        .headers()
        .get("apikey")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(ANONYMOUS_API_KEY)
        .to_string();
    let method = request.method().clone();
    let client = state.trusted_proxies.client(peer.ip(), request.headers());
    let limits = limits_for(
        &state.config.limits,
        &method,
        &route,
        apikey == ANONYMOUS_API_KEY,
    );
    let now = now_ms();
    let keyed: Vec<(Limit, String)> = limits
        .iter()
        .map(|(limit, key)| {
            let key = match key {
                Key::IpAndPath => format!(
                    "{client}@{method}@{}#{}",
                    route_key(&route, request.uri().path()),
                    limit.window_ms
                ),
                Key::IpAndRoute => format!("{client}@{method}@{route}#{}", limit.window_ms),
                Key::ApiKeyAndRoute => format!(
                    "{}@{}@{}#{}",
                    state.accounts.hash_key(&apikey),
                    method,
                    route,
                    limit.window_ms
                ),
            };
            (*limit, key)
        })
        .collect();
    let verdicts = match count_hits(&state, &keyed, now).await {
        Ok(verdicts) => verdicts,
        Err(error) => return error.into_response(),
    };
    let mut tightest: Option<(Limit, Verdict)> = None;
    for (limit, verdict) in verdicts {
        if !verdict.allowed {
            return too_many(limit, now, verdict.reset_in_ms);
        }
        if tightest.is_none_or(|(_, v)| verdict.remaining < v.remaining) {
            tightest = Some((limit, verdict));
        }
    }
    let mut response = next.run(request).await;
    if let Some((_, verdict)) = tightest {
        let headers = response.headers_mut();
        headers.insert("X-RateLimit-Limit", HeaderValue::from(verdict.limit));
        headers.insert(
            "X-RateLimit-Remaining",
            HeaderValue::from(verdict.remaining),
        );
        headers.insert("X-RateLimit-Reset", reset_header(now, verdict.reset_in_ms));
    }
    response
}

/// Counts one hit on each key, in this process (one coordinator) or in the shared database
/// (several coordinators on PostgreSQL, so a limit holds across them). Stops at the first
/// refusal, as the hits after it would not be made.
async fn count_hits(
    state: &SharedState,
    keyed: &[(Limit, String)],
    now: u64,
) -> Result<Vec<(Limit, Verdict)>, crate::error::ApiError> {
    let mut verdicts = Vec::with_capacity(keyed.len());
    if state.is_clustered() {
        for (limit, key) in keyed {
            let start = window_start(*limit, now);
            let hits = state.store.hit_rate_window(key, start).await?;
            let verdict = verdict_after(*limit, hits, now);
            verdicts.push((*limit, verdict));
            if !verdict.allowed {
                break;
            }
        }
    } else {
        let mut windows = state.limiter.lock().expect("limiter lock");
        for (limit, key) in keyed {
            let verdict = windows.hit(key, *limit, now);
            verdicts.push((*limit, verdict));
            if !verdict.allowed {
                break;
            }
        }
    }
    Ok(verdicts)
}

/// One hit on `key` under `limit` at `now` through the same counters as the layer (in this
/// process, or in the database when clustered), for limits a handler counts itself
/// (`registration.rs`: the address limit, and each form token's single use).
pub(crate) async fn hit_once(
    state: &SharedState,
    key: String,
    limit: Limit,
    now: u64,
) -> Result<Verdict, crate::error::ApiError> {
    let verdicts = count_hits(state, &[(limit, key)], now).await?;
    Ok(verdicts
        .first()
        .map(|(_, v)| *v)
        .expect("one key gives one verdict"))
}

/// `X-RateLimit-Reset`: the unix second at which the window ends, as flask-limiter sends it.
fn reset_header(now_ms: u64, reset_in_ms: u64) -> HeaderValue {
    HeaderValue::from((now_ms + reset_in_ms).div_ceil(1000))
}

/// The 429 answer: the AI Horde body naming the limit, `Retry-After`, and the same
/// `X-RateLimit-*` headers as every limited answer.
fn too_many(limit: Limit, now_ms: u64, reset_in_ms: u64) -> Response {
    let body = ErrorBody::new(Rc::RateLimited, limit.describe());
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    let retry = reset_in_ms.div_ceil(1000).max(1);
    response
        .headers_mut()
        .insert("Retry-After", HeaderValue::from(retry));
    response
        .headers_mut()
        .insert("X-RateLimit-Limit", HeaderValue::from(limit.count));
    response
        .headers_mut()
        .insert("X-RateLimit-Remaining", HeaderValue::from(0));
    response
        .headers_mut()
        .insert("X-RateLimit-Reset", reset_header(now_ms, reset_in_ms));
    response
}

/// A batch of N prompts costs N requests of `POST /generate/async`'s budget, counted once the
/// body says N and before anything is accepted. In each window of a minute or more (which bound
/// sustained volume) the batch route shares `/generate/async`'s counters: the layer counted the
/// batch once, and the other N − 1 members are counted here. A window shorter than a minute
/// bounds bursts (the public horde's 2 a second per key), which would forbid any batch over its
/// count: there the batch counts once, and its N members count in a minute window of their own
/// holding the same rate (2 a second: 120 a minute). Past a limit it refuses with 429, as the
/// layer does.
pub async fn count_batch_members(
    state: &SharedState,
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
    members: u32,
) -> Result<(), crate::error::ApiError> {
    if !state.config.api.rate_limits || members <= 1 {
        return Ok(());
    }
    let apikey = headers
        .get("apikey")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(ANONYMOUS_API_KEY);
    let client = state.trusted_proxies.client(peer.ip(), headers);
    let method = Method::POST;
    let limits = limits_for(
        &state.config.limits,
        &method,
        ASYNC_ROUTE,
        apikey == ANONYMOUS_API_KEY,
    );
    for (limit, key) in limits {
        let who = match key {
            Key::ApiKeyAndRoute => state.accounts.hash_key(apikey),
            Key::IpAndRoute | Key::IpAndPath => client.to_string(),
        };
        // The layer's key for `/generate/async` (by address or key, and route).
        let shared = format!("{who}@{method}@{ASYNC_ROUTE}#{}", limit.window_ms);
        let (limit, key, hits) = if limit.window_ms >= MINUTE_MS {
            (limit, shared, members - 1)
        } else {
            let per_minute = Limit {
                count: limit
                    .count
                    .saturating_mul((MINUTE_MS / limit.window_ms.max(1)) as u32),
                window_ms: MINUTE_MS,
            };
            (per_minute, format!("{shared}#batch"), members)
        };
        count_member_hits(state, limit, key, hits).await?;
    }
    Ok(())
}

/// The window of the members of a batch whose limit has a shorter one.
const MINUTE_MS: u64 = 60_000;

/// `hits` hits on `key`, refused with 429 at the first past `limit`.
async fn count_member_hits(
    state: &SharedState,
    limit: Limit,
    key: String,
    hits: u32,
) -> Result<(), crate::error::ApiError> {
    let keyed = [(limit, key)];
    for _ in 0..hits {
        for (limit, verdict) in count_hits(state, &keyed, now_ms()).await? {
            if !verdict.allowed {
                let retry = verdict.reset_in_ms.div_ceil(1000).max(1);
                return Err(
                    crate::error::ApiError::new(Rc::RateLimited, limit.describe())
                        .retry_after(retry),
                );
            }
        }
    }
    Ok(())
}
