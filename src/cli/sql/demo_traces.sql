-- $1 traces. About a thousand traces share each created_at (one minute), the shape that looped the original system.
INSERT INTO traces (id, project_id, name, created_at, input, output, metadata)
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < $1)
SELECT 'trace-' || n,
       'project-' || (n % 3),
       'chat-' || (n % 17),
       '2024-10-24T' || (10 + n / 60000) || ':'
           || CASE WHEN (n / 1000) % 60 < 10 THEN '0' ELSE '' END || ((n / 1000) % 60) || ':00.000Z',
       '{"messages": [{"role": "user", "content": "question ' || n || '"}]}',
       '{"role": "assistant", "content": "answer ' || (n * 7 % 1000) || '"}',
       '{"env": "demo", "release": "v' || (n % 5) || '"}'
FROM g
