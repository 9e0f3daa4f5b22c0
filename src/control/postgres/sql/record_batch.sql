-- Appends a batch to the bounded batches table and drops that migration's rows older than the last $9 batch ids
-- (at most $9 kept per migration; one indexed range delete, cheap enough to run after every batch).
-- $1 name, $2 started at, $3 duration ms, $4 rows, $5 bytes, $6 batch size, $7 state, $8 worker, $9 rows kept
WITH inserted AS (
    INSERT INTO background_migration_batches
        (migration_name, started_at, duration_ms, rows, bytes, batch_size, state, worker_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    RETURNING id
)
DELETE FROM background_migration_batches
WHERE migration_name = $1
  AND id <= (SELECT id - $9 FROM inserted)
