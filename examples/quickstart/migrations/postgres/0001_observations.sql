-- Fast migration: the application's table, with sample data so the quick start has something to backfill.
CREATE TABLE observations (
    id          text PRIMARY KEY,
    type        text NOT NULL,
    created_at  timestamptz NOT NULL,
    input_cost  numeric,
    output_cost numeric,
    payload     text
);

INSERT INTO observations (id, type, created_at, input_cost, output_cost, payload)
SELECT 'obs-' || md5(g::text),
       CASE WHEN g % 3 = 0 THEN 'GENERATION' ELSE 'SPAN' END,
       timestamptz '2024-10-24 12:00:00+00' + (g / 100) * interval '1 second',
       CASE WHEN g % 7 = 0 THEN NULL ELSE g / 1000.0 END,
       g / 2000.0,
       repeat('x', 200)
FROM generate_series(1, 200000) g;
