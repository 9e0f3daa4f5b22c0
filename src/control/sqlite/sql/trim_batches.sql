-- Drops a migration's batches older than the last $2 batch ids (one indexed range delete, right after the insert).
-- $1 name, $2 rows kept.
DELETE FROM background_migration_batches
WHERE migration_name = $1
  AND id <= last_insert_rowid() - $2
