-- Columns of a table (schema-qualified or found on the search_path), in table order.
SELECT a.attname::text AS name,
       format_type(a.atttypid, a.atttypmod) AS type_name,
       NOT a.attnotnull AS nullable
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1)
  AND a.attnum > 0
  AND NOT a.attisdropped
ORDER BY a.attnum
