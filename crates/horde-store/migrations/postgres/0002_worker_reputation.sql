-- The reputation ledger of each worker. Completed jobs, their megapixelsteps and timed-out jobs
-- already have columns (fulfilments, megapixelsteps, uncompleted_jobs).

ALTER TABLE workers ADD COLUMN jobs_faulted BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN jobs_cancelled BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN busy_secs DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN recent_speed_mps DOUBLE PRECISION;
ALTER TABLE workers ADD COLUMN fault_streak BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN suspicion BIGINT NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN suspicions TEXT NOT NULL DEFAULT '[]';
