"""Where lake files live: a local folder (the default), or an object store named by a URL.

``SNDW_LAKE_ROOT`` (or a source's ``lake_root``) may be ``s3://bucket/prefix``. The core reaches it
through fsspec: the Airflow layer registers the filesystem of its connection (Airflow's
``ObjectStoragePath`` with the Amazon provider), the command line uses fsspec's own, which reads the
standard ``AWS_*`` variables (``AWS_ENDPOINT_URL`` for S3-compatible servers). Credentials never
appear in a lake path, a manifest or a message: only the bucket and the key do.
"""

from __future__ import annotations

import threading
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

_FILESYSTEMS: dict[str, Any] = {}  # protocol -> fsspec filesystem registered by the adapter
_ARROW: dict[int, pafs.FileSystem] = {}
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
        _ARROW.pop(id(fs), None)


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


def arrow_location(path: str) -> tuple[str, pafs.FileSystem | None]:
    """What pyarrow's Parquet functions take: ``(path, filesystem)``; no filesystem for local files."""
    if not is_url(path):
        return path, None
    fs = filesystem(path)
    with _LOCK:
        arrow = _ARROW.get(id(fs))
        if arrow is None:
            arrow = _ARROW[id(fs)] = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return strip(path), arrow


def read_schema(path: str) -> Any:
    where, fs = arrow_location(str(path))
    return pq.read_schema(where, filesystem=fs)


def read_metadata(path: str) -> Any:
    where, fs = arrow_location(str(path))
    return pq.read_metadata(where, filesystem=fs)


def open_parquet(path: str) -> pq.ParquetFile:
    """A Parquet file read batch by batch: ``pre_buffer=False`` keeps memory flat however large it is
    (on object storage each row group is fetched when it is read, never the whole object)."""
    where, fs = arrow_location(str(path))
    return pq.ParquetFile(where, pre_buffer=False, filesystem=fs)


def exists(path: str) -> bool:
    from pathlib import Path

    return bool(filesystem(path).exists(strip(path))) if is_url(path) else Path(path).is_file()


def size(path: str) -> int:
    from pathlib import Path

    return int(filesystem(path).size(strip(path))) if is_url(path) else Path(path).stat().st_size
