-- Images and megapixelsteps requested per user and UTC day, for the daily quotas.
CREATE TABLE quota_usage (
    user_id INTEGER NOT NULL,
    day INTEGER NOT NULL,
    images INTEGER NOT NULL DEFAULT 0,
    megapixelsteps REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day)
);
