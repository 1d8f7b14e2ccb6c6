-- PostgreSQL twin of sqlite/0001: INTEGER is BIGINT, REAL is DOUBLE PRECISION, flags are 0/1
-- BIGINTs as in SQLite, and tables read in insertion order have an explicit `rowid`.

-- Users, workers, requests and their jobs. Images are files beside the database.

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL,
    oauth_id TEXT NOT NULL UNIQUE,
    api_key_hash TEXT NOT NULL UNIQUE,
    kudos DOUBLE PRECISION NOT NULL DEFAULT 0,
    moderator BIGINT NOT NULL DEFAULT 0,
    trusted BIGINT NOT NULL DEFAULT 0,
    flagged BIGINT NOT NULL DEFAULT 0,
    concurrency BIGINT NOT NULL DEFAULT 30,
    worker_invited BIGINT NOT NULL DEFAULT 0,
    usage_megapixelsteps DOUBLE PRECISION NOT NULL DEFAULT 0,
    usage_requests BIGINT NOT NULL DEFAULT 0,
    contributed_megapixelsteps DOUBLE PRECISION NOT NULL DEFAULT 0,
    fulfilments BIGINT NOT NULL DEFAULT 0,
    kudos_accumulated DOUBLE PRECISION NOT NULL DEFAULT 0,
    created BIGINT NOT NULL
);

CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id),
    name TEXT NOT NULL UNIQUE,
    info TEXT,
    created BIGINT NOT NULL,
    last_check_in BIGINT NOT NULL,
    bridge_agent TEXT NOT NULL,
    threads BIGINT NOT NULL,
    max_pixels BIGINT NOT NULL,
    nsfw BIGINT NOT NULL,
    flags TEXT NOT NULL,
    maintenance BIGINT NOT NULL DEFAULT 0,
    maintenance_msg TEXT,
    paused BIGINT NOT NULL DEFAULT 0,
    kudos_generated DOUBLE PRECISION NOT NULL DEFAULT 0,
    kudos_uptime DOUBLE PRECISION NOT NULL DEFAULT 0,
    fulfilments BIGINT NOT NULL DEFAULT 0,
    megapixelsteps DOUBLE PRECISION NOT NULL DEFAULT 0,
    uncompleted_jobs BIGINT NOT NULL DEFAULT 0,
    uptime BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX workers_by_user ON workers(user_id);

CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id),
    body TEXT NOT NULL,
    base_seed BIGINT,
    created BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    priority BIGINT NOT NULL,
    n_remaining BIGINT NOT NULL,
    jobs_total BIGINT NOT NULL,
    job_kudos DOUBLE PRECISION NOT NULL,
    consumed_kudos DOUBLE PRECISION NOT NULL DEFAULT 0,
    faulted BIGINT NOT NULL DEFAULT 0,
    cancelled BIGINT NOT NULL DEFAULT 0,
    expiry BIGINT NOT NULL
);
CREATE INDEX requests_by_expiry ON requests(expiry);

CREATE TABLE jobs (
    rowid BIGSERIAL,
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES requests(id) ON DELETE CASCADE,
    worker_id TEXT NOT NULL,
    worker_name TEXT NOT NULL,
    model TEXT NOT NULL,
    seed BIGINT NOT NULL,
    started BIGINT NOT NULL,
    deadline BIGINT NOT NULL,
    state TEXT NOT NULL,
    censored BIGINT NOT NULL DEFAULT 0,
    gen_metadata TEXT NOT NULL DEFAULT '[]',
    reward DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_request ON jobs(request_id);
