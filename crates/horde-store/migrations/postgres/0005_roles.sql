-- The public horde's remaining roles, and whether a user's workers are listed publicly.
ALTER TABLE users ADD COLUMN customizer BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN vpn BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN service BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN education BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN public_workers BIGINT NOT NULL DEFAULT 0;
