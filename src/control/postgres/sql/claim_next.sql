-- Claims the first runnable migration in name order: pending (or running with an expired lease), with a script this
-- worker has, and not waiting on another migration. Without depends_on a migration waits until every earlier one
-- is finished, failed or cancelled (the original system's serial order); with depends_on it waits only for those
-- to be finished. SKIP LOCKED lets concurrent workers pass each other; the epoch increment fences the old owner.
-- $1 worker id, $2 lease seconds, $3 scripts this worker can run.
WITH candidate AS (
    SELECT m.id, m.worker_id AS previous_worker, m.status AS previous_status
    FROM background_migrations m
    WHERE m.script = ANY ($3)
      AND (m.status = 'pending' OR (m.status = 'running' AND m.lease_expires_at < now()))
      AND CASE
          WHEN m.depends_on IS NULL THEN NOT EXISTS (
              SELECT 1 FROM background_migrations e
              WHERE e.name < m.name AND e.status NOT IN ('finished', 'failed', 'cancelled'))
          ELSE NOT EXISTS (
              SELECT 1 FROM unnest(m.depends_on) AS d(name)
              LEFT JOIN background_migrations e ON e.name = d.name
              WHERE e.status IS DISTINCT FROM 'finished')
          END
    ORDER BY m.name
    LIMIT 1
    FOR UPDATE OF m SKIP LOCKED
)
UPDATE background_migrations m
SET status = 'running',
    worker_id = $1,
    lease_epoch = m.lease_epoch + 1,
    locked_at = now(),
    lease_expires_at = now() + make_interval(secs => $2),
    started_at = coalesce(m.started_at, now()),
    attempts = m.attempts + 1,
    updated_at = now()
FROM candidate
WHERE m.id = candidate.id
RETURNING m.id, m.lease_epoch,
    CASE WHEN candidate.previous_status = 'running' THEN candidate.previous_worker END AS took_over_from
