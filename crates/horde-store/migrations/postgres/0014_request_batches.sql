-- Batches of prompts (POST /api/v2/generate/batch): each member of a batch is an ordinary
-- request row; the members share the batch's id, and each keeps its place in the batch's
-- prompts, so a restart reloads them as one batch and GET /generate/batch/{id} lists them in
-- order. Both NULL for a request made alone.
ALTER TABLE requests ADD COLUMN batch_id TEXT;
ALTER TABLE requests ADD COLUMN batch_index BIGINT;
CREATE INDEX requests_batch_id ON requests (batch_id);
