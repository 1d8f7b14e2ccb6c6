-- How many times a worker's reputation was written. Writes are conditional on the version the
-- writer read, as for requests: coordinators sharing the database never overwrite each
-- other's counts (the loser reloads the stored reputation and applies its change again).
ALTER TABLE workers ADD COLUMN reputation_version INTEGER NOT NULL DEFAULT 0;
