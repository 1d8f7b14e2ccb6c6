-- Requests' source images (source image, mask, extra images), as lossless WebP, when
-- coordinators share PostgreSQL: a worker may pop from a coordinator other than the one that
-- accepted the request. Written before the request row; a row whose request never committed
-- (a crash in between) is an orphan the sweeper removes once `stored_at` is old. SQLite keeps
-- them as files beside the images.
CREATE TABLE source_images (
    request_id TEXT NOT NULL,
    role TEXT NOT NULL,
    data BYTEA NOT NULL,
    stored_at BIGINT NOT NULL,
    PRIMARY KEY (request_id, role)
);
CREATE INDEX source_images_stored_at ON source_images(stored_at);
