-- Shared keys: stored by the salted hash of the key, never the key itself.
CREATE TABLE shared_keys (
    id_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    kudos REAL NOT NULL,
    expiry INTEGER,
    utilized REAL NOT NULL DEFAULT 0,
    max_image_pixels INTEGER NOT NULL,
    max_image_steps INTEGER NOT NULL,
    max_text_tokens INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX shared_keys_by_user ON shared_keys(user_id);

-- The shared key (hash) a request was made with: its charges also come out of the key's budget.
ALTER TABLE requests ADD COLUMN shared_key TEXT;
