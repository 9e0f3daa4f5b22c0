-- v3 observations on 18.16: costs exact as Langfuse v3 keeps them (Decimal64(12), copied from numeric(65, 30)
-- without a float); DateTime and String where 18.16 lacks DateTime64 and Map.
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
    input_cost  Nullable(Decimal64(12)),
    output_cost Nullable(Decimal64(12)),
    total_cost  Nullable(Decimal64(12)),
    created_at  DateTime
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(start_time)
ORDER BY (project_id, type, id);
