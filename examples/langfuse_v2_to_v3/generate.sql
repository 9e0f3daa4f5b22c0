-- Sample v2 data: $1 rows per table with ids from $2 on, 100 rows sharing each created_at.
INSERT INTO traces (id, project_id, name, user_id, timestamp, input, output, metadata, tags, created_at)
SELECT 'trace-' || md5(g::text), 'project-' || (g % 10), 'chat ' || g, CASE WHEN g % 4 = 0 THEN NULL ELSE 'user-' || (g % 1000) END,
       timestamptz '2024-10-01 00:00:00+00' + (g / 100) * interval '1 second',
       jsonb_build_object('messages', jsonb_build_array(jsonb_build_object('role', 'user', 'content', 'Grüße, question ' || g))),
       jsonb_build_object('answer', 'réponse ' || g),
       CASE WHEN g % 3 = 0 THEN NULL ELSE jsonb_build_object('env', 'prod', 'release', 'v2.' || (g % 7)) END,
       ARRAY['tag-' || (g % 5)],
       timestamptz '2024-10-01 00:00:00+00' + (g / 100) * interval '1 second'
FROM generate_series($2::bigint, $2::bigint + $1::bigint - 1) g
ON CONFLICT DO NOTHING;

INSERT INTO observations (id, trace_id, project_id, type, name, start_time, input, output, metadata, input_cost, output_cost, created_at)
SELECT 'obs-' || md5(g::text), 'trace-' || md5(g::text), 'project-' || (g % 10),
       CASE WHEN g % 2 = 0 THEN 'GENERATION' ELSE 'SPAN' END, 'step ' || g,
       timestamptz '2024-10-01 00:00:00+00' + (g / 100) * interval '1 second',
       jsonb_build_object('prompt', 'prompt ' || g), jsonb_build_object('completion', 'completion ' || g),
       NULL, (g % 1000) * 0.000001, (g % 500) * 0.000002,
       timestamptz '2024-10-01 00:00:00+00' + (g / 100) * interval '1 second'
FROM generate_series($2::bigint, $2::bigint + $1::bigint - 1) g
ON CONFLICT DO NOTHING;

INSERT INTO scores (id, trace_id, project_id, name, value, source, comment, timestamp, created_at)
SELECT 'score-' || md5(g::text), 'trace-' || md5(g::text), 'project-' || (g % 10), 'quality',
       (g % 100) / 100.0, 'API', CASE WHEN g % 5 = 0 THEN 'ok ✓' END,
       timestamptz '2024-10-01 00:00:00+00' + (g / 100) * interval '1 second',
       timestamptz '2024-10-01 00:00:00+00' + (g / 100) * interval '1 second'
FROM generate_series($2::bigint, $2::bigint + $1::bigint - 1) g
ON CONFLICT DO NOTHING;
