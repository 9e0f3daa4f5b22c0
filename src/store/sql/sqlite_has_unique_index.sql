-- Whether a unique index (not partial, no expressions) or the primary key covers exactly the given columns.
-- ?1 table, ?2 schema, ?3 the columns as a JSON array. The INTEGER PRIMARY KEY is the rowid and has no index of
-- its own, hence the primary-key branch.
WITH wanted AS (SELECT DISTINCT value AS name FROM json_each(?3))
SELECT EXISTS (
    SELECT 1
    FROM pragma_index_list(?1, ?2) il
    WHERE il."unique" = 1
      AND il.partial = 0
      AND (SELECT count(*) FROM pragma_index_info(il.name, ?2)) = (SELECT count(*) FROM wanted)
      AND NOT EXISTS (
          SELECT 1 FROM pragma_index_info(il.name, ?2) ii
          WHERE ii.name IS NULL OR ii.name NOT IN (SELECT name FROM wanted))
) OR (
    (SELECT count(*) FROM wanted) > 0
    AND (SELECT count(*) FROM pragma_table_info(?1, ?2) WHERE pk > 0) = (SELECT count(*) FROM wanted)
    AND NOT EXISTS (
        SELECT 1 FROM pragma_table_info(?1, ?2) t
        WHERE t.pk > 0 AND t.name NOT IN (SELECT name FROM wanted))
)
