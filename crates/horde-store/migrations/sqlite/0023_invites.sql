-- Issue 32, point 2: invite codes for `[registration] mode = "invite"`. A code is stored only
-- as its salted hash (like an API key); `id` is its public handle, to list and delete it.
-- `uses` grows by one per account, in a conditional update that only succeeds while it is
-- below `max_uses` and the invite has not expired, so two coordinators never overspend one.
CREATE TABLE invites (
    id TEXT PRIMARY KEY,
    code_hash TEXT NOT NULL UNIQUE,
    created_by INTEGER NOT NULL,
    note TEXT NOT NULL,
    max_uses INTEGER NOT NULL,
    uses INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
