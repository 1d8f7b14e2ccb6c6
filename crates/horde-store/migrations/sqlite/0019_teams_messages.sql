-- Teams (issue 29): a name and an info under which workers are grouped by their owners; the
-- team's figures are summed from its workers when shown, so only the team itself is stored,
-- and each worker names its team. Messages to workers (from moderators, or owners to their
-- own workers) until they expire; a worker reads its active ones in every pop. A job names
-- its worker, so a worker is not deleted while one still does (jobs_by_worker finds them).
CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    info TEXT,
    owner_id INTEGER NOT NULL REFERENCES users(id),
    created INTEGER NOT NULL
);
ALTER TABLE workers ADD COLUMN team_id TEXT REFERENCES teams(id) ON DELETE SET NULL;
CREATE INDEX workers_by_team ON workers(team_id);
CREATE TABLE worker_messages (
    id TEXT PRIMARY KEY,
    worker_id TEXT,
    user_id INTEGER NOT NULL REFERENCES users(id),
    message TEXT NOT NULL,
    origin TEXT,
    expiry INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX worker_messages_by_worker ON worker_messages(worker_id, expiry);
CREATE INDEX worker_messages_by_user ON worker_messages(user_id, created);
CREATE INDEX jobs_by_worker ON jobs(worker_id);
