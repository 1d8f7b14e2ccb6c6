-- The public horde's remaining roles, and whether a user's workers are listed publicly.
ALTER TABLE users ADD COLUMN customizer INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN vpn INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN service INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN education INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN public_workers INTEGER NOT NULL DEFAULT 0;
