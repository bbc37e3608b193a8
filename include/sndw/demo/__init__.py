"""Sample sources for `make demo` and the tests: a PostgreSQL database, a CSV file, a JSON API."""
