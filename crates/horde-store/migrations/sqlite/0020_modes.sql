-- Issue 29: the horde's modes (one row, shared by every coordinator on this database: each
-- reads it with a short cache), and deleted accounts (the first DELETE /users/{id} marks the
-- account, a second one 30 days later wipes its data).
CREATE TABLE horde_modes (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    maintenance INTEGER NOT NULL DEFAULT 0,
    invite_only INTEGER NOT NULL DEFAULT 0,
    raid INTEGER NOT NULL DEFAULT 0,
    changed_at INTEGER NOT NULL DEFAULT 0,
    changed_by INTEGER
);
INSERT INTO horde_modes (id) VALUES (1);

ALTER TABLE users ADD COLUMN deleted_at INTEGER;
-- GET /users: pages by kudos (most first) and by age (oldest first).
CREATE INDEX users_by_kudos ON users(kudos DESC, id);
CREATE INDEX users_by_created ON users(created, id);
