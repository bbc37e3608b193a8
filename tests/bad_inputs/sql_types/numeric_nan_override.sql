-- outcome: exact
-- column_types: {"amount": "numeric"}
-- types: {"amount": "numeric"}
-- The same NaN with column_types {amount: numeric}: loaded exactly (as unconstrained numeric).
CREATE TABLE numeric_nan_override (id integer, amount numeric(10,2));
INSERT INTO numeric_nan_override VALUES (1, 12.34), (2, 'NaN'), (3, NULL), (4, -0.50);
