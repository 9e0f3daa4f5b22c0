-- Whether a unique index (or primary key) covers exactly the given set of columns.
SELECT EXISTS (
    SELECT 1
    FROM pg_index i
    WHERE i.indrelid = to_regclass($1)
      AND i.indisunique
      AND i.indpred IS NULL
      AND i.indexprs IS NULL
      AND (
          SELECT array_agg(a.attname::text ORDER BY a.attname)
          FROM pg_attribute a
          WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
      ) = (SELECT array_agg(c ORDER BY c) FROM unnest($2::text[]) AS c)
)
