-- outcome: error
-- error: numeric_nan_constrained | column 'amount' | numeric(10,2) | NaN | column_types
-- NaN in a numeric(p,s) column: an exact Arrow decimal cannot hold it. Never dropped or made NULL:
-- the extract fails naming the column and the escape hatch (column_types: {amount: numeric}).
CREATE TABLE numeric_nan_constrained (id integer, amount numeric(10,2));
INSERT INTO numeric_nan_constrained VALUES (1, 12.34), (2, 'NaN'), (3, NULL);
