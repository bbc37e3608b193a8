"""Python transforms of the source configs' tables (``transform: transforms.<module>:<function>``).

Each function takes one batch of a table, a ``pyarrow.RecordBatch`` or a ``polars.DataFrame`` as
its first parameter's annotation says, and returns the same kind; see docs/guides/sources.md.
"""
