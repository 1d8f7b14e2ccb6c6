//! The coordinator: AI Horde API v2 over HTTP (axum), with the live queue in memory and every
//! acknowledged change in the store.
//!
//! [`Application::build`] opens the store, reloads the live state, binds the listener and
//! reports its port, so tests bind `127.0.0.1:0`. Handlers (`routes`) are thin; the service
//! methods on [`state::AppState`] (`requests`, `jobs`, `workers`, `users`) orchestrate
//! horde-core's rules and horde-store's persistence. No SQL and no HTTP type below this crate.

pub mod accounts;
pub mod auth;
pub mod batches;
pub mod catalogue;
pub mod client_ip;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod filters;
pub mod group_commit;
pub mod guard;
pub mod images;
pub mod interrogations;
pub mod invites;
pub mod jobs;
pub mod kinds;
pub mod lifecycle;
pub mod live_requests;
pub mod metrics;
pub mod model_reference;
pub mod modes;
pub mod offline;
pub mod openapi;
pub mod operations;
pub mod ratelimit;
pub mod registration;
pub mod reputation;
pub mod requests;
pub mod routes;
pub mod shared_keys;
pub mod sources;
pub mod state;
pub mod streaming;
pub mod strict_json;
pub mod styles;
pub mod sweeper;
pub mod teams;
pub mod texts;
pub mod users;
pub mod waiting;
pub mod webhooks;
pub mod workers;

use crate::accounts::Accounts;
use crate::catalogue::Catalogue;
use crate::clock::now;
use crate::config::ServerConfig;
use crate::images::ImageStore;
use crate::live_requests::LiveRequests;
use crate::state::{AppState, SharedState};
use crate::workers::Workers;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::routing::{get, post, put};
use axum::Router;
use horde_core::keys::generate_token;
use horde_core::prompt_filter::FilterSet;
use horde_store::Store;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tower_http::cors::{Any, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa_swagger_ui::SwaggerUi;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] horde_store::StoreError),
    #[error("cannot load the model reference: {0}")]
    Models(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A built coordinator, bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: SharedState,
}

