-- Users, workers, requests and their jobs. Images are files beside the database.

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL,
    oauth_id TEXT NOT NULL UNIQUE,
    api_key_hash TEXT NOT NULL UNIQUE,
    kudos REAL NOT NULL DEFAULT 0,
    moderator INTEGER NOT NULL DEFAULT 0,
    trusted INTEGER NOT NULL DEFAULT 0,
    flagged INTEGER NOT NULL DEFAULT 0,
    concurrency INTEGER NOT NULL DEFAULT 30,
    worker_invited INTEGER NOT NULL DEFAULT 0,
    usage_megapixelsteps REAL NOT NULL DEFAULT 0,
    usage_requests INTEGER NOT NULL DEFAULT 0,
    contributed_megapixelsteps REAL NOT NULL DEFAULT 0,
    fulfilments INTEGER NOT NULL DEFAULT 0,
    kudos_accumulated REAL NOT NULL DEFAULT 0,
    created INTEGER NOT NULL
);

CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    name TEXT NOT NULL UNIQUE,
    info TEXT,
    created INTEGER NOT NULL,
    last_check_in INTEGER NOT NULL,
    bridge_agent TEXT NOT NULL,
    threads INTEGER NOT NULL,
    max_pixels INTEGER NOT NULL,
    nsfw INTEGER NOT NULL,
    flags TEXT NOT NULL,
    maintenance INTEGER NOT NULL DEFAULT 0,
    maintenance_msg TEXT,
    paused INTEGER NOT NULL DEFAULT 0,
    kudos_generated REAL NOT NULL DEFAULT 0,
    kudos_uptime REAL NOT NULL DEFAULT 0,
    fulfilments INTEGER NOT NULL DEFAULT 0,
    megapixelsteps REAL NOT NULL DEFAULT 0,
    uncompleted_jobs INTEGER NOT NULL DEFAULT 0,
    uptime INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX workers_by_user ON workers(user_id);

CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    body TEXT NOT NULL,
    base_seed INTEGER,
    created INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    n_remaining INTEGER NOT NULL,
    jobs_total INTEGER NOT NULL,
    job_kudos REAL NOT NULL,
    consumed_kudos REAL NOT NULL DEFAULT 0,
    faulted INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0,
    expiry INTEGER NOT NULL
);
CREATE INDEX requests_by_expiry ON requests(expiry);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES requests(id) ON DELETE CASCADE,
    worker_id TEXT NOT NULL,
    worker_name TEXT NOT NULL,
    model TEXT NOT NULL,
    seed INTEGER NOT NULL,
    started INTEGER NOT NULL,
    deadline INTEGER NOT NULL,
    state TEXT NOT NULL,
    censored INTEGER NOT NULL DEFAULT 0,
    gen_metadata TEXT NOT NULL DEFAULT '[]',
    reward REAL NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_request ON jobs(request_id);
