-- $1 observations, spread over the traces ($2 of them); a third are generations with costs, some costs missing.
INSERT INTO observations (id, trace_id, type, created_at, input, output, metadata, input_cost, output_cost)
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < $1)
SELECT 'obs-' || n,
       'trace-' || (1 + n % $2),
       CASE WHEN n % 3 = 0 THEN 'GENERATION' WHEN n % 3 = 1 THEN 'SPAN' ELSE 'EVENT' END,
       '2024-10-24T12:00:00.000Z',
       '{"prompt": "step ' || n || '"}',
       '{"completion": "result ' || (n * 13 % 997) || '"}',
       '{"model": "demo-' || (n % 4) || '"}',
       CASE WHEN n % 5 = 0 THEN NULL ELSE (n % 100) * 0.0001 END,
       (n % 50) * 0.0002
FROM g
