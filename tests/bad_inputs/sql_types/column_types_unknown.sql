-- outcome: error
-- column_types: {"nope": "text"}
-- error: column_types_unknown | nope
-- column_types naming a column the query does not return is an error, not ignored.
CREATE TABLE column_types_unknown (id integer, v text);
INSERT INTO column_types_unknown VALUES (1, 'x');
