-- outcome: exact
-- numeric(p,s) at the edges of how it travels: p <= 18 is read as its unscaled bigint (value * 10^s)
-- and viewed as the decimal again, p 19..38 as Arrow decimal128 from ADBC's own decoding, a scale
-- above the precision and a negative scale as text. Max, min, -0, the smallest step and NULL.
CREATE TABLE numeric_precision_edges (
    id integer, n18_0 numeric(18,0), n18_18 numeric(18,18), n1_0 numeric(1,0), n18_4 numeric(18,4),
    n19_2 numeric(19,2), n38_10 numeric(38,10), n3_5 numeric(3,5), n5_neg2 numeric(5,-2)
);
INSERT INTO numeric_precision_edges VALUES
(1, 999999999999999999, 0.999999999999999999, 9, 99999999999999.9999, 99999999999999999.99,
 9999999999999999999999999999.9999999999, 0.00999, 9999900),
(2, -999999999999999999, -0.999999999999999999, -9, -99999999999999.9999, -99999999999999999.99,
 -9999999999999999999999999999.9999999999, -0.00999, -9999900),
(3, -0, -0.000000000000000000, -0, -0.0000, -0.00, -0.0000000000, -0.00000, -0),
(4, 1, 0.000000000000000001, 1, 0.0001, 0.01, 0.0000000001, 0.00001, 100),
(5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
