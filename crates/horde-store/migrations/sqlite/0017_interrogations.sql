-- Interrogation (alchemy, horde_core::alchemy): the forms each user had delivered and each
-- user's alchemists delivered (their `records`).
ALTER TABLE users ADD COLUMN interrogation_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN interrogation_fulfilments INTEGER NOT NULL DEFAULT 0;
