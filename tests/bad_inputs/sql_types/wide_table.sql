-- outcome: error
-- error: wide_table | 1598 columns | _loaded_at, _partition_date, _file_id | 1600 | at most 1597
-- A table of 1,598 columns cannot get the 3 columns the warehouse adds within PostgreSQL's limit
-- of 1,600: the extract fails before it reads a row, naming the table, its column count, the
-- added columns and the limit.
DO $$
BEGIN
    EXECUTE 'CREATE TABLE wide_table (' ||
        (SELECT string_agg(format('c%s integer', i), ', ') FROM generate_series(1, 1598) AS i) || ')';
END $$;
INSERT INTO wide_table (c1, c1598) VALUES (1, 2);
