-- Inserts a definition unless a row of that name exists (never touching existing rows or their args). A script this
-- build does not know is inserted as failed with the reason $6.
-- $1 name, $2 script, $3 args, $4 definition, $5 depends_on (JSON text or NULL), $6 unknown-script reason or NULL
INSERT INTO background_migrations
    (name, script, args, definition, depends_on, status, failed_at, failed_reason)
VALUES ($1, $2, $3, $4, $5,
        CASE WHEN $6 IS NULL THEN 'pending' ELSE 'failed' END,
        CASE WHEN $6 IS NULL THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END,
        $6)
ON CONFLICT (name) DO NOTHING
RETURNING name
