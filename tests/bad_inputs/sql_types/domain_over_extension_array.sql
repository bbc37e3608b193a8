-- outcome: error
-- error: domain_over_extension_array | column 'tags' | citext | column_types
-- An array of a domain over an extension's type (citext) is refused like the type itself: its
-- element cannot be created in the warehouse. column_types: {tags: text} loads its text form.
CREATE EXTENSION IF NOT EXISTS citext;
CREATE DOMAIN ci_tag AS citext CHECK (length(VALUE) < 20);
CREATE TABLE domain_over_extension_array (id integer, tags ci_tag[]);
INSERT INTO domain_over_extension_array VALUES (1, '{Red,GREEN}'), (2, NULL);
