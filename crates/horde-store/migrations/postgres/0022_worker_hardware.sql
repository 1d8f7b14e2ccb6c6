-- Issue 30: what each worker runs on, as its latest pop reported it (`hardware`: device, CPU,
-- memory, GPU, engine, dtype, load time), as JSON; NULL until a worker reports it. Kept like
-- the worker's declared flags, so `GET /workers/{id}` shows it after a restart and on every
-- coordinator sharing the database. The models a worker holds in memory (`loaded_models`)
-- change with every load and live in memory only, like the pop's `amount`.
ALTER TABLE workers ADD COLUMN hardware TEXT;
