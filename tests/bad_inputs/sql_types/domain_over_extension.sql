-- outcome: error
-- error: domain_over_extension | column 'email' | citext | column_types
-- A domain over an extension's type (citext) is refused like the type itself.
CREATE EXTENSION IF NOT EXISTS citext;
CREATE DOMAIN ci_email AS citext CHECK (VALUE LIKE '%@%');
CREATE TABLE domain_over_extension (id integer, email ci_email);
INSERT INTO domain_over_extension VALUES (1, 'A@Example.com'), (2, NULL);
