-- $1 large observations of $2 MB of incompressible text each in `input` (the rows that crashed the original copy).
INSERT INTO observations (id, project_id, type, name, input, created_at)
SELECT 'obs-big-' || n, 'project-0', 'GENERATION', 'large prompt ' || n,
       jsonb_build_object('prompt', (SELECT string_agg(md5(n::text || '-' || i), '') FROM generate_series(1, $2::int * 32768) i)),
       timestamptz '2024-10-01 00:00:00+00'
FROM generate_series(1, $1::int) n
ON CONFLICT DO NOTHING;
