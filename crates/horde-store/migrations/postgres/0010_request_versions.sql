-- How many times a request's row was changed. Every change is conditional on the version the
-- writer last saw, so a coordinator acting on an out-of-date copy (another process sharing the
-- database changed the row) fails its write instead of overwriting the other's change.
ALTER TABLE requests ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

-- Several coordinators share one PostgreSQL (SQLite keeps these in the process and on disk):
-- finished images, so a worker may upload to one coordinator and a client download from
-- another; and the rate-limit windows, so limits hold across coordinators.
CREATE TABLE images (
    job_id TEXT PRIMARY KEY,
    data BYTEA NOT NULL,
    stored_at BIGINT NOT NULL
);

CREATE UNLOGGED TABLE rate_windows (
    key TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    hits BIGINT NOT NULL,
    PRIMARY KEY (key, window_start)
);
