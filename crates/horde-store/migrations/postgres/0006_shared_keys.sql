-- Shared keys: stored by the salted hash of the key, never the key itself.
CREATE TABLE shared_keys (
    id_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    kudos DOUBLE PRECISION NOT NULL,
    expiry BIGINT,
    utilized DOUBLE PRECISION NOT NULL DEFAULT 0,
    max_image_pixels BIGINT NOT NULL,
    max_image_steps BIGINT NOT NULL,
    max_text_tokens BIGINT NOT NULL,
    created BIGINT NOT NULL
);
CREATE INDEX shared_keys_by_user ON shared_keys(user_id);

-- The shared key (hash) a request was made with: its charges also come out of the key's budget.
ALTER TABLE requests ADD COLUMN shared_key TEXT;
