-- outcome: exact
-- types: {"c_dd": "integer", "c_dd_arr": "integer[]", "c_denum_arr": "text[]", "c_dcomp_arr": "text[]", "c_dnum_arr": "numeric(6,2)[]", "c_denum": "text", "c_darr_enum": "text[]"}
-- Arrays of domains are arrays of what the domain resolves to, through any depth of domains: a
-- domain over a domain over integer -> integer[]; over an enum or a composite -> text[] (as the
-- enum and the composite themselves are text); over numeric(6,2) -> numeric(6,2)[]. A domain over
-- an array of enums is text[] too.
CREATE TYPE dmood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE dpair AS (a integer, b text);
CREATE DOMAIN dposint AS integer CHECK (VALUE > 0);
CREATE DOMAIN dsmallpos AS dposint CHECK (VALUE < 1000);
CREATE DOMAIN dmood_d AS dmood;
CREATE DOMAIN dpair_d AS dpair;
CREATE DOMAIN dprice AS numeric(6,2);
CREATE DOMAIN dmoods AS dmood[];
CREATE TABLE domain_arrays (
    id integer PRIMARY KEY, c_dd dsmallpos, c_dd_arr dsmallpos[], c_denum dmood_d, c_denum_arr dmood_d[],
    c_dcomp_arr dpair_d[], c_dnum_arr dprice[], c_darr_enum dmoods
);
INSERT INTO domain_arrays VALUES
(1, 7, '{1,2,999}', 'happy', '{sad,happy}', ARRAY[ROW(1, 'x')::dpair, ROW(NULL, 'ü "q"')::dpair]::dpair_d[],
 '{1.50,-9999.99,NULL}', '{ok,NULL}'),
(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
(3, 1, '{}', 'sad', '{}', '{}', '{}', '{}'),
(4, 999, '{{1,2},{3,4}}', 'ok', '{{sad,ok},{happy,NULL}}', '{}', '{{0.01},{0.00}}', '{{sad},{ok}}');