impl Application {
    pub async fn build(config: ServerConfig) -> Result<Application, StartError> {
        let data_dir = |source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&config.data_dir).map_err(data_dir)?;
        let store = Store::open(&config.database_location(), config.database.durability).await?;
        let shared_images =
            (store.backend() == horde_store::Backend::Postgres).then(|| store.clone());
        let images = ImageStore::open(&config.images_dir(), shared_images).map_err(data_dir)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let state = Arc::new(open_state(config, store, images, local).await?);
        let router = router(state.clone());
        Ok(Application {
            listener,
            router,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// The bounds on connections: the configured ones, with the cap kept under this process's
    /// open-file limit (raised to its hard limit first; both figures are logged).
    fn connection_limits(&self) -> connections::ConnectionLimits {
        let api = &self.state.config.api;
        let (soft, hard) = connections::raise_open_file_limit();
        let max_connections = connections::fitting_cap(api.max_connections, soft);
        tracing::info!(
            open_files = soft,
            open_files_hard_limit = hard,
            max_connections,
            "open-file limit raised to the hard limit; connections capped below it"
        );
        connections::ConnectionLimits {
            header_timeout: std::time::Duration::from_secs(api.header_timeout_secs.max(1)),
            max_connections,
            max_header_bytes: guard::MAX_HEADER_BYTES + guard::MAX_URI_BYTES,
        }
    }

    /// Serves until `shutdown` completes, with the sweeper running beside.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let sweeper = tokio::spawn(sweeper::run(self.state.clone()));
        let reloads = tokio::spawn(model_reference::run_reloads(self.state.clone()));
        let webhook_calls = tokio::spawn(webhooks::run(self.state.clone()));
        let cluster_tasks = if self.state.is_clustered() {
            let url = self.state.config.database.url.clone();
            vec![
                cluster::spawn_listener(self.state.clone(), url),
                cluster::spawn_refresh(self.state.clone()),
            ]
        } else {
            vec![]
        };
        let state = self.state.clone();
        let shutdown = async move {
            shutdown.await;
            state
                .shutting_down
                .store(true, std::sync::atomic::Ordering::SeqCst);
            state.live.close_watches();
            state.live_text.close_watches();
            state.live_alchemy.close_watches();
        };
        let limits = self.connection_limits();
        let result = connections::serve(self.listener, self.router, limits, shutdown).await;
        sweeper.abort();
        reloads.abort();
        webhook_calls.abort();
        for task in cluster_tasks {
            task.abort();
        }
        if let Err(e) = self.state.flush_check_ins().await {
            tracing::warn!(error = %e, "could not store the latest check-ins at shutdown");
        }
        self.state.store.close().await;
        result
    }
}

async fn open_state(
    config: ServerConfig,
    store: Store,
    images: ImageStore,
    local: SocketAddr,
) -> Result<AppState, StartError> {
    let key_salt = store
        .setting_or_init("api_key_salt", || generate_token(&mut rand::rng()))
        .await?;
    let upload_secret = store
        .setting_or_init("upload_secret", || generate_token(&mut rand::rng()))
        .await?;
    let (model_reference, image_json) = model_reference::load(&config.models)
        .await
        .map_err(StartError::Models)?;
    let (text_reference, text_json) = model_reference::load_text(&config.text.reference)
        .await
        .map_err(StartError::Models)?;
    let public_url = if config.public_url.is_empty() {
        format!("http://{local}")
    } else {
        config.public_url.trim_end_matches('/').to_string()
    };
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "horde".into());
    let online_window_secs = config.workers.online_window_secs;
    let trusted_proxies = client_ip::TrustedProxies::parse(&config.api.trusted_proxies)
        .map_err(|e| StartError::Config(format!("api.trusted_proxies: {e}")))?;
    if config.registration.proof_of_work_bits > horde_core::registration::MAX_PROOF_BITS {
        return Err(StartError::Config(format!(
            "registration.proof_of_work_bits: at most {}",
            horde_core::registration::MAX_PROOF_BITS
        )));
    }
    config.quotas.check().map_err(StartError::Config)?;
    let limiter = horde_core::ratelimit::FixedWindows::with_capacity(config.api.rate_limit_keys);
    let metrics = metrics::Metrics::new();
    let request_writer = group_commit::RequestWriter::start(store.clone(), metrics.clone());
    let text_writer = group_commit::RequestWriter::start(store.clone(), metrics.clone());
    let alchemy_writer = group_commit::RequestWriter::start(store.clone(), metrics.clone());
    let stored_requests = store.load_requests::<horde_core::Image>().await?;
    let stored_texts = store.load_requests::<horde_core::text::Text>().await?;
    let stored_alchemy = store
        .load_requests::<horde_core::alchemy::Alchemy>()
        .await?;
    let stored_filters = store.prompt_filters().await?;
    let state = AppState {
        node_name: format!("{host}:{}:{}", local.port(), routes::status::VERSION),
        config,
        store,
        live: LiveRequests::new(stored_requests, request_writer),
        live_text: LiveRequests::new(stored_texts, text_writer),
        live_alchemy: LiveRequests::new(stored_alchemy, alchemy_writer),
        workers: Workers::new(online_window_secs),
        accounts: Accounts::new(key_salt),
        catalogue: Catalogue::new(
            model_reference,
            text_reference,
            FilterSet::new(&stored_filters),
        )
        .with_reference_json(image_json, text_json),
        metrics,
        webhooks: Default::default(),
        limiter: Mutex::new(limiter),
        trusted_proxies,
        images,
        upload_secret,
        public_url,
        shutting_down: Default::default(),
        modes: Default::default(),
        ip_timeouts: Default::default(),
    };
    state
        .store
        .ensure_anonymous(&state.accounts.anonymous_key_hash(), now())
        .await?;
    state.load_workers().await?;
    state.reload_teams_and_messages().await?;
    Ok(state)
}

