-- Columns of a table in table order. ?1 table, ?2 schema. An INTEGER PRIMARY KEY is the rowid: it cannot hold NULL
-- even without NOT NULL (any other column of a rowid table can, primary key or not).
SELECT c.name AS name,
       c.type AS type_name,
       (c."notnull" = 0
        AND NOT (c.pk = 1 AND upper(c.type) = 'INTEGER'
                 AND (SELECT count(*) FROM pragma_table_info(?1, ?2) WHERE pk > 0) = 1)) AS nullable
FROM pragma_table_info(?1, ?2) c
ORDER BY c.cid
