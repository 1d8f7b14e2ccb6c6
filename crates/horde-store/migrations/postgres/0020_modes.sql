-- Issue 29: the horde's modes (one row, shared by every coordinator on this database: each
-- reads it with a short cache), and deleted accounts (the first DELETE /users/{id} marks the
-- account, a second one 30 days later wipes its data).
CREATE TABLE horde_modes (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    maintenance BIGINT NOT NULL DEFAULT 0,
    invite_only BIGINT NOT NULL DEFAULT 0,
    raid BIGINT NOT NULL DEFAULT 0,
    changed_at BIGINT NOT NULL DEFAULT 0,
    changed_by BIGINT
);
INSERT INTO horde_modes (id) VALUES (1);

ALTER TABLE users ADD COLUMN deleted_at BIGINT;
-- GET /users: pages by kudos (most first) and by age (oldest first).
CREATE INDEX users_by_kudos ON users(kudos DESC, id);
CREATE INDEX users_by_created ON users(created, id);
