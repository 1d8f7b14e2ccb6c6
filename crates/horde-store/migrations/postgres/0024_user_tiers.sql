-- Issue 32, point 3: the operator's quota tier (`[quotas.tiers.<name>]`) a moderator moved a
-- user into; NULL for none (the user is then `registered` or `trusted` by their roles).
ALTER TABLE users ADD COLUMN tier TEXT;
