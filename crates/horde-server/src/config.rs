//! The coordinator's settings, with defaults that work for a first run.
//!
//! The binary layers a TOML file, `HORDE_…` environment variables and flags onto these defaults
//! (flags win); this crate only receives the result.

use horde_core::ratelimit::Limit;
use horde_store::Durability;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory holding the SQLite file (`horde.sqlite`) and the images.
    pub data_dir: PathBuf,
    /// Base URL that workers and clients use to reach this coordinator, for upload and download
    /// links. Empty: `http://` + the address actually bound.
    pub public_url: String,
    pub database: DatabaseConfig,
    pub api: ApiConfig,
    pub requests: RequestsConfig,
    pub jobs: JobsConfig,
    pub workers: WorkersConfig,
    /// Per-endpoint rate limits (when `api.rate_limits` is on).
    pub limits: LimitsConfig,
    /// Daily quotas per tier of user (0: unlimited).
    pub quotas: horde_core::quota::Quotas,
    pub models: ModelsConfig,
    /// Text generation (`/generate/text/…`): its model reference and limits.
    pub text: TextConfig,
    /// `GET /metrics` for Prometheus.
    pub metrics: MetricsConfig,
    /// Calls to the requests' `webhook` URLs.
    pub webhooks: WebhooksConfig,
    /// The operator's news (`/status/news`) and documents (`/documents/…`).
    pub documents: DocumentsConfig,
    /// Self-service registration at `/register` (`registration.rs`).
    pub registration: RegistrationConfig,
}

/// Who may create an account through `/register`, and what each attempt costs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    /// `open` (anyone, as on the public horde), `invite` (with a code a moderator created:
    /// `/api/v2/invites`) or `off`.
    pub mode: horde_core::registration::RegistrationMode,
    /// Leading zero bits of `sha256(challenge ":" nonce)` each attempt must show (0: none; at
    /// most 24).
    pub proof_of_work_bits: u32,
    /// Accounts one address (an IPv6 /64) may create an hour (0: no limit).
    pub per_ip_per_hour: u32,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig {
            mode: Default::default(),
            proof_of_work_bits: 0,
            per_ip_per_hour: 3,
        }
    }
}

/// What the operator publishes (`modes.rs`): each file read when asked for, so an edit shows
/// at once; anything not provided is the built-in default (`defaults/`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DocumentsConfig {
    /// `GET /status/news`: a JSON list of news pieces (the public horde's `news.json` format:
    /// `date_published`, `newspiece`, `importance`, `tags`, `title`, `more_info_urls`).
    /// Empty: the built-in news.
    pub news: PathBuf,
    /// A directory of `terms`, `privacy` and `sponsors` documents, each as `<name>.html` and
    /// `<name>.md` (`?format=markdown`); a file missing there is the built-in one. Empty: all
    /// built-in.
    pub dir: PathBuf,
}

/// Webhook calls (`webhooks.rs`): which URLs are accepted, and how long a delivery is retried.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Accept `http://` webhook URLs (for tests on loopback); https only otherwise.
    pub allow_http: bool,
    /// Accept webhook URLs that are or resolve to loopback, private or link-local addresses
    /// (off: no request forgery into the operator's network).
    pub allow_private_addresses: bool,
    /// Seconds before the first retry of a failed call; each retry waits up to twice as long.
    pub first_retry_secs: f64,
    /// The longest wait between two tries, in seconds.
    pub max_retry_secs: f64,
    /// A delivery still failing this many seconds after its first try is given up.
    pub give_up_after_secs: i64,
    /// Seconds each call may take.
    pub timeout_secs: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let backoff = horde_core::webhook::Backoff::default();
        WebhooksConfig {
            allow_http: false,
            allow_private_addresses: false,
            first_retry_secs: backoff.first_delay_secs,
            max_retry_secs: backoff.max_delay_secs,
            give_up_after_secs: backoff.give_up_after_secs,
            timeout_secs: 10,
        }
    }
}

