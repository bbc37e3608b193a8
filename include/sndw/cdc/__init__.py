"""Change data capture of PostgreSQL sources by logical replication (``pgoutput``), without Airflow.

``slot`` (the source side: tables and keys, publication, slot, snapshot), ``pgoutput`` (decoding the
messages), ``changes`` (the slot's changes into the lake), ``apply`` (one table's changes into the
warehouse), ``run`` (one run of a source: its snapshot or its changes; ``cdc status`` and ``reset``).
"""
