-- Appends a batch to the bounded batches table. $1 name, $2 started at, $3 duration ms, $4 rows, $5 bytes,
-- $6 batch size, $7 state (JSON text), $8 worker.
INSERT INTO background_migration_batches
    (migration_name, started_at, duration_ms, rows, bytes, batch_size, state, worker_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
