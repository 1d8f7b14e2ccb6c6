-- Moderators' regex prompt filters (horde-api.md §9). Types 10, 11 and 20 screen image prompts.
CREATE TABLE prompt_filters (
    rowid BIGSERIAL,
    id TEXT PRIMARY KEY,
    regex TEXT NOT NULL,
    filter_type BIGINT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    replacement TEXT NOT NULL DEFAULT '',
    user_id BIGINT NOT NULL REFERENCES users(id)
);
CREATE INDEX prompt_filters_by_type ON prompt_filters(filter_type);
