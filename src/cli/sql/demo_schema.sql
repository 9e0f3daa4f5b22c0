-- The demo's application tables, shaped like Langfuse's traces / observations / scores. Portable SQL (Postgres and
-- SQLite): text ids, JSON documents as text, ISO-8601 timestamps as text. Run statement by statement.
CREATE TABLE traces (
    id          text NOT NULL PRIMARY KEY,
    project_id  text NOT NULL,
    name        text,
    created_at  text NOT NULL,
    created_day text,
    input       text,
    output      text,
    metadata    text
);
CREATE UNIQUE INDEX traces_created_at_id ON traces (created_at, id);
CREATE TABLE observations (
    id          text NOT NULL PRIMARY KEY,
    trace_id    text NOT NULL,
    type        text NOT NULL,
    created_at  text NOT NULL,
    input       text,
    output      text,
    metadata    text,
    input_cost  double precision,
    output_cost double precision,
    total_cost  double precision
);
CREATE TABLE scores (
    id               text NOT NULL PRIMARY KEY,
    trace_id         text NOT NULL,
    name             text NOT NULL,
    value            double precision NOT NULL,
    normalized_value double precision,
    created_at       text NOT NULL
);
