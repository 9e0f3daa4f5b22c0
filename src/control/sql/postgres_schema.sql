-- The control tables. Idempotent: creates them, or upgrades an existing table (including the original system's
-- `background_migrations`) by adding the columns it lacks. Run under an advisory transaction lock.
CREATE TABLE IF NOT EXISTS background_migrations (
    id            text PRIMARY KEY DEFAULT gen_random_uuid()::text,
    name          text NOT NULL UNIQUE,
    script        text NOT NULL,
    args          jsonb NOT NULL DEFAULT '{}',
    state         jsonb NOT NULL DEFAULT '{}',
    finished_at   timestamptz,
    failed_at     timestamptz,
    failed_reason text,
    worker_id     text,
    locked_at     timestamptz
);

ALTER TABLE background_migrations
    ADD COLUMN IF NOT EXISTS status           text NOT NULL DEFAULT 'pending',
    ADD COLUMN IF NOT EXISTS definition       jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS depends_on       text[],
    ADD COLUMN IF NOT EXISTS lease_epoch      bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz,
    ADD COLUMN IF NOT EXISTS started_at       timestamptz,
    ADD COLUMN IF NOT EXISTS attempts         integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS rows_done        bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS rows_total       bigint,
    ADD COLUMN IF NOT EXISTS bytes_done       bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS batch_size       integer,
    ADD COLUMN IF NOT EXISTS last_batch_ms    integer,
    ADD COLUMN IF NOT EXISTS rows_per_sec     double precision,
    ADD COLUMN IF NOT EXISTS created_at       timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS updated_at       timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS throttled        text;

-- Rows written by the original system carry only finished_at / failed_at: derive their status.
UPDATE background_migrations
SET status = CASE WHEN finished_at IS NOT NULL THEN 'finished' ELSE 'failed' END
WHERE status = 'pending' AND (finished_at IS NOT NULL OR failed_at IS NOT NULL);

CREATE TABLE IF NOT EXISTS background_migration_events (
    id             bigserial PRIMARY KEY,
    migration_name text NOT NULL,
    at             timestamptz NOT NULL DEFAULT now(),
    kind           text NOT NULL,
    actor          text NOT NULL,
    detail         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS background_migration_events_by_name
    ON background_migration_events (migration_name, id);

CREATE TABLE IF NOT EXISTS background_migration_batches (
    id             bigserial PRIMARY KEY,
    migration_name text NOT NULL,
    started_at     timestamptz NOT NULL,
    duration_ms    integer NOT NULL,
    rows           bigint NOT NULL,
    bytes          bigint NOT NULL,
    batch_size     integer NOT NULL,
    state          jsonb NOT NULL,
    worker_id      text NOT NULL
);
CREATE INDEX IF NOT EXISTS background_migration_batches_by_name
    ON background_migration_batches (migration_name, id);

-- A migration's key ranges when it runs with `parallelism` > 1: each a unit a worker leases on its own, with its own
-- checkpoint. `upper_state` is the checkpoint at which the next range starts (NULL: the end of the key space);
-- `splits` counts how often a thief cut the range short, and fences the holder's checkpoint (a batch that ran while
-- its range was cut is not written).
CREATE TABLE IF NOT EXISTS background_migration_ranges (
    migration_id     text NOT NULL,
    range_no         integer NOT NULL,
    state            jsonb NOT NULL,
    upper_state      jsonb,
    done             integer NOT NULL DEFAULT 0,
    splits           integer NOT NULL DEFAULT 0,
    worker_id        text,
    lease_epoch      bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,
    rows_done        bigint NOT NULL DEFAULT 0,
    rows_total       bigint,
    rows_per_sec     double precision,
    batch_size       integer,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration_id, range_no)
);
