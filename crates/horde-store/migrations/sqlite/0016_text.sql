-- Text generation (horde_core::text): one row per delivered text, kept after its request is
-- gone, for /stats/text/totals and /stats/text/models; the tokens each user requested and
-- contributed (their `records`); and the texts and tokens of the daily quotas.
CREATE TABLE text_stats (
    finished_at INTEGER NOT NULL,
    model TEXT NOT NULL,
    tokens REAL NOT NULL
);
CREATE INDEX text_stats_by_time ON text_stats(finished_at);
ALTER TABLE users ADD COLUMN usage_tokens REAL NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN contributed_tokens REAL NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN text_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN text_fulfilments INTEGER NOT NULL DEFAULT 0;
ALTER TABLE quota_usage ADD COLUMN texts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE quota_usage ADD COLUMN tokens REAL NOT NULL DEFAULT 0;
