-- The reputation ledger of each worker. Completed jobs, their megapixelsteps and timed-out jobs
-- already have columns (fulfilments, megapixelsteps, uncompleted_jobs).

ALTER TABLE workers ADD COLUMN jobs_faulted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN jobs_cancelled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN busy_secs REAL NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN recent_speed_mps REAL;
ALTER TABLE workers ADD COLUMN fault_streak INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN suspicion INTEGER NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN suspicions TEXT NOT NULL DEFAULT '[]';
