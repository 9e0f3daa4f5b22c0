-- The first runnable migration in name order: pending (or running with an expired lease), with a script this worker
-- has, and not waiting on another migration. Without depends_on a migration waits until every earlier one is
-- finished, failed or cancelled (the original system's serial order); with depends_on (a JSON array) it waits only
-- for those to be finished. Runs inside BEGIN IMMEDIATE, so no other writer can claim between this and the UPDATE.
-- $1 the scripts this worker can run, as a JSON array.
SELECT m.id, m.name, CASE WHEN m.status = 'running' THEN m.worker_id END AS took_over_from
FROM background_migrations m
WHERE m.script IN (SELECT value FROM json_each($1))
  AND (m.status = 'pending'
       OR (m.status = 'running' AND m.lease_expires_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))
  AND CASE
      WHEN m.depends_on IS NULL THEN NOT EXISTS (
          SELECT 1 FROM background_migrations e
          WHERE e.name < m.name AND e.status NOT IN ('finished', 'failed', 'cancelled'))
      ELSE NOT EXISTS (
          SELECT 1 FROM json_each(m.depends_on) d
          LEFT JOIN background_migrations e ON e.name = d.value
          WHERE e.status IS NOT 'finished')
      END
ORDER BY m.name
LIMIT 1
