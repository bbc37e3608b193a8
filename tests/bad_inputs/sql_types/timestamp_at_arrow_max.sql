-- outcome: error
-- error: timestamp_at_arrow_max | column 'ts' | 294246 | column_types
-- The last microsecond Arrow holds (294247-01-10 04:00:54.775807, int64's maximum since 1970) is
-- also the lake's 'infinity': a real timestamp there is refused like the ones past it, never
-- loaded as 'infinity' (the source's own 'infinity' in the other column loads as 'infinity').
CREATE TABLE timestamp_at_arrow_max (id integer, ts timestamp, tz timestamptz);
INSERT INTO timestamp_at_arrow_max VALUES (1, '2024-01-01', 'infinity'),
    (2, '294247-01-10 04:00:54.775807', '2024-01-01 00:00:00+00');
