-- Interrogation (alchemy, horde_core::alchemy): the forms each user had delivered and each
-- user's alchemists delivered (their `records`).
ALTER TABLE users ADD COLUMN interrogation_requests BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN interrogation_fulfilments BIGINT NOT NULL DEFAULT 0;
