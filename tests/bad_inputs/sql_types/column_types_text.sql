-- outcome: exact
-- column_types: {"h": "text", "r": "text"}
-- types: {"h": "text", "r": "text"}
-- The escape hatch: column_types {col: text} loads any type's text form, exactly.
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE TYPE floatrange2 AS RANGE (subtype = float8);
CREATE TABLE column_types_text (id integer, h hstore, r floatrange2);
INSERT INTO column_types_text VALUES (1, 'a=>1, b=>"x y"', '[1.5,2.5)'), (2, NULL, 'empty'), (3, '', '(,)');
