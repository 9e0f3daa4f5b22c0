-- A batch's checkpoint and progress, written only while the lease (owner + epoch) is held and the row still runs.
-- It must follow the row's checkpoint (see ControlSql::checkpoint_follows).
-- $1 id, $2 worker, $3 epoch, $4 state (JSON), $5 rows, $6 bytes, $7 batch size, $8 duration ms, $9 rows/s,
-- $10 the checkpoint the batch started from (JSON)
UPDATE background_migrations
SET state = {state},
    rows_done = rows_done + $5,
    bytes_done = bytes_done + $6,
    batch_size = $7,
    last_batch_ms = $8,
    rows_per_sec = $9,
    updated_at = {now}
WHERE {fence} AND {follows}
