-- The demo's analytics database (a second SQLite file): the traces copied there by the demo's copy migration.
-- The primary key on id is the unique key the copy upserts on.
CREATE TABLE IF NOT EXISTS traces (
    id          text NOT NULL PRIMARY KEY,
    project_id  text NOT NULL,
    name        text,
    created_at  text NOT NULL,
    created_day text,
    input       text,
    output      text,
    metadata    text
)
