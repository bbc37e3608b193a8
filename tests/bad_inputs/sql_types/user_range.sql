-- outcome: error
-- error: user_range | column 'r' | floatrange
-- A user-defined range type (here over float8) is not in the warehouse either.
CREATE TYPE floatrange AS RANGE (subtype = float8);
CREATE TABLE user_range (id integer, r floatrange);
INSERT INTO user_range VALUES (1, '[1.5,2.5)');
