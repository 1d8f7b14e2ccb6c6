-- Issue 29, points 6 and 7: IP timeouts, worker addresses, and image ratings.

-- Addresses and blocks in timeout (`/operations/ipaddr`, blocked prompts, worker blocks), by
-- their canonical text (`203.0.113.7`, `10.0.0.0/24`, `2001:db8:1:2::/64`). Every coordinator
-- reads them (through a short cache), so a timeout set on one holds on all.
CREATE TABLE ip_timeouts (
    network TEXT PRIMARY KEY,
    expires_ms BIGINT NOT NULL
);

-- How many prompts an address subject sent that the filters blocked, remembered a day: each
-- one times the subject out for longer.
CREATE TABLE ip_suspicion (
    subject TEXT PRIMARY KEY,
    suspicion BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);

-- The address each worker last popped from, for `/operations/block_worker_ipaddr`.
CREATE TABLE worker_addresses (
    worker_id TEXT PRIMARY KEY,
    ipaddr TEXT NOT NULL,
    seen_ms BIGINT NOT NULL
);

-- A request is rated once: its row is inserted first, and a second rating finds it.
CREATE TABLE rated_requests (
    request_id TEXT PRIMARY KEY,
    requester_id BIGINT NOT NULL,
    best_image TEXT,
    rated_at BIGINT NOT NULL
);

-- One row per rated image, with the worker that made it and who requested it (each requester
-- is one voice per worker: horde-core `ratings`).
CREATE TABLE image_ratings (
    image_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    requester_id BIGINT NOT NULL,
    rating BIGINT NOT NULL,
    artifacts BIGINT,
    rated_at BIGINT NOT NULL
);
CREATE INDEX image_ratings_worker ON image_ratings (worker_id, requester_id);

-- A worker's ratings in its reputation: requesters who rated it and the sum of their means.
ALTER TABLE workers ADD COLUMN rating_raters BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN rating_points DOUBLE PRECISION NOT NULL DEFAULT 0;
