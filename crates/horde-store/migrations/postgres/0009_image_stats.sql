-- One row per delivered image, kept after its request is gone: /stats/img/totals and
-- /stats/img/models count finished work by model and period from it.
CREATE TABLE image_stats (
    finished_at BIGINT NOT NULL,
    model TEXT NOT NULL,
    pixelsteps DOUBLE PRECISION NOT NULL
);
CREATE INDEX image_stats_by_time ON image_stats(finished_at);
