-- Images and megapixelsteps requested per user and UTC day, for the daily quotas.
CREATE TABLE quota_usage (
    user_id BIGINT NOT NULL,
    day BIGINT NOT NULL,
    images BIGINT NOT NULL DEFAULT 0,
    megapixelsteps DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day)
);