impl WebhooksConfig {
    /// Which URLs are accepted.
    pub fn policy(&self) -> horde_core::webhook::WebhookPolicy {
        horde_core::webhook::WebhookPolicy {
            allow_http: self.allow_http,
            allow_private_addresses: self.allow_private_addresses,
        }
    }

    /// When a failed delivery is tried again.
    pub fn backoff(&self) -> horde_core::webhook::Backoff {
        horde_core::webhook::Backoff {
            first_delay_secs: self.first_retry_secs,
            max_delay_secs: self.max_retry_secs,
            give_up_after_secs: self.give_up_after_secs,
        }
    }
}

/// `GET /metrics`, the Prometheus text format (`metrics.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` (off: 404).
    pub enabled: bool,
    /// Empty: anyone may scrape (the figures are public through `/status/models` already).
    /// Set: a scrape must carry `Authorization: Bearer <token>`, or gets 401.
    pub bearer_token: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            bearer_token: String::new(),
        }
    }
}

/// Where the image model reference comes from, and what to do with models outside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// The image model reference (`stable_diffusion.json` format): "builtin", a file path, or
    /// an http(s) URL.
    pub reference: String,
    /// The baseline catalog (`baselines.json` format): "builtin", a file path, or a URL.
    pub baselines: String,
    /// Reload both this often, in seconds, without a restart (0: only at start). A reload that
    /// fails keeps the models already loaded.
    pub reload_interval_secs: u64,
    /// Accept requests for, and workers serving, models the reference does not list.
    pub allow_custom: bool,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            reference: "builtin".into(),
            baselines: "builtin".into(),
            reload_interval_secs: 300,
            allow_custom: false,
        }
    }
}

/// Text generation: the text model reference and the limits of a text request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextConfig {
    /// The text model reference (the public `db.json` format): "builtin", a file path, or an
    /// http(s) URL; reloaded with the image one (`models.reload_interval_secs`).
    pub reference: String,
    /// The most tokens one text may ask for (the public horde's 4096 at most).
    pub max_length: u32,
    /// The largest context a request may ask for.
    pub max_context_length: u32,
    /// The longest prompt, in characters.
    pub max_prompt_chars: usize,
    /// Accept requests for, and workers serving, text models the reference does not list.
    pub allow_custom: bool,
}

impl Default for TextConfig {
    fn default() -> Self {
        let limits = horde_core::text::rules::TextLimits::default();
        TextConfig {
            reference: "builtin".into(),
            max_length: limits.max_length,
            max_context_length: limits.max_context_length,
            max_prompt_chars: limits.max_prompt_chars,
            allow_custom: !limits.known_models_only,
        }
    }
}

impl TextConfig {
    /// The request rules' view of these settings.
    pub fn limits(&self) -> horde_core::text::rules::TextLimits {
        horde_core::text::rules::TextLimits {
            max_length: self.max_length,
            max_context_length: self.max_context_length,
            max_prompt_chars: self.max_prompt_chars,
            known_models_only: !self.allow_custom,
        }
    }
}

