-- $1 scores on the traces ($2 of them), values 0..100.
INSERT INTO scores (id, trace_id, name, value, created_at)
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < $1)
SELECT 'score-' || n,
       'trace-' || (1 + n % $2),
       CASE WHEN n % 2 = 0 THEN 'accuracy' ELSE 'helpfulness' END,
       (n * 37) % 101,
       '2024-10-24T12:30:00.000Z'
FROM g
