-- The v2 tables, as the original system kept them in Postgres (text ids, jsonb payloads).
CREATE TABLE IF NOT EXISTS traces (
    id         text PRIMARY KEY,
    project_id text NOT NULL,
    name       text,
    user_id    text,
    timestamp  timestamptz NOT NULL DEFAULT now(),
    input      jsonb,
    output     jsonb,
    metadata   jsonb,
    tags       text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS observations (
    id          text PRIMARY KEY,
    trace_id    text,
    project_id  text NOT NULL,
    type        text NOT NULL,
    name        text,
    start_time  timestamptz NOT NULL DEFAULT now(),
    input       jsonb,
    output      jsonb,
    metadata    jsonb,
    input_cost  numeric(65, 30),
    output_cost numeric(65, 30),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS scores (
    id         text PRIMARY KEY,
    trace_id   text NOT NULL,
    project_id text NOT NULL,
    name       text NOT NULL,
    value      double precision,
    source     text NOT NULL,
    comment    text,
    timestamp  timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now()
);
