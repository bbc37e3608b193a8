-- outcome: exact
-- column_types: {"small": "bigint", "r": "double", "n": "numeric", "flag": "boolean", "doc": "json", "t": "text"}
-- types: {"small": "bigint", "r": "double precision", "n": "numeric", "flag": "boolean", "doc": "jsonb", "t": "text"}
-- Every column_types value on a SQL table: the cast is made in the source query and the warehouse
-- column has that type; values compare equal through the cast.
CREATE TABLE column_types_casts (id integer, small smallint, r real, n numeric(10,2), flag boolean, doc json,
                                 t timestamptz);
INSERT INTO column_types_casts VALUES (1, -32768, 1.5, 'NaN', true, '{"a": [1, 2]}', '2024-01-02 03:04:05+00'),
    (2, NULL, NULL, NULL, NULL, NULL, NULL), (3, 32767, '-Infinity', 12.30, false, '"x"', 'infinity');
