"""`make bench`: load and extract speed and memory of sndw against psql's own COPY and the peers."""
