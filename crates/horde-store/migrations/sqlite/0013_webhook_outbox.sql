-- Webhook deliveries waiting to be made: written in the transaction that finishes a generation
-- (or a whole request), so a crash loses none; deleted once delivered or given up. With several
-- coordinators, a delivery is claimed (`claimed_until`) by one of them at a time.
CREATE TABLE webhook_outbox (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    url TEXT NOT NULL,
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    created INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    claimed_until INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox(next_attempt);

-- The secret that signs a user's webhook calls (an HMAC key, so kept as it is: it must be read
-- back to sign); made when first needed, replaced when the user rotates it.
ALTER TABLE users ADD COLUMN webhook_secret TEXT;
