-- Appends a batch to the bounded batches table; returns its id, below which the caller trims.
-- $1 name, $2 started at (RFC 3339), $3 duration ms, $4 rows, $5 bytes, $6 batch size, $7 state (JSON), $8 worker
INSERT INTO background_migration_batches
    (migration_name, started_at, duration_ms, rows, bytes, batch_size, state, worker_id)
VALUES ($1, {started_at}, $3, $4, $5, $6, {state}, $8)
RETURNING id
