-- The demo's analytics table in ClickHouse (with CLICKHOUSE_URL set): the application's traces, one row per id. A
-- ReplacingMergeTree ordered by the key, so a batch the copy sends twice collapses. Runs on ClickHouse 18.16 and
-- later.
CREATE TABLE IF NOT EXISTS traces (
    id          String,
    project_id  String,
    name        Nullable(String),
    created_at  String,
    created_day Nullable(String),
    input       Nullable(String),
    output      Nullable(String),
    metadata    Nullable(String)
) ENGINE = ReplacingMergeTree() ORDER BY id
