CREATE TABLE IF NOT EXISTS scores{on_cluster} (
    id         String,
    trace_id   String,
    project_id String,
    name       String,
    value      Nullable(Float64),
    source     String,
    comment    Nullable(String),
    timestamp  DateTime,
    created_at DateTime
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (project_id, id);