/// The public horde's per-endpoint rate limits (horde-api.md §2), each written like
/// `"90/minute"`; "per IP" counts by the caller's address and the endpoint, "per key" by API key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// `POST /generate/async` (and, counted apart, `/generate/text/async`), per IP.
    pub generate_per_ip: Vec<Limit>,
    /// `POST /generate/async` (and `/generate/text/async`), per registered user's key.
    pub generate_per_key: Limit,
    /// `POST /generate/async` (and `/generate/text/async`), for the shared anonymous key.
    pub generate_per_anonymous_key: Limit,
    /// `GET /generate/check/{id}`, per IP and request.
    pub check_per_ip: Limit,
    /// `GET|DELETE /generate/status/{id}`, per IP and request.
    pub status_per_ip: Limit,
    /// `GET|DELETE /generate/text/status/{id}`, per IP and request.
    pub text_status_per_ip: Limit,
    /// `POST /generate/pop` and `/generate/submit` (and their text twins), per IP.
    pub jobs_per_ip: Limit,
    /// `POST /kudos/transfer`, per key.
    pub transfer_per_key: Vec<Limit>,
    /// `PUT /sharedkeys`, per IP.
    pub shared_keys_per_ip: Limit,
    /// `/users/{id}`, per IP and user.
    pub users_per_ip: Limit,
    /// `PUT` and `DELETE /workers/{id}`, per IP and worker.
    pub workers_per_ip: Limit,
    /// Every other endpoint under `/api/v2/`, per IP.
    pub default_per_ip: Limit,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            generate_per_ip: vec![Limit::per_minute(90), Limit::per_second(2)],
            generate_per_key: Limit::per_second(2),
            generate_per_anonymous_key: Limit::per_second(60),
            check_per_ip: Limit::per_second(10),
            status_per_ip: Limit::per_minute(10),
            text_status_per_ip: Limit::per_minute(60),
            jobs_per_ip: Limit::per_second(60),
            transfer_per_key: vec![Limit::per_second(1), Limit::per_hour(90)],
            shared_keys_per_ip: Limit::per_minute(5),
            users_per_ip: Limit::per_minute(60),
            workers_per_ip: Limit::per_minute(30),
            default_per_ip: Limit::per_minute(90),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersConfig {
    /// A worker is online while it has checked in (popped) within this many seconds.
    pub online_window_secs: i64,
    /// A worker with this much suspicion gets no jobs until a moderator clears it (0: never).
    pub suspicion_threshold: u32,
    /// A job finished faster than this many megapixelsteps per second raises suspicion.
    pub max_plausible_mps: f64,
    /// This many jobs reported faulted in a row raise suspicion (0: never).
    pub fault_streak_limit: u32,
    /// How long, in seconds, a new request may be kept for a more reliable worker that is
    /// waiting for work, instead of going to a less reliable one that asked first (0: off).
    pub reliability_hold_secs: i64,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        let rules = horde_core::ReputationRules::default();
        WorkersConfig {
            online_window_secs: horde_core::accounts::ONLINE_WINDOW_SECS,
            suspicion_threshold: rules.suspicion_threshold,
            max_plausible_mps: rules.max_plausible_mps,
            fault_streak_limit: rules.fault_streak_limit,
            reliability_hold_secs: 5,
        }
    }
}

