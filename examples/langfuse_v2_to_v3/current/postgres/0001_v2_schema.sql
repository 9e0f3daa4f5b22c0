-- Langfuse v2's tables in Postgres, with the columns its v3 move reads (names as its Prisma schema maps them:
-- text ids, enums, jsonb payloads and metadata, token counts, numeric(65, 30) costs).
DO $$ BEGIN
    CREATE TYPE "ObservationType" AS ENUM ('SPAN', 'EVENT', 'GENERATION');
    CREATE TYPE "ObservationLevel" AS ENUM ('DEBUG', 'DEFAULT', 'WARNING', 'ERROR');
    CREATE TYPE "ScoreSource" AS ENUM ('ANNOTATION', 'API', 'EVAL');
    CREATE TYPE "ScoreDataType" AS ENUM ('CATEGORICAL', 'NUMERIC', 'BOOLEAN');
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

CREATE TABLE IF NOT EXISTS traces (
    id         text PRIMARY KEY,
    "timestamp" timestamp(3) NOT NULL DEFAULT now(),
    name       text,
    user_id    text,
    metadata   jsonb,
    release    text,
    version    text,
    project_id text NOT NULL,
    public     boolean NOT NULL DEFAULT false,
    bookmarked boolean NOT NULL DEFAULT false,
    tags       text[] NOT NULL DEFAULT '{}',
    input      jsonb,
    output     jsonb,
    session_id text,
    created_at timestamp(3) NOT NULL DEFAULT now(),
    updated_at timestamp(3) NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS observations (
    id                    text PRIMARY KEY,
    trace_id              text,
    project_id            text NOT NULL,
    type                  "ObservationType" NOT NULL,
    start_time            timestamp(3) NOT NULL DEFAULT now(),
    end_time              timestamp(3),
    name                  text,
    metadata              jsonb,
    parent_observation_id text,
    level                 "ObservationLevel" NOT NULL DEFAULT 'DEFAULT',
    status_message        text,
    version               text,
    model                 text,
    internal_model_id     text,
    model_parameters      jsonb,
    input                 jsonb,
    output                jsonb,
    prompt_tokens         integer NOT NULL DEFAULT 0,
    completion_tokens     integer NOT NULL DEFAULT 0,
    total_tokens          integer NOT NULL DEFAULT 0,
    input_cost            numeric(65, 30),
    output_cost           numeric(65, 30),
    total_cost            numeric(65, 30),
    completion_start_time timestamp(3),
    prompt_id             text,
    created_at            timestamp(3) NOT NULL DEFAULT now(),
    updated_at            timestamp(3) NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS scores (
    id             text PRIMARY KEY,
    "timestamp"    timestamp(3) NOT NULL DEFAULT now(),
    project_id     text NOT NULL,
    trace_id       text NOT NULL,
    observation_id text,
    name           text NOT NULL,
    value          double precision,
    source         "ScoreSource" NOT NULL,
    comment        text,
    author_user_id text,
    config_id      text,
    data_type      "ScoreDataType" NOT NULL DEFAULT 'NUMERIC',
    string_value   text,
    queue_id       text,
    created_at     timestamp(3) NOT NULL DEFAULT now(),
    updated_at     timestamp(3) NOT NULL DEFAULT now()
);
