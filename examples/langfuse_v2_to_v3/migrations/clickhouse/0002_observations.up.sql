CREATE TABLE IF NOT EXISTS observations{on_cluster} (
    id          String,
    trace_id    Nullable(String),
    project_id  String,
    type        String,
    name        Nullable(String),
    start_time  DateTime,
    input       Nullable(String),
    output      Nullable(String),
    metadata    Nullable(String),
    input_cost  Nullable(Float64),
    output_cost Nullable(Float64),
    total_cost  Nullable(Float64),
    created_at  DateTime
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(start_time)
ORDER BY (project_id, type, id);
