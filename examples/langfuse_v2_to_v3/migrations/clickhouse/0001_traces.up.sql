-- v3 traces. DateTime (not DateTime64) and String for JSON: what ClickHouse 18.16 and current servers both accept.
CREATE TABLE IF NOT EXISTS traces{on_cluster} (
    id         String,
    project_id String,
    name       Nullable(String),
    user_id    Nullable(String),
    timestamp  DateTime,
    input      Nullable(String),
    output     Nullable(String),
    metadata   Nullable(String),
    tags       Array(String),
    created_at DateTime
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (project_id, id);
