-- Inserts a definition unless a row of that name exists (never touching existing rows or their args). A script this
-- build does not know is inserted as failed with the reason $6.
-- $1 name, $2 script, $3 args (JSON), $4 definition (JSON), $5 depends_on (JSON array or NULL),
-- $6 unknown-script reason or NULL
INSERT INTO background_migrations
    (name, script, args, definition, depends_on, status, failed_at, failed_reason)
VALUES ($1, $2, {args}, {definition}, {depends_on},
        CASE WHEN CAST($6 AS TEXT) IS NULL THEN 'pending' ELSE 'failed' END,
        CASE WHEN CAST($6 AS TEXT) IS NULL THEN NULL ELSE {now} END,
        $6)
ON CONFLICT (name) DO NOTHING
RETURNING name
