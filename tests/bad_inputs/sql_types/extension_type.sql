-- outcome: error
-- error: extension_type | column 'h' | hstore | column_types
-- An extension's type (hstore) does not exist in the warehouse: the extract fails before it
-- writes anything, naming table, column and type, and saying how to load it as text.
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE TABLE extension_type (id integer, h hstore);
INSERT INTO extension_type VALUES (1, 'a=>1, b=>"x y"'), (2, NULL);
