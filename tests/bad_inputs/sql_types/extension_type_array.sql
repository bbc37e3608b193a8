-- outcome: error
-- error: extension_type_array | column 'hs' | hstore[]
-- An array of an extension's type: the same error, naming the array type.
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE TABLE extension_type_array (id integer, hs hstore[]);
INSERT INTO extension_type_array VALUES (1, ARRAY['a=>1'::hstore]);
