-- outcome: exact
-- types: {"c_regclass": "text", "c_regtype": "text", "c_regproc": "text", "c_regprocedure": "text", "c_regnamespace": "text", "c_regrole": "text", "c_regconfig": "text", "c_regclass_arr": "text[]", "c_regtype_arr": "text[]"}
-- reg* types (regclass, regtype, ...) name objects of the source database by OID: the warehouse
-- may have no such object (a cast to regclass there fails), so they are carried as text, their
-- names as the source prints them.
CREATE SCHEMA only_in_source;
CREATE TABLE only_in_source.orders (id integer);
CREATE TYPE only_in_source.state AS ENUM ('a');
CREATE FUNCTION only_in_source.f(integer) RETURNS integer LANGUAGE sql AS 'SELECT $1';
CREATE TABLE reg_types (
    id integer, c_regclass regclass, c_regtype regtype, c_regproc regproc, c_regprocedure regprocedure,
    c_regnamespace regnamespace, c_regrole regrole, c_regconfig regconfig, c_regclass_arr regclass[],
    c_regtype_arr regtype[]
);
INSERT INTO reg_types VALUES
(1, 'only_in_source.orders', 'only_in_source.state', 'only_in_source.f', 'only_in_source.f(integer)',
 'only_in_source', CURRENT_USER::regrole, 'english', ARRAY['only_in_source.orders', 'pg_class']::regclass[],
 ARRAY['only_in_source.state', 'integer']::regtype[]),
(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
(3, 'pg_class', 'integer', 'now', 'now()', 'public', CURRENT_USER::regrole, 'simple', '{}', '{}');
