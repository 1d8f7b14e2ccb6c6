-- How many times a request's row was changed. Every change is conditional on the version the
-- writer last saw, so a coordinator acting on an out-of-date copy (another process sharing the
-- database changed the row) fails its write instead of overwriting the other's change.
ALTER TABLE requests ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
