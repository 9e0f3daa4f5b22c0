-- The first runnable migration in name order: pending (or running with an expired lease), with a script this worker
-- has, and not waiting on another migration. Without depends_on a migration waits until every earlier one is
-- finished, failed or cancelled (the original system's serial order); with depends_on it waits only for those to be
-- finished. The row stays locked until the claim commits: on Postgres by the row lock (SKIP LOCKED lets concurrent
-- workers pass each other), on SQLite by BEGIN IMMEDIATE (no other writer until the commit).
-- $1 the scripts this worker can run, as a JSON array.
SELECT CAST(m.id AS TEXT), m.name, CASE WHEN m.status = 'running' THEN m.worker_id END AS took_over_from
FROM background_migrations m
WHERE m.script IN (SELECT s.value FROM {scripts})
  AND (m.status = 'pending' OR (m.status = 'running' AND m.lease_expires_at < {now}))
  AND CASE
      WHEN m.depends_on IS NULL THEN NOT EXISTS (
          SELECT 1 FROM background_migrations e
          WHERE e.name < m.name AND e.status NOT IN ('finished', 'failed', 'cancelled'))
      ELSE NOT EXISTS (
          SELECT 1 FROM {depends_on}
          LEFT JOIN background_migrations e ON e.name = d.value
          WHERE coalesce(e.status, '') <> 'finished')
      END
ORDER BY m.name
LIMIT 1
{lock}
