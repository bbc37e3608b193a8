"""Where lake files live: a local folder (the default), or an object store named by a URL.

``SNDW_LAKE_ROOT`` (or a source's ``lake_root``) may be ``s3://bucket/prefix``. The core reaches it
through fsspec: the Airflow layer registers the filesystem of its connection (Airflow's
``ObjectStoragePath`` with the Amazon provider), the command line uses fsspec's own, which reads the
standard ``AWS_*`` variables (``AWS_ENDPOINT_URL`` for S3-compatible servers). Credentials never
appear in a lake path, a manifest or a message: only the bucket and the key do.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a file is read: DAG-file parsing reaches this module, never a file
    import pyarrow.parquet as pq

_FILESYSTEMS: dict[str, Any] = {}  # protocol -> fsspec filesystem registered by the adapter
_LOCK = threading.Lock()


def is_url(location: Any) -> bool:
    """True for an object store location (``s3://...``); local paths and ``file://`` are folders."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0]


def use_filesystem(protocol: str, fs: Any) -> None:
    """Use ``fs`` (an fsspec filesystem) for every ``protocol://`` location in this process."""
    with _LOCK:
        _FILESYSTEMS[protocol] = fs


def filesystem(url: str) -> Any:
    """The fsspec filesystem for ``url``: the registered one, else fsspec's default (``AWS_*`` variables)."""
    protocol = protocol_of(url)
    with _LOCK:
        fs = _FILESYSTEMS.get(protocol)
        if fs is None:
            import fsspec

            fs = _FILESYSTEMS[protocol] = fsspec.filesystem(protocol)
        return fs


def strip(url: str) -> str:
    """``s3://bucket/key`` -> ``bucket/key``: the path fsspec and pyarrow take."""
    return url.split("://", 1)[1] if is_url(url) else url


def join(root: str, *parts: str) -> str:
    """A location under ``root``: ``/`` separated for URLs (never ``os.sep``)."""
    return "/".join([root.rstrip("/"), *parts])


# Object-store files are read and written through buffers of this size: a write uploads a part each
# time the buffer fills (multipart), a read fetches ahead this far. fsspec's S3 default is 50 MiB,
# which held whole objects of that size in memory, twice over while uploading.
BLOCK_SIZE = 8 * 2**20


def open_output(path: str) -> Any:
    """A file to write on the object store, uploaded in ``BLOCK_SIZE`` parts as it is written."""
    return filesystem(path).open(strip(path), "wb", block_size=BLOCK_SIZE)


def _source(path: str) -> Any:
    if not is_url(path):
        return path
    return filesystem(path).open(strip(path), "rb", block_size=BLOCK_SIZE, cache_type="readahead")


def read_schema(path: str) -> Any:
    import pyarrow.parquet as pq

    return pq.read_schema(_source(str(path)))


def read_metadata(path: str) -> Any:
    import pyarrow.parquet as pq

    return pq.read_metadata(_source(str(path)))


def open_parquet(path: str) -> pq.ParquetFile:
    """A Parquet file read batch by batch: ``pre_buffer=False`` keeps memory flat however large it is
    (on object storage each row group is fetched when it is read, never the whole object)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(_source(str(path)), pre_buffer=False)


def exists(path: str) -> bool:
    return bool(filesystem(path).exists(strip(path))) if is_url(path) else Path(path).is_file()


def size(path: str) -> int:
    return int(filesystem(path).size(strip(path))) if is_url(path) else Path(path).stat().st_size
