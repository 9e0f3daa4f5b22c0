-- The control tables on SQLite: the Postgres tables' columns, JSON as TEXT, timestamps as ISO-8601 UTC TEXT
-- (strftime('%Y-%m-%dT%H:%M:%fZ'), so text order is time order). Idempotent; run in a BEGIN IMMEDIATE transaction.
CREATE TABLE IF NOT EXISTS background_migrations (
    id               TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(16)))),
    name             TEXT NOT NULL UNIQUE,
    script           TEXT NOT NULL,
    args             TEXT NOT NULL DEFAULT '{}',
    state            TEXT NOT NULL DEFAULT '{}',
    finished_at      TEXT,
    failed_at        TEXT,
    failed_reason    TEXT,
    worker_id        TEXT,
    locked_at        TEXT,
    status           TEXT NOT NULL DEFAULT 'pending',
    definition       TEXT NOT NULL DEFAULT '{}',
    depends_on       TEXT,
    lease_epoch      INTEGER NOT NULL DEFAULT 0,
    lease_expires_at TEXT,
    started_at       TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    rows_done        INTEGER NOT NULL DEFAULT 0,
    rows_total       INTEGER,
    bytes_done       INTEGER NOT NULL DEFAULT 0,
    batch_size       INTEGER,
    last_batch_ms    INTEGER,
    rows_per_sec     REAL,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    throttled        TEXT
);

CREATE TABLE IF NOT EXISTS background_migration_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    migration_name TEXT NOT NULL,
    at             TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    kind           TEXT NOT NULL,
    actor          TEXT NOT NULL,
    detail         TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS background_migration_events_by_name
    ON background_migration_events (migration_name, id);

CREATE TABLE IF NOT EXISTS background_migration_batches (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    migration_name TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    duration_ms    INTEGER NOT NULL,
    rows           INTEGER NOT NULL,
    bytes          INTEGER NOT NULL,
    batch_size     INTEGER NOT NULL,
    state          TEXT NOT NULL,
    worker_id      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS background_migration_batches_by_name
    ON background_migration_batches (migration_name, id);

-- A migration's key ranges when it runs with `parallelism` > 1 (see the Postgres schema for the columns).
CREATE TABLE IF NOT EXISTS background_migration_ranges (
    migration_id     TEXT NOT NULL,
    range_no         INTEGER NOT NULL,
    state            TEXT NOT NULL,
    upper_state      TEXT,
    done             INTEGER NOT NULL DEFAULT 0,
    splits           INTEGER NOT NULL DEFAULT 0,
    worker_id        TEXT,
    lease_epoch      INTEGER NOT NULL DEFAULT 0,
    lease_expires_at TEXT,
    rows_done        INTEGER NOT NULL DEFAULT 0,
    rows_total       INTEGER,
    rows_per_sec     REAL,
    batch_size       INTEGER,
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (migration_id, range_no)
);
