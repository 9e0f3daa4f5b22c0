-- Appends a batch to the bounded batches table and returns its id. On Postgres the same statement drops the
-- migration's batches more than BATCHES_KEPT older (a WITH around the insert, one round trip fewer per batch); on
-- SQLite the caller trims right after (ControlSql::insert_trimming).
-- $1 name, $2 started at (RFC 3339), $3 duration ms, $4 rows, $5 bytes, $6 batch size, $7 state (JSON), $8 worker
{open}INSERT INTO background_migration_batches
    (migration_name, started_at, duration_ms, rows, bytes, batch_size, state, worker_id)
VALUES ($1, {started_at}, $3, $4, $5, $6, {state}, $8)
RETURNING id{trim}
