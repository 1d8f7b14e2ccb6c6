-- Moderators' regex prompt filters (horde-api.md §9). Types 10, 11 and 20 screen image prompts.
CREATE TABLE prompt_filters (
    id TEXT PRIMARY KEY,
    regex TEXT NOT NULL,
    filter_type INTEGER NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    replacement TEXT NOT NULL DEFAULT '',
    user_id INTEGER NOT NULL REFERENCES users(id)
);
CREATE INDEX prompt_filters_by_type ON prompt_filters(filter_type);