fn router(state: SharedState) -> Router {
    use routes::{generate, interrogate, status, text, users, workers};
    let api = Router::new()
        .route("/", get(dashboard::page))
        .route("/dashboard/events", get(dashboard::events))
        .route("/dashboard/tables", get(dashboard::tables_fragment))
        .route("/dashboard/throughput.svg", get(dashboard::throughput_svg))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/models/{name}", get(dashboard::model_page))
        .route("/api/v2/generate/async", post(generate::generate_async))
        .route("/api/v2/generate/batch", post(generate::generate_batch))
        .route(
            "/api/v2/generate/batch/{id}",
            get(generate::batch_status).delete(generate::cancel_batch),
        )
        .route("/api/v2/generate/check/{id}", get(generate::check))
        .route("/api/v2/generate/stream/{id}", get(streaming::stream))
        .route(
            "/api/v2/generate/status/{id}",
            get(generate::status).delete(generate::cancel),
        )
        .route("/api/v2/generate/pop", post(generate::pop))
        .route("/api/v2/generate/submit", post(generate::submit))
        .route("/api/v2/generate/text/async", post(text::generate_async))
        .route(
            "/api/v2/generate/text/status/{id}",
            get(text::status).delete(text::cancel),
        )
        .route("/api/v2/generate/text/pop", post(text::pop))
        .route("/api/v2/generate/text/submit", post(text::submit))
        .route(
            "/api/v2/interrogate/async",
            post(interrogate::interrogate_async),
        )
        .route(
            "/api/v2/interrogate/status/{id}",
            get(interrogate::status).delete(interrogate::cancel),
        )
        .route("/api/v2/interrogate/pop", post(interrogate::pop))
        .route("/api/v2/interrogate/submit", post(interrogate::submit))
        .route("/api/v2/uploads/{job_id}", put(generate::upload))
        .route("/api/v2/images/{file}", get(generate::image))
        .route(
            "/api/v2/sources/{request_id}/{role}",
            get(routes::sources::download),
        )
        .route("/api/v2/workers", get(workers::list))
        .route(
            "/api/v2/workers/{id}",
            get(workers::get)
                .put(workers::modify)
                .delete(workers::delete),
        )
        .route("/api/v2/workers/name/{name}", get(workers::by_name))
        .route(
            "/api/v2/users/{id}",
            get(users::get)
                .put(users::modify)
                .delete(routes::modes::delete_user),
        )
        .route("/api/v2/users/{id}/reset_key", post(users::reset_key))
        .route(
            "/api/v2/users/{id}/webhook_secret",
            get(users::webhook_secret).post(users::rotate_webhook_secret),
        )
        .route("/api/v2/users/{id}/ledger", get(users::ledger))
        .route("/api/v2/find_user", get(users::find_user))
        .route("/api/v2/kudos/transfer", post(users::transfer))
        .route("/api/v2/sharedkeys", put(routes::shared_keys::create))
        .route(
            "/api/v2/sharedkeys/{id}",
            get(routes::shared_keys::get)
                .patch(routes::shared_keys::modify)
                .delete(routes::shared_keys::delete),
        )
        .route(
            "/api/v2/filters",
            get(routes::filters::list)
                .put(routes::filters::add)
                .post(routes::filters::check),
        )
        .route(
            "/api/v2/filters/regex",
            get(routes::filters::regex)
                .patch(routes::filters::modify_regex_path)
                .delete(routes::filters::delete_regex_path),
        )
        .route(
            "/api/v2/filters/{id}",
            get(routes::filters::get)
                .patch(routes::filters::modify)
                .delete(routes::filters::delete),
        )
        .route("/api/v2/dev/test-user", post(users::test_user))
        .route(
            "/register",
            get(routes::register::form).post(routes::register::submit),
        )
        .route("/api/v2/status/heartbeat", get(status::heartbeat))
        .route("/api/v2/status/models", get(status::models))
        .route("/api/v2/status/models/{name}", get(status::model))
        .route("/api/v2/status/performance", get(status::performance))
        .route("/api/v2/stats/img/totals", get(status::image_totals))
        .route("/api/v2/stats/img/models", get(status::image_models))
        .route("/api/v2/stats/text/totals", get(status::text_totals))
        .route("/api/v2/stats/text/models", get(status::text_models))
        .route("/.well-known/serviceinfo", get(status::serviceinfo))
        .merge(routes::styles::routes())
        .merge(routes::teams::routes())
        .merge(routes::modes::routes())
        .merge(routes::operations::routes())
        .merge(routes::invites::routes())
        .merge(routes::reference::routes());
    // Outside `/api/v2/`, so not rate limited (`metrics.rs` says why); absent when disabled.
    let api = if state.config.metrics.enabled {
        api.route("/metrics", get(metrics::scrape))
    } else {
        api
    };
    let api = api
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ratelimit::rate_limit,
        ))
        .method_not_allowed_fallback(guard::method_not_allowed);
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_headers(Any)
        .allow_methods([
            Method::POST,
            Method::GET,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ]);
    let node = HeaderValue::from_str(&state.node_name).unwrap_or(HeaderValue::from_static("horde"));
    api.merge(SwaggerUi::new("/api").external_url_unchecked(
        "/api/swagger.json",
        openapi::document(
            state.config.requests.max_prompt_chars,
            &state.config.quotas.tier_names(),
        ),
    ))
    .fallback(guard::not_found)
    .layer(DefaultBodyLimit::max(state.config.api.max_body_bytes))
    .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        std::time::Duration::from_secs(state.config.api.body_timeout_secs.max(1)),
    ))
    .layer(axum::middleware::from_fn(guard::json_errors))
    .layer(axum::middleware::from_fn(guard::bounded_request))
    .layer(axum::middleware::from_fn(guard::security_headers))
    .layer(cors)
    .layer(SetResponseHeaderLayer::overriding(
        HeaderName::from_static("horde-node"),
        node,
    ))
    // Outermost, so every answer is counted whichever layer made it; `Router::layer` wraps
    // each route, so the matched route's template is known there.
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        metrics::record_requests,
    ))
    .with_state(state)
}
