-- outcome: error
-- error: timestamp_beyond_arrow | column 'ts' | 294246 | column_types
-- PostgreSQL's timestamps reach 294276 AD, Arrow's microseconds since 1970 only 294247: such a value
-- is an error naming the column, never a wrapped-around date.
CREATE TABLE timestamp_beyond_arrow (id integer, ts timestamp);
INSERT INTO timestamp_beyond_arrow VALUES (1, '2024-01-01'), (2, '294270-01-01 00:00:00');