impl WorkersConfig {
    pub fn reputation_rules(&self) -> horde_core::ReputationRules {
        horde_core::ReputationRules {
            max_plausible_mps: self.max_plausible_mps,
            fault_streak_limit: self.fault_streak_limit,
            suspicion_threshold: self.suspicion_threshold,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// The shortest time a worker gets for a job, in seconds.
    pub deadline_floor_secs: i64,
    /// The longest time a worker gets for a job, in seconds.
    pub deadline_ceiling_secs: i64,
    /// A request whose jobs were taken back or faulted this many times is faulted.
    pub max_restarts: u32,
}

impl JobsConfig {
    /// The bounds of a job's deadline (`horde_core::deadline`).
    pub fn deadline_bounds(&self) -> horde_core::deadline::DeadlineBounds {
        horde_core::deadline::DeadlineBounds {
            floor_secs: self.deadline_floor_secs,
            ceiling_secs: self.deadline_ceiling_secs,
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            deadline_floor_secs: 150,
            deadline_ceiling_secs: 3600,
            max_restarts: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Empty: the embedded SQLite file `horde.sqlite` in `data_dir` (one coordinator process).
    /// A `postgres://user:password@host:port/database` URL: a PostgreSQL server, which several
    /// coordinator processes may share.
    pub url: String,
    /// SQLite only: `normal` survives the process being killed; `full` also survives power
    /// loss. (PostgreSQL's durability is the server's own `synchronous_commit`.)
    pub durability: Durability,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Enables `POST /api/v2/dev/test-user` for callers on loopback (as the public horde's
    /// `HORDE_TEST_APIKEYS=1`). Never enable on a public server.
    pub test_users: bool,
    /// Enforce the public horde's per-endpoint rate limits.
    pub rate_limits: bool,
    /// Largest accepted request body, in bytes (base64 images included).
    pub max_body_bytes: usize,
    /// Largest accepted image (a worker's upload or submit), in bytes.
    pub max_image_bytes: usize,
    /// Ids of the users who administer this horde: they may change balances and appoint
    /// moderators (`PUT /users/{id}`).
    pub admins: Vec<i64>,
    /// The most rate-limit counters held in memory (one per caller and route in the current
    /// window); when full, those closest to their window's end are dropped first.
    pub rate_limit_keys: usize,
    /// The most connections open at once (kept below the open-file limit); past it a new
    /// connection is answered 503 `TooManyConnections` and closed.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers, counted from when the connection
    /// opens or last answered: idle and byte-by-byte connections are closed after it.
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's body; after it the answer is 408.
    pub body_timeout_secs: u64,
    /// The most clients waiting at once for a request's end (`?wait=` on check and status);
    /// past it `?wait=` is answered at once. Each holds a connection: keep it and
    /// `max_streams` below `max_connections`.
    pub max_waiters: usize,
    /// The most progress streams (`/generate/stream/{id}`) open at once; past it a new one is
    /// refused with 503 `TooManyConnections`.
    pub max_streams: usize,
    /// The reverse proxies (addresses or CIDRs, e.g. `10.0.0.0/8`) whose `X-Forwarded-For` or
    /// `Forwarded` header names the client, for per-IP limits; from anyone else these headers
    /// are ignored.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestsConfig {
    /// A finished request (and its images) is kept this long, in seconds, then removed.
    pub retention_secs: i64,
    /// A request nobody picked up is removed this long after its creation or last pop, in
    /// seconds, when nothing of it is in flight.
    pub idle_expiry_secs: i64,
    /// How often the sweeper removes expired requests, in seconds.
    pub sweep_interval_secs: u64,
    /// Upload URLs handed to workers stay valid this long, in seconds.
    pub upload_url_ttl_secs: i64,
    /// The longest prompt (positive and negative together) accepted, in characters; longer ones
    /// are 400 `InvalidPromptSize`.
    pub max_prompt_chars: usize,
    /// The most prompts one batch (`POST /generate/batch`) holds; more, or none, is a 400.
    pub max_batch_prompts: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:7001".parse().expect("valid address"),
            data_dir: PathBuf::from("."),
            public_url: String::new(),
            database: DatabaseConfig::default(),
            api: ApiConfig::default(),
            requests: RequestsConfig::default(),
            jobs: JobsConfig::default(),
            workers: WorkersConfig::default(),
            limits: LimitsConfig::default(),
            quotas: Default::default(),
            models: ModelsConfig::default(),
            text: TextConfig::default(),
            metrics: MetricsConfig::default(),
            webhooks: WebhooksConfig::default(),
            documents: DocumentsConfig::default(),
            registration: RegistrationConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: String::new(),
            durability: Durability::Normal,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            test_users: false,
            rate_limits: true,
            max_body_bytes: 16 * 1024 * 1024,
            max_image_bytes: 8 * 1024 * 1024,
            admins: vec![],
            rate_limit_keys: horde_core::ratelimit::DEFAULT_CAPACITY,
            max_connections: 4096,
            header_timeout_secs: 10,
            body_timeout_secs: 60,
            max_waiters: 3000,
            max_streams: 500,
            trusted_proxies: vec![],
        }
    }
}

impl Default for RequestsConfig {
    fn default() -> Self {
        RequestsConfig {
            retention_secs: 20 * 60,
            idle_expiry_secs: 20 * 60,
            sweep_interval_secs: 10,
            upload_url_ttl_secs: 30 * 60,
            max_prompt_chars: 32_000,
            max_batch_prompts: horde_api::batch::DEFAULT_MAX_BATCH_PROMPTS,
        }
    }
}

impl ServerConfig {
    /// The database: `database.url` when set, else `horde.sqlite` in `data_dir`.
    pub fn database_location(&self) -> horde_store::Location {
        if self.database.url.is_empty() {
            horde_store::Location::SqliteFile(self.data_dir.join("horde.sqlite"))
        } else {
            horde_store::Location::parse(&self.database.url)
        }
    }
    pub fn images_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }
}
